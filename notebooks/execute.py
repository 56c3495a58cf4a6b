"""Re-execute notebooks in place and save them with their outputs, small enough to commit.

  python notebooks/execute.py notebooks/02_adagrad_vs_rmsprop.ipynb [more.ipynb ...]

Runs each notebook top to bottom with the current interpreter's ``python3`` kernel, in the notebooks folder,
with the repository root on PYTHONPATH; then palette-quantizes every PNG output (about 3x smaller, the same to
the eye for line plots) and keeps only the final state of each progress-bar line, so the file stays well under
the 1 MB that tests/test_notebooks.py allows.
"""

import base64
import io
import os
import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parent.parent


def shrink_png(b64: str) -> str:
  im = Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
  out = io.BytesIO()
  im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
  return base64.b64encode(out.getvalue()).decode()


def last_carriage_return_state(text: str) -> str:
  lines = []
  for line in text.split("\n"):
    if "\r" in line:
      parts = [p for p in line.split("\r") if p.strip()]
      line = parts[-1] if parts else ""
    lines.append(line)
  return "\n".join(lines)


def execute(path: pathlib.Path) -> None:
  nb = nbformat.read(path, as_version=4)
  os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), os.environ.get("PYTHONPATH", "")] if p)
  start = time.time()
  NotebookClient(nb, timeout=900, kernel_name="python3", record_timing=False,
                 resources={"metadata": {"path": str(path.parent)}}).execute()
  for cell in nb.cells:
    cell.metadata.pop("execution", None)  # timestamps only make diffs noisy
    for out in cell.get("outputs", []):
      if out.get("output_type") == "stream":
        out["text"] = last_carriage_return_state(out["text"])
      if "image/png" in out.get("data", {}):
        out["data"]["image/png"] = shrink_png(out["data"]["image/png"])
  nbformat.write(nb, path)
  print(f"{path}: executed in {time.time() - start:.0f} s, {path.stat().st_size} bytes")


if __name__ == "__main__":
  for arg in sys.argv[1:]:
    execute(pathlib.Path(arg).resolve())
