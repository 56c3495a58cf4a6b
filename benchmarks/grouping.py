"""Where the many-leaf cost goes, and whether grouping same-shaped leaves helps (issue 7).

``python -m benchmarks.grouping [--smoke] [--out DIR]`` writes ``DIR/grouping.md`` (and prints it).

Three measurements, each in one process with interleaved medians (the suite's timing helpers):

1. **Per-kernel cost**: a donated step over 1000 leaves of a few elements each, the same-bytes
   streaming kernel (two output buffers per leaf, so two kernels per leaf): what XLA:CPU spends per
   kernel when there is nothing to compute.
2. **Kernels per leaf** in the compiled donated step (fusions in the entry computation) for
   ``optax.rmsprop``, ours and the stream, over 16M parameters in 1000 leaves.
3. **Grouping**: RMSProp with its state stored stacked per group of ``k`` same-shaped leaves
   (``nu`` of shape ``(k, n)``), the gradients stacked into the group's update (XLA fuses the
   concatenation into the loop, reading ``k`` buffers), the parameters updated per leaf from a
   slice of the group's new ``nu``: one ``nu`` kernel per group instead of one per leaf. Step time
   and compile time against optax, for ``k`` = 4, 8, 40 and all leaves in one group.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import optax

import optax_rmsprop
from benchmarks import run as suite

LR, DECAY, EPS = suite.LR, suite.DECAY, suite.EPS


def _grouped(k: int, params, grads) -> suite.Runner:
  """RMSProp with ``nu`` stacked per group of ``k`` leaves (see the module docstring)."""
  n_groups = len(params) // k
  state = [jnp.zeros((k, *params[0].shape), params[0].dtype) for _ in range(n_groups)]

  def update_step(p, nus, g):
    new_p, new_nus = [], []
    for j, nu in enumerate(nus):
      gs, ps = g[j * k : (j + 1) * k], p[j * k : (j + 1) * k]
      nu = DECAY * nu + (1 - DECAY) * jnp.stack(gs) ** 2
      new_nus.append(nu)
      new_p += [pi - LR * gi * jax.lax.rsqrt(nu[i] + EPS) for i, (pi, gi) in enumerate(zip(ps, gs, strict=True))]
    return new_p, new_nus

  return suite._jax_runner(update_step, params, state, grads)


def _medians(runners, rounds, min_round_s):
  samples = suite._time_group(runners, rounds, min_round_s)
  return {k: statistics.median(v) for k, v in samples.items()}


def measure(smoke: bool) -> list[str]:
  rounds, min_round_s = (3, 0.0) if smoke else (9, 0.2)
  total, leaves = (1 << 14, 16) if smoke else (1 << 24, 1000)
  out = []

  # 1. Per-kernel cost with nothing to compute.
  tiny = {n: suite._stream("plain", suite._tree(n * 8, n, 0), suite._tree(n * 8, n, 1)) for n in (1, leaves)}  # fresh trees: donated
  med = _medians(tiny, rounds, min_round_s)
  per_kernel_us = (med[leaves] - med[1]) / (2 * (leaves - 1)) * 1e6
  out += [
      f"1. Per-kernel cost: a donated same-bytes step over {leaves} leaves of 8 elements takes "
      f"{med[leaves] * 1e3:.3f} ms against {med[1] * 1e3:.3f} ms for one leaf: "
      f"{per_kernel_us:.2f} µs per kernel ({tiny[leaves].kernels['fusion']} kernels).",
      "",
  ]

  # 2 and 3. Kernels per leaf and grouping, 16M parameters in `leaves` leaves.
  grads = jax.tree.map(lambda x: x * 0.01, suite._tree(total, leaves, 1))

  def params():  # each runner donates its own copy
    return suite._tree(total, leaves, 0)

  runners = {
      "optax": suite._optax_like(optax.rmsprop(LR, decay=DECAY, eps=EPS), params(), grads),
      "ours": suite._optax_like(optax_rmsprop.rmsprop(LR, decay=DECAY, eps=EPS), params(), grads),
      "stream": suite._stream("plain", params(), grads),
  }
  for k in (4, 8, 40, leaves) if not smoke else (4, leaves):
    if leaves % k == 0:
      runners[f"grouped k={k}"] = _grouped(k, params(), grads)
  med = _medians(runners, rounds, min_round_s)
  out += [
      f"2-3. {total / 2**20:.3g}M float32 parameters in {leaves} leaves, donated step, medians of {rounds} interleaved rounds:",
      "",
      "| impl | step ms | × optax | kernels (fusions) | per leaf | copies | compile s | × optax compile | temp MiB |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for name, r in runners.items():
    mem = r.memory or {}
    out.append(
        f"| {name} | {med[name] * 1e3:.2f} | {med[name] / med['optax']:.2f} | {r.kernels['fusion']} | "
        f"{r.kernels['fusion'] / leaves:.2f} | {r.kernels['copy']} | {r.compile_s:.2f} | "
        f"{r.compile_s / runners['optax'].compile_s:.2f} | {mem.get('temp', 0) / 2**20:.0f} |"
    )
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m benchmarks.grouping", description=__doc__.split("\n\n")[0])
  ap.add_argument("--smoke", action="store_true", help="a tiny configuration that runs in seconds (CI)")
  ap.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"), help="output folder")
  args = ap.parse_args(argv)
  info = suite.machine_info()
  lines = [f"Machine: {info['cpu']} x {info['cores']} cores, {info['backend']}; jax {info['jax']}, optax {info['optax']}.", ""]
  lines += measure(args.smoke)
  text = "\n".join(lines) + "\n"
  print(text)
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / "grouping.md").write_text(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
