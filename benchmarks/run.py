"""The benchmark suite: ``python -m benchmarks.run [--smoke] [--out DIR]`` (also ``make bench``).

For each group (parameter count x number of leaves x variant) it builds every implementation once,
then times them interleaved in one process (A B C A B C ...), takes medians and reports ratios
against optax.rmsprop and against a same-bytes streaming kernel (the roofline reference: a jitted,
donated elementwise step that reads the parameters, the gradient and every state buffer once and
writes the parameters and the state once, with trivial arithmetic). Also: compile time (trace +
lower + compile of the donated step), state bytes per parameter, and the donated step's memory from
``compiled.memory_analysis()`` (temporaries beyond the outputs should be ~0).

Writes ``DIR/results.json`` and ``DIR/results.md`` (a table naming the machine). Timings on a
shared machine are noisy: read the ratios, which compare neighbours timed in the same rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_rmsprop

VARIANTS = {
    "plain": {},
    "centered+momentum": {"centered": True, "momentum": 0.9},
}
LR, DECAY, EPS = 1e-3, 0.9, 1e-8


@dataclasses.dataclass
class Group:
  params: int
  leaves: int
  variant: str
  impls: tuple[str, ...]


@dataclasses.dataclass
class Config:
  groups: list[Group]
  rounds: int
  min_round_s: float


def _config(smoke: bool, device: str) -> Config:
  all_jax = ("ours", "optax", "stream", "ours-bf16", "ours-8bit", "ours-4bit")
  if smoke:
    groups = [Group(1 << 14, 1, "plain", (*all_jax, "torch")), Group(1 << 14, 4, "centered+momentum", all_jax)]
    return Config(groups, rounds=3, min_round_s=0.0)
  m = 1 << 20
  single = (1, 16, 64) if device == "cpu" else (16, 64, 128, 256)
  groups = [Group(s * m, 1, v, (*all_jax, "torch")) for s in single for v in VARIANTS]
  for n in (100, 1000, 2000, 4000) if device == "cpu" else (1000, 4000):
    groups.append(Group(16 * m, n, "plain", ("ours", "optax", "stream", "torch")))
  groups.append(Group(16 * m, 1000, "centered+momentum", ("ours", "optax", "stream", "torch")))
  return Config(groups, rounds=9 if device == "cpu" else 15, min_round_s=0.2 if device == "cpu" else 0.05)


# ---------------------------------------------------------------------------------------------
# Implementations: each returns a Runner that advances its own donated state by one step.


@dataclasses.dataclass
class Runner:
  step: Callable[[], None]  # runs one step (asynchronously for JAX)
  sync: Callable[[], None]  # waits for the last step
  compile_s: float | None
  state_bytes: int
  memory: dict[str, int] | None
  kernels: dict[str, int] | None  # what XLA emitted: fusions and copies in the entry computation
  min_bytes: int  # bytes a step must move at least (read p, g, state; write p, state)


def _tree(total: int, leaves: int, seed: int):
  per = total // leaves
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.standard_normal(per, dtype=np.float32)) for _ in range(leaves)]


def _nbytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def _memory(compiled) -> dict[str, int] | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # some backends have none
    return None
  if m is None:
    return None
  out = {
      k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0) for k in ("argument", "output", "alias", "temp", "generated_code")
  }
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def _jax_runner(update_step, params, state, grads) -> Runner:
  """Compiles ``update_step(p, s, g) -> (p, s)`` with p and s donated and wraps it."""
  jitted = jax.jit(update_step, donate_argnums=(0, 1))
  t0 = time.perf_counter()
  compiled = jitted.lower(params, state, grads).compile()
  compile_s = time.perf_counter() - t0
  box = {"p": params, "s": state}
  state_bytes = _nbytes(state)

  def step():
    box["p"], box["s"] = compiled(box["p"], box["s"], grads)

  def sync():
    jax.block_until_ready(box["p"])

  min_bytes = 2 * _nbytes(params) + _nbytes(grads) + 2 * state_bytes
  entry = compiled.as_text().split("\nENTRY")[-1]
  kernels = {k: entry.count(f" {k}(") for k in ("fusion", "copy", "custom-call")}
  return Runner(step, sync, compile_s, state_bytes, _memory(compiled), kernels, min_bytes)


def _optax_like(tx, params, grads) -> Runner:
  def update_step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return _jax_runner(update_step, params, tx.init(params), grads)


def _stream(variant: str, params, grads) -> Runner:
  """The roofline reference: the same bytes as the float32 step, trivial arithmetic."""
  n_buffers = 3 if variant == "centered+momentum" else 1
  state = [[jnp.ones_like(p) for p in params] for _ in range(n_buffers)]

  def update_step(p, s, g):
    return [a + b for a, b in zip(p, g, strict=True)], [[x * 0.5 for x in buf] for buf in s]

  return _jax_runner(update_step, params, state, grads)


def _torch_runner(variant: str, total: int, leaves: int, device: str) -> Runner | None:
  try:
    import torch
  except ImportError:
    return None
  dev = "cuda" if device == "gpu" and torch.cuda.is_available() else "cpu"
  if device == "gpu" and dev == "cpu":
    return None
  per = total // leaves
  gen = torch.Generator().manual_seed(0)
  params = [torch.randn(per, generator=gen).to(dev).requires_grad_() for _ in range(leaves)]
  for p in params:
    p.grad = torch.randn(per, generator=gen).to(dev)
  kw = VARIANTS[variant]
  opt = torch.optim.RMSprop(
      params, lr=LR, alpha=DECAY, eps=EPS, centered=kw.get("centered", False), momentum=kw.get("momentum", 0.0), foreach=True
  )
  opt.step()  # allocates the state
  state_bytes = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  n = total // leaves * leaves
  return Runner(opt.step, sync, None, state_bytes, None, None, 4 * n * 3 + 2 * state_bytes)


def _build(impl: str, g: Group, device: str) -> Runner | None:
  kw = VARIANTS[g.variant]
  if impl == "torch":
    return _torch_runner(g.variant, g.params, g.leaves, device)
  params, grads = _tree(g.params, g.leaves, 0), _tree(g.params, g.leaves, 1)
  grads = jax.tree.map(lambda x: x * 0.01, grads)
  if impl == "stream":
    return _stream(g.variant, params, grads)
  if impl == "optax":
    return _optax_like(optax.rmsprop(LR, decay=DECAY, eps=EPS, **kw), params, grads)
  state_dtype = {"ours": None, "ours-bf16": jnp.bfloat16, "ours-8bit": "8bit", "ours-4bit": "4bit"}[impl]
  tx = optax_rmsprop.rmsprop(LR, decay=DECAY, eps=EPS, state_dtype=state_dtype, **kw)
  return _optax_like(tx, params, grads)


# ---------------------------------------------------------------------------------------------
# Timing.


def _calibrate(r: Runner, min_round_s: float) -> int:
  """Steps per timed sample so that one sample lasts about ``min_round_s``."""
  r.step()
  r.sync()
  t0 = time.perf_counter()
  r.step()
  r.sync()
  one = max(time.perf_counter() - t0, 1e-6)
  return max(1, min(200, int(min_round_s / one)))


def _time_group(runners: dict[str, Runner], rounds: int, min_round_s: float) -> dict[str, list[float]]:
  reps = {k: _calibrate(r, min_round_s) for k, r in runners.items()}
  samples: dict[str, list[float]] = {k: [] for k in runners}
  names = list(runners)
  for i in range(rounds):
    # Interleaved: every implementation once per round, the order rotating so that none always
    # runs first (on a cache left cold by the previous round's largest implementation).
    for k in names[i % len(names) :] + names[: i % len(names)]:
      r = runners[k]
      r.sync()
      t0 = time.perf_counter()
      for _ in range(reps[k]):
        r.step()
      r.sync()
      samples[k].append((time.perf_counter() - t0) / reps[k])
  return samples


def machine_info() -> dict[str, Any]:
  cpu = platform.processor() or platform.machine()
  isa = None  # the widest vector instructions XLA:CPU may use here (low-bit step ratios depend on it)
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
      elif line.startswith("flags") and isa is None:
        flags = line.split(":", 1)[1].split()
        isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
  except OSError:
    pass
  dev = jax.devices()[0]
  info = {
      "cpu": cpu,
      "cores": os.cpu_count(),
      "isa": isa,
      "backend": jax.default_backend(),
      "device": getattr(dev, "device_kind", str(dev)),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "optax": optax.__version__,
      "optax_rmsprop": optax_rmsprop.__version__,
  }
  try:
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    info["torch"] = None
  return info


def _copy_bandwidth(device: str, smoke: bool) -> float | None:
  """Bytes read + written per second by a jitted ``x + 1`` over a large float32 array."""
  n = (1 << 16) if smoke else ((1 << 28) if device == "gpu" else (1 << 24))
  x = jnp.ones((n,), jnp.float32)
  f = jax.jit(lambda x: x + 1, donate_argnums=0)
  x = f(x).block_until_ready()
  times = []
  for _ in range(3 if smoke else 20):
    t0 = time.perf_counter()
    x = f(x).block_until_ready()
    times.append(time.perf_counter() - t0)
  return 8 * n / statistics.median(times)


def run(smoke: bool, out: Path, log=print) -> dict[str, Any]:
  device = "gpu" if jax.default_backend() == "gpu" else "cpu"
  cfg = _config(smoke, device)
  info = machine_info()
  copy_bw = _copy_bandwidth(device, smoke)
  log(f"machine: {info}")
  log(f"copy bandwidth (x + 1, bytes read + written): {copy_bw / 1e9:.1f} GB/s")
  rows = []
  for g in cfg.groups:
    runners = {}
    for impl in g.impls:
      r = _build(impl, g, device)
      if r is not None:
        runners[impl] = r
    samples = _time_group(runners, cfg.rounds, cfg.min_round_s)
    med = {k: statistics.median(v) for k, v in samples.items()}
    n = g.params // g.leaves * g.leaves
    for impl, r in runners.items():
      row = {
          "params": n,
          "leaves": g.leaves,
          "variant": g.variant,
          "impl": impl,
          "step_ms": med[impl] * 1e3,
          "step_ms_min": min(samples[impl]) * 1e3,
          "step_ms_max": max(samples[impl]) * 1e3,
          "x_optax": med[impl] / med["optax"] if "optax" in med else None,
          "x_stream": med[impl] / med["stream"] if "stream" in med else None,
          "compile_s": r.compile_s,
          "state_bytes_per_param": r.state_bytes / n,
          "memory": r.memory,
          "kernels": r.kernels,
          "min_bytes": r.min_bytes,
          "gbps": r.min_bytes / med[impl] / 1e9,
          "x_copy_bw": (r.min_bytes / med[impl]) / copy_bw if copy_bw else None,
      }
      rows.append(row)
      log(_fmt_row(row))
    del runners
    result = {"machine": info, "copy_gbps": copy_bw / 1e9, "smoke": smoke, "rounds": cfg.rounds, "rows": rows}
    _write(out, result)  # after every group, so an interrupted run still leaves its results
  return result


def _write(out: Path, result: dict[str, Any]) -> None:
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(result, indent=1))
  (out / "results.md").write_text(markdown(result))


def _f(x, spec):
  return "" if x is None else format(x, spec)


def _fmt_row(r) -> str:
  mem = r["memory"] or {}
  return (
      f"{r['params']:>10} {r['leaves']:>5} {r['variant']:<18} {r['impl']:<10} {r['step_ms']:9.3f} ms"
      f"  x_optax {_f(r['x_optax'], '.3f'):>6}  x_stream {_f(r['x_stream'], '.3f'):>6}"
      f"  compile {_f(r['compile_s'], '.2f'):>6} s  {r['state_bytes_per_param']:.3f} B/param"
      f"  temp {mem.get('temp', 0) / 2**20:.1f} MiB  {r['gbps']:.1f} GB/s"
  )


def markdown(result: dict[str, Any]) -> str:
  m = result["machine"]
  lines = [
      f"Machine: {m['device']} ({m['backend']}), CPU {m['cpu']} x {m['cores']} cores; jax {m['jax']}, "
      f"optax {m['optax']}, torch {m.get('torch')}; copy bandwidth {result['copy_gbps']:.1f} GB/s "
      f"(x + 1, bytes read + written). Medians of {result['rounds']} interleaved rounds"
      + (" (smoke configuration)." if result["smoke"] else "."),
      "",
      "| params | leaves | variant | impl | step ms (median) | min | × optax | × stream | compile s | state B/param | temp MiB | peak MiB | GB/s | × copy BW |",
      "|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in result["rows"]:
    mem = r["memory"] or {}
    lines.append(
        f"| {r['params'] / 2**20:.3g}M | {r['leaves']} | {r['variant']} | {r['impl']} | {r['step_ms']:.3f} | {r['step_ms_min']:.3f} | "
        f"{_f(r['x_optax'], '.2f')} | {_f(r['x_stream'], '.2f')} | {_f(r['compile_s'], '.2f')} | "
        f"{r['state_bytes_per_param']:.3f} | {_f(mem.get('temp', 0) / 2**20, '.1f') if mem else ''} | "
        f"{_f(mem.get('peak', 0) / 2**20, '.0f') if mem else ''} | {r['gbps']:.1f} | {_f(r['x_copy_bw'], '.2f')} |"
    )
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
  ap.add_argument("--smoke", action="store_true", help="a tiny configuration that runs in seconds (CI)")
  ap.add_argument("--out", type=Path, default=Path("benchmarks/results/latest"), help="output folder")
  args = ap.parse_args(argv)
  run(args.smoke, args.out, log=lambda s: print(s, flush=True))
  print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
