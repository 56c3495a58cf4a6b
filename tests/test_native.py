"""The native CPU kernel of the low-bit chunk loop (``_native``): its codes against the NumPy
transcription of the code maps, that the compiled step uses it, that the XLA path (GPU, TPU, no
compiler, ``OPTAX_RMSPROP_NATIVE=0``) gives the same state, and that a missing compiler falls back."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from optax_rmsprop import _native, _quant
from tests.test_quant import np_blocks, np_encode, np_encode4, np_unpack4

needs_native = pytest.mark.skipif(_native._compiler() is None, reason="no C++ compiler to build the native kernel")


def _encode(x, kind, rows_total, at, block_most):
  """The kernel on ``x`` (rows, width) written at row ``at`` of buffers of ``rows_total`` rows
  filled with a marker; returns (codes, scales) whole."""
  width = x.shape[1]
  four = kind == _native.FOUR
  nb, block = np_blocks(width, block_most, multiple=8 if four else 1)
  codes = jnp.full((rows_total, nb * block // 8 if four else width), 7, jnp.uint32 if four else jnp.uint8)
  scales = jnp.full((rows_total, nb), -1.0, jnp.float32)
  f = jax.jit(lambda x, c, s, at: _native.encode_rows(x, c, s, at, kind=kind, width=width, block=block, nb=nb))
  return (np.asarray(a) for a in f(jnp.asarray(x), codes, scales, at))


@needs_native
@pytest.mark.parametrize("kind", [_native.UNSIGNED8, _native.SIGNED8, _native.FOUR], ids=["8bit", "8bit-signed", "4bit"])
@pytest.mark.parametrize("width", [512, 300, 64], ids=["whole-blocks", "padded", "short-row"])
def test_kernel_matches_numpy_transcription(kind, width):
  assert _native.enabled()
  rng = np.random.default_rng(0)
  rows, total, at = 37, 50, 9
  x = rng.standard_normal((rows, width)).astype(np.float32) * np.logspace(-3, 3, rows, dtype=np.float32)[:, None]
  if kind != _native.SIGNED8:
    x = x * x
  codes, scales = _encode(x, kind, total, at, _quant.BLOCK4 if kind == _native.FOUR else _quant.BLOCK8)
  if kind == _native.FOUR:
    want_codes, want_scales = np_encode4(x)
    nb = want_scales.shape[-1]
    same = np_unpack4(codes[at : at + rows], nb) == np_unpack4(want_codes, nb)
  else:
    want_codes, want_scales = np_encode(x, kind == _native.SIGNED8)
    same = codes[at : at + rows] == want_codes
    # A value at a rounding boundary may land one code apart between float32 and float64.
    assert np.max(np.abs(codes[at : at + rows].astype(int) - want_codes.astype(int))) <= 1
  np.testing.assert_allclose(scales[at : at + rows], want_scales, rtol=1e-6)
  assert np.mean(same) > 0.99, np.mean(same)
  # The rows outside the chunk are left as they were.
  assert np.all(np.delete(codes, np.s_[at : at + rows], axis=0) == 7)
  assert np.all(np.delete(scales, np.s_[at : at + rows], axis=0) == -1)


@needs_native
@pytest.mark.parametrize("kind", [_native.UNSIGNED8, _native.SIGNED8, _native.FOUR], ids=["8bit", "8bit-signed", "4bit"])
def test_kernel_keeps_nan_as_xla_does(kind):
  """A NaN (the input's) makes its block's scale NaN, so that the block reads as NaN, as XLA's
  encoding does; the other blocks are untouched by it."""
  x = np.abs(np.random.default_rng(1).standard_normal((4, 256))).astype(np.float32)
  x[1, 5] = np.nan
  codes, scales = _encode(x, kind, 4, 0, _quant.BLOCK4 if kind == _native.FOUR else _quant.BLOCK8)
  if kind == _native.FOUR:
    want_codes, want_scales = _quant._encode4(jnp.asarray(x), 2, 128)
  else:
    want_codes, want_scales = _quant._encode8(jnp.asarray(x), 1, kind == _native.SIGNED8)
  np.testing.assert_array_equal(np.isnan(scales), np.isnan(np.asarray(want_scales)))
  assert np.isnan(scales[1]).any() and not np.isnan(np.delete(scales, 1, axis=0)).any()
  finite = ~np.isnan(np.asarray(want_scales)).any(axis=-1)
  assert np.mean(codes[finite] == np.asarray(want_codes)[finite]) > 0.99


def _run(state_dtype, kw, shape, steps=4):
  rng = np.random.default_rng(3)
  tx = optax_rmsprop.rmsprop(0.01, state_dtype=state_dtype, **kw)
  p = jnp.zeros(shape, jnp.float32)
  state = tx.init(p)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for _ in range(steps):
    g = (rng.standard_normal(shape) * np.logspace(-2, 1, shape[-1])).astype(np.float32)
    u, state = step(jnp.asarray(g), state, p)
  return np.asarray(u), state, step.lower(jnp.asarray(g), state, p).as_text()


@needs_native
@pytest.mark.parametrize("state_dtype", ["8bit", "4bit"])
@pytest.mark.parametrize("kw", [{}, {"centered": True, "momentum": 0.9, "nesterov": True}], ids=["plain", "centered+nesterov"])
@pytest.mark.parametrize("shape", [(3 * 2**15,), (40, 4099)], ids=["flat", "padded-rows"])
def test_native_and_xla_paths_agree(monkeypatch, state_dtype, kw, shape):
  """Four steps with the native kernel and with XLA's encoding (as on GPU and TPU): the same state
  up to codes at a rounding boundary, the same updates where the codes agree; only the native
  step's program calls the kernel."""
  u_native, s_native, hlo_native = _run(state_dtype, kw, shape)
  monkeypatch.setenv("OPTAX_RMSPROP_NATIVE", "0")
  u_xla, s_xla, hlo_xla = _run(state_dtype, kw, shape)
  assert _native.TARGET in hlo_native and _native.TARGET not in hlo_xla
  for key in ("nu", "mu", "trace"):
    a, b = optax.tree_utils.tree_get(s_native, key, None), optax.tree_utils.tree_get(s_xla, key, None)
    if a is None:
      continue
    np.testing.assert_allclose(np.asarray(a.scale), np.asarray(b.scale), rtol=0.03, err_msg=key)
    assert np.mean(np.isclose(np.asarray(a.scale), np.asarray(b.scale), rtol=1e-5)) > 0.98, key
    assert np.mean(np.asarray(a.codes) == np.asarray(b.codes)) > 0.98, key
  close = np.isclose(u_native, u_xla, rtol=1e-4, atol=1e-9)
  assert np.mean(close) > 0.95, np.mean(close)


@needs_native
def test_vmapped_update_matches_one_by_one():
  """An ensemble's update under ``jax.vmap`` (the kernel runs once per member)."""
  tx = optax_rmsprop.rmsprop(0.01, state_dtype="8bit", momentum=0.9)
  g = jax.random.normal(jax.random.key(0), (3, 300, 1000))
  p = jnp.zeros((3, 300, 1000))
  states = jax.vmap(tx.init)(p)
  u, s = jax.jit(jax.vmap(tx.update))(g, states, p)
  for i in range(3):
    u_i, s_i = jax.jit(tx.update)(g[i], jax.tree.map(lambda a, i=i: a[i], states), p[i])
    np.testing.assert_allclose(np.asarray(u[i]), np.asarray(u_i), rtol=1e-6)
    jax.tree.map(lambda a, b, i=i: np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b)), s, s_i)


def test_build_without_a_compiler_says_so(monkeypatch):
  monkeypatch.setattr(_native, "_compiler", lambda: None)
  with pytest.raises(RuntimeError, match=r"no C\+\+ compiler"):
    _native.build()


def test_disabled_by_environment(monkeypatch):
  monkeypatch.setenv("OPTAX_RMSPROP_NATIVE", "0")
  assert not _native.enabled()


def test_export_with_xla_encoding(monkeypatch):
  """``jax.export`` refuses custom calls without compatibility guarantees, the kernel's included:
  with ``OPTAX_RMSPROP_NATIVE=0`` an exported step holds XLA's encoding only, and runs."""
  monkeypatch.setenv("OPTAX_RMSPROP_NATIVE", "0")
  tx = optax_rmsprop.rmsprop(1e-3, state_dtype="8bit")
  p = jnp.zeros((512, 1024))
  state = tx.init(p)
  g = jnp.full((512, 1024), 0.5)
  exported = jax.export.export(jax.jit(tx.update))(g, state, p)
  assert _native.TARGET not in exported.mlir_module()
  u, _ = exported.call(g, state, p)
  want, _ = jax.jit(tx.update)(g, state, p)
  np.testing.assert_allclose(np.asarray(u), np.asarray(want), rtol=1e-6)
