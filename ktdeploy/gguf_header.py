"""A GGUF header reader that needs nothing but the Python standard library.

`ktdeploy preflight HOST --deep` streams this file to the host and runs it there with the host's
python3 (`python3 - DIR`), so no package has to be installed on the host and no weights cross the
network; it prints one JSON document with the headers of every *.gguf in DIR. Locally ktdeploy reads
headers with the `gguf` package (ktdeploy.gguf_check); the tests check that both agree.
Only the header is read: key/values (array contents are skipped) and the tensor infos.
"""

from __future__ import annotations

import json
import os
import struct
import sys

# ggml type ids (ggml.h); names as the gguf package spells them
TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0", 39: "MXFP4",
}  # fmt: skip
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
WANTED_KEYS = ("general.architecture", "split.no", "split.count")


class HeaderError(ValueError):
    pass


class _Reader:
    def __init__(self, f):
        self.f = f

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise HeaderError("file ends inside the header (truncated download?)")
        return data

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("Q")).decode("utf-8", "replace")

    def value(self, vtype: int):
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("I"), self.unpack("Q")
            if etype in _SCALARS:
                self.f.seek(struct.calcsize(_SCALARS[etype]) * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.value(etype)
            return None
        raise HeaderError(f"unknown metadata value type {vtype}")


def read_header(path: str) -> dict:
    """{'path', 'version', 'architecture', 'split_no', 'split_count', 'tensors': {name: type name}}."""
    with open(path, "rb") as f:
        r = _Reader(f)
        if r.take(4) != b"GGUF":
            raise HeaderError("not a GGUF file (bad magic)")
        version = r.unpack("I")
        if version not in (2, 3):
            raise HeaderError(f"GGUF version {version} is not supported (big-endian file?)")
        n_tensors, n_kv = r.unpack("Q"), r.unpack("Q")
        kv = {}
        for _ in range(n_kv):
            key = r.string()
            val = r.value(r.unpack("I"))
            if key in WANTED_KEYS:
                kv[key] = val
        tensors = {}
        for _ in range(n_tensors):
            name = r.string()
            n_dims = r.unpack("I")
            r.take(8 * n_dims)
            ttype = r.unpack("I")
            r.take(8)  # data offset
            tensors[name] = TYPE_NAMES.get(ttype, f"type{ttype}")
    return {
        "path": os.path.basename(path),
        "version": version,
        "architecture": kv.get("general.architecture"),
        "split_no": kv.get("split.no"),
        "split_count": kv.get("split.count"),
        "tensors": tensors,
    }


def read_dir(directory: str) -> dict:
    """Headers of every *.gguf directly in directory: {'exists': bool, 'files': [...], 'errors': {...}}."""
    if not os.path.isdir(directory):
        return {"exists": False, "files": [], "errors": {}}
    files, errors = [], {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".gguf"):
            continue
        try:
            files.append(read_header(os.path.join(directory, name)))
        except (OSError, HeaderError, struct.error) as exc:
            errors[name] = str(exc)
    return {"exists": True, "files": files, "errors": errors}


if __name__ == "__main__":
    json.dump(read_dir(sys.argv[1]), sys.stdout)
