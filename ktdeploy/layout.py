"""Where ktdeploy puts things on a host and what it calls them: the one home of each such decision.

The roles read these through the filters of `playbooks/filter_plugins/ktdeploy_layout.py`
(`'state_dir' | ktdeploy_layout`, `base_data_dir | ktdeploy_model_dir`); `ktdeploy status` sends
the host-side probe what it needs (`probe_defaults`), since the probe runs on the host without
ktdeploy. `tests/unit/test_static.py` fails when one of these values is spelled anywhere else in
the roles, templates, playbooks or modules.

Stdlib only: the filter plugins load this under plain `ansible-playbook`.
"""

from __future__ import annotations

from pathlib import PurePosixPath

# Engines, as the plan, `preflight --engine`, `plan_engine` and `serve_engine` spell them.
KTRANSFORMERS = "ktransformers"
LLAMA_CPP = "llama.cpp"
ENGINES = (KTRANSFORMERS, LLAMA_CPP)

# Directories on the host (role defaults: base_data_dir, base_state_dir, serve_config_dir,
# serve_log_dir, serve_libexec_dir, model_download_lib_dir).
DATA_DIR = "/srv/ktdeploy"  # data root, on the big disk
MODELS_SUBDIR = "models"  # base_model_dir = DATA_DIR/models unless set
STATE_DIR = "/var/lib/ktdeploy"  # stage records, download jobs, build stamps
CONFIG_DIR = "/etc/ktdeploy"  # the services' environment files
LOG_DIR = "/var/log/ktdeploy"  # service logs under supervisord (systemd: the journal)
LIBEXEC_DIR = "/usr/local/libexec/ktdeploy"  # ktdeploy-svc
LIB_DIR = "/usr/local/lib/ktdeploy"  # download_state.py, download_job.py
# supervisord: Debian's paths, also for supervisord from pip
SUPERVISOR_CONF = "/etc/supervisor/supervisord.conf"
SUPERVISOR_PROGRAM_DIR = "/etc/supervisor/conf.d"
SUPERVISOR_LOG = "/var/log/supervisor/supervisord.log"
SYSTEMD_UNIT_DIR = "/etc/systemd/system"

# Services: the same names for systemd units and supervisord programs.
API_SERVICE = "ktdeploy-api"
WEBUI_SERVICE = "ktdeploy-webui"
API_PORT = 10002  # the tutorial's
WEBUI_PORT = 8080
API_HEALTH = "/v1/models"
WEBUI_HEALTH = "/health"


def model_dir(data_dir: str) -> str:
    """base_model_dir's default for a data root."""
    return str(PurePosixPath(str(data_dir)) / MODELS_SUBDIR)


DEFAULT_MODEL_DIR = model_dir(DATA_DIR)

# What the roles may ask for by name (`'NAME' | ktdeploy_layout`).
VALUES = {
    "data_dir": DATA_DIR,
    "model_dir": DEFAULT_MODEL_DIR,
    "state_dir": STATE_DIR,
    "config_dir": CONFIG_DIR,
    "log_dir": LOG_DIR,
    "libexec_dir": LIBEXEC_DIR,
    "lib_dir": LIB_DIR,
    "supervisor_conf": SUPERVISOR_CONF,
    "supervisor_program_dir": SUPERVISOR_PROGRAM_DIR,
    "supervisor_log": SUPERVISOR_LOG,
    "systemd_unit_dir": SYSTEMD_UNIT_DIR,
    "api_service": API_SERVICE,
    "webui_service": WEBUI_SERVICE,
    "api_port": API_PORT,
    "webui_port": WEBUI_PORT,
    "api_health": API_HEALTH,
    "webui_health": WEBUI_HEALTH,
    "engines": list(ENGINES),
}


def value(name: str):
    try:
        return VALUES[str(name)]
    except KeyError:
        raise KeyError(f"ktdeploy.layout has no {name!r}; names: {', '.join(VALUES)}") from None


def service_log(log_dir: str, unit: str) -> str:
    """A service's log file under supervisord."""
    return f"{log_dir}/{unit}.log"


def default_services(api_port: int = API_PORT, webui_port: int = WEBUI_PORT) -> dict:
    """The services a host has when no stage record names them (docs/architecture.md)."""
    return {
        "api": {"unit": API_SERVICE, "port": int(api_port), "health": API_HEALTH},
        "webui": {"unit": WEBUI_SERVICE, "port": int(webui_port), "health": WEBUI_HEALTH},
    }


def probe_defaults() -> dict:
    """What the status probe needs to know about the layout (it cannot import ktdeploy on the host)."""
    return {
        "state_dir": STATE_DIR,
        "download_lib_dir": LIB_DIR,
        "config_dir": CONFIG_DIR,
        "log_dir": LOG_DIR,
        "supervisor_conf": SUPERVISOR_CONF,
        "supervisor_log": SUPERVISOR_LOG,
        "default_services": default_services(),
    }
