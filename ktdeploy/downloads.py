"""What the model_download role fetches for a catalog variant (its items), in one place.

Roles get it through the `ktdeploy_download_items` filter; `ktdeploy download` uses the names to
read the status back.
"""

from __future__ import annotations

from pathlib import PurePosixPath

SOURCES = ("modelscope", "huggingface", "mirror")
CONFIG_ITEM = "DeepSeek-R1-config"


def download_items(variant_name: str | None, source: str, model_dir: str) -> list[dict]:
    """The variant's GGUF shards and the DeepSeek-R1 config files without the weights (none for a
    packaged or generated model).

    Mirrors are laid out like ModelScope (`<owner>/<name>/...`), so they use its repo ids.
    """
    from ktdeploy import catalog  # imported here: every CLI command loads this module

    v = catalog.variant(variant_name or None)
    if not v.downloadable:  # packaged: the serve role installs its package; generated: written on the spot
        return []
    cfg = catalog.config_repo()
    key = "huggingface" if source == "huggingface" else "modelscope"
    root = PurePosixPath(model_dir)
    return [
        {"name": v.dir, "repo": getattr(v.repo, key), "includes": list(v.include), "excludes": [],
         "dest": str(root / v.repo.local_dir)},
        {"name": CONFIG_ITEM, "repo": getattr(cfg, key), "includes": [], "excludes": list(cfg.exclude),
         "dest": str(root / cfg.local_dir)},
    ]


def item_names(variant_name: str | None) -> list[str]:
    """The job names `ktdeploy download` reads back; a packaged model has none, which is bad input there."""
    names = [i["name"] for i in download_items(variant_name, "modelscope", "/")]
    if not names:
        from ktdeploy import catalog
        from ktdeploy.errors import BadInput

        where = ("is written on the spot (`ktdeploy lab tiny-model DIR`)" if catalog.variant(variant_name).generated
                 else "comes from a PyPI package that provisioning installs")
        raise BadInput(f"{variant_name} {where}; there is nothing to download",
                       hint=f"name a GGUF variant with --model: {', '.join(catalog.names())}")
    return names
