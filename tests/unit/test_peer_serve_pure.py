"""peer_serve's publishing rules without a server (the served end: tests/integration/test_peer_serve.py)."""

from __future__ import annotations

import pytest

from ktdeploy.hostside import download_state as ds
from ktdeploy.hostside import peer_serve


def test_two_downloads_of_one_repo_that_disagree_are_refused(tmp_path):
    for name, digest in (("a", "1" * 64), ("b", "2" * 64)):
        d = tmp_path / "models" / name
        d.mkdir(parents=True)
        (d / "x.bin").write_bytes(b"x")
        (tmp_path / name).mkdir()
        ds.write_json(tmp_path / name / "job.json", {"repo": "o/r", "dest": str(d)})
        ds.write_json(tmp_path / name / "manifest.json", {"files": [{"path": "x.bin", "size": 1, "sha256": digest}]})
        ds.write_json(tmp_path / name / "state.json", {"phase": "complete", "verified": {
            "x.bin": {"sha256": digest, **ds._stamp(d / "x.bin")}}})
    files, sums = peer_serve.published(tmp_path, ["a"])
    assert files == {"o/r/x.bin": tmp_path / "models" / "a" / "x.bin"} and sums == {"o/r": {"x.bin": "1" * 64}}
    with pytest.raises(peer_serve.PeerError, match="another download of the same repo"):
        peer_serve.published(tmp_path, ["a", "b"])
    assert peer_serve.sums_text(sums["o/r"]) == f"{'1' * 64}  x.bin\n"
