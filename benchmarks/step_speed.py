"""Speed check: one jitted, donated RMSProp step over 16M float32 parameters, ours vs optax's.

Run from the repository root: ``python -m benchmarks.step_speed [--size N] [--rounds R] [--steps K]``.

The two optimizers run interleaved in one process (A B A B ...), so slow phases of a shared, noisy
machine hit both alike; the printed times are medians over all timed steps. Parameters and state
are donated, so each step updates its buffers in place, as a training loop does. Also printed: the
number of fused kernels XLA compiled each step into (fewer kernels over the same bytes usually
means fewer passes over memory).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop

VARIANTS = {
    "default": dict(),
    "centered+momentum": dict(centered=True, momentum=0.9),
}


def _step_fn(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return jax.jit(step, donate_argnums=(0, 1))


def _kernel_count(step, params, state, grads) -> int:
  """Kernels (fusions, copies, other real ops) in the compiled step's entry computation."""
  hlo = step.lower(params, state, grads).compile().as_text()
  entry = hlo[hlo.index("\nENTRY") :].split("\n}\n")[0].splitlines()[1:]
  free = ("parameter(", "tuple(", "get-tuple-element(", "constant(", "bitcast(")
  return sum(1 for line in entry if "=" in line and not any(f in line for f in free))


def measure(kwargs: dict, size: int, rounds: int, steps: int) -> dict[str, float]:
  key = jax.random.key(0)
  grads = jax.random.normal(key, (size,), jnp.float32)
  runs = {}
  for name, make in (("optax_rmsprop", optax_rmsprop.rmsprop), ("optax", optax.rmsprop)):
    tx = make(learning_rate=1e-3, **kwargs)
    params = jnp.ones((size,), jnp.float32)
    state = tx.init(params)
    step = _step_fn(tx)
    kernels = _kernel_count(step, params, state, grads)
    params, state = step(params, state, grads)  # compile and warm up
    jax.block_until_ready(params)
    runs[name] = dict(step=step, params=params, state=state, times=[], kernels=kernels)
  for _ in range(rounds):
    for run in runs.values():  # interleaved: A B A B ...
      for _ in range(steps):
        t0 = time.perf_counter()
        run["params"], run["state"] = run["step"](run["params"], run["state"], grads)
        jax.block_until_ready(run["params"])
        run["times"].append(time.perf_counter() - t0)
  return {name: (statistics.median(run["times"]) * 1e3, run["kernels"]) for name, run in runs.items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=16 * 2**20, help="number of float32 parameters")
  parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
  parser.add_argument("--steps", type=int, default=5, help="timed steps per optimizer per round")
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, optax {optax.__version__}, backend {jax.default_backend()}, "
        f"{args.size:,} float32 params, {args.rounds}x{args.steps} steps each, median ms/step")
  for variant, kwargs in VARIANTS.items():
    res = measure(kwargs, args.size, args.rounds, args.steps)
    ours, theirs = res["optax_rmsprop"], res["optax"]
    print(
        f"{variant:>18}: optax_rmsprop {ours[0]:7.2f} ms ({ours[1]} kernels)   optax {theirs[0]:7.2f} ms "
        f"({theirs[1]} kernels)   ratio {ours[0] / theirs[0]:.3f}"
    )


if __name__ == "__main__":
  main()
