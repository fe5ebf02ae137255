#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv, install the pinned
# dependencies and detectron2, and build the `sarl._C` extension against that torch.
# Idempotent: a second run only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SARL_VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/pip"
STAMP="$VENV/.requirements.sha"
REQ_SHA=$(sha256sum requirements.txt requirements-oracles.txt scripts/setup_env.sh scripts/install_detectron2.sh \
  | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQ_SHA" ]; then
  echo "[setup] installing pinned requirements (first run: several minutes)"
  "$PIP" install -q --disable-pip-version-check -r requirements.txt
  bash scripts/install_detectron2.sh "$VENV"
  # Test oracles: the official YOLOX / YOLOv5 model code (tests/test_official_weights.py), without their dependency
  # trees (only what importing their models needs, requirements-oracles.txt). yolox 0.3.0 is an sdist whose build
  # imports torch and compiles one C++ op: built against this venv's torch (no build isolation).
  "$PIP" install -q --disable-pip-version-check --no-deps -r requirements-oracles.txt
  "$PIP" install -q --disable-pip-version-check --no-deps --no-build-isolation yolox==0.3.0 yolov5==7.0.14
  echo "$REQ_SHA" > "$STAMP"
fi
echo "[setup] building sarl._C"
bash scripts/build_ext.sh "$VENV"
