# sorth: `make demo` runs the main job, `make test` runs everything CI runs.
# Torch: when the venv has no torch, $(TORCH) is installed first (a CPU build on these
# machines). GPU users: `make TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`
# or install torch into .venv yourself before `make`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= all,test

.PHONY: install demo test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m sorth.demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: install
	$(PY) -m pytest -q -m "not slow"

test: lint
	$(PY) -m pytest -q -m "not slow"
	$(PY) -m pytest -q -m slow || test $$? -eq 5  # 5 = no slow test collected

clean:
	rm -rf $(VENV) build *.egg-info
