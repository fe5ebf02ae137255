#!/usr/bin/env bash
# Install detectron2 into the venv given as $1 (default .venv).
#
# Detectron2 is not on PyPI. Order of preference:
#   1. already importable (a user's own source build): keep it;
#   2. $DETECTRON2_SRC or $DETECTRON2_WHEEL set by the user: install that;
#   3. the registry wheel `sal-detectron2==0.7.2`: detectron2 main (2024-04) Python code.
#      Its wheel is tagged cp310 but is pure Python apart from a `_C` built for py3.10/CUDA 12
#      that cannot load here; detectron2 falls back to pure-Python/torchvision ops for
#      axis-aligned detection, which is all this project needs. pip refuses the cp310 tag on
#      3.11, so the file is renamed to py3-none-any and installed with --no-deps (its metadata
#      pins numpy<2 and omits fvcore/iopath; requirements.txt carries the real needs).
set -euo pipefail
VENV=${1:-.venv}
PY="$VENV/bin/python"
if "$PY" -c "import detectron2" >/dev/null 2>&1; then
  echo "[detectron2] already installed: $("$PY" -c 'import detectron2;print(detectron2.__file__)')"
  exit 0
fi
if [ -n "${DETECTRON2_SRC:-}" ]; then
  "$VENV/bin/pip" install --no-build-isolation -e "$DETECTRON2_SRC"; exit 0
fi
if [ -n "${DETECTRON2_WHEEL:-}" ]; then
  "$VENV/bin/pip" install --no-deps "$DETECTRON2_WHEEL"; exit 0
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --python-version 3.10 \
  --only-binary=:all: -d "$TMP" sal-detectron2==0.7.2
WHL=$(ls "$TMP"/sal_detectron2-0.7.2-*.whl)
cp "$WHL" "$TMP/sal_detectron2-0.7.2-py3-none-any.whl"
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "$TMP/sal_detectron2-0.7.2-py3-none-any.whl"
# Its compiled _C is for another Python: remove it so nothing tries to load a broken binary.
SITE=$("$PY" -c "import sysconfig;print(sysconfig.get_paths()['purelib'])")
rm -f "$SITE"/detectron2/_C*.so
# The wheel also installs detectron2's own tools/ as a top-level package `tools`, which
# would shadow this repository's tools/ scripts: remove it.
rm -rf "$SITE"/tools
"$PY" -c "import detectron2; print('[detectron2] installed', detectron2.__version__)"
