"""The demo behind ``python -m optax_rmsprop demo``: four optimizers train the same Flax NNX MLP.

A 64-128-10 ReLU MLP classifies scikit-learn's bundled 8x8 digits (1797 images, no download; a
stratified 75/25 train/test split fixed by the seed). Every optimizer starts from the same
initialisation (the model is built once from the seed and cloned) and takes the same number of
full-batch steps, so the curves differ only by the optimizer, never by sampling noise.

Learning rates, tuned the same way for every optimizer. The usual defaults (1e-3 for RMSProp and
Adam, 1e-2 for AdaGrad and SGD) would favour some optimizers over others here (AdaGrad at 1e-2
barely moves in 300 steps), so each optimizer gets the best rate of the grid {1e-4, 3e-4, ..., 1}
for the default 300 full-batch steps, judged on a validation split carved out of the training set
(never the test set) by the validation loss averaged over the last 50 steps and over seeds 0-2
(``python -m benchmarks.demo_lr_sweep`` reproduces it):

  =================  ======  ======  ======  ======  ======  ======  ======  ======  ======
  validation loss    1e-4    3e-4    1e-3    3e-3    1e-2    3e-2    0.1     0.3     1
  =================  ======  ======  ======  ======  ======  ======  ======  ======  ======
  rmsprop            1.5800  0.4732  0.1157  0.1158  0.1162  0.1158  0.4024  1.1835  2.0532
  adagrad            2.3329  2.2850  2.1421  1.7736  0.8062  0.2924  0.1514  0.1184  1.5745
  sgd, momentum 0.9  2.2665  2.1218  1.6764  0.7788  0.2700  0.1536  0.1285  0.1530  0.1949
  adam               1.5057  0.5150  0.1565  0.1115  0.1449  0.1578  0.1824  0.6807  1.6526
  =================  ======  ======  ======  ======  ======  ======  ======  ======  ======

so rmsprop 1e-3, adagrad 0.3, sgd 0.1 with momentum 0.9 (the usual heavy-ball value) and adam 3e-3;
every other hyperparameter is the library default. The averaging matters for RMSProp: from 1e-2 up
its full-batch loss spikes every few dozen steps (as the gradients shrink, the second-moment average
shrinks with them and the effective step grows until it overshoots), so the loss after the last
step alone depends on where a spike lands (mean over seeds at 1e-2: 0.41 after step 300). With
these rates the adaptive methods reach a similar loss and SGD is a little behind after 300 steps.

Flax, scikit-learn, matplotlib and tqdm are the ``demo`` extra, not dependencies of the package:
they are imported only once the demo runs (the model and its steps live in ``_demo_train``), and
any of them missing fails before training with one :class:`DemoDependencyError` that names them
all and the extra to install.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pathlib
import platform
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_SEED",
    "DEFAULT_STEPS",
    "OPTIMIZERS",
    "DemoDependencyError",
    "require_demo_extra",
    "OptimizerResult",
    "OptimizerSpec",
    "run",
]

DEFAULT_STEPS = 300
DEFAULT_SEED = 0
DEFAULT_OUT = pathlib.Path("out") / "demo_loss.png"
HIDDEN = 128
CLASSES = 10
TEST_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """One optimizer of the demo: its learning rate and how to build it."""

  name: str
  learning_rate: float
  make: Callable[[float], optax.GradientTransformation]  # learning rate -> optimizer
  constructor: str  # for the help and the table: "optax.sgd"
  options: str = ""  # the other arguments, as written in ``make``: ", momentum=0.9"

  @property
  def call(self) -> str:
    return f"{self.constructor}({self.learning_rate:g}{self.options})"


# Learning rates: see the module docstring and benchmarks/demo_lr_sweep.py.
OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("rmsprop", 1e-3, lambda lr: optax_rmsprop.rmsprop(lr), "optax_rmsprop.rmsprop"),
        OptimizerSpec("adagrad", 3e-1, lambda lr: optax_rmsprop.adagrad(lr), "optax_rmsprop.adagrad"),
        OptimizerSpec("sgd", 1e-1, lambda lr: optax.sgd(lr, momentum=0.9), "optax.sgd", ", momentum=0.9"),
        OptimizerSpec("adam", 3e-3, lambda lr: optax.adam(lr), "optax.adam"),
    )
}


class DemoDependencyError(RuntimeError):
  """A package the demo needs (the ``demo`` extra) is not installed."""


@dataclasses.dataclass(frozen=True)
class OptimizerResult:
  """What one optimizer reached.

  ``train_curve``/``test_curve`` hold ``steps + 1`` float losses: before each update, then after
  the last one. ``ms_per_step`` is the mean wall time of a step after compilation (the update and
  the test-set forward pass that records the test curve).
  """

  name: str
  learning_rate: float
  train_curve: np.ndarray
  test_curve: np.ndarray
  train_acc: float
  test_acc: float
  ms_per_step: float

  @property
  def train_loss(self) -> float:
    return float(self.train_curve[-1])

  @property
  def test_loss(self) -> float:
    return float(self.test_curve[-1])


# The demo extra: the modules the demo imports, and the packages that provide them.
DEMO_EXTRA = {"flax": "flax", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}
INSTALL_HINT = "pip install 'optax_rmsprop[demo]'"


def require_demo_extra() -> None:
  """Raises one :class:`DemoDependencyError` naming every package of the demo extra not installed."""
  missing = []
  for module, package in DEMO_EXTRA.items():
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(package)
  if missing:
    raise DemoDependencyError(f"the demo needs {', '.join(missing)}, not installed; install the demo extra: {INSTALL_HINT}")


# ---------------------------------------------------------------------------------------------
# Data, model, and the jitted steps.


def load_digits(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """scikit-learn's digits scaled to [0, 1], split 75/25 (stratified) by ``seed``."""
  from sklearn import datasets, model_selection
  digits = datasets.load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=TEST_FRACTION, random_state=seed, stratify=y
  )
  return x_train, y_train, x_test, y_test


# ---------------------------------------------------------------------------------------------
# Reporting.


def format_table(results: Sequence[OptimizerResult]) -> str:
  """The results as a plain-text table, one row per optimizer."""
  header = ("optimizer", "learning rate", "train loss", "test loss", "train acc", "test acc", "ms/step")
  rows = [
      (
          r.name,
          f"{r.learning_rate:g}",
          f"{r.train_loss:.4f}",
          f"{r.test_loss:.4f}",
          f"{100 * r.train_acc:.2f}%",
          f"{100 * r.test_acc:.2f}%",
          f"{r.ms_per_step:.3f}",
      )
      for r in results
  ]
  widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
           for row in (header, *rows)]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def plot_curves(results: Sequence[OptimizerResult], out: pathlib.Path, title: str) -> None:
  """Writes train and test loss curves side by side as a PNG, without touching pyplot's state."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(11, 4.5), layout="constrained")
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, split in zip(axes, ("train", "test"), strict=True):
    for r in results:
      curve = r.train_curve if split == "train" else r.test_curve
      ax.plot(np.arange(len(curve)), curve, label=f"{r.name} (lr={r.learning_rate:g})")
    ax.set_yscale("log")
    ax.set_xlabel("step (full-batch update)")
    ax.set_ylabel(f"{split} cross-entropy loss")
    ax.set_title(f"{split} loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_name(out.name + ".tmp")
  fig.savefig(tmp, format="png", dpi=110)
  os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# The demo.


def run(
    *,
    steps: int = DEFAULT_STEPS,
    optimizers: Sequence[str] = tuple(OPTIMIZERS),
    seed: int = DEFAULT_SEED,
    out: str | os.PathLike = DEFAULT_OUT,
    progress: bool = True,
    stdout: TextIO | None = None,
) -> list[OptimizerResult]:
  """Trains the MLP with each optimizer, prints the results table, writes the loss-curve PNG.

  Args:
    steps: full-batch updates per optimizer, at least 1.
    optimizers: names from :data:`OPTIMIZERS`, in the order to run and report them.
    seed: fixes the train/test split and the shared initialisation.
    out: path of the PNG to write (parent folders are created).
    progress: show a tqdm progress bar per optimizer on stderr.
    stdout: where the table goes (default ``sys.stdout``).

  Returns:
    One :class:`OptimizerResult` per optimizer, in the order given.
  """
  stdout = sys.stdout if stdout is None else stdout
  unknown = [name for name in optimizers if name not in OPTIMIZERS]
  if unknown or not optimizers:
    raise ValueError(f"run(optimizers={list(optimizers)!r}): expected a non-empty list of names from {list(OPTIMIZERS)}")
  if steps < 1:
    raise ValueError(f"run(steps={steps!r}): steps must be at least 1")
  out = pathlib.Path(out)
  require_demo_extra()  # fail before training, not after
  from optax_rmsprop import _demo_train

  x, y, x_test, y_test = load_digits(seed)
  data = tuple(jnp.asarray(a) for a in (x, y, x_test, y_test))
  initial = _demo_train.init_model(x.shape[1], seed)
  print(
      f"Flax NNX MLP {x.shape[1]}-{HIDDEN}-{CLASSES} on scikit-learn digits: {len(x)} train / {len(x_test)} test images, "
      f"{steps} full-batch steps per optimizer, seed {seed}, JAX {jax.__version__} on "
      f"{jax.default_backend()} ({platform.machine()})",
      file=stdout,
      flush=True,
  )

  results = [_demo_train.train(OPTIMIZERS[name], initial, data, steps, progress) for name in optimizers]

  print(format_table(results), file=stdout)
  plot_curves(results, out, f"Flax NNX MLP on scikit-learn digits: {steps} full-batch steps, seed {seed}")
  print(f"loss curves written to {out}", file=stdout, flush=True)
  return results
