# seekforge: two commands.  `make demo` runs the built-in end-to-end demo; `make test` runs the tests.
# Both create .venv on first use.  Torch: an installed torch is kept; otherwise TORCH picks the
# requirement (a CPU build on machines without an NVIDIA driver, the default CUDA build otherwise).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH  ?= $(if $(HAS_GPU),torch,torch==2.13.0)

.PHONY: demo test lint venv dev clean llama-cpp

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: venv
	$(PY) -m seekforge demo

test: dev
	$(PY) -m pytest -q

# llama-cpp-python, the judge of the GGUF export tests: built once into ~/.cache/seekforge/wheels
# (~6 min), installed from there afterwards. Without it those tests skip and say so.
llama-cpp: dev
	.ci/install-llama-cpp $(PY)

lint: dev
	$(VENV)/bin/ruff check src tests bench

clean:
	rm -rf $(VENV) demo_out .pytest_cache
