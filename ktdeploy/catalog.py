"""The model catalog (data in ktdeploy/data/catalog.yml): DeepSeek-R1 GGUF variants and the config repo.

    >>> v = variant("UD-IQ1_S")
    >>> v.shards, v.files[0]
    (3, 'DeepSeek-R1-UD-IQ1_S/DeepSeek-R1-UD-IQ1_S-00001-of-00003.gguf')

Paths in `files` are relative to the GGUF repo root, which is also the local directory
`<model dir>/DeepSeek-R1-GGUF` (`gguf_dir()` gives a variant's directory, the engine's --gguf_path).

Besides the R1 variants (`names()`): packaged models (`packaged_names()`, a PyPI package brings the
GGUF; llama.cpp only) and generated models (`generated_names()`, the tiny DeepSeek-V3 that
ktdeploy/lab/tiny_dsv3.py writes; both engines). Neither is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

import yaml

from ktdeploy.errors import BadInput

_DATA = Path(__file__).parent / "data" / "catalog.yml"
# A generated model's layout under <model dir>/<name>/ (ktdeploy/lab/tiny_dsv3.py writes it)
GENERATED_CONFIG_DIR, GENERATED_GGUF_DIR = "config", "gguf"


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
    repo: Repo | None  # None: a packaged or generated model (nothing to download)
    engines: tuple[str, ...] = ("ktransformers", "llama.cpp")
    generated: bool = False  # written on the spot by ktdeploy/lab/tiny_dsv3.py

    @property
    def packaged(self) -> bool:
        """Brought by a PyPI package: nothing to download, llama.cpp only."""
        return self.repo is None and not self.generated

    @property
    def downloadable(self) -> bool:
        return self.repo is not None

    @property
    def source(self) -> str:
        """Where the model comes from: `gguf_repo` (downloaded), `package` or `generated`."""
        return "generated" if self.generated else "package" if self.packaged else "gguf_repo"

    @property
    def dir(self) -> str:
        """The variant's directory: under the GGUF repo, or (generated) under the model directory."""
        return self.name if self.generated else f"DeepSeek-R1-{self.name}"

    @property
    def include(self) -> tuple[str, ...]:
        """Download patterns (fnmatch on the repo path; a bare `dir/` would match nothing on ModelScope)."""
        return (f"{self.dir}/*",)

    @property
    def files(self) -> tuple[str, ...]:
        if self.packaged:
            return ()
        if self.generated:  # relative to the model directory
            return (f"{self.name}/{GENERATED_GGUF_DIR}/{self.name}.gguf",)
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
        if self.generated:
            return str(PurePosixPath(model_dir) / self.dir / GENERATED_GGUF_DIR)
        return str(PurePosixPath(model_dir) / self.repo.local_dir / self.dir)

    def gguf_file(self, model_dir: str) -> str:
        """The file llama.cpp is given: the first shard (it finds the others) or the generated model's."""
        return str(PurePosixPath(self.gguf_dir(model_dir)) / PurePosixPath(self.files[0]).name)

    def config_dir(self, model_dir: str) -> str:
        """The directory with config.json and the tokenizer (KTransformers' --model_path)."""
        if self.generated:
            return str(PurePosixPath(model_dir) / self.dir / GENERATED_CONFIG_DIR)
        if self.packaged:
            raise BadInput(f"{self.name} comes from a PyPI package and has no config directory",
                           hint="only the KTransformers engine needs one")
        return config_dir(model_dir)


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


def generated_names() -> list[str]:
    return list(_data().get("generated_models") or {})


def all_names() -> list[str]:
    """Every name `variant()` takes."""
    return names() + packaged_names() + generated_names()


def default_variant() -> str:
    return _data()["defaults"]["variant"]


def kt_backports() -> list[dict]:
    """[{patch, kernels_of}]: series patches that give a version a later release's CPU expert kernels."""
    return list(_data().get("kt_backports") or [])


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
        return Variant(name=name, shards=1, legacy_ktransformers=False, min_kt_version="", repo=None,
                       engines=("llama.cpp",), **packaged)
    generated = (data.get("generated_models") or {}).get(name)
    if generated is not None:
        fields = {**generated, "engines": tuple(generated["engines"])}
        return Variant(name=name, shards=1, legacy_ktransformers=True, repo=None, generated=True, **fields)
    raise BadInput(f"unknown model variant {name!r}", hint=f"use one of: {', '.join(all_names())}")


def config_repo() -> Repo:
    """The DeepSeek-R1 repo without weights: config, tokenizer and modelling code (--model_path)."""
    return _repo(_data()["config_repo"])


def config_dir(model_dir: str) -> str:
    return str(PurePosixPath(model_dir) / config_repo().local_dir)
