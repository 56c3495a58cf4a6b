"""The demo's Flax NNX model and its jitted steps (see :mod:`optax_rmsprop._demo`).

Imported by :func:`optax_rmsprop._demo.run` once the ``demo`` extra (flax, scikit-learn,
matplotlib, tqdm) is known to be installed: the package itself never imports flax.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from optax_rmsprop._demo import CLASSES, HIDDEN, OptimizerResult, OptimizerSpec

__all__ = ["MLP", "init_model", "train"]


class MLP(nnx.Module):
  """A one-hidden-layer ReLU classifier."""

  def __init__(self, features: int, hidden: int, classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(features, hidden, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    self.out = nnx.Linear(hidden, classes, dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x)))


def init_model(features: int, seed: int) -> MLP:
  """The MLP every optimizer starts from, initialised from ``seed`` (flax's default initialisers).

  Built under ``nnx.jit`` from an RBG key: on CPU, compiling the eager threefry initialisation ops
  one by one takes longer than training the model.
  """
  return nnx.jit(lambda: MLP(features, HIDDEN, CLASSES, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg"))))()


def _loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def _train_step(model: MLP, optimizer: nnx.Optimizer, x, y, x_test, y_test) -> tuple[jax.Array, jax.Array]:
  """One full-batch update; returns the train and test losses of the parameters it started from."""
  loss, grads = nnx.value_and_grad(lambda m: _loss(m(x), y))(model)
  test_loss = _loss(model(x_test), y_test)
  optimizer.update(model, grads)
  return loss, test_loss


@nnx.jit
def _evaluate(model: MLP, x, y) -> tuple[jax.Array, jax.Array]:
  """Per-example cross-entropy and correctness (train and test in one call: one compilation)."""
  logits = model(x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y), jnp.argmax(logits, axis=-1) == y


def train(spec: OptimizerSpec, model: MLP, data: Sequence[jax.Array], steps: int, progress: bool) -> OptimizerResult:
  x, y, x_test, y_test = data
  model = nnx.clone(model)  # every optimizer starts from the same initialisation
  optimizer = nnx.Optimizer(model, spec.make(spec.learning_rate), wrt=nnx.Param)

  # Compile on throw-away copies so that the timed loop below measures steps, not compilation.
  jax.block_until_ready(_train_step(nnx.clone(model), nnx.clone(optimizer), *data))

  # cached_partial skips re-walking the model and optimizer graphs on every call.
  step = nnx.cached_partial(_train_step, model, optimizer)
  train_curve, test_curve = [], []
  start = time.perf_counter()
  for _ in tqdm(range(steps), desc=f"{spec.name:>8}", unit="step", disable=not progress, file=sys.stderr):
    loss, test_loss = step(*data)
    train_curve.append(loss)
    test_curve.append(test_loss)
  jax.block_until_ready((train_curve, test_curve))
  ms_per_step = (time.perf_counter() - start) / steps * 1e3

  losses, correct = (np.asarray(a) for a in _evaluate(model, jnp.concatenate([x, x_test]), jnp.concatenate([y, y_test])))
  n = len(x)
  return OptimizerResult(
      name=spec.name,
      learning_rate=spec.learning_rate,
      train_curve=np.append(np.asarray(jnp.stack(train_curve)), losses[:n].mean()).astype(np.float64),
      test_curve=np.append(np.asarray(jnp.stack(test_curve)), losses[n:].mean()).astype(np.float64),
      train_acc=float(correct[:n].mean()),
      test_acc=float(correct[n:].mean()),
      ms_per_step=ms_per_step,
  )
