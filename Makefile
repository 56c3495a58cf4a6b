# `make demo` and `make test` are the README's Quickstart: each creates .venv with the python3 on
# PATH (3.11+), installs the package with its dev extras, and runs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
PYTEST_ARGS ?=

.PHONY: venv demo test lint bench clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed-$(EXTRAS)

demo: venv
	$(PY) -m optax_rmsprop demo

test: venv
	$(PY) -m ruff check optax_rmsprop tests benchmarks examples
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache
