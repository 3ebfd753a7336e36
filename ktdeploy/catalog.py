"""The model catalog (data in ktdeploy/data/catalog.yml): DeepSeek-R1 GGUF variants and the config repo.

    >>> v = variant("UD-IQ1_S")
    >>> v.shards, v.files[0]
    (3, 'DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf')

Paths in `files` are relative to the GGUF repo root, which is also the local directory
`<model dir>/DeepSeek-R1-GGUF` (`gguf_dir()` gives a variant's directory, the engine's --gguf_path).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from ktdeploy.errors import BadInput

_DATA = Path(__file__).parent / "data" / "catalog.yml"


@dataclass(frozen=True)
class Repo:
    """A hub repository and what to take from it."""

    modelscope: str
    huggingface: str
    local_dir: str
    exclude: tuple[str, ...] = ()
    approx_bytes: int | None = None


@dataclass(frozen=True)
class Variant:
    name: str
    bits: float
    shards: int
    bytes: int
    min_ram_gib: int
    legacy_ktransformers: bool
    min_kt_version: str
    repo: Repo | None  # None: a packaged model

    @property
    def packaged(self) -> bool:
        """Brought by a PyPI package: nothing to download, llama.cpp only."""
        return self.repo is None

    @property
    def dir(self) -> str:
        return f"DeepSeek-R1-{self.name}"

    @property
    def include(self) -> tuple[str, ...]:
        """Download patterns (fnmatch on the repo path; a bare `dir/` would match nothing on ModelScope)."""
        return (f"{self.dir}/*",)

    @property
    def files(self) -> tuple[str, ...]:
        if self.packaged:
            return ()
        n = self.shards
        return tuple(f"{self.dir}/{self.dir}-{i:05d}-of-{n:05d}.gguf" for i in range(1, n + 1))

    @property
    def gib(self) -> float:
        return self.bytes / 2**30

    def gguf_dir(self, model_dir: str) -> str:
        """The directory holding this variant's shards on a host (KTransformers' --gguf_path)."""
        if self.packaged:
            raise BadInput(f"{self.name} comes from a PyPI package, not from the GGUF repo",
                           hint="its path on the host is serve_llamacpp_model")
        return str(PurePosixPath(model_dir) / self.repo.local_dir / self.dir)


@cache
def _data() -> dict:
    with open(_DATA, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _repo(d: dict) -> Repo:
    return Repo(**{**d, "exclude": tuple(d.get("exclude", ()))})


def names() -> list[str]:
    """The DeepSeek-R1 GGUF variants (downloadable)."""
    return list(_data()["variants"])


def packaged_names() -> list[str]:
    return list(_data().get("packaged_models") or {})


def default_variant() -> str:
    return _data()["defaults"]["variant"]


def default_kt_version() -> str:
    return _data()["defaults"]["kt_version"]


def variant(name: str | None = None) -> Variant:
    name = name or default_variant()
    data = _data()
    entry = data["variants"].get(name)
    if entry is not None:
        return Variant(name=name, repo=_repo(data["gguf_repo"]), **entry)
    packaged = (data.get("packaged_models") or {}).get(name)
    if packaged is not None:
        return Variant(name=name, shards=1, legacy_ktransformers=False, min_kt_version="", repo=None, **packaged)
    raise BadInput(f"unknown model variant {name!r}", hint=f"use one of: {', '.join(names() + packaged_names())}")


def config_repo() -> Repo:
    """The DeepSeek-R1 repo without weights: config, tokenizer and modelling code (--model_path)."""
    return _repo(_data()["config_repo"])


def config_dir(model_dir: str) -> str:
    return str(PurePosixPath(model_dir) / config_repo().local_dir)
