#!/usr/bin/env bash
# Build sarl._C in place (editable install) against the venv's torch. CPU kernels only,
# unless a GPU is visible or FORCE_CUDA=1 (see scripts/cuda_env.sh for a GPU-less CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
export MAX_JOBS=${MAX_JOBS:-2}
"$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "import sarl.ops as o; assert o.extension_available(), 'sarl._C did not load'; print('[build] sarl._C loaded:', o.extension_info())"
