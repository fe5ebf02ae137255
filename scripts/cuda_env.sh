# Source this to compile the CUDA kernels without a GPU (nvcc present, no driver):
# CUDA_HOME must be the toolkit root, the arch list must be given (detection needs a GPU),
# and torch's pip CUDA packages carry headers (cublas_v2.h, cusparse.h...) the toolkit may lack.
VENV=${VENV:-.venv}
NVCC=$(readlink -f "$(command -v nvcc)")
# /usr/local/bin/nvcc may be a wrapper script: read the real path from it.
if head -c 2 "$NVCC" | grep -q '#!'; then NVCC=$(grep -o '/[^ "]*/bin/nvcc' "$NVCC" | head -1); fi
export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$NVCC")")}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
SITE=$("$VENV/bin/python" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
for d in "$SITE"/nvidia/cu13/include "$SITE"/nvidia/*/include; do
  [ -d "$d" ] && export CPLUS_INCLUDE_PATH="$d${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}"
done
export FORCE_CUDA=1
