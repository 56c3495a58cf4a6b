"""The docstring examples run and print what they say (in a fresh process: the test session
enables float64, which would change the examples' dtypes)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("module", ["optax_rmsprop/_rmsprop.py", "optax_rmsprop/compat.py", "optax_rmsprop/_sharding.py", "optax_rmsprop/_convert.py"])
def test_docstring_examples(module):
  proc = subprocess.run(
      [sys.executable, "-m", "doctest", str(ROOT / module)],
      cwd=ROOT,
      env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
