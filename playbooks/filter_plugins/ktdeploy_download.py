"""Filters that hand the model_download role what to fetch (the catalog lives in ktdeploy).

    model_download_variant | ktdeploy_download_items(model_download_source, ktdeploy_plan.model.dir)
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from ktdeploy import downloads
except ImportError:  # plain ansible-playbook from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from ktdeploy import downloads


def ktdeploy_download_items(variant, source, model_dir):
    """The role's items for a catalog variant ("" = the catalog's default), under model_dir."""
    return downloads.download_items(str(variant or "") or None, str(source), str(model_dir))


class FilterModule:
    def filters(self):
        return {"ktdeploy_download_items": ktdeploy_download_items}
