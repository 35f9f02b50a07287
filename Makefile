# Two entry points (README.md): `make demo` runs the main job, `make test` the tests.
# Both set up a fresh machine first (scripts/setup.sh is idempotent and cached).
.PHONY: setup demo test test-fast

setup:
	bash scripts/setup.sh

# MODEL=gemma3-270m runs it on Gemma-3-270M (Gemma Terms of Use; fetched on first use)
MODEL ?= default
demo: setup
	.venv/bin/python -m tools.demo --model $(MODEL)

test: setup
	.venv/bin/python -m pytest -q

# the pure-Python tests only (no llama.cpp build, no nvcc, no whole-pipeline runs): needs .venv
test-fast:
	.venv/bin/python -m pytest -q -m "not llamacpp and not slow and not cuda_compile"
