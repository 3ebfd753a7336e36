"""GGUF header check (`ktdeploy preflight --deep`): can the planned engine load these files?

Locally the headers are read with the `gguf` package; on a remote host the stdlib-only reader
ktdeploy/gguf_header.py is streamed to the host's python3 (one SSH round trip, headers only, nothing
installed there). Both give the same header dicts, which `check` judges:
  * every shard of the variant present, split.no/split.count consistent, no other model's *.gguf;
  * tensor types the engine/version can load: KTransformers v0.2/v0.3 dequantises non-expert tensors
    in Python (F32, F16, BF16, Q4_0, Q5_0, Q8_0, Q2_K..Q6_K, IQ4_XS); the CPU experts (`*_exps`)
    also take IQ1_S and IQ2_XXS from v0.2.3 on;
  * split `attn_k_b`/`attn_v_b` tensors (newer uploads such as R1-0528) load only from v0.3.2 on.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from packaging.version import Version

from ktdeploy import catalog, gguf_header
from ktdeploy.plan import Finding, kernel_version, parse_kt_version

LEGACY_TYPES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q5_0", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"})
LEGACY_EXPERT_TYPES = frozenset({"IQ1_S", "IQ2_XXS"})
EXPERT_TYPES_SINCE = Version("0.2.3")
SPLIT_KV_B_SINCE = Version("0.3.2")


def read_dir_local(directory: str | Path) -> dict:
    """Headers of the *.gguf files in a local directory, read with the gguf package."""
    from gguf import GGUFReader

    directory = Path(directory)
    if not directory.is_dir():
        return {"exists": False, "files": [], "errors": {}}
    files, errors = [], {}
    for path in sorted(directory.glob("*.gguf")):
        try:
            reader = GGUFReader(path, "r")
        except Exception as exc:  # the gguf package raises ValueError, OSError, struct errors, ...
            errors[path.name] = f"{type(exc).__name__}: {exc}"
            continue
        files.append(
            {
                "path": path.name,
                "version": _field(reader, "GGUF.version"),
                "architecture": _field(reader, "general.architecture"),
                "split_no": _field(reader, "split.no"),
                "split_count": _field(reader, "split.count"),
                "tensors": {t.name: t.tensor_type.name for t in reader.tensors},
            }
        )
    return {"exists": True, "files": files, "errors": errors}


def _field(reader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    value = field.contents()
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def remote_script(directory: str) -> str:
    """Bash that runs the stdlib header reader on the host over directory and prints its JSON."""
    source = Path(gguf_header.__file__).read_text(encoding="utf-8")
    marker = "KTDEPLOY_GGUF_HEADER_EOF"
    return f"exec python3 - {shlex.quote(directory)} <<'{marker}'\n{source}\n{marker}\n"


def check(headers: dict, variant: str, *, engine: str = "ktransformers", kt_version: str | None = None) -> list[Finding]:
    """Problems with the GGUF files of variant, given read_dir-style headers of its directory."""
    var = catalog.variant(variant)
    if not headers.get("exists"):
        return []
    problems = _check_shards(headers, var)
    if engine == "ktransformers":
        version = parse_kt_version(kt_version or catalog.default_kt_version())
        problems += _check_types(headers["files"], version, kt_version or catalog.default_kt_version())
    return problems


def _check_shards(headers: dict, var: catalog.Variant) -> list[Finding]:
    problems = [Finding("gguf_unreadable", f"{name}: {why}") for name, why in headers.get("errors", {}).items()]
    expected = [Path(f).name for f in var.files]
    found = {h["path"]: h for h in headers["files"]}
    present = set(found) | set(headers.get("errors", {}))
    missing = [n for n in expected if n not in present]
    if missing:
        problems.append(Finding("gguf_missing_shard", f"{var.name} shards missing: {', '.join(missing)}"))
    foreign = sorted(present - set(expected))
    if foreign:
        problems.append(
            Finding(
                "gguf_foreign_files",
                f"other GGUF files share the {var.name} directory ({', '.join(foreign)}): the loader reads every "
                "*.gguf there; move them away",
            )
        )
    for index, name in enumerate(expected):
        h = found.get(name)
        if h is None:
            continue
        if h["split_count"] not in (None, var.shards) or (h["split_count"] and h["split_no"] != index):
            problems.append(
                Finding(
                    "gguf_split_mismatch",
                    f"{name} says it is part {h['split_no']} of {h['split_count']}, expected part {index} of "
                    f"{var.shards}: a shard of another upload? download it again",
                )
            )
    return problems


def _check_types(files: list[dict], version: Version, version_text: str) -> list[Finding]:
    iq_experts = kernel_version(version_text) >= EXPERT_TYPES_SINCE  # v0.2.3, or an older one with the backport
    allowed_exps = LEGACY_TYPES | (LEGACY_EXPERT_TYPES if iq_experts else frozenset())
    bad: dict[str, list[str]] = {}
    split_kv_b = []
    for h in files:
        for name, ttype in h["tensors"].items():
            allowed = allowed_exps if "_exps." in name else LEGACY_TYPES
            if ttype not in allowed:
                bad.setdefault(ttype, []).append(name)
            if ".attn_k_b." in name or ".attn_v_b." in name:
                split_kv_b.append(name)
    problems = [
        Finding(
            "gguf_tensor_type",
            f"{len(names)} tensor(s) of type {ttype} (e.g. {names[0]}) cannot be loaded by KTransformers "
            f"{version_text}" + (
                (" outside the routed experts" if iq_experts
                 else f" (routed experts of this type need v{EXPERT_TYPES_SINCE} or later)")
                if ttype in LEGACY_EXPERT_TYPES else ""),
        )
        for ttype, names in sorted(bad.items())
    ]
    if split_kv_b and version < SPLIT_KV_B_SINCE:
        problems.append(
            Finding(
                "gguf_split_kv_b",
                f"split attention tensors ({split_kv_b[0]}, ...) need KTransformers v0.3.2 or later, the plan has "
                f"{version_text}: use a January-2025 upload (attn_kv_b) or a newer version",
            )
        )
    return problems
