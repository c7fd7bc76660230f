#!/usr/bin/env python3
"""The ctypes structs and enum values that mxmoe._capi generates from mxmoe.h against the C
compiler: a program generated from the same parse prints sizeof of every struct, offsetof of every
field and the value of every enumerator; each must equal what ctypes computed. A field that the
parse missed changes sizeof; a misread type moves an offset."""
import ctypes
import os
import subprocess
import tempfile
import time

from pkgtest import Checks, mxmoe
from mxmoe import _capi

check = Checks("test_abi")
t0 = time.time()
cc = os.environ.get("MXM_CC", "cc")
GENERIC = "float: 'f', double: 'd', int32_t: 'i', int64_t: 'l', uint8_t: 'b', uint16_t: 'h', default: 'p'"
KINDS = {ctypes.c_float: "f", ctypes.c_double: "d", ctypes.c_int32: "i", ctypes.c_int64: "l", ctypes.c_uint8: "b",
         ctypes.c_uint16: "h"}


def kind(size, t):
    """The _Generic letter C gives a field of ctypes type t (arrays decay to pointers: 'p')."""
    return KINDS.get(t, "p")


lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "mxmoe.h"', "int main(void) {"]
expect = []
for sname, fields in _capi.STRUCT_FIELDS.items():
    types = {f: t for f, t, _ in fields}
    st = _capi.STRUCTS.get(sname) or _capi._struct(sname)
    lines.append(f'    printf("{sname} %zu\\n", sizeof({sname}));')
    expect.append(f"{sname} {ctypes.sizeof(st)}")
    for f in types:
        lines.append(f'    printf("{sname}.{f} %zu %zu %c\\n", offsetof({sname}, {f}), sizeof((({sname} *)0)->{f}), '
                     f'_Generic((({sname} *)0)->{f}, {GENERIC}));')
        expect.append(f"{sname}.{f} {getattr(st, f).offset} {getattr(st, f).size} {kind(getattr(st, f).size, types[f])}")
for name, value in _capi.ENUMS.items():
    lines.append(f'    printf("{name} %d\\n", (int){name});')
    expect.append(f"{name} {value}")
lines += ["    return 0;", "}"]
check(len(_capi.STRUCT_FIELDS) >= 7 and len(_capi.ENUMS) >= 60,
      f"parse found {len(_capi.STRUCT_FIELDS)} structs and {len(_capi.ENUMS)} enumerators")
with tempfile.TemporaryDirectory() as d:
    src, exe = os.path.join(d, "abi.c"), os.path.join(d, "abi")
    open(src, "w").write("\n".join(lines) + "\n")
    r = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", os.path.dirname(mxmoe.HEADER_PATH), src, "-o", exe],
                       capture_output=True, text=True)
    if r.returncode:
        print(r.stderr)
    check(r.returncode == 0, f"{cc} failed on the generated program")
    got = subprocess.run([exe], capture_output=True, text=True).stdout.split("\n")[:-1] if r.returncode == 0 else []
for e, g in zip(expect, got):
    check(e == g, f"ctypes says '{e}', the C compiler says '{g}'")
check(len(got) == len(expect), f"{len(got)} lines printed, {len(expect)} expected")
print(f"abi: {len(_capi.STRUCT_FIELDS)} structs, {sum(map(len, _capi.STRUCT_FIELDS.values()))} fields, "
      f"{len(_capi.ENUMS)} enumerators compared")
# the header shipped with the package is the repository's
repo_h = os.path.join(os.environ.get("MXM_SOURCE_DIR", ""), "include", "mxmoe.h")
if os.path.exists(repo_h):
    check(open(repo_h).read() == open(mxmoe.HEADER_PATH).read(), "packaged mxmoe.h differs from include/mxmoe.h")
check.finish(time.time() - t0)
