"""The controller's apt sources, reduced to what a lab host can use through the apt proxy.

Pure parsing: only plain-http entries pass (apt-cacher-ng proxies http; https would need a route
out). The result is what the golden rootfs and `mmdebstrap` use, so lab hosts see the same
mirror (and snapshot date) as the controller, without naming it anywhere in ktdeploy.
"""

from __future__ import annotations

from pathlib import Path

APT_ETC = Path("/etc/apt")


def _stanzas(text: str) -> list[list[str]]:
    out: list[list[str]] = []
    cur: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            if cur:
                out.append(cur)
            cur = []
        elif not line.lstrip().startswith("#"):
            cur.append(line)
    if cur:
        out.append(cur)
    return out


def _field(stanza: list[str], name: str) -> str:
    for line in stanza:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return ""


def deb822_http(text: str) -> list[str]:
    """deb822 stanzas (as text) of enabled `deb` entries whose URIs are all plain http."""
    out = []
    for st in _stanzas(text):
        uris = _field(st, "URIs").split()
        if "deb" not in _field(st, "Types").split() or _field(st, "Enabled").lower() == "no":
            continue
        if uris and all(u.startswith("http://") for u in uris):
            out.append("\n".join(st))
    return out


def one_line_http(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "deb":
            continue
        rest = words[1:]
        if rest and rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if rest and rest[0].startswith("http://"):
            out.append(line.strip())
    return out


def render(deb822: list[str], one_line: list[str]) -> str:
    """One deb822 file: one-line entries are converted, so the result is a single .sources file."""
    blocks = list(deb822)
    for line in one_line:
        words = line.split()[1:]
        opts: list[str] = []
        if words[0].startswith("["):
            while True:
                w = words.pop(0)
                opts.append(w.strip("[]"))
                if w.endswith("]"):
                    break
        uri, suite, *components = words
        block = ["Types: deb", f"URIs: {uri}", f"Suites: {suite}", f"Components: {' '.join(components)}"]
        for opt in filter(None, opts):
            key, _, value = opt.partition("=")
            key = {"signed-by": "Signed-By", "arch": "Architectures"}.get(key, key)
            block.append(f"{key}: {value}")
        blocks.append("\n".join(block))
    return "\n\n".join(blocks) + "\n"


def controller_sources(etc: Path = APT_ETC) -> str:
    """The controller's usable apt sources as one deb822 text; empty when there are none."""
    deb822: list[str] = []
    one_line: list[str] = []
    files = [etc / "sources.list", *sorted((etc / "sources.list.d").glob("*"))]
    for f in files:
        if not f.is_file():
            continue
        if f.suffix == ".sources":
            deb822 += deb822_http(f.read_text())
        elif f.suffix == ".list":
            one_line += one_line_http(f.read_text())
    if not deb822 and not one_line:
        return ""
    return render(deb822, one_line)


def first_mirror(sources: str, suite: str) -> str | None:
    """A mirror URI serving `suite` (for debootstrap, which takes exactly one)."""
    for st in _stanzas(sources):
        if suite in _field(st, "Suites").split():
            uris = _field(st, "URIs").split()
            if uris:
                return uris[0]
    return None


def apt_conf_files(etc: Path = APT_ETC) -> list[Path]:
    """The controller's apt.conf.d snippets (Check-Valid-Until for a dated snapshot, ...)."""
    d = etc / "apt.conf.d"
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []
