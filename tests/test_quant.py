"""8-bit blockwise state (``state_dtype="8bit"``): bytes, the code maps against a NumPy
transcription, that momentum and weight decay really act, machinery (jit, lax.cond, eval_shape,
tree_get), block boundaries, and training quality against float32 state."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import _quant

# ---------------------------------------------------------------------------------------------
# An independent NumPy transcription of the documented code maps (module docstring of _quant).


def np_encode(x: np.ndarray, signed: bool, block: int):
  rows = x.reshape(-1, x.shape[-1])
  nb = -(-rows.shape[1] // block)
  codes = np.zeros(rows.shape, np.uint8)
  scales = np.zeros((rows.shape[0], nb), np.float32)
  for i, row in enumerate(rows):
    for b in range(nb):
      seg = row[b * block : (b + 1) * block].astype(np.float64)
      a = np.max(np.abs(seg))
      scales[i, b] = a
      r = seg / a if a > 0 else np.zeros_like(seg)
      if signed:
        c = np.sign(r) * np.round(127 * np.sqrt(np.abs(r))) + 127
      else:
        c = np.round(255 * r**0.25)
      codes[i, b * block : (b + 1) * block] = c
  return codes.reshape(x.shape), scales.reshape(*x.shape[:-1], nb)


def np_decode(codes: np.ndarray, scales: np.ndarray, signed: bool, block: int):
  c = codes.astype(np.float64)
  s = np.repeat(scales.astype(np.float64), block, axis=-1)[..., : codes.shape[-1]]
  if signed:
    t = (c - 127) / 127
    return s * np.sign(t) * t * t
  return s * (c / 255) ** 4


def _nbytes(tree) -> int:
  return sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("signed", [False, True])
def test_codes_match_numpy_transcription(signed):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((6, 512)).astype(np.float32) * np.logspace(-3, 3, 6, dtype=np.float32)[:, None]
  x = x if signed else x * x
  codes, scale = _quant._encode(jnp.asarray(x), signed=signed)
  want_codes, want_scale = np_encode(x, signed, 256)
  np.testing.assert_allclose(np.asarray(scale), want_scale, rtol=1e-6)
  # Rounding ties may land one code apart between float32 and float64 arithmetic.
  assert np.max(np.abs(np.asarray(codes).astype(int) - want_codes.astype(int))) <= 1
  assert np.mean(np.asarray(codes) == want_codes) > 0.99
  buf = _quant.Quantized8bit(codes=codes, scale=scale, signed=signed)
  got = np.asarray(_quant._decode(buf, jnp.float32))
  np.testing.assert_allclose(got, np_decode(np.asarray(codes), np.asarray(scale), signed, 256), rtol=1e-5, atol=0)
  # Values near each block's largest keep ~1 % relative precision.
  big = np.abs(x) > 0.5 * np.repeat(want_scale, 256, axis=-1)
  np.testing.assert_allclose(got[big], x[big], rtol=0.02)


def test_unsigned_map_uses_all_codes_for_non_negative_values():
  x = jnp.asarray(np.linspace(0, 1, 256 * 64, dtype=np.float32) ** 4)
  codes, _ = _quant._encode(x, signed=False)
  assert len(np.unique(np.asarray(codes))) == 256


def test_blocks_stay_within_rows():
  # Rows 1000x apart: a block crossing a row would give the small row the big row's scale.
  x = np.ones((4, 1000), np.float32) * np.array([1e-3, 1.0, 1e3, 1e-6], np.float32)[:, None]
  codes, scale = _quant._encode(jnp.asarray(x), signed=True)
  assert scale.shape == (4, 4)  # four blocks of 250 per row of 1000
  np.testing.assert_allclose(np.asarray(scale), np.repeat(x[:, :1], 4, axis=1), rtol=1e-6)
  assert codes.shape == x.shape and codes.dtype == jnp.uint8


def test_state_bytes_per_parameter():
  params = {"w": jax.ShapeDtypeStruct((1024, 1024), jnp.float32), "b": jax.ShapeDtypeStruct((1024,), jnp.float32)}
  n_big = 1024 * 1024
  plain = jax.eval_shape(optax_rmsprop.rmsprop(1e-3, state_dtype="8bit").init, params)
  nu = optax.tree_utils.tree_get(plain, "nu")
  assert isinstance(nu["w"], _quant.Quantized8bit)
  assert nu["b"].dtype == jnp.float32  # small tensors stay float32
  assert _nbytes(nu["w"]) / n_big <= 1.05
  full = jax.eval_shape(optax_rmsprop.rmsprop(1e-3, centered=True, momentum=0.9, state_dtype="8bit").init, params)
  big = [s for s in jax.tree.leaves(full, is_leaf=lambda x: isinstance(x, _quant.Quantized8bit)) if isinstance(s, _quant.Quantized8bit)]
  assert len(big) == 3
  assert sum(_nbytes(b) for b in big) / n_big <= 3.15
  bf16 = jax.eval_shape(optax_rmsprop.rmsprop(1e-3, state_dtype=jnp.bfloat16).init, params)
  assert _nbytes(optax.tree_utils.tree_get(bf16, "nu")["w"]) / n_big == 2


def _np_rmsprop(p, grads, lr, decay, eps, momentum=None, weight_decay=None):
  """Float64 NumPy transcription of optax.rmsprop (+ decoupled weight decay on the old params)."""
  p = p.astype(np.float64)
  nu, b = np.zeros_like(p), np.zeros_like(p)
  for g in grads:
    nu = decay * nu + (1 - decay) * g * g
    d = -lr * g / np.sqrt(nu + eps)
    if momentum is not None:
      b = momentum * b + d
      d = b
    if weight_decay is not None:
      d = d - lr * weight_decay * p
    p = p + d
  return p


@pytest.mark.parametrize("kw", [dict(momentum=0.9), dict(weight_decay=0.5), dict(momentum=0.9, weight_decay=0.5)])
def test_momentum_and_weight_decay_act_in_8bit_path(kw):
  """bitsandbytes' 8-bit RMSprop silently drops momentum; ours must follow the reference with it."""
  rng = np.random.default_rng(1)
  p0 = rng.standard_normal((8, 1024)).astype(np.float32)
  # A consistent gradient direction plus noise, so momentum changes the trajectory a lot.
  grads = [(0.5 + 0.2 * rng.standard_normal(p0.shape)).astype(np.float32) for _ in range(30)]
  tx = optax_rmsprop.rmsprop(0.01, decay=0.9, eps=1e-8, state_dtype="8bit", **kw)
  state, p = tx.init(jnp.asarray(p0)), jnp.asarray(p0)
  assert isinstance(optax.tree_utils.tree_get(state, "nu"), _quant.Quantized8bit)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for g in grads:
    u, state = step(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, u)
  want = _np_rmsprop(p0, grads, 0.01, 0.9, 1e-8, **kw)
  without = _np_rmsprop(p0, grads, 0.01, 0.9, 1e-8)
  moved, moved_without = np.abs(want - p0), np.abs(without - want)
  err = np.abs(np.asarray(p, np.float64) - want)
  assert np.median(err / moved) < 0.02
  assert np.median(err) < 0.05 * np.median(moved_without)  # much closer to the rule than to "ignored"


def test_machinery_jit_cond_eval_shape():
  params = {"w": jnp.ones((64, 256), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}
  tx = optax_rmsprop.rmsprop(1e-2, centered=True, momentum=0.9, weight_decay=1e-3, state_dtype="8bit")
  state = tx.init(params)
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.3), params)
  u_eager, s_eager = tx.update(grads, state, params)
  u_jit, s_jit = jax.jit(tx.update)(grads, state, params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7), (u_eager, s_eager), (u_jit, s_jit))
  # Stable structure and dtypes: lax.cond between a step and no step (what apply_if_finite does).
  def maybe(flag, s):
    return jax.lax.cond(flag, lambda s: tx.update(grads, s, params)[1], lambda s: s, s)

  s2 = jax.jit(maybe)(True, state)
  assert jax.tree.structure(s2) == jax.tree.structure(state)
  assert [x.dtype for x in jax.tree.leaves(s2)] == [x.dtype for x in jax.tree.leaves(state)]
  shapes = jax.eval_shape(tx.init, params)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), shapes) == jax.tree.map(lambda x: (x.shape, x.dtype), state)
  # A gradient of the wrong shape is still refused with the parameter's shape in the message.
  bad = {"w": jnp.ones((64, 255), jnp.float32), "b": grads["b"]}
  with pytest.raises(ValueError, match=r"\(64, 256\)"):
    tx.update(bad, state, params)


def test_8bit_name_accepted_everywhere():
  for make in (lambda: optax_rmsprop.scale_by_rms(state_dtype="8bit"), lambda: optax_rmsprop.trace(0.9, state_dtype="8bit")):
    tx = make()
    p = jnp.ones((4096,), jnp.float32)
    s = tx.init(p)
    u, s = tx.update(p, s)
    assert u.shape == p.shape and bool(jnp.all(jnp.isfinite(u)))
  with pytest.raises(ValueError, match="state_dtype"):
    optax_rmsprop.rmsprop(1e-3, state_dtype="4bit")


# ---------------------------------------------------------------------------------------------
# Quality: final training loss within 3 % of the float32-state run.


def _mlp_loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _train(x, y, hidden, n_classes, state_dtype, steps=150, **kw):
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  d = x.shape[1]
  params = {
      "w1": jax.random.normal(k1, (d, hidden), jnp.float32) / np.sqrt(d),
      "b1": jnp.zeros((hidden,), jnp.float32),
      "w2": jax.random.normal(k2, (hidden, n_classes), jnp.float32) / np.sqrt(hidden),
      "b2": jnp.zeros((n_classes,), jnp.float32),
  }
  tx = optax_rmsprop.rmsprop(1e-3, state_dtype=state_dtype, **kw)

  def body(carry, _):
    p, s = carry
    loss, g = jax.value_and_grad(_mlp_loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), loss

  (p, _), losses = jax.jit(lambda p, s: jax.lax.scan(body, (p, s), None, length=steps))(params, tx.init(params))
  return float(_mlp_loss(p, x, y)), np.asarray(losses)


def _digits():
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32), 10


def _synthetic():
  from sklearn.datasets import make_classification

  x, y = make_classification(n_samples=2000, n_features=40, n_informative=20, n_classes=4, random_state=0)
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32), 4


@pytest.mark.slow
@pytest.mark.parametrize("data", [_digits, _synthetic], ids=["digits", "synthetic"])
@pytest.mark.parametrize("kw", [{}, {"momentum": 0.9}], ids=["plain", "momentum"])
def test_8bit_training_quality_within_3_percent(data, kw):
  x, y, k = data()
  hidden = 128  # the first weight matrix (>= 4096 elements) is quantized, the small second one not
  ref, ref_curve = _train(x, y, hidden, k, None, **kw)
  q, q_curve = _train(x, y, hidden, k, "8bit", **kw)
  assert ref_curve[-1] < 0.5 * ref_curve[0]  # it did learn
  assert abs(q - ref) <= 0.03 * ref, (q, ref)


_SHARDED = r"""
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec as P
import optax_rmsprop
mesh = jax.make_mesh((2,), ("x",))
sh = NamedSharding(mesh, P(None, "x"))  # the last axis split in two: 512 columns per device
rng = np.random.default_rng(0)
p = jnp.asarray(rng.standard_normal((8, 1024)), jnp.float32)
g = jnp.asarray(rng.standard_normal((8, 1024)), jnp.float32)
tx = optax_rmsprop.rmsprop(1e-2, momentum=0.9, state_dtype="8bit")
def step(p, s, g):
  u, s = tx.update(g, s, p)
  return optax.apply_updates(p, u), s
ps, gs = jax.device_put(p, sh), jax.device_put(g, sh)
s_sh = jax.jit(tx.init)(ps)
out_sh = jax.jit(step)(ps, s_sh, gs)
out = jax.jit(step)(p, tx.init(p), g)
nu = optax.tree_utils.tree_get(out_sh[1], "nu")
assert nu.codes.sharding.spec == P(None, "x"), nu.codes.sharding
assert nu.scale.shape == (8, 4) and nu.scale.sharding.spec == P(None, "x"), nu.scale.sharding
for a, b in zip(jax.tree.leaves(out_sh), jax.tree.leaves(out)):
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
print("OK")
"""


@pytest.mark.slow
def test_blocks_follow_a_sharded_last_axis(tmp_path):
  """Two CPU devices, the last axis sharded: codes and scales keep the parameter's sharding and the
  step equals the unsharded one exactly (no block straddles the shard boundary)."""
  import os
  import subprocess
  import sys
  from pathlib import Path

  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PYTHONPATH": str(Path(__file__).parents[1])}
  res = subprocess.run([sys.executable, "-c", _SHARDED], capture_output=True, text=True, env=env, timeout=300)
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]
