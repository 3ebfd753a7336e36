"""Print, as JSON, the libstdc++ this Python loads and the GLIBCXX versions it provides (oldest first)."""
import ctypes
import json
import re

ctypes.CDLL("libstdc++.so.6")
with open("/proc/self/maps", encoding="utf-8") as maps:
    path = next(line.split()[-1] for line in maps if "/libstdc++.so" in line)
with open(path, "rb") as lib:
    found = set(re.findall(rb"GLIBCXX_(3\.4(?:\.[0-9]+)?)\x00", lib.read()))
versions = sorted((v.decode() for v in found), key=lambda v: [int(part) for part in v.split(".")])
print(json.dumps({"path": path, "glibcxx": versions}))
