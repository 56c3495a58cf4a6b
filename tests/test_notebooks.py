"""The notebooks: committed with their outputs, small, and executing top to bottom without error."""

import json
import os
import pathlib
import sys

import nbformat
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
IDS = [p.stem for p in NOTEBOOKS]
MAX_BYTES = 1_000_000


def test_there_are_notebooks():
  assert len(NOTEBOOKS) >= 3, f"expected the notebooks under {REPO / 'notebooks'}, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_with_outputs_and_small(path):
  size = path.stat().st_size
  assert size < MAX_BYTES, f"{path.name} is {size} bytes; keep notebooks under {MAX_BYTES} (lower the PNG dpi)"
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code, f"{path.name} has no code cells"
  unrun = [i for i, c in enumerate(code) if c.execution_count is None]
  assert not unrun, f"{path.name}: code cells {unrun} were not executed before committing"
  errors = [o for c in code for o in c.outputs if o.output_type == "error"]
  assert not errors, f"{path.name} was committed with an error output: {errors[0].get('ename')}"
  images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
  assert images, f"{path.name} has no figure outputs committed"
  bad_pip = [c.source for c in code if "pip install" in c.source]
  assert not bad_pip, f"{path.name} installs packages in a code cell; use the project's extras instead"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch):
  """A kernelspec that runs this very interpreter (the test's venv), importing the package from the repo."""
  name = "optax-rmsprop-tests"
  spec_dir = tmp_path / "kernels" / name
  spec_dir.mkdir(parents=True)
  spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
          "display_name": "optax_rmsprop tests", "language": "python"}
  (spec_dir / "kernel.json").write_text(json.dumps(spec))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path) + os.pathsep + os.environ.get("JUPYTER_PATH", ""))
  monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_executes_without_error(path, kernel_name):
  from nbclient import NotebookClient

  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, kernel_name=kernel_name, timeout=900,
                          resources={"metadata": {"path": str(path.parent)}})
  client.execute()  # raises CellExecutionError (with the cell and traceback) on the first failing cell
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
