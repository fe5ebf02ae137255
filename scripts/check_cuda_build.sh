#!/usr/bin/env bash
# Compile and link every CUDA source (FORCE_CUDA=1, sm_90 by default) in a separate build
# folder, without a GPU, so CUDA code that does not compile fails CI; then load the library
# after `import torch` in a fresh process and check, through the dispatcher, that every
# sarl:: op has its CUDA kernel registered (scripts/check_cuda_library.py). A library that
# links but does not load (an undefined symbol) fails here, as it would on a GPU machine.
# The CPU build in place is not touched; tests/test_cuda_build.py repeats the load check.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
source scripts/cuda_env.sh
export MAX_JOBS=${MAX_JOBS:-2}
OUT=build-cuda
mkdir -p "$OUT"
echo "[cuda] CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
# A library left by an earlier build must not stand in for one that failed to build now
# (the objects in $OUT/temp stay: ninja rebuilds only what changed).
rm -f "$OUT"/lib/sarl/_C*.so
"$VENV/bin/python" setup.py -q build_ext --build-lib "$OUT/lib" --build-temp "$OUT/temp" 2>&1 \
  | grep -v -E "is ignored: it is neither|UserWarning|warnings.warn" || true
SO=$(ls "$OUT"/lib/sarl/_C*.so 2>/dev/null | head -1)
[ -n "$SO" ] || { echo "[cuda] FAILED: no shared library produced"; exit 1; }
# Every .cu must have produced an object that went into the library.
for cu in $(find csrc -name '*.cu'); do
  obj=$(find "$OUT/temp" -name "$(basename "${cu%.cu}").o" | head -1)
  [ -n "$obj" ] || { echo "[cuda] FAILED: $cu was not compiled"; exit 1; }
done
echo "[cuda] $(find csrc -name '*.cu' | wc -l) CUDA sources compiled and linked into $SO"
# The library must load (no undefined symbol) and register a CUDA kernel for every op.
"$VENV/bin/python" scripts/check_cuda_library.py "$SO"
