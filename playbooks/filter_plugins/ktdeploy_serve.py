"""Serving filters for the roles: the command lines and quoting rules live in ktdeploy.serving."""

from ktdeploy import serving


class FilterModule:
    def filters(self):
        return filters()


def filters() -> dict:
    return {
        "ktdeploy_api_argv": serving.api_argv,
        "ktdeploy_systemd_exec": serving.systemd_exec,
        "ktdeploy_supervisor_command": serving.supervisor_command,
        "ktdeploy_env_value": serving.env_file_value,
        "ktdeploy_env_parse": serving.env_file_parse,
        "ktdeploy_llamacpp_build_key": serving.llamacpp_build_key,
    }
