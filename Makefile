# `make demo` and `make test` are the README's Quickstart: each creates .venv with the python3 on
# PATH (3.11+), installs the package with its dev extras, and runs. `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= dev
comma := ,
PYTEST_ARGS ?=
# A pip constraints file (.ci/floors.txt: the oldest supported releases), or empty.
CONSTRAINTS ?=
# `make docs` adds the docs extra (Sphinx, myst-nb, the theme, MathJax) to the extras in use.
DOCS_EXTRAS := $(if $(filter docs,$(subst $(comma), ,$(EXTRAS))),$(EXTRAS),$(EXTRAS),docs)
SPHINXOPTS ?=

.PHONY: venv demo test lint bench docs clean

$(VENV)/.installed-$(EXTRAS): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Python >= 3.11 is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]' $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

venv: $(VENV)/.installed-$(EXTRAS)

demo: venv
	$(PY) -m optax_rmsprop demo

test: venv
	$(PY) -m ruff check optax_rmsprop tests benchmarks examples
	$(PY) -m pytest $(PYTEST_ARGS)

bench: venv
	$(PY) -m benchmarks.run

# The documentation site, offline, warnings as errors (-E: every page re-read, so none is skipped).
docs:
	$(MAKE) venv EXTRAS=$(DOCS_EXTRAS)
	$(PY) -m sphinx -E -W --keep-going -b html -d docs/_build/doctrees $(SPHINXOPTS) docs docs/_build/html
	@echo "The site: docs/_build/html/index.html"

clean:
	rm -rf $(VENV) build dist docs/_build .pytest_cache .ruff_cache
