"""Low-bit state: memory between and during the step, step time, and final loss, per ``state_dtype``.

Run from the repository root: ``python -m benchmarks.low_bit [--smoke] [--out DIR]``.

For each ``state_dtype`` (float32, bfloat16, 8-bit, 4-bit) and variant (plain, centered + momentum):

* state bytes per parameter between steps (``jax.eval_shape`` of ``init``);
* peak bytes per parameter during the step: the state plus XLA's temporaries of the jitted,
  donated step (``compiled.memory_analysis()``, deterministic), one leaf of ``--size`` parameters;
* step time against ``optax.rmsprop`` (float32 state), interleaved in one process (A B A B ...),
  as the median ratio;
* the final training loss of the digits MLP and of a synthetic classification task (150
  full-batch steps of ``rmsprop(1e-3)``), and its difference from the float32 state's;
* under ``optax.inject_hyperparams``: the step with ``eps``, ``decay`` or ``momentum`` injected
  (a traced array) against the same step with all three static, on small leaves (64x128, 128x128,
  128x10, momentum 0.9), interleaved, as the median ratio.

Writes ``DIR/low_bit.json``, ``DIR/low_bit.md`` (a table naming the machine) and
``DIR/low_bit.png`` (peak memory against final loss).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

STATE_DTYPES = {"float32": None, "bfloat16": "bfloat16", "8bit": "8bit", "4bit": "4bit"}
VARIANTS = {"plain": {}, "centered+momentum": {"centered": True, "momentum": 0.9}}
LR = 1e-3


def _nbytes(tree) -> int:
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def _step(tx):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return jax.jit(step, donate_argnums=(0, 1))


def memory(tx, size: int) -> dict[str, float]:
  """State and peak (state + temporaries) bytes per parameter of one leaf of ``size`` float32."""
  params = jax.ShapeDtypeStruct((size,), jnp.float32)
  state = jax.eval_shape(tx.init, params)
  mem = _step(tx).lower(params, state, params).compile().memory_analysis()
  state_b = _nbytes(state) / size
  temp_b = None if mem is None else mem.temp_size_in_bytes / size
  return {"state": state_b, "temp": temp_b, "peak": None if temp_b is None else state_b + temp_b}


def _interleaved(txs, params, g, rounds: int, steps: int) -> list[float]:
  """Median donated-step time of each of ``txs`` from ``params``, timed interleaved (A B A B ...)."""
  boxes = []
  for t in txs:
    box = {"f": _step(t), "p": jax.tree.map(jnp.copy, params), "s": t.init(params), "times": []}
    box["p"], box["s"] = box["f"](box["p"], box["s"], g)  # compile
    jax.block_until_ready(box["p"])
    boxes.append(box)
  for _ in range(rounds):
    for box in boxes:
      for _ in range(steps):
        t0 = time.perf_counter()
        box["p"], box["s"] = box["f"](box["p"], box["s"], g)
        jax.block_until_ready(box["p"])
        box["times"].append(time.perf_counter() - t0)
  return [statistics.median(box["times"]) for box in boxes]


def speed(tx, kw: dict, size: int, rounds: int, steps: int) -> float:
  """Median step time over optax.rmsprop's (flags ``kw``, float32 state), interleaved."""
  g = jax.random.normal(jax.random.key(1), (size,), jnp.float32) * 0.01
  ours, theirs = _interleaved((tx, optax.rmsprop(LR, **kw)), jnp.ones((size,), jnp.float32), g, rounds, steps)
  return ours / theirs


INJECTED = ("eps", "decay", "momentum")
SMALL_LEAVES = {"w1": (64, 128), "w2": (128, 128), "w3": (128, 10)}


def injected(state_dtype, rounds: int, steps: int) -> dict[str, float]:
  """Per hyperparameter of :data:`INJECTED`: the median step time with it injected (traced) over
  the step with every one static (``static_args``), interleaved, on :data:`SMALL_LEAVES`."""
  params = {k: jnp.ones(shape, jnp.float32) for k, shape in SMALL_LEAVES.items()}
  g = jax.tree.map(lambda p: p * 0.01, params)

  def make(traced: str | None):
    static = tuple(n for n in INJECTED if n != traced)
    return optax.inject_hyperparams(optax_rmsprop.rmsprop, static_args=static)(LR, momentum=0.9, state_dtype=state_dtype)

  names = (None, *INJECTED)
  base, *times = _interleaved([make(name) for name in names], params, g, rounds, steps)
  return {name: t / base for name, t in zip(INJECTED, times, strict=True)}


def _tasks():
  from sklearn.datasets import load_digits, make_classification

  x, y = load_digits(return_X_y=True)
  digits = (jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32), 10)
  x, y = make_classification(n_samples=2000, n_features=40, n_informative=20, n_classes=4, random_state=0)
  return {"digits": digits, "synthetic": (jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), 4)}


def final_loss(state_dtype, kw, task, steps: int, hidden: int = 128) -> float:
  """The tanh MLP of tests/test_quant.py: full-batch, ``steps`` steps of rmsprop(1e-3)."""
  x, y, k = task
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  d = x.shape[1]
  params = {
      "w1": jax.random.normal(k1, (d, hidden), jnp.float32) / np.sqrt(d),
      "b1": jnp.zeros((hidden,), jnp.float32),
      "w2": jax.random.normal(k2, (hidden, k), jnp.float32) / np.sqrt(hidden),
      "b2": jnp.zeros((k,), jnp.float32),
  }

  def loss_fn(p):
    h = jnp.tanh(x @ p["w1"] + p["b1"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["w2"] + p["b2"], y).mean()

  tx = optax_rmsprop.rmsprop(LR, state_dtype=state_dtype, **kw)

  def body(carry, _):
    p, s = carry
    g = jax.grad(loss_fn)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p, _), _ = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(params, tx.init(params))
  return float(loss_fn(p))


def machine() -> dict:
  from benchmarks.run import machine_info

  return machine_info()


def run(smoke: bool, out: Path, log=print) -> dict:
  size = 1 << 16 if smoke else 16 << 20
  rounds, steps, train_steps = (2, 2, 20) if smoke else (12, 3, 150)
  tasks = _tasks()
  rows = []
  for variant, kw in VARIANTS.items():
    ref = {name: final_loss(None, kw, task, train_steps) for name, task in tasks.items()}
    for name, sd in STATE_DTYPES.items():
      tx = optax_rmsprop.rmsprop(LR, state_dtype=sd, **kw)
      mem = memory(tx, size)
      losses = {t: final_loss(sd, kw, task, train_steps) for t, task in tasks.items()}
      row = {
          "state_dtype": name,
          "variant": variant,
          "params": size,
          "state_bytes_per_param": mem["state"],
          "temp_bytes_per_param": mem["temp"],
          "peak_bytes_per_param": mem["peak"],
          "x_optax": speed(tx, kw, size, rounds, steps),
          "loss": losses,
          "loss_vs_float32": {t: (losses[t] - ref[t]) / ref[t] for t in tasks},
      }
      rows.append(row)
      log(
          f"{variant:<18} {name:<9} state {row['state_bytes_per_param']:.3f} B/param  peak "
          f"{row['peak_bytes_per_param']:.3f} B/param  step x{row['x_optax']:.2f} optax  loss "
          + "  ".join(f"{t} {losses[t]:.4f} ({row['loss_vs_float32'][t]:+.2%})" for t in tasks)
      )
  inject_rounds, inject_steps = (2, 5) if smoke else (30, 20)
  inject = []
  for name, sd in STATE_DTYPES.items():
    ratios = injected(sd, inject_rounds, inject_steps)
    inject.append({"state_dtype": name, "traced_over_static": ratios})
    log(f"inject_hyperparams  {name:<9} traced/static step: " + "  ".join(f"{k} x{v:.2f}" for k, v in ratios.items()))
  result = {"machine": machine(), "rows": rows, "inject": inject, "smoke": smoke}
  out.mkdir(parents=True, exist_ok=True)
  (out / "low_bit.json").write_text(json.dumps(result, indent=1))
  (out / "low_bit.md").write_text(markdown(result))
  figure(result, out / "low_bit.png")
  return result


def markdown(result: dict) -> str:
  m = result["machine"]
  lines = [
      f"Low-bit state on {m['device']} ({m['backend']}), CPU {m['cpu']}{' (' + m['isa'] + ')' if m.get('isa') else ''} x {m['cores']} cores, jax {m['jax']}, optax {m['optax']}; "
      f"{result['rows'][0]['params']:,} parameters in one leaf, donated jitted step.",
      "",
      "| variant | state_dtype | state B/param | peak B/param (state + temporaries) | step x optax | digits loss (vs float32) | synthetic loss (vs float32) |",
      "|---|---|---|---|---|---|---|",
  ]
  for r in result["rows"]:
    loss = lambda t, r=r: f"{r['loss'][t]:.4f} ({r['loss_vs_float32'][t]:+.1%})"
    lines.append(
        f"| {r['variant']} | {r['state_dtype']} | {r['state_bytes_per_param']:.3f} | {r['peak_bytes_per_param']:.3f} | "
        f"{r['x_optax']:.2f} | {loss('digits')} | {loss('synthetic')} |"
    )
  lines += [
      "",
      "Under `optax.inject_hyperparams` (small leaves 64x128, 128x128, 128x10; momentum 0.9): the step with one",
      "hyperparameter injected (a traced array) over the step with all of them static.",
      "",
      "| state_dtype | " + " | ".join(f"`{k}` traced / static" for k in INJECTED) + " |",
      "|---|" + "---|" * len(INJECTED),
  ]
  for r in result["inject"]:
    lines.append(f"| {r['state_dtype']} | " + " | ".join(f"{r['traced_over_static'][k]:.2f}" for k in INJECTED) + " |")
  return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=80)
  for ax, task in zip(axes, ("digits", "synthetic"), strict=True):
    for variant, marker in zip(VARIANTS, "os", strict=True):
      rows = [r for r in result["rows"] if r["variant"] == variant]
      ax.plot([r["peak_bytes_per_param"] for r in rows], [r["loss"][task] for r in rows], marker=marker, label=variant)
      for r in rows:
        ax.annotate(r["state_dtype"], (r["peak_bytes_per_param"], r["loss"][task]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="peak bytes per parameter during the step", ylabel="final loss", title=f"{task} MLP, 150 steps", yscale="log")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check that it runs")
  parser.add_argument("--out", type=Path, default=Path("benchmarks/results") / jax.default_backend())
  args = parser.parse_args(argv)
  run(args.smoke, args.out)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
