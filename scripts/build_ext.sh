#!/usr/bin/env bash
# Build sarl._C in place (editable install) against the venv's torch. CPU kernels only,
# unless a GPU is visible or FORCE_CUDA=1 (see scripts/cuda_env.sh for a GPU-less CUDA build).
# Skipped when the built library is newer than every source it comes from and still loads
# (a second `make test` then spends no minutes recompiling an unchanged tree).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
export MAX_JOBS=${MAX_JOBS:-2}
SO=$(ls projects/SARL/sarl/_C*.so 2>/dev/null | head -1 || true)
CHECK="import sarl.ops as o; assert o.extension_available(), 'sarl._C did not load'; print('[build] sarl._C loaded:', o.extension_info())"
if [ -n "$SO" ] && [ -z "$(find csrc setup.py -newer "$SO" -type f | head -1)" ] \
   && [ "${FORCE_CUDA:-0}" != "1" ] && "$VENV/bin/python" -c "$CHECK" >/dev/null 2>&1; then
  echo "[build] sarl._C is up to date with csrc/ and setup.py: not rebuilt"
  exit 0
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-build-isolation --no-deps -e . 2>&1 \
  | grep -v "is ignored: it is neither" || true
"$VENV/bin/python" -c "$CHECK"
