"""Filters that hand the model_download role what to fetch (the catalog lives in ktdeploy).

    model_download_variant | ktdeploy_download_items(model_download_source, base_model_dir)
"""

from __future__ import annotations

from ktdeploy import downloads


def ktdeploy_download_items(variant, source="modelscope", model_dir="/srv/ktdeploy/models"):
    """The role's items for a catalog variant ("" = the catalog's default)."""
    return downloads.download_items(str(variant or "") or None, str(source), str(model_dir))


class FilterModule:
    def filters(self):
        return {"ktdeploy_download_items": ktdeploy_download_items}
