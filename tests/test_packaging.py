"""Packaging as users get it: `python -m build` makes a wheel and an sdist of this checkout that
`twine check --strict` passes; the wheel holds the package's modules and its `py.typed` marker,
the sdist the sources (package, tests, docs, notebooks), and the metadata names the project's URLs
and classifiers.

Built with --no-isolation from the installed hatchling (the docs extra), so no network is needed.
"""

import email.parser
import importlib.util
import pathlib
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODULES = sorted(p.name for p in (ROOT / "optax_rmsprop").glob("*.py"))


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
  for module in ("build", "hatchling", "twine"):
    if importlib.util.find_spec(module) is None:
      pytest.skip(f"{module} is not installed (the docs extra: pip install -e '.[docs]')")
  out = tmp_path_factory.mktemp("dist")
  proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
  assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in out.iterdir())
  return wheels[0], sdists[0]


def test_twine_check_strict_passes(dist):
  proc = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, dist)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_holds_the_package_and_py_typed(dist):
  wheel, _ = dist
  with zipfile.ZipFile(wheel) as zf:
    names = set(zf.namelist())
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    meta = email.parser.Parser().parsestr(zf.read(metadata).decode())
  package = {n.split("/", 1)[1] for n in names if n.startswith("optax_rmsprop/")}
  # Python modules and the typing marker only: nothing is compiled, at install or at run time.
  expected = set(MODULES) | {"py.typed"}
  assert package == expected, sorted(package ^ expected)
  assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]

  urls = dict(value.split(", ", 1) for value in meta.get_all("Project-URL"))
  assert set(urls) == {"Homepage", "Documentation", "Source", "Issues", "Changelog"}, urls
  assert all(url.startswith("https://github.com/optax-rmsprop/optax_rmsprop") for url in urls.values()), urls
  # Required: what the library imports, nothing for the demo (flax, plotting) or the tests.
  requires = meta.get_all("Requires-Dist")
  required = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires if "extra ==" not in r}
  assert required == {"jax", "optax", "numpy"}, requires
  demo = {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires if re.search(r"extra == ['\"]demo['\"]", r)}
  assert demo == {"flax", "scikit-learn", "matplotlib", "tqdm"}, requires
  # The license: its expression in the metadata and its text in the wheel.
  assert meta["License-Expression"] == "Apache-2.0"
  licence = next(n for n in names if n.endswith(".dist-info/licenses/LICENSE"))
  with zipfile.ZipFile(wheel) as zf:
    text = zf.read(licence).decode()
  assert "Apache License" in text and "Version 2.0, January 2004" in text and "TERMS AND CONDITIONS" in text
  classifiers = meta.get_all("Classifier")
  assert "Typing :: Typed" in classifiers and "Programming Language :: Python :: 3.11" in classifiers
  assert meta["Requires-Python"] == ">=3.11"
  assert meta["Name"] == "optax_rmsprop" and meta["Description-Content-Type"] == "text/markdown"


def test_sdist_holds_the_sources(dist):
  _, sdist = dist
  with tarfile.open(sdist) as tf:
    names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
  expected = {"pyproject.toml", "README.md", "LICENSE", "Makefile", "optax_rmsprop/py.typed", "docs/conf.py", "docs/index.md"}
  expected |= {f"optax_rmsprop/{m}" for m in MODULES}
  expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").glob("*.py")}
  expected |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "notebooks").glob("*.ipynb")}
  missing = expected - names
  assert not missing, sorted(missing)
  assert not [n for n in names if n.startswith(("docs/_build/", "docs/notebooks/", ".venv/"))]
