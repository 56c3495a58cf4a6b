"""The donated step updates its buffers in place: what XLA compiles, read from the executable.

No timing: the kernel count, the copies and ``compiled.memory_analysis()`` are deterministic for a
given jax/XLA and state the issue's memory targets directly (no full-size temporaries beyond the
outputs; no more kernels per leaf than optax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_rmsprop

_JAX = tuple(int(x) for x in jax.__version__.split(".")[:2])
SHAPE = (512, 1024)  # 2 MiB per float32 buffer: a full-size temporary cannot hide
VARIANTS = {"plain": {}, "centered+momentum": {"centered": True, "momentum": 0.9}, "momentum+wd": {"momentum": 0.9, "weight_decay": 1e-2}}


def _compile(tx, leaves=1):
  params = [jnp.zeros(SHAPE, jnp.float32) for _ in range(leaves)]
  grads = [jnp.ones(SHAPE, jnp.float32) for _ in range(leaves)]

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
  entry = compiled.as_text().split("\nENTRY")[-1]
  return compiled, entry


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("state_dtype", [None, jnp.bfloat16], ids=["float32", "bfloat16"])
def test_donated_step_has_no_temporaries_and_no_copies(variant, state_dtype):
  """float32 and bfloat16 state: every buffer is updated in place. (bfloat16 state reads back the
  stored value in the step; recomputing the unrounded one made XLA:CPU copy the donated buffer.)

  Not listed: Nesterov momentum needs the rms step twice (in the buffer and beside it), and XLA:CPU
  keeps it as one full-size temporary, for optax.rmsprop(nesterov=True) too; see
  test_nesterov_temporary_is_no_worse_than_optax."""
  tx = optax_rmsprop.rmsprop(1e-3, state_dtype=state_dtype, **VARIANTS[variant])
  compiled, entry = _compile(tx)
  mem = compiled.memory_analysis()
  if mem is None:
    pytest.skip("this backend reports no memory analysis")
  param_bytes = SHAPE[0] * SHAPE[1] * 4
  if state_dtype is not None and _JAX < (0, 10):
    # XLA before jax 0.10 keeps part of the bfloat16 step's float32 values as temporaries
    # (measured at jax 0.6.0-0.9.0: 1 to 7 MiB here, 0.5-3.5 B/param); the results are the same.
    assert mem.temp_size_in_bytes <= 4 * param_bytes, mem
    return
  assert mem.temp_size_in_bytes < 0.01 * param_bytes, mem
  assert entry.count(" copy(") == 0, "a donated buffer is copied every step"
  # Every donated state buffer is aliased to its output.
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(tx.init([jnp.zeros(SHAPE, jnp.float32)])))
  assert mem.alias_size_in_bytes >= param_bytes + state_bytes - 64


@pytest.mark.parametrize("variant", ["plain", "centered+momentum"])
def test_no_more_kernels_per_leaf_than_optax(variant):
  """16 same-shaped leaves: XLA emits one loop per output buffer for both; ours adds at most the
  step counter's scalar kernel."""
  kw = VARIANTS[variant]
  _, ours = _compile(optax_rmsprop.rmsprop(1e-3, **kw), leaves=16)
  _, ref = _compile(optax.rmsprop(1e-3, **kw), leaves=16)
  assert ours.count(" fusion(") <= ref.count(" fusion(") + 1
  assert ours.count(" copy(") == 0


def test_nesterov_temporary_is_no_worse_than_optax():
  kw = {"momentum": 0.9, "nesterov": True}
  ours, _ = _compile(optax_rmsprop.rmsprop(1e-3, **kw))
  ref, _ = _compile(optax.rmsprop(1e-3, **kw))
  if ours.memory_analysis() is None:
    pytest.skip("this backend reports no memory analysis")
  assert ours.memory_analysis().temp_size_in_bytes <= ref.memory_analysis().temp_size_in_bytes
