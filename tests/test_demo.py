"""The README's first command: ``python -m optax_rmsprop demo`` and its command line."""

import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from optax_rmsprop import _cli, _demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # the first 8 bytes of every PNG file (RFC 2083, section 3.1)
DIGITS_SAMPLES = 1797  # scikit-learn's digits: 1797 8x8 images of 10 classes


@pytest.mark.slow
def test_demo_trains_every_optimizer_and_writes_the_plot(tmp_path, capsys, monkeypatch):
  runs, run = [], _demo.run

  def spy(**kwargs):
    runs.append(run(**kwargs))
    return runs[-1]

  monkeypatch.setattr(_cli._demo, "run", spy)
  out = tmp_path / "plots" / "loss.png"  # the folder does not exist yet
  names = ["adagrad", "rmsprop"]  # ours, in a different order from the default (each one costs a compilation)
  steps = 20
  assert _cli.main(["demo", "--steps", str(steps), "--out", str(out), "--optimizers", ",".join(names)]) == 0
  stdout, stderr = capsys.readouterr()

  # The plot: a real PNG of a sensible size, with the path printed.
  assert out.read_bytes()[:8] == PNG_SIGNATURE
  from matplotlib import image

  height, width, _ = image.imread(out).shape
  assert width > 400 and height > 200
  assert f"loss curves written to {out}" in stdout

  # A progress bar per optimizer ran to the end.
  for name in names:
    assert re.search(rf"{name}: 100%.*{steps}/{steps}", stderr), stderr

  # One table row per optimizer, in the order asked, with the numbers the run produced.
  (results,) = runs
  rows = [line.split() for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in names]
  assert [row[0] for row in rows] == names == [r.name for r in results]
  for row, r in zip(rows, results, strict=True):
    assert float(row[1]) == _demo.OPTIMIZERS[r.name].learning_rate
    assert float(row[2]) == pytest.approx(r.train_loss, abs=1e-4)
    assert float(row[3]) == pytest.approx(r.test_loss, abs=1e-4)
    assert 0 < float(row[6]) and math.isfinite(float(row[6]))  # ms per step

  # The split: 25 % of the 1797 digits held out (rounded up), stated in the header.
  n_test = math.ceil(DIGITS_SAMPLES * _demo.TEST_FRACTION)
  assert f"{DIGITS_SAMPLES - n_test} train / {n_test} test images" in stdout

  # Same initialisation: every optimizer starts from the same loss, that of a near-uniform guess
  # over 10 classes (ln 10) for a freshly initialised classifier.
  starts = np.array([[r.train_curve[0], r.test_curve[0]] for r in results])
  np.testing.assert_allclose(starts, np.broadcast_to(starts[0], starts.shape), rtol=1e-5)
  assert abs(starts[0, 0] - math.log(10)) < 0.5

  # Training worked: losses fell from their start, and accuracy is far above chance (10 %).
  for r in results:
    assert len(r.train_curve) == len(r.test_curve) == steps + 1
    assert np.all(np.isfinite(r.train_curve)) and np.all(np.isfinite(r.test_curve))
    assert r.train_loss < 0.8 * r.train_curve[0], r
    assert r.test_loss < 0.8 * r.test_curve[0], r
    assert r.train_acc > 0.5 and r.test_acc > 0.5, r


# ---------------------------------------------------------------------------------------------
# Bad usage: one line on stderr naming the problem, exit code 2, nothing trained.

BAD_USAGE = [
    ([], "missing subcommand"),
    (["bogus"], "invalid choice: 'bogus'"),
    (["demo", "--bogus"], "unrecognized arguments: --bogus"),
    (["demo", "extra"], "unrecognized arguments: extra"),
    (["demo", "--steps", "0"], "argument --steps: expected a positive integer, got '0'"),
    (["demo", "--steps", "-5"], "argument --steps: expected a positive integer, got '-5'"),
    (["demo", "--steps", "ten"], "argument --steps: expected a positive integer, got 'ten'"),
    (["demo", "--steps"], "argument --steps: expected one argument"),
    (["demo", "--optimizers", "rmsprop,lion"], "argument --optimizers: unknown optimizer 'lion'"),
    (["demo", "--optimizers", ""], "argument --optimizers: expected comma-separated names"),
    (["demo", "--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got '-1'"),
    (["demo", "--out", "{tmp}/plot.jpg"], "argument --out: expected a path ending in .png"),
    (["demo", "--out", "{tmp}/a_file/plot.png"], "argument --out: cannot write"),
    (["demo", "--out", "{tmp}/a_dir.png"], "argument --out: '{tmp}/a_dir.png' is a folder"),
]


@pytest.mark.parametrize("argv, message", BAD_USAGE, ids=[" ".join(a) or "(none)" for a, _ in BAD_USAGE])
def test_bad_usage_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys, monkeypatch):
  (tmp_path / "a_file").write_text("not a folder")
  (tmp_path / "a_dir.png").mkdir()
  monkeypatch.setattr(_cli._demo, "run", lambda **kwargs: pytest.fail("the demo ran despite a usage error"))
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  assert _cli.main(argv) == 2
  stdout, stderr = capsys.readouterr()
  assert stdout == ""
  lines = stderr.splitlines()
  assert len(lines) == 1, stderr
  assert message.replace("{tmp}", str(tmp_path)) in lines[0]
  assert "error:" in lines[0] and "usage:" in lines[0]


def test_help_lists_the_options_and_optimizers(capsys):
  assert _cli.main(["demo", "--help"]) == 0
  stdout = capsys.readouterr().out
  for option in ("--out", "--steps", "--optimizers", "--seed"):
    assert option in stdout
  for spec in _demo.OPTIMIZERS.values():
    assert spec.call in stdout
  assert _cli.main(["--help"]) == 0
  assert "demo" in capsys.readouterr().out


def test_optimizer_list_keeps_order_and_drops_repeats():
  assert _cli._optimizer_list(" sgd,adam ,sgd") == ("sgd", "adam")


# The real entry point, in a fresh interpreter: exit status and stderr as a shell sees them.
SUBPROCESS_CASES = [
    ([], "missing subcommand"),
    (["demo", "--steps", "0"], "argument --steps"),
]


@pytest.mark.parametrize("argv, message", SUBPROCESS_CASES, ids=[" ".join(a) or "(none)" for a, _ in SUBPROCESS_CASES])
def test_python_m_exits_2_with_one_line(argv, message, tmp_path):
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
  env["JAX_PLATFORMS"] = "cpu"  # no accelerator-probing notices on stderr: only ours
  proc = subprocess.run(
      [sys.executable, "-m", "optax_rmsprop", *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 2, proc
  assert proc.stdout == ""
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith("python -m optax_rmsprop") and message in lines[0]
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "hidden, named",
    [(["sklearn"], ["scikit-learn"]), (["matplotlib"], ["matplotlib"]), (["flax"], ["flax"]), (["tqdm"], ["tqdm"]),
     (["flax", "sklearn", "matplotlib", "tqdm"], ["flax", "scikit-learn", "matplotlib", "tqdm"])],
)
def test_missing_demo_extra_is_named_once_before_training(hidden, named, tmp_path, capsys, monkeypatch):
  for module in hidden:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
  monkeypatch.setattr(_demo, "load_digits", lambda *args: pytest.fail("went on without a needed package"))
  assert _cli.main(["demo", "--steps", "1", "--out", str(tmp_path / "x.png"), "--no-progress"]) == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1, lines
  assert f"needs {', '.join(named)}, not installed" in lines[0]
  assert "install the demo extra: pip install 'optax_rmsprop[demo]'" in lines[0]
  assert not (tmp_path / "x.png").exists()


# Hides the demo extra from the interpreter (as if only the package's requirements were installed).
_WITHOUT_EXTRA = """
import sys
class Hide:
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("flax", "sklearn", "matplotlib", "tqdm"):
      raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
"""


def test_package_and_command_line_import_without_the_demo_extra(tmp_path):
  """``import optax_rmsprop`` never imports flax; without the demo extra the library trains and
  ``python -m optax_rmsprop demo`` says, in one line, which extra to install (exit status 1)."""
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  code = _WITHOUT_EXTRA + """
import jax.numpy as jnp, optax_rmsprop, optax_rmsprop._cli
tx = optax_rmsprop.rmsprop(1e-3, state_dtype="8bit")
u, _ = tx.update({"w": jnp.ones((64, 128))}, tx.init({"w": jnp.ones((64, 128))}))
assert not [m for m in sys.modules if m.split(".")[0] in ("flax", "sklearn", "matplotlib", "tqdm", "orbax")], sorted(sys.modules)
sys.exit(optax_rmsprop._cli.main(["demo", "--no-progress", "--out", "x.png"]))
"""
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert proc.stdout == ""
  lines = proc.stderr.splitlines()
  assert len(lines) == 1, proc.stderr
  assert "needs flax, scikit-learn, matplotlib, tqdm, not installed; install the demo extra: pip install 'optax_rmsprop[demo]'" in lines[0]
