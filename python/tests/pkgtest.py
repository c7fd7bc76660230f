"""Shared set-up of the package tests (run by CTest with the project's .venv python, on the installed
package): import mxmoe, point the oracle tests' helpers (tests/oracle/oracle_common.py,
test_moe_oracle.py, test_route_oracle.py) at the package's library so that the references are
reused rather than copied, and a failure counter. Exit status 0 pass, 1 failure, 77 skipped."""
import os
import sys
import time

import mxmoe

SRC = os.environ.get("MXM_SOURCE_DIR", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.setdefault("MXM_LIB", mxmoe.LIBRARY_PATH)
sys.path.insert(0, os.path.join(SRC, "tests", "oracle"))

from oracle_common import Checks  # noqa: E402

try:
    import torch  # noqa: F401
except ImportError:
    torch = None


def seed():
    s = int(os.environ.get("MXM_TEST_SEED", time.time_ns() % (1 << 31)))
    print(f"[seed] MXM_TEST_SEED={s}")
    return s


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)
