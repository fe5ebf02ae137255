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
REQ_SHA=$(sha256sum requirements.txt scripts/setup_env.sh scripts/install_detectron2.sh | sha256sum | cut -c1-16)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$REQ_SHA" ]; then
  echo "[setup] installing pinned requirements (first run: several minutes)"
  "$PIP" install -q --disable-pip-version-check -r requirements.txt
  bash scripts/install_detectron2.sh "$VENV"
  echo "$REQ_SHA" > "$STAMP"
fi
echo "[setup] building sarl._C"
bash scripts/build_ext.sh "$VENV"
