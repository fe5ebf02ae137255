# Entry points. Each target does all the set-up it needs (venv, pinned deps, extension).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: env build test test-fast cuda-check demo bench clean

env:
	SARL_VENV=$(VENV) bash scripts/setup_env.sh

build: env

# The full test suite, as CI runs it: set-up, CPU build, CUDA compile, link and load check, pytest.
# SARL_REQUIRE_EXTENSION=1: a missing or broken sarl._C fails the kernel tests instead of skipping them.
# SARL_REQUIRE_ORACLES=1: missing official YOLOX/YOLOv5 packages (the oracles `make env` installs) fail
# tests/test_official_weights.py instead of skipping it.
test: env
	bash scripts/check_cuda_build.sh $(VENV)
	SARL_REQUIRE_EXTENSION=1 SARL_REQUIRE_ORACLES=1 $(PY) -m pytest -q tests

# Tests only (assumes `make env` was run).
test-fast:
	SARL_REQUIRE_EXTENSION=1 SARL_REQUIRE_ORACLES=1 $(PY) -m pytest -q -x tests

cuda-check: env
	bash scripts/check_cuda_build.sh $(VENV)

demo: env
	$(PY) tools/demo.py --output output/demo

bench: env
	$(PY) tools/benchmark_kernels.py --op all --json output/bench/kernels.json

clean:
	rm -rf build build-cuda projects/SARL/sarl/_C*.so *.egg-info
