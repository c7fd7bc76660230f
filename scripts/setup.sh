#!/usr/bin/env bash
# Installs what mxmoe needs on a fresh Debian 12 machine (root) and is fast when nothing is
# missing: Debian packages (cmake, jansson, cmocka, OpenMP; Python's headers for the package's
# extension module) and a project-local Python venv with the test oracles (numpy, ml_dtypes).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in cmake libjansson-dev libcmocka-dev python3-venv python3-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python3 ] || ! .venv/bin/python3 -c 'import numpy, ml_dtypes' 2>/dev/null; then
  echo "setup: creating .venv with numpy and ml_dtypes" >&2
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r tests/oracle/requirements.txt
fi

# The Python package's build backend, so that `make test` can pip-install ./python offline
# (--no-build-isolation).
if ! .venv/bin/python3 -c 'import scikit_build_core, ninja' 2>/dev/null; then
  echo "setup: installing scikit-build-core and ninja into .venv (for pip install ./python)" >&2
  .venv/bin/pip install -q --disable-pip-version-check 'scikit-build-core>=0.10' ninja
fi

# Opt-in: torch and transformers for the package's torch.compile and Hugging Face tests (about
# 5.6 GB with the CUDA libraries PyPI's torch wheel pulls in, so not part of the default setup;
# without them those tests report "skipped").
if [ "${MXM_PY_TORCH:-0}" = 1 ] && ! .venv/bin/python3 -c 'import torch, transformers' 2>/dev/null; then
  echo "setup: installing torch and transformers into .venv (MXM_PY_TORCH=1)" >&2
  .venv/bin/pip install -q --disable-pip-version-check torch transformers
fi
