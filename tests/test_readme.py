"""The README is a front page: short, the Quickstart's two commands, an example that runs, one API
table naming every public constructor, and links that resolve to the docs sources."""

import pathlib
import re

import jax.numpy as jnp

import optax_rmsprop
from optax_rmsprop import compat

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
MAX_CHARS = 10_000


def _section(title):
  match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
  assert match, f"README has no '## {title}' section"
  return match.group(1)


def test_readme_is_a_front_page():
  assert len(README) <= MAX_CHARS, f"README.md is {len(README)} characters; the front page keeps to {MAX_CHARS} (the rest belongs in docs/)"


def test_quickstart_is_exactly_the_two_make_commands():
  blocks = re.findall(r"```(\w*)\n(.*?)```", _section("Quickstart"), re.S)
  assert blocks == [("bash", "make demo\nmake test\n")]
  makefile = (ROOT / "Makefile").read_text()
  for target in ("demo", "test", "docs"):
    assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no '{target}' target"
  assert "make docs" in README


def test_example_runs_and_converges():
  (code,) = re.findall(r"```python\n(.*?)```", _section("Example"), re.S)
  namespace = {}
  exec(compile(code, "README.md:Example", "exec"), namespace)
  w = namespace["params"]["w"]
  assert w.shape == (3,)
  assert float(jnp.max(jnp.abs(w - 3.0))) < 1e-2, w


def test_api_table_names_every_public_constructor():
  table = _section("API")
  rows = [line for line in table.splitlines() if line.startswith("| ")]
  assert len(rows) >= 2, "the API section holds one table"
  names = [n for n in optax_rmsprop.__all__ if n != "compat"] + list(compat.__all__)
  missing = [n for n in names if not re.search(rf"`(compat\.)?{n}\b", table)]
  assert not missing, f"the README's API table does not name {missing}"


REPO = "https://github.com/optax-rmsprop/optax_rmsprop/"


def test_links_are_absolute_resolve_to_files_and_point_at_the_docs():
  """Absolute, so that they work where the README is shown away from the repository (a package
  index page); those into the repository name files that exist."""
  links = re.findall(r"\]\(([^)\s]+)\)", README)
  relative = [link for link in links if not re.match(r"https?://", link)]
  assert not relative, f"README links that break on a package index page: {relative}"
  ours = [re.sub(r"^(blob|tree)/main/", "", link[len(REPO) :]) for link in links if link.startswith(REPO)]
  broken = [link for link in ours if not (ROOT / link.split("#")[0]).exists()]
  assert not broken, f"README links to files that do not exist: {broken}"
  docs = {link for link in ours if link.startswith("docs/")}
  pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.parts}
  guides = {p for p in pages if p.startswith("docs/guides/")}
  assert guides and guides <= docs, f"guides the README does not link: {sorted(guides - docs)}"
  assert {"docs/getting_started.md", "docs/changelog.md", "docs/api/optax_rmsprop.rst", "docs/api/compat.rst"} <= docs


def test_install_section_names_the_package_and_its_demo_extra():
  install = _section("Install")
  assert "pip install optax_rmsprop" in install and "pip install 'optax_rmsprop[demo]'" in install
  pyproject = (ROOT / "pyproject.toml").read_text()
  for name in ("jax", "optax"):  # the floors the README states are the ones pyproject declares
    (floor,) = re.findall(rf'^  "{name}>=([0-9.]+)",$', pyproject, re.M)
    assert f"{name} {floor} or newer" in install, (name, floor)


def test_speaks_of_the_project_only():
  # No sentence about the machine or the tools the project was built or measured with (the
  # benchmark pages name the machine as the results files record it).
  for phrase in ("Measured on", "this machine", "session"):
    assert phrase not in README, phrase
