"""Sphinx configuration of the optax_rmsprop documentation site (`make docs`).

Sphinx with autodoc/autosummary/napoleon for the API reference (generated from the docstrings, whose
maths is reStructuredText), myst-nb for the Markdown pages and the notebooks, and sphinx-book-theme:
the stack optax and flax build their documentation with, so the site reads like the rest of the JAX
ecosystem, and myst-nb renders the notebooks from their committed outputs (never re-executed here).

The build is offline: no intersphinx (its inventories would be downloaded), links to the optax and
jax documentation are plain links, and MathJax is served from the site itself (see below).
"""

import importlib.util
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # the package from this checkout, installed or not

import optax_rmsprop  # noqa: E402

project = "optax_rmsprop"
author = "optax_rmsprop developers"
copyright = "optax_rmsprop developers"
release = version = optax_rmsprop.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]

root_doc = "index"
exclude_patterns = ["_build", "notebooks/execute.py", "**/.ipynb_checkpoints"]
# notebooks/ is a link to the repository's notebooks/: the pages are the committed files.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# -- Notebooks: rendered from their committed outputs ------------------------------------------
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- API reference -------------------------------------------------------------------------------
autosummary_generate = False  # the API pages list their entries; nothing is generated into docs/
autodoc_member_order = "bysource"
# The docstrings say what each argument takes; expanded, jax.typing.ArrayLike fills lines.
autodoc_typehints = "none"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- Maths, offline ------------------------------------------------------------------------------
# MathJax 3.2.2 from the sphinx-mathjax-offline wheel (the docs extra), copied into _static/mathjax:
# pip installs it wherever the docs extra installs (CI, a laptop, no root, no apt, no Node), pinned
# like every other dependency. Sphinx's default would load MathJax from a CDN. MathJax 3 reads the
# same `window.MathJax` options that myst-parser fills in (it limits typesetting to math elements).
_mathjax_spec = importlib.util.find_spec("sphinx-mathjax-offline")
if _mathjax_spec is None or not _mathjax_spec.submodule_search_locations:
  raise RuntimeError("MathJax files not found: install the docs extra (pip install -e '.[docs]')")
MATHJAX_STATIC = pathlib.Path(list(_mathjax_spec.submodule_search_locations)[0]) / "static"
html_static_path = [str(MATHJAX_STATIC), "_static"]
html_css_files = ["custom.css"]  # wide tables scroll rather than being cut off
mathjax_path = "mathjax/tex-chtml.js"
# textmacros: the docstrings' \text{...} may hold escapes such as eps\_in\_sqrt.
mathjax3_config = {"loader": {"load": ["[tex]/textmacros"]}, "tex": {"packages": {"[+]": ["textmacros"]}}}

# -- HTML ------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = "optax_rmsprop"
html_favicon = "_static/favicon.svg"
html_context = {"default_mode": "auto"}  # light or dark as the reader's system is (the theme's switch)
html_theme_options = {
    "repository_url": "https://github.com/optax-rmsprop/optax_rmsprop",
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_issues_button": True,
    "use_download_button": True,
    "show_toc_level": 2,
}
