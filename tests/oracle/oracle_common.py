"""Shared set-up of the Python oracle tests: skip (exit 77) without numpy/ml_dtypes or the
library, load the library named by MXM_LIB with ctypes (re-running once with the ASan runtime
preloaded when the library was built with sanitizers), the mxm_moe_config layout parsed from
include/mxmoe.h, and a failure counter."""
import ctypes
import os
import re
import subprocess
import sys

try:
    import numpy as np  # noqa: F401  (re-exported for the tests)
    import ml_dtypes  # noqa: F401
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e}")
    sys.exit(77)

LIB = os.environ.get("MXM_LIB")
SRC = os.environ.get("MXM_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
if not LIB or not os.path.exists(LIB):
    print("SKIP: MXM_LIB is not set or does not exist")
    sys.exit(77)


def _reexec_with_asan_runtime():
    """A library built with -DMXM_SANITIZE=ON needs the ASan runtime loaded first: re-run the
    script once with it preloaded (leak checking off: the interpreter itself 'leaks')."""
    if os.environ.get("MXM_ORACLE_REEXEC"):
        return
    try:
        out = subprocess.run(["ldd", LIB], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return
    for line in out.splitlines():
        if "libasan" in line and "=>" in line:
            path = line.split("=>")[1].split("(")[0].strip()
            env = dict(os.environ, MXM_ORACLE_REEXEC="1", LD_PRELOAD=path,
                       ASAN_OPTIONS="detect_leaks=0:" + os.environ.get("ASAN_OPTIONS", ""))
            sys.stdout.flush()
            os.execve(sys.executable, [sys.executable] + sys.argv, env)


_reexec_with_asan_runtime()
lib = ctypes.CDLL(LIB)
lib.mxm_last_error.restype = ctypes.c_char_p


def _config_fields():
    hdr = open(os.path.join(SRC, "include", "mxmoe.h")).read()
    body = re.search(r"typedef struct mxm_moe_config \{(.*?)\} mxm_moe_config;", hdr, re.S).group(1)
    fields = [(m.group(2), ctypes.c_int32 if m.group(1) == "int32_t" else ctypes.c_float)
              for m in re.finditer(r"^\s*(int32_t|float)\s+(\w+)\s*;", body, re.M)]
    assert len(fields) >= 20, fields
    return fields


class Config(ctypes.Structure):
    _fields_ = _config_fields()


lib.mxm_moe_config_default.argtypes = [ctypes.POINTER(Config)]


class Checks:
    """Counts checks and failures; finish() prints the summary and exits."""

    def __init__(self, name):
        self.name, self.n, self.failures = name, 0, []

    def __call__(self, ok, what):
        self.n += 1
        if not ok:
            self.failures.append(what)
            print("FAIL:", what)

    def finish(self, seconds):
        print(f"{self.name}: {self.n - len(self.failures)} passed, {len(self.failures)} failed ({seconds:.1f} s)")
        sys.exit(1 if self.failures else 0)
