"""How the demo's learning rates were chosen: a grid sweep on a validation split, never the test set.

For each optimizer of ``python -m optax_rmsprop demo`` and each learning rate of a log grid, train
the demo's MLP from the demo's initialisation for the demo's default number of full-batch steps on
75 % of the demo's training split, and record the cross-entropy on the other 25 % after every step,
for seeds 0-2 (each seed: its own split and initialisation). The score of a rate is the validation
loss averaged over the last ``--window`` steps and the seeds, so that a run that oscillates cannot
win by ending between two spikes; the final validation loss is printed too.

    PYTHONPATH=. python -m benchmarks.demo_lr_sweep
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.model_selection import train_test_split

from optax_rmsprop import _demo, _demo_train

GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def _val_curve(make, steps: int):
  """A jitted function (lr, graphdef, params, data) -> the validation loss after each of ``steps`` updates."""

  def run(lr, graphdef, params, x, y, x_val, y_val):
    tx = optax.inject_hyperparams(lambda learning_rate: make(learning_rate))(learning_rate=lr)

    def loss(p, xs, ys):
      return _demo_train._loss(nnx.merge(graphdef, p)(xs), ys)

    def step(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p, x, y), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), loss(p, x_val, y_val)

    _, curve = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return jnp.where(jnp.isfinite(curve), curve, jnp.inf)

  return jax.jit(run, static_argnums=1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=_demo.DEFAULT_STEPS)
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--window", type=int, default=50)
  args = parser.parse_args()

  curves = {name: np.zeros((args.seeds, len(GRID), args.steps)) for name in _demo.OPTIMIZERS}
  for seed in range(args.seeds):
    x, y, _, _ = _demo.load_digits(seed)
    x, x_val, y, y_val = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    graphdef, params = nnx.split(_demo_train.init_model(x.shape[1], seed), nnx.Param)
    for name, spec in _demo.OPTIMIZERS.items():
      fn = _val_curve(spec.make, args.steps)
      for j, lr in enumerate(GRID):
        curves[name][seed, j] = np.asarray(fn(jnp.float32(lr), graphdef, params, x, y, x_val, y_val))

  print("demo optimizers: " + ", ".join(spec.call for spec in _demo.OPTIMIZERS.values()))
  header = "optimizer  " + "  ".join(f"{lr:>7g}" for lr in GRID) + "  best"
  for title, reduce in (
      (f"mean validation loss over the last {args.window} of {args.steps} steps (the score)",
       lambda c: c[..., -args.window:].mean(axis=(0, 2))),
      (f"validation loss after step {args.steps}", lambda c: c[..., -1].mean(axis=0)),
  ):
    print(f"\n{title}, mean over seeds 0-{args.seeds - 1}\n{header}")
    for name, c in curves.items():
      score = reduce(c)
      print(f"{name:<9}  " + "  ".join(f"{v:7.4f}" for v in score) + f"  {GRID[int(np.argmin(score))]:g}")


if __name__ == "__main__":
  main()
