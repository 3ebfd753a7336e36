#!/usr/bin/python
"""Keep the serving engine's releases on a host: record the live one, roll back to the one before."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ktdeploy_release
short_description: Record the serving release of a host, or roll back to the release kept before it
description:
  - A release is what the API service runs: the engine's build (a kept wheel and the key of the
    installed build), the files that configure the service (unit or supervisord program, its
    environment file, the serving stage record, ...), copied under I(root)/<id>/.
  - C(state=present) records the live files as a release; the same contents give the same id, so
    a converged host changes nothing. A new release goes first in the history; releases beyond
    I(keep) are dropped with the wheels that only they used.
  - C(state=rollback) restores the release before the current one (or the current one itself when
    a converge stopped after rewriting the live files and before recording them): it reinstalls
    the kept wheel when the installed engine build differs, then writes the files back. Run again,
    it changes nothing.
options:
  root:
    description: Directory of the releases (created mode 0700; copies may hold secrets).
    required: true
    type: path
  state:
    description: C(present) records the live release, C(rollback) restores the earlier one.
    choices: [present, rollback]
    default: present
    type: str
  engine:
    description: Serving engine (C(llama.cpp), C(ktransformers)).
    type: str
    default: ""
  engine_key:
    description: Key of the engine build the service runs (the KTransformers build stamp, the llama-cpp-python wheel key).
    type: str
    default: ""
  wheel:
    description: Kept wheel of that build ("" when there is none, e.g. a build older than kept wheels).
    type: str
    default: ""
  python:
    description: Interpreter of the env the wheel installs into.
    type: str
    default: ""
  marker:
    description: One of I(files) that holds the key of the installed build (the stamp file).
    type: str
    default: ""
  manager:
    description: Service manager that runs the API (C(systemd), C(supervisord)).
    type: str
    default: ""
  api_unit:
    description: Name of the API's unit or program.
    type: str
    default: ""
  files:
    description: Live files that make up the release; a missing one is recorded as absent.
    type: list
    elements: path
    default: []
  keep:
    description: Releases kept (the current one and those before it); at least 2.
    type: int
    default: 2
"""

RETURN = r"""
release:
  description: id of the current release after the run
  type: str
  returned: always
previous:
  description: id of the release kept before it ("" when none)
  type: str
  returned: always
rolled_back_from:
  description: (rollback) the release that was live before
  type: str
  returned: when state is rollback
reinstalled:
  description: (rollback) whether the kept wheel was installed again
  type: bool
  returned: when state is rollback
pruned:
  description: ids of the releases dropped by this run
  type: list
  returned: always
manager:
  description: service manager of the current release
  type: str
  returned: always
api_unit:
  description: API unit or program of the current release
  type: str
  returned: always
"""

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile

FORMAT = 1
ID_RE = re.compile(r"^[0-9a-f]{12}$")


class ReleaseError(Exception):
    """Something stops the run; the message says what and how to go on."""


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def live_entry(path):
    """What a live file is now: its digest, mode and owner, or absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return {"path": path, "absent": True}
    return {"path": path, "sha256": _sha256(path), "mode": st.st_mode & 0o7777, "uid": st.st_uid, "gid": st.st_gid}


def _same(entry, live):
    return bool(entry.get("absent")) == bool(live.get("absent")) and entry.get("sha256") == live.get("sha256")


def _write_atomic(path, data, mode=0o600, uid=None, gid=None):
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ktdeploy-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        if uid is not None and os.getuid() == 0:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class Releases:
    """The releases under one root: state.json (history, newest first) and one folder per release."""

    def __init__(self, root):
        self.root = root

    # -- reading ---------------------------------------------------------------------------------
    def state(self):
        try:
            with open(os.path.join(self.root, "state.json")) as f:
                state = json.load(f)
        except FileNotFoundError:
            return {"format": FORMAT, "history": [], "rolled_back": False}
        except ValueError as exc:
            raise ReleaseError("%s/state.json is not JSON (%s); move it away to start the history afresh" % (self.root, exc))
        state.setdefault("history", [])
        state.setdefault("rolled_back", False)
        return state

    def record(self, rid):
        try:
            with open(os.path.join(self.root, rid, "release.json")) as f:
                return json.load(f)
        except (OSError, ValueError) as exc:
            raise ReleaseError("release %s cannot be read under %s (%s)" % (rid, self.root, exc))

    def salt(self, create):
        path = os.path.join(self.root, "salt")
        try:
            with open(path) as f:
                return f.read().strip()
        except FileNotFoundError:
            if not create:
                return ""
        value = secrets.token_hex(16)
        self._ensure_root()
        _write_atomic(path, (value + "\n").encode(), 0o600)
        return value

    # -- what is live ----------------------------------------------------------------------------
    def describe(self, params, salt):
        """The release the live files make, with its id (salted: the files may hold secrets)."""
        files = [live_entry(p) for p in params["files"]]
        rel = {
            "format": FORMAT,
            "engine": params["engine"],
            "engine_key": params["engine_key"],
            "wheel": params["wheel"],
            "python": params["python"],
            "marker": params["marker"],
            "manager": params["manager"],
            "api_unit": params["api_unit"],
            "files": files,
        }
        doc = json.dumps(rel, sort_keys=True)
        rel["id"] = hashlib.sha256((salt + "\0" + doc).encode()).hexdigest()[:12]
        return rel

    # -- writing ---------------------------------------------------------------------------------
    def _ensure_root(self):
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _save_state(self, state):
        self._ensure_root()
        body = json.dumps({"format": FORMAT, "history": state["history"], "rolled_back": bool(state["rolled_back"])},
                          indent=2, sort_keys=True) + "\n"
        _write_atomic(os.path.join(self.root, "state.json"), body.encode(), 0o600)

    def _store(self, rel):
        """Copy the live files into root/<id>/ (built aside, then renamed into place)."""
        self._ensure_root()
        final = os.path.join(self.root, rel["id"])
        tmp = tempfile.mkdtemp(dir=self.root, prefix=".new-")
        try:
            os.makedirs(os.path.join(tmp, "files"))
            for n, entry in enumerate(rel["files"]):
                if entry.get("absent"):
                    continue
                copy = os.path.join("files", str(n))
                shutil.copyfile(entry["path"], os.path.join(tmp, copy))
                os.chmod(os.path.join(tmp, copy), 0o600)
                if _sha256(os.path.join(tmp, copy)) != entry["sha256"]:
                    raise ReleaseError("%s changed while it was being recorded; run again" % entry["path"])
                entry["copy"] = copy
            with open(os.path.join(tmp, "release.json"), "w") as f:
                json.dump(rel, f, indent=2, sort_keys=True)
                f.write("\n")
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _prune(self, history, keep):
        """Drop releases beyond `keep`, the wheels only they used, and leftovers of broken runs."""
        kept, dropped = history[:keep], history[keep:]
        kept_wheels = set()
        for rid in kept:
            try:
                wheel = self.record(rid).get("wheel")
            except ReleaseError:
                wheel = ""
            if wheel:
                kept_wheels.add(os.path.dirname(wheel))
        for rid in dropped:
            try:
                wheel = self.record(rid).get("wheel")
            except ReleaseError:
                wheel = ""
            folder = os.path.dirname(wheel) if wheel else ""
            if folder and folder not in kept_wheels and os.path.isdir(folder):
                shutil.rmtree(folder)
            shutil.rmtree(os.path.join(self.root, rid), ignore_errors=True)
        for name in os.listdir(self.root):
            path = os.path.join(self.root, name)
            if os.path.isdir(path) and (name.startswith(".new-") or (ID_RE.match(name) and name not in kept)):
                shutil.rmtree(path)
                if ID_RE.match(name) and name not in dropped:
                    dropped.append(name)
        return kept, dropped

    # -- the two actions -------------------------------------------------------------------------
    def present(self, params, check_mode=False):
        if params["keep"] < 2:
            raise ReleaseError("keep must be at least 2 (the current release and the one to roll back to), not %d"
                               % params["keep"])
        state = self.state()
        rel = self.describe(params, self.salt(create=not check_mode))
        history = state["history"]
        current = history[0] if history else ""
        if rel["id"] == current and os.path.isfile(os.path.join(self.root, rel["id"], "release.json")):
            return {"changed": False, "release": current, "previous": history[1] if len(history) > 1 else "", "pruned": []}
        new_history = [rel["id"]] + [h for h in history if h != rel["id"]]
        if check_mode:
            return {"changed": True, "release": rel["id"], "previous": current, "pruned": new_history[params["keep"]:]}
        self._store(rel)
        kept, dropped = self._prune(new_history, params["keep"])
        self._save_state({"history": kept, "rolled_back": False})
        return {"changed": True, "release": rel["id"], "previous": kept[1] if len(kept) > 1 else "", "pruned": dropped}

    def rollback(self, install, check_mode=False):
        """Restore the earlier release; `install(python, wheel)` reinstalls a kept wheel."""
        state = self.state()
        history = state["history"]
        if not history:
            raise ReleaseError("no release is recorded under %s: nothing to roll back to (provision the host first)" % self.root)
        current = self.record(history[0])
        live = [live_entry(e["path"]) for e in current["files"]]
        if all(_same(e, lv) for e, lv in zip(current["files"], live)):
            if state["rolled_back"]:
                return {"changed": False, "release": history[0], "previous": history[1] if len(history) > 1 else "",
                        "rolled_back_from": "", "reinstalled": False, "pruned": [], "msg": "already rolled back"}
            if len(history) < 2:
                raise ReleaseError("release %s is the only one kept on this host: there is no earlier release to roll "
                                   "back to" % history[0])
            target_id, new_history = history[1], [history[1], history[0]] + history[2:]
        else:  # a converge rewrote the live files but stopped before recording them: back to the current one
            target_id, new_history = history[0], history
        target = self.record(target_id)
        marker = target.get("marker") or ""
        live_key = ""
        if marker and os.path.isfile(marker):
            with open(marker) as f:
                live_key = f.read().strip()
        reinstall = bool(target.get("engine_key")) and live_key != target["engine_key"]
        if reinstall and not (target.get("wheel") and os.path.isfile(target["wheel"])):
            raise ReleaseError(
                "release %s runs engine build %s, but its wheel %s is not kept on this host (a build from before "
                "ktdeploy kept wheels, or removed); nothing was changed. Provision the host to rebuild instead"
                % (target_id, target["engine_key"], target.get("wheel") or "(none recorded)"))
        for entry in target["files"]:
            if not entry.get("absent") and not os.path.isfile(os.path.join(self.root, target_id, entry["copy"])):
                raise ReleaseError("release %s lacks its copy of %s; nothing was changed" % (target_id, entry["path"]))
        result = {"changed": True, "release": target_id, "previous": new_history[1] if len(new_history) > 1 else "",
                  "rolled_back_from": history[0], "reinstalled": reinstall, "pruned": []}
        if check_mode:
            return result
        if reinstall:
            install(target["python"], target["wheel"])
        for entry in target["files"]:
            if entry.get("absent"):
                if os.path.lexists(entry["path"]):
                    os.unlink(entry["path"])
                continue
            with open(os.path.join(self.root, target_id, entry["copy"]), "rb") as f:
                data = f.read()
            os.makedirs(os.path.dirname(entry["path"]), exist_ok=True)
            _write_atomic(entry["path"], data, entry["mode"], entry["uid"], entry["gid"])
        self._save_state({"history": new_history, "rolled_back": True})
        return result


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "state": {"type": "str", "choices": ["present", "rollback"], "default": "present"},
            "engine": {"type": "str", "default": ""},
            "engine_key": {"type": "str", "default": ""},
            "wheel": {"type": "str", "default": ""},
            "python": {"type": "str", "default": ""},
            "marker": {"type": "str", "default": ""},
            "manager": {"type": "str", "default": ""},
            "api_unit": {"type": "str", "default": ""},
            "files": {"type": "list", "elements": "path", "default": []},
            "keep": {"type": "int", "default": 2},
        },
        supports_check_mode=True,
    )
    p = module.params
    releases = Releases(p["root"])

    def install(python, wheel):
        rc, out, err = module.run_command([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", wheel])
        if rc != 0:
            raise ReleaseError("reinstalling %s with %s failed; nothing else was changed:\n%s" % (wheel, python, (err or out)[-2000:]))

    try:
        if p["state"] == "present":
            result = releases.present(p, module.check_mode)
        else:
            result = releases.rollback(install, module.check_mode)
    except ReleaseError as exc:
        module.fail_json(msg=str(exc))
    try:
        rel = releases.record(result["release"])
    except ReleaseError:  # a dry run's new release is not written
        rel = {}
    result["manager"] = rel.get("manager", p["manager"])
    result["api_unit"] = rel.get("api_unit", p["api_unit"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
