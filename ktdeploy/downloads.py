"""What the model_download role fetches for a catalog variant (its items), in one place, and how
`ktdeploy download` asks for it and reads the downloads' status back.

Roles get the items through the `ktdeploy_download_items` filter (so this module imports nothing
the filter plugins cannot have: the catalog and the rest are imported where used).
"""

from __future__ import annotations

import json
import shlex
from pathlib import PurePosixPath

SOURCES = ("modelscope", "huggingface", "mirror")
CONFIG_ITEM = "DeepSeek-R1-config"
ENDPOINT_VARS = {"modelscope": "model_download_modelscope_endpoint", "huggingface": "model_download_hf_endpoint",
                 "mirror": "model_download_mirror_url"}
FINAL_PHASES = ("complete", "failed", "refused", "interrupted", "unknown")


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


def check_endpoint(source: str, endpoint: str | None) -> None:
    """BadInput (exit 2) unless endpoint is an http(s) URL with a host (a mirror may also be an
    absolute path on the host), checked here before anything runs on a host."""
    from urllib.parse import urlsplit

    from ktdeploy.errors import BadInput

    if not endpoint:
        return
    if source == "mirror" and endpoint.startswith("/"):
        return
    what = "an http(s) URL or an absolute path" if source == "mirror" else "an http(s) URL"
    example = "https://mirror.example/models or /data/mirror" if source == "mirror" else "https://hf-mirror.com"
    try:
        url = urlsplit(endpoint)
        host = url.hostname
        url.port  # noqa: B018  (raises ValueError for a port that is no port)
    except ValueError as exc:
        raise BadInput(f"--endpoint {endpoint!r} is not {what}: {exc}", hint=f"pass e.g. {example}") from None
    if url.scheme not in ("http", "https") or any(c.isspace() for c in endpoint):
        raise BadInput(f"--endpoint {endpoint!r} is not {what}", hint=f"pass e.g. {example}")
    if not host:
        raise BadInput(f"--endpoint {endpoint!r} names no host", hint=f"pass e.g. {example}")


def download_extravars(variant_name: str | None, source: str, endpoint: str | None, verify: bool) -> dict:
    """The role computes its items from the plan's variant; --model sets that variant for both.

    The plan's hardware problems (no GPU, little RAM) do not stop a download: the role checks the
    disk against the exact listing itself (plan_force). BadInput for an unknown variant or endpoint.
    """
    check_endpoint(source, endpoint)
    out = {"model_download_source": source, "model_download_rehash": verify, "plan_force": True}
    if variant_name:
        item_names(variant_name)  # an unknown or packaged variant is bad input before anything runs
        out["plan_model_variant"] = variant_name
    if endpoint:
        out[ENDPOINT_VARS[source]] = endpoint
    return out


def target_item_names(target, variant_name: str | None) -> list[str]:
    return item_names(variant_name or target.hostvars.get("plan_model_variant") or None)


def status_command(target, names: list[str]) -> str:
    """The host-side command that prints the downloads' status as JSON (docs/architecture.md)."""
    from ktdeploy import rolevars  # not at the top: the filter plugins import this module

    v = rolevars.host_vars(target.name, target.hostvars)  # as the role resolves its defaults for this host
    lib, jobs = str(v["model_download_lib_dir"]), str(v["model_download_jobs_dir"])
    return shlex.join(["python3", f"{lib}/download_state.py", "--json", jobs, *names])


def fetch_status(target, variant_name: str | None) -> list[dict]:
    from ktdeploy import remote

    cmd = status_command(target, target_item_names(target, variant_name))
    rc, out, err = remote.run_script(target, cmd, sudo=True, timeout=120)
    if rc != 0:
        raise RuntimeError(f"download status failed (rc {rc}): {err.strip() or out.strip()}")
    return json.loads(out)


def poll(targets: list, variant_name: str | None) -> dict[str, list[dict] | str]:
    """{host: its downloads' status documents, or the error that kept it from answering}."""
    from ktdeploy import remote

    results = remote.on_hosts(targets, lambda t: fetch_status(t, variant_name))
    return {r.target.name: (r.value if r.ok else r.error) for r in results}


def finished(snapshot: dict) -> bool:
    return all(isinstance(v, str) or all(d["phase"] in FINAL_PHASES and not d["running"] for d in v)
               for v in snapshot.values())


def snapshot_exit_code(snapshot: dict, waited: bool) -> int:
    from ktdeploy import exitcodes

    if any(isinstance(v, str) for v in snapshot.values()):
        return exitcodes.UNREACHABLE
    ok = ("complete",) if waited else ("complete", "planned", "downloading", "verifying")
    if all(d["phase"] in ok for v in snapshot.values() for d in v):
        return exitcodes.OK
    return exitcodes.FAILED


def report(snapshot: dict, play_errors: dict[str, str] | None = None) -> list[dict]:
    """`ktdeploy download --json`: per host its downloads, and an `error` when the play failed
    there (its failed tasks) or the status could not be read."""
    out = []
    for host, docs in snapshot.items():
        entry: dict = {"host": host}
        if isinstance(docs, list):
            entry["downloads"] = docs
        error = (play_errors or {}).get(host) or (docs if isinstance(docs, str) else None)
        if error:
            entry["error"] = error
        out.append(entry)
    return out


def describe(host: str, d: dict) -> str:
    from ktdeploy.hostside.download_state import fmt_bytes

    parts = [f"{host} {d['name']}: {d['phase']}"]
    if d.get("total_bytes"):
        parts.append(f"{fmt_bytes(d['done_bytes'])} of {fmt_bytes(d['total_bytes'])} ({d['percent']:.1f}%)")
    if d.get("error"):
        parts.append(d["error"])
    return ", ".join(parts)
