"""The lab raises root's inotify instance limit that caps how many hosts can boot (ktdeploy/lab/limits.py)."""

from ktdeploy.lab import limits


def test_a_low_limit_is_raised_and_said(tmp_path):
    knob = tmp_path / "max_user_instances"
    knob.write_text("128\n")
    said = []
    assert limits.ensure_inotify_instances(said.append, path=knob) == limits.WANTED
    assert knob.read_text() == f"{limits.WANTED}\n"
    assert said == [f"lab: raised fs.inotify.max_user_instances from 128 to {limits.WANTED} "
                    "(each lab host takes about 8; 128 allow about 16 hosts machine-wide)"]


def test_a_high_enough_limit_is_left_alone(tmp_path):
    knob = tmp_path / "max_user_instances"
    knob.write_text("4096\n")
    said = []
    assert limits.ensure_inotify_instances(said.append, path=knob) == 4096
    assert knob.read_text() == "4096\n" and said == []


class ReadOnlyKnob:
    """/proc/sys as a container sees it: readable, not writable."""

    def read_text(self):
        return "128\n"

    def write_text(self, text):
        raise PermissionError(30, "Read-only file system")


def test_a_limit_that_cannot_be_raised_is_named_with_the_fix():
    said = []
    assert limits.ensure_inotify_instances(said.append, path=ReadOnlyKnob()) == 128
    assert said == ["lab: fs.inotify.max_user_instances is 128 (about 16 lab hosts machine-wide) and could not be "
                    "raised (Read-only file system); set it with `sysctl fs.inotify.max_user_instances=1024`"]


def test_no_such_knob_is_no_error(tmp_path):
    assert limits.ensure_inotify_instances(print, path=tmp_path / "absent") is None
