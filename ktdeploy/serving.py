"""How each inference server is started: command lines per engine and version, service names.

The one home of these rules. The Ansible role reaches them through
`playbooks/filter_plugins/ktdeploy_serve.py`, `ktdeploy render` through `ktdeploy.render`; both
render the same templates in `templates/`.
"""

from __future__ import annotations

import hashlib
import re
import shlex

from ktdeploy import layout
from ktdeploy.errors import BadInput

# Service names, the same under systemd (`<name>.service`) and supervisord (`[program:<name>]`).
API_SERVICE = layout.API_SERVICE
WEBUI_SERVICE = layout.WEBUI_SERVICE

ENGINES = layout.ENGINES
LLAMACPP_FLAVOURS = ("python", "cpp")
SERVICE_MANAGERS = ("auto", "systemd", "supervisord")
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _version_key(version: str) -> tuple[int, ...]:
    """`0.2.3post2` → (0, 2, 3, 2); `v0.2.1.post1` → (0, 2, 1, 1). Enough to order KTransformers tags."""
    nums = re.findall(r"\d+", str(version))
    if not nums:
        raise BadInput(
            f"cannot read KTransformers version {version!r}",
            hint="set serve_ktransformers_version to a release such as 0.2.3post2 or 0.2.1.post1",
        )
    return tuple(int(n) for n in nums)


def ktransformers_argv(version: str, s: dict) -> list[str]:
    """Arguments after the `ktransformers` console script for a legacy (0.2.x/0.3.x) server.

    `s` keys: model_path, gguf_path, model_name, host, port, cpu_infer, optimize_config_path (may be
    empty: the server picks the architecture default), max_new_tokens, force_think (bool),
    api_key_env (name of an environment variable holding the key, or empty).
    """
    v = _version_key(version)
    if v >= (0, 4) or v < (0, 2):
        raise BadInput(
            f"KTransformers {version} is not a legacy 0.2/0.3 server",
            hint="serve_engine ktransformers drives the legacy server (0.2.1.post1 .. 0.3.2); pin one of those",
        )
    argv = [
        "--model_path", str(s["model_path"]),
        "--gguf_path", str(s["gguf_path"]),
        "--model_name", str(s["model_name"]),
        "--host", str(s["host"]),
        "--port", str(s["port"]),
        "--cpu_infer", str(s["cpu_infer"]),
        "--max_new_tokens", str(s["max_new_tokens"]),
    ]
    if s.get("optimize_config_path"):
        argv += ["--optimize_config_path", str(s["optimize_config_path"])]
    force = bool(s.get("force_think"))
    if v < (0, 2, 2):
        # 0.2.0/0.2.1 parse it with type=bool: any non-empty string is True, so leave it out for False.
        if force:
            argv += ["--force_think", "true"]
    else:
        argv.append("--force_think" if force else "--no-force_think")
    if s.get("api_key_env"):
        if v < (0, 2, 2):
            raise BadInput(
                f"KTransformers {version} has no --api_key",
                hint="keep serve_api_host at 127.0.0.1 and put Open WebUI (with its login) in front, "
                "or pin KTransformers 0.2.2 or later",
            )
        argv += ["--api_key", "${%s}" % s["api_key_env"]]
    return argv


# Option names of the two llama.cpp servers for the same settings (None: not supported).
_LLAMACPP_OPTIONS = {
    "cpp": {"model": "--model", "alias": "--alias", "host": "--host", "port": "--port",
            "n_gpu_layers": "--n-gpu-layers", "ctx_size": "--ctx-size", "threads": "--threads", "chat_format": None},
    "python": {"model": "--model", "alias": "--model_alias", "host": "--host", "port": "--port",
               "n_gpu_layers": "--n_gpu_layers", "ctx_size": "--n_ctx", "threads": "--n_threads",
               "chat_format": "--chat_format"},
}


def llamacpp_argv(flavour: str, s: dict) -> list[str]:
    """Arguments for llama.cpp's server: the C++ `llama-server` or llama-cpp-python's `llama_cpp.server`.

    `s` keys: model, alias, host, port, n_gpu_layers, ctx_size, threads (0 = the server's choice),
    chat_format (python flavour; empty = the GGUF's own template). The API key, when set, comes from
    the environment (`LLAMA_API_KEY` for llama-server, `API_KEY` for llama-cpp-python), never argv.
    """
    options = _LLAMACPP_OPTIONS.get(flavour)
    if options is None:
        raise BadInput(
            f"unknown llama.cpp flavour {flavour!r}",
            hint=f"set serve_llamacpp_flavour to one of: {', '.join(LLAMACPP_FLAVOURS)}",
        )
    argv = ["-m", "llama_cpp.server"] if flavour == "python" else []
    for key, option in options.items():
        value = s.get(key)
        skip = option is None or value in (None, "") or (key == "threads" and int(value) <= 0)
        if not skip:
            argv += [option, str(value)]
    return argv


def llamacpp_api_key_env(flavour: str) -> str:
    return "LLAMA_API_KEY" if flavour == "cpp" else "API_KEY"


def llamacpp_build_key(version: str, cmake_args: str) -> str:
    """Name of one llama-cpp-python build: its version and the CMake flags it was compiled with.

    The serve role keeps the wheel in a directory of this name and puts the key in the API's
    environment (`KTDEPLOY_ENGINE_BUILD`), so a new build restarts the API and a release names it.
    """
    flags = hashlib.sha256(" ".join(str(cmake_args or "").split()).encode()).hexdigest()[:12]
    return f"llama-cpp-python-{str(version).strip()}-{flags}"


def systemd_exec(argv: list[str]) -> str:
    """A command line for ExecStart= (systemd.service(5) quoting; `${VAR}` is left for systemd)."""
    out = []
    for arg in argv:
        arg = str(arg).replace("%", "%%")
        if re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", arg):
            out.append(arg)
            continue
        arg = arg.replace("$", "$$")
        if arg == "" or re.search(r'[\s"\'\\;]', arg):
            arg = '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
        out.append(arg)
    return " ".join(out)


def supervisor_command(argv: list[str], helper: str = "", env_files: list[str] | tuple = ()) -> str:
    """A command line for supervisord's `command=` (shlex-split; `%` is its interpolation sign).

    With `helper` (the host's ktdeploy-svc), the command loads the same environment files as the
    systemd unit first: `helper exec --env-file F... -- argv`.
    """
    full = list(argv)
    if helper:
        pre = [helper, "exec"]
        for f in env_files:
            pre += ["--env-file", str(f)]
        full = pre + ["--"] + full
    return " ".join(shlex.quote(str(a)) for a in full).replace("%", "%%")


def env_file_value(value: object) -> str:
    """One value for an EnvironmentFile= line, quoted so JSON, `#` and spaces survive.

    Single quotes (taken literally by systemd and by POSIX shlex alike) unless the value holds one;
    then double quotes escaping only backslash and double quote, which both read the same way.
    """
    text = str(value)
    if "\n" in text:
        raise BadInput("an environment value contains a newline", hint="put multi-line settings in a file")
    if "'" not in text:
        return "'" + text + "'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def api_argv(spec: dict) -> list[str]:
    """The full command line of the API service, from the role's `serve_api_spec`.

    spec: engine, host, port, model_name, api_key (secret: only tested for emptiness), and each
    engine's own block under its name (`ktransformers`, `llama.cpp`; see the role's vars/main.yml).
    """
    engine = spec.get("engine")
    keyed = bool(spec.get("api_key"))
    if engine == layout.KTRANSFORMERS:
        kt = spec[engine]
        prefix = ["/usr/bin/numactl", "--interleave=all"] if kt.get("numa_interleave") else []
        settings = dict(kt, host=spec["host"], port=spec["port"], model_name=spec["model_name"])
        settings["api_key_env"] = "KTDEPLOY_API_KEY" if keyed else ""
        return prefix + [kt["bin"]] + ktransformers_argv(str(kt["version"]), settings)
    if engine == layout.LLAMA_CPP:
        lc = spec[engine]
        flavour = lc.get("flavour")
        settings = dict(lc, host=spec["host"], port=spec["port"], alias=spec["model_name"])
        exe = [lc["python"]] if flavour == "python" else [lc["bin"]]
        return exe + llamacpp_argv(flavour, settings)
    raise BadInput(f"unknown serve_engine {engine!r}", hint=engine_hint(engine))


def engine_hint(engine) -> str:
    squashed = str(engine).replace(".", "").replace("_", "").replace("-", "").lower()
    if squashed == layout.LLAMA_CPP.replace(".", ""):
        return f"the engine is spelled {layout.LLAMA_CPP!r} (in plan_engine and serve_engine alike)"
    return f"use one of: {', '.join(ENGINES)}"


def settings_problems(s: dict) -> list[str]:
    """What the serve role refuses before it changes anything, and `ktdeploy render` before it
    previews: one message per problem, naming the setting and the fix.

    s: engine, service_manager, api_host, api_key_set (bool; never the key), api_port, webui_port,
    webui_enabled, llamacpp_model (the GGUF the llama.cpp engine would serve).
    """
    problems = []
    engine = s.get("engine")
    if engine not in ENGINES:
        problems.append(f"serve_engine {engine!r} is not an engine: {engine_hint(engine)}.")
    if s.get("service_manager") not in SERVICE_MANAGERS:
        problems.append(f"serve_service_manager {s.get('service_manager')!r} is not one of {', '.join(SERVICE_MANAGERS)}.")
    ports = {}
    for name in ("api_port", "webui_port"):
        try:
            ports[name] = int(str(s.get(name)))
        except ValueError:
            ports[name] = None
        if ports[name] is None or not 0 < ports[name] < 65536:
            problems.append(f"serve_{name} {s.get(name)!r} is not a port: give a number from 1 to 65535.")
    if s.get("webui_enabled", True) and ports["api_port"] and ports["api_port"] == ports["webui_port"]:
        problems.append(f"serve_api_port and serve_webui_port are both {ports['api_port']}: the API and Open WebUI "
                        "need two different ports.")
    if str(s.get("api_host")) not in LOOPBACK and not s.get("api_key_set"):
        problems.append(f"serve_api_host {s.get('api_host')} opens the API to the network, and serve_api_key is empty. "
                        "Set serve_api_key (kept in a root-owned 0640 file), or keep serve_api_host at 127.0.0.1 and share the "
                        "model through Open WebUI (serve_webui_host: 0.0.0.0), which has its own login.")
    if engine == layout.LLAMA_CPP and not s.get("llamacpp_model"):
        problems.append("serve_llamacpp_model is empty: the plan's model comes from a PyPI package and has no "
                        "GGUF path of its own; set serve_llamacpp_model to where the package writes it "
                        "(the cpu-demo profile does).")
    return problems


def api_key_env_names(engine: str, flavour: str = "") -> list[str]:
    """Environment variables that carry the API key to the server and to the readiness probe."""
    names = ["KTDEPLOY_API_KEY"]
    if engine == layout.LLAMA_CPP:
        names.append(llamacpp_api_key_env(flavour))
    return names


def env_file_parse(text: str) -> dict:
    """Read back an environment file written with env_file_value (as systemd and ktdeploy-svc do)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        words = shlex.split(line)
        if words and "=" in words[0]:
            key, _, value = words[0].partition("=")
            out[key] = value
    return out
