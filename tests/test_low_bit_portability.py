"""Low-bit state is plain JAX: the same bits in every process (with or without a C++ compiler on
the machine), nothing compiled or warned about at run time, and a jitted step that ``jax.export``
serialises for CPU, GPU and TPU and calls back on CPU.

Leaves are large enough for the chunked step (over 2**16 elements), with a padded last block."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export

import optax_rmsprop

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODECS = ["8bit", "4bit"]
FLAGS = {
    "plain": {},
    "centered+momentum+nesterov": {"centered": True, "momentum": 0.9, "nesterov": True},
    "schedule+weight_decay": {"learning_rate": optax.linear_schedule(1e-3, 1e-4, 10), "momentum": 0.9, "weight_decay": 1e-2},
}

# Trains every codec and flag set for a few steps and prints a hash of the final params and state.
_TRAIN = r"""
import hashlib, jax, jax.numpy as jnp, numpy as np, optax, optax_rmsprop
shapes = {"w": (512, 300), "v": (1 << 17,), "b": (300,)}
rng = np.random.default_rng(0)
params0 = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
digest = hashlib.sha256()
for state_dtype in ("8bit", "4bit"):
  for kw in ({}, {"centered": True, "momentum": 0.9, "nesterov": True}):
    tx = optax_rmsprop.rmsprop(1e-3, state_dtype=state_dtype, **kw)
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s
    step = jax.jit(step, donate_argnums=(0, 1))
    p = jax.tree.map(jnp.copy, params0)
    s = tx.init(p)
    for t in range(6):
      g = jax.tree.map(lambda x: jnp.sin(x * (t + 1)) * 0.01, p)
      p, s = step(p, s, g)
    for leaf in jax.tree.leaves((p, s)):
      digest.update(np.asarray(leaf).tobytes())
print(digest.hexdigest())
"""


def _no_compiler_env(tmp_path) -> dict[str, str]:
  """The environment with a PATH that holds only this Python: no cc, c++, gcc or clang."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "python").symlink_to(sys.executable)
  return {**os.environ, "PATH": str(bin_dir), "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _run(code: str, env: dict[str, str], *flags: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


@pytest.mark.slow
def test_state_is_byte_identical_with_and_without_a_compiler(tmp_path):
  """Two processes, one of which finds no C++ compiler: the same params and state, byte for byte."""
  bare = _no_compiler_env(tmp_path)
  probe = _run("import shutil; print([shutil.which(c) for c in ('cc', 'c++', 'gcc', 'g++', 'clang++')])", bare)
  assert probe.stdout.strip() == "[None, None, None, None, None]", probe.stdout + probe.stderr
  full = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
  runs = [_run(_TRAIN, env) for env in (full, bare)]
  for r in runs:
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "", r.stderr[-3000:]  # nothing warned, nothing compiled
  assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout.strip()) == 64


def test_low_bit_training_runs_with_warnings_as_errors():
  """``python -W error``: import, init, jitted and eager low-bit steps, inject_hyperparams, vmap."""
  code = r"""
import jax, jax.numpy as jnp, optax, optax_rmsprop
p = {"w": jnp.ones((256, 300)), "b": jnp.ones((300,))}
for state_dtype in ("8bit", "4bit", "8-bit"):
  for tx in (optax_rmsprop.rmsprop(1e-3, momentum=0.9, centered=True, state_dtype=state_dtype),
             optax.inject_hyperparams(optax_rmsprop.rmsprop)(1e-3, momentum=0.9, state_dtype=state_dtype)):
    s = tx.init(p)
    u, s = jax.jit(tx.update)(p, s, p)
    u, s = tx.update(p, s, p)
small = {"w": jnp.ones((3, 64, 128))}
tx = optax_rmsprop.rmsprop(1e-3, state_dtype="4bit")
jax.vmap(lambda g: tx.update(g, tx.init(g))[0])(small["w"])
print("OK")
"""
  r = _run(code, {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}, "-W", "error")
  assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]


def _step(tx):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return jax.jit(step)


def _bytes(tree) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    digest.update(np.asarray(leaf).tobytes())
  return digest.hexdigest()


def _register_optax_states(tree) -> None:
  """optax's state classes by name, as a user exporting an optax step registers them (ours, the
  codes' nodes and DecoupledWeightDecayState, the package registers itself)."""
  seen = set()

  def visit(x):
    if isinstance(x, tuple) and hasattr(x, "_fields") and type(x).__module__.startswith("optax") and type(x) not in seen:
      seen.add(type(x))
      try:
        export.register_namedtuple_serialization(type(x), serialized_name=f"{type(x).__module__}.{type(x).__name__}")
      except ValueError:  # already registered
        pass
    if isinstance(x, (tuple, list)):
      for y in x:
        visit(y)

  visit(tree)


@pytest.mark.parametrize("variant", list(FLAGS))
@pytest.mark.parametrize("state_dtype", CODECS)
def test_jax_export_round_trip(state_dtype, variant):
  """A jitted low-bit step exported for CPU, CUDA and TPU, serialised, deserialised and called on
  CPU: the same params and state as the jitted step, bit for bit (no custom call in it)."""
  tx = optax_rmsprop.rmsprop(**{"learning_rate": 1e-3, **FLAGS[variant]}, state_dtype=state_dtype)
  rng = np.random.default_rng(0)
  p = {"w": jnp.asarray(rng.standard_normal((512, 300)), jnp.float32), "v": jnp.asarray(rng.standard_normal((1 << 17,)), jnp.float32)}
  g = jax.tree.map(lambda x: x * 0.01, p)
  s = tx.init(p)
  spec = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  _register_optax_states(s)
  exported = export.export(_step(tx), platforms=("cpu", "cuda", "tpu"))(spec(p), spec(s), spec(g))
  assert "custom_call" not in exported.mlir_module()
  restored = export.deserialize(exported.serialize())
  got = restored.call(p, s, g)
  want = _step(tx)(p, s, g)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert _bytes(got) == _bytes(want)
  # Twice: the state it returns is a valid input again.
  assert _bytes(restored.call(*got, g)) == _bytes(_step(tx)(*want, g))


def test_no_native_code_is_shipped_or_built():
  """The package is Python alone: no C/C++ source, no shared library, no compiler invocation."""
  package = ROOT / "optax_rmsprop"
  assert not [p.name for p in package.iterdir() if p.suffix in (".c", ".cc", ".cpp", ".so", ".pyd")]
  source = "\n".join(p.read_text() for p in package.glob("*.py"))
  for word in ("subprocess", "ctypes", "jax.ffi", "shutil.which"):
    assert word not in source, word
