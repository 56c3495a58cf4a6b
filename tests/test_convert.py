"""``convert_state``: optax's (float32) state into low-bit state and back, checked against live
optax and the NumPy transcription of the code maps (``tests/test_quant.py``), also through Orbax
checkpoints restored in a fresh setting, as a user moves a running job to low-bit state."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.test_quant import np_load, np_store

# One leaf over 2**16 elements (advanced in chunks), one quantized whole, one too small for codes.
SHAPES = {"w": (256, 512), "v": (64, 128), "b": (512,)}
CODECS = ["8bit", "4bit"]
FLAGS = {"plain": {}, "centered+momentum": {"centered": True, "momentum": 0.9}}
LR = 1e-3


def _params():
  rng = np.random.default_rng(0)
  return {k: jnp.asarray(rng.standard_normal(s) * 0.1, jnp.float32) for k, s in SHAPES.items()}


def _grads(t: int):
  rng = np.random.default_rng(100 + t)
  return {k: jnp.asarray(rng.standard_normal(s) * np.float32(0.01 * (1 + t)), jnp.float32) for k, s in SHAPES.items()}


def _trained(tx, steps: int = 5, start: int = 0, params=None, state=None):
  params = _params() if params is None else params
  state = tx.init(params) if state is None else state
  step = jax.jit(lambda p, s, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, s, p)))
  for t in range(start, start + steps):
    params, state = step(params, state, _grads(t))
  return params, state


def _codes(codes) -> np.ndarray:
  """One code per element (4-bit words unpacked: element 8w + j in bits 4j..4j+3 of word w)."""
  c = np.asarray(codes)
  if c.dtype == np.uint32:
    c = ((c[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & 15).reshape(*c.shape[:-1], -1)
  return c.astype(np.int64)


def _codes_close(got, want):
  """Codes from float32 arithmetic against the float64 transcription: equal but at rounding
  boundaries, where they land one code apart."""
  got, want = _codes(got), _codes(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  assert np.mean(got == want) > 0.99
  assert np.max(np.abs(got - want)) <= 1


@pytest.mark.parametrize("variant", list(FLAGS))
@pytest.mark.parametrize("state_dtype", CODECS)
def test_optax_state_into_low_bit_codes(state_dtype, variant):
  """optax.rmsprop's state after 5 steps, converted: every buffer holds the codes of optax's values
  (centered: nu holds the variance nu - mu^2), the small leaf optax's float32 values unchanged."""
  kw = FLAGS[variant]
  _, theirs = _trained(optax.rmsprop(LR, **kw))
  like = optax_rmsprop.rmsprop(LR, state_dtype=state_dtype, **kw).init(_params())
  ours = optax_rmsprop.convert_state(theirs, like)
  assert jax.tree.structure(ours) == jax.tree.structure(like)

  for name in SHAPES:
    want_nu = np.asarray(theirs[0].nu[name], np.float64)
    got_nu = ours[0].nu[name]
    if kw.get("centered"):
      want_mu = np.asarray(theirs[0].mu[name], np.float64)
      got_mu = ours[0].mu[name]
      want_trace = np.asarray(theirs[2].trace[name], np.float64)
      got_trace = ours[2].trace[name]
    if name == "b":  # too small for codes: optax's values as they were
      np.testing.assert_array_equal(np.asarray(got_nu), np.asarray(theirs[0].nu[name]))
      continue
    if kw.get("centered"):
      want_nu = np.maximum(want_nu - want_mu**2, 0)  # the variance, as a centered low-bit nu holds it
      for got, want in ((got_mu, want_mu), (got_trace, want_trace)):
        codes, scale = np_store(want, got, seeds=np.asarray(got.scale))
        np.testing.assert_allclose(np.asarray(got.scale), scale, rtol=1e-6)
        _codes_close(got.codes, codes)
    codes, scale = np_store(want_nu, got_nu, seeds=np.asarray(got_nu.scale))
    np.testing.assert_allclose(np.asarray(got_nu.scale), scale, rtol=1e-5)
    _codes_close(got_nu.codes, codes)


@pytest.mark.parametrize("variant", list(FLAGS))
@pytest.mark.parametrize("state_dtype", CODECS)
def test_low_bit_state_into_optax_is_the_decoded_values(state_dtype, variant):
  """Our low-bit state after 5 steps into optax.rmsprop's layout: each buffer is the NumPy decoding
  of its codes (centered: nu = the decoded variance + mu^2), and optax.rmsprop trains on from it."""
  kw = FLAGS[variant]
  params, ours = _trained(optax_rmsprop.rmsprop(LR, state_dtype=state_dtype, **kw))
  optax_tx = optax.rmsprop(LR, **kw)
  theirs = optax_rmsprop.convert_state(ours, optax_tx.init(_params()))
  assert jax.tree.structure(theirs) == jax.tree.structure(optax_tx.init(_params()))
  for name in SHAPES:
    mu = np_load(ours[0].mu[name]) if kw.get("centered") else 0.0
    want = np_load(ours[0].nu[name]) + (mu**2 if kw.get("centered") and name != "b" else 0.0)
    np.testing.assert_allclose(np.asarray(theirs[0].nu[name]), want, rtol=2e-6, atol=1e-30)
    assert theirs[0].nu[name].dtype == jnp.float32
    if kw.get("centered"):
      np.testing.assert_allclose(np.asarray(theirs[0].mu[name]), mu, rtol=2e-6, atol=1e-30)
      np.testing.assert_allclose(np.asarray(theirs[2].trace[name]), np_load(ours[2].trace[name]), rtol=2e-6, atol=1e-30)
  _, after = _trained(optax_tx, steps=3, start=5, params=params, state=theirs)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after))


@pytest.mark.parametrize("state_dtype", CODECS)
def test_round_trip_keeps_the_codes(state_dtype):
  """Low-bit -> float32 -> low-bit gives back the same codes (the decoded values sit on levels;
  a code may move only where float32's decode lands a hair under its level)."""
  tx = optax_rmsprop.rmsprop(LR, state_dtype=state_dtype, centered=True, momentum=0.9)
  _, ours = _trained(tx)
  back = optax_rmsprop.convert_state(optax_rmsprop.convert_state(ours, optax.rmsprop(LR, centered=True, momentum=0.9).init(_params())), ours)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(back), strict=True):
    if a.dtype in (jnp.uint8, jnp.uint32):
      _codes_close(b, a)
    else:
      np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5)


def test_between_8bit_and_4bit():
  """8-bit state into 4-bit: nu re-encoded in 4 bits from the decoded 8-bit values (NumPy)."""
  _, ours8 = _trained(optax_rmsprop.rmsprop(LR, state_dtype="8bit"))
  like4 = optax_rmsprop.rmsprop(LR, state_dtype="4bit").init(_params())
  ours4 = optax_rmsprop.convert_state(ours8, like4)
  got = ours4[0].nu["w"]
  words, scale = np_store(np_load(ours8[0].nu["w"]), got, seeds=np.asarray(got.scale))
  np.testing.assert_allclose(np.asarray(got.scale), scale, rtol=1e-6)
  _codes_close(got.codes, words)


def test_abstract_target_and_inject_hyperparams():
  """A target from shapes alone (jax.eval_shape) and inject_hyperparams states: counts and
  hyperparameters are copied, buffers encoded."""
  params = _params()
  theirs_tx = optax.inject_hyperparams(optax.rmsprop)(learning_rate=LR, momentum=0.9)
  _, theirs = _trained(theirs_tx)
  tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(learning_rate=LR, momentum=0.9, state_dtype="8bit")
  ours = optax_rmsprop.convert_state(theirs, jax.eval_shape(tx.init, params))
  assert int(ours.count) == 5 and float(ours.hyperparams["learning_rate"]) == pytest.approx(LR)
  assert ours.inner_state[0].nu["w"].codes.dtype == jnp.uint8
  _, after = _trained(tx, steps=2, start=5, params=params, state=ours)
  assert int(after.count) == 7


def test_different_layouts_are_refused_with_the_paths():
  params = _params()
  theirs = optax.rmsprop(LR, momentum=0.9).init(params)
  like = optax_rmsprop.rmsprop(LR, state_dtype="8bit").init(params)
  with pytest.raises(ValueError, match=re.escape("convert_state: state and like must be states of the same optimizer")) as info:
    optax_rmsprop.convert_state(theirs, like)
  assert "trace" in str(info.value)


@pytest.mark.parametrize("state_dtype", CODECS)
def test_orbax_checkpoints_both_ways(tmp_path, state_dtype):
  """A job saved by optax.rmsprop (float32) restored in a fresh setting, converted and continued
  with low-bit state, ends near the uninterrupted optax run; its low-bit checkpoint restored and
  converted back is continued by optax.rmsprop."""
  ocp = pytest.importorskip("orbax.checkpoint")
  kw = {"momentum": 0.9}
  make_optax = lambda: optax.rmsprop(LR, **kw)
  make_ours = lambda: optax_rmsprop.rmsprop(LR, state_dtype=state_dtype, **kw)
  params, state = _trained(make_optax(), steps=5)
  save = lambda path, tree: (lambda c: (c.save(path, tree), c.wait_until_finished()))(ocp.StandardCheckpointer())
  save(tmp_path / "optax", {"params": params, "opt_state": state})
  reference, _ = _trained(make_optax(), steps=40, start=5, params=params, state=state)

  # A new process: the optimizer to go on with, restore targets from shapes alone.
  abstract_params = jax.eval_shape(_params)
  target = {"params": abstract_params, "opt_state": jax.eval_shape(make_optax().init, abstract_params)}
  restored = ocp.StandardCheckpointer().restore(tmp_path / "optax", target)
  tx = make_ours()
  low = optax_rmsprop.convert_state(restored["opt_state"], jax.eval_shape(tx.init, abstract_params))
  ours_params, ours_state = _trained(tx, steps=40, start=5, params=restored["params"], state=low)
  # The same path as optax's, to a fraction of how far it moved: the codes' rounding (8-bit ~2 %,
  # 4-bit ~9 % on these random gradients). A conversion that lost nu (optax from nu = 0) ends 23 %
  # of the way off, a fresh low-bit state 52 %.
  within = {"8bit": 0.05, "4bit": 0.15}[state_dtype]
  for k in SHAPES:
    moved = float(jnp.linalg.norm(reference[k] - params[k]))
    assert float(jnp.linalg.norm(ours_params[k] - reference[k])) < within * moved, k

  save(tmp_path / "low", {"params": ours_params, "opt_state": ours_state})
  target = {"params": abstract_params, "opt_state": jax.eval_shape(make_ours().init, abstract_params)}
  restored = ocp.StandardCheckpointer().restore(tmp_path / "low", target)
  back = optax_rmsprop.convert_state(restored["opt_state"], jax.eval_shape(make_optax().init, abstract_params))
  assert jax.tree.structure(back) == jax.tree.structure(state)
  np.testing.assert_allclose(np.asarray(back[0].nu["w"]), np_load(ours_state[0].nu["w"]), rtol=2e-6, atol=1e-30)
  final, _ = _trained(make_optax(), steps=5, start=45, params=restored["params"], state=back)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(final))
