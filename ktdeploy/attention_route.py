"""Which `flash_attn` KTransformers 0.2.x gets: the one home of that decision.

KTransformers v0.2.x calls `flash_attn.flash_attn_func` in prefill (v0.2.0-v0.2.3 also import it at
start). Routes, in the order `auto` tries them:

- `present`: a real flash-attn is already installed in the env; left alone.
- `wheel`: the tutorial's route, a prebuilt wheel from flash-attn's release page that matches torch,
  CUDA, Python and the C++ ABI exactly (or the wheel named by `torch_flash_attn_wheel`).
- `sdpa`: no such wheel exists (e.g. torch 2.11 / CUDA 13): ktdeploy's `flash_attn_func` on torch's
  scaled_dot_product_attention (roles/torch/files/flash_attn_sdpa).
- `source`: only when asked for (`torch_flash_attn: source`): pip builds flash-attn, for hours.

The plan (`build.flash_attn`) and the torch role (stage record `torch`) both call `choose`.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("auto", "wheel", "sdpa", "source", "off")
SHIM_DIST = "ktdeploy-flash-attn-sdpa"
SHIM_VERSION = "1.0.1"  # roles/torch/files/flash_attn_sdpa/pyproject.toml

# flash-attn's own release (github.com/Dao-AILab/flash-attention, tag v2.8.3) publishes Linux x86_64
# wheels for CUDA 12 and these torch and CPython versions, each with the C++11 ABI on and off.
RELEASE = "2.8.3"
RELEASE_TORCH = ("2.4", "2.5", "2.6", "2.7", "2.8")
RELEASE_PYTHON = ("3.9", "3.10", "3.11", "3.12", "3.13")
RELEASE_CUDA_MAJOR = 12
RELEASE_URL = "https://github.com/Dao-AILab/flash-attention/releases/download/v{version}/{file}"


class RouteError(ValueError):
    """The asked-for route cannot work on this env; the message names the fix."""


@dataclass(frozen=True)
class Route:
    route: str  # present | wheel | sdpa | source | none | undecided
    reason: str
    wheel: str = ""

    def to_dict(self) -> dict:
        return {"route": self.route, "wheel": self.wheel, "reason": self.reason}


def _minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = str(version).split("+")[0].split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else None


def release_wheel(torch_version: str, torch_cuda: str, python: str, cxx11abi: bool) -> str | None:
    """File name of the matching wheel on flash-attn's release page, or None when there is none."""
    torch_minor, py = _minor(torch_version), _minor(python)
    cuda_major = str(torch_cuda or "").split(".")[0]
    if torch_minor not in RELEASE_TORCH or py not in RELEASE_PYTHON or cuda_major != str(RELEASE_CUDA_MAJOR):
        return None
    tag = "cp" + py.replace(".", "")
    abi = "TRUE" if cxx11abi else "FALSE"
    return f"flash_attn-{RELEASE}+cu{RELEASE_CUDA_MAJOR}torch{torch_minor}cxx11abi{abi}-{tag}-{tag}-linux_x86_64.whl"


def release_url(wheel_file: str) -> str:
    return RELEASE_URL.format(version=RELEASE, file=wheel_file.replace("+", "%2B"))


def normalize_mode(mode) -> str:
    """`torch_flash_attn` as written in an inventory: a route name, or the older true/false."""
    if isinstance(mode, bool):
        return "auto" if mode else "off"
    text = str(mode).strip().lower()
    text = {"true": "auto", "yes": "auto", "false": "off", "no": "off"}.get(text, text)
    if text not in MODES:
        raise RouteError(f"torch_flash_attn must be one of {', '.join(MODES)}, not {mode!r}")
    return text


def choose(mode="auto", env: dict | None = None, wheel: str = "") -> Route:
    """The route for an env described by `env` (what the torch role's probe prints; None: no torch yet).

    env keys: torch (version), cuda (torch.version.cuda), python ("3.12"), cxx11abi (bool),
    flash_attn (version of an installed flash-attn distribution, or "").
    """
    mode = normalize_mode(mode)
    if mode == "off":
        return Route("none", "torch_flash_attn is off: KTransformers v0.2.0-v0.2.3 fail at start without flash_attn")
    if mode == "sdpa":
        return Route("sdpa", "asked for (torch_flash_attn: sdpa)")
    if mode == "source":
        return Route("source", "asked for (torch_flash_attn: source): pip builds flash-attn, which takes hours")
    if env and env.get("flash_attn"):
        return Route("present", f"flash-attn {env['flash_attn']} is already installed in the env")
    if wheel:
        return Route("wheel", "the wheel named by torch_flash_attn_wheel", wheel)
    if not env or not env.get("torch"):
        return Route("undecided", "decided by the torch role once torch is in the env (no torch there yet)")
    found = release_wheel(env["torch"], env.get("cuda") or "", env.get("python") or "", bool(env.get("cxx11abi")))
    if found:
        return Route("wheel", f"flash-attn's release has a wheel for torch {_minor(env['torch'])}, CUDA "
                     f"{env.get('cuda')}, Python {env.get('python')}", release_url(found))
    why = (f"no prebuilt flash-attn for torch {env['torch']}, CUDA {env.get('cuda') or 'none'}, Python "
           f"{env.get('python')} (release {RELEASE} has CUDA {RELEASE_CUDA_MAJOR} wheels for torch "
           f"{RELEASE_TORCH[0]}-{RELEASE_TORCH[-1]})")
    if mode == "wheel":
        raise RouteError(f"torch_flash_attn is wheel, but there is {why}; name a wheel in torch_flash_attn_wheel, "
                         "or use auto (ktdeploy's SDPA flash_attn_func)")
    return Route("sdpa", f"{why}: ktdeploy's flash_attn_func on torch's scaled_dot_product_attention")


# Run by the torch role (and the facts script) with the env's interpreter; prints the env for choose().
PROBE = """\
import json, sys
from importlib import metadata
out = {"python": "{}.{}".format(*sys.version_info[:2]), "torch": "", "cuda": "", "cxx11abi": False, "flash_attn": "", "shim": ""}
try:
    import torch
    out.update(torch=torch.__version__, cuda=torch.version.cuda or "", cxx11abi=bool(torch._C._GLIBCXX_USE_CXX11_ABI))
except Exception:
    pass
for key, dist in (("flash_attn", "flash_attn"), ("shim", "SHIM_DIST")):
    try:
        out[key] = metadata.version(dist)
    except Exception:
        pass
print(json.dumps(out))
""".replace("SHIM_DIST", SHIM_DIST)
