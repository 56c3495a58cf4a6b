"""rmsprop / adagrad / scale_by_rms / scale_by_rss against live optax, the NumPy reference, the
numerical-safety promises and the bad-input contract.

References: live optax 0.2.8 for every argument it shares with us (float64, ``jax_enable_x64``);
``tests/reference.py`` (a NumPy transcription of the published rule plus our documented
differences) for the rest; bounds derived from the update rule for the overflow cases.
"""

from __future__ import annotations

import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests import reference as ref

# A well-conditioned quadratic f(p) = 1/2 (p - c)^T A (p - c). Its first gradient A (p0 - c) =
# [-0.75, 5, -0.75, -1.5] and 1 - decay = 0.25 are exact in binary, so with centered +
# bias_correction the first-step variance nu_hat - mu_hat^2 is exactly 0 in both libraries (in exact
# maths it is always 0 at step 1; with inexact inputs its sign would be rounding noise, NaN for
# optax without eps inside the root). From step 2 on it is a genuine variance.
_A = np.diag([1.0, 2.0, 0.5, 1.5])
_C = np.array([1.0, -2.0, 0.5, 3.0])
_P0 = np.array([0.25, 0.5, -1.0, 2.0])
_STEPS = 50
_SCHEDULE = optax.linear_schedule(0.05, 0.01, 40)


def _schedule64(count):
  """A schedule computed in float64. optax's compute in float32, and a float32 value computed
  under jit may differ by an ulp from the same value computed eagerly (as the NumPy reference
  does), which 50 steps turn into ~1e-8: too much for a 1e-10 comparison."""
  return 0.05 - 0.001 * count.astype(np.float64)


def _quad_grad(p):
  return _A @ (p - _C)


def _ref_grad(ps):
  return [_quad_grad(ps[0])]


def _run_lockstep(txs, steps=_STEPS, dtype=jnp.float64):
  """Runs every transformation on the quadratic in one jitted step; returns (trajectories, states).

  trajectories has shape (steps + 1, len(txs), 4).
  """
  a, c = jnp.asarray(_A, dtype), jnp.asarray(_C, dtype)
  p0 = jnp.asarray(_P0, dtype)

  @jax.jit
  def step(ps, ss):
    outs = [tx.update(a @ (p - c), s, p) for tx, p, s in zip(txs, ps, ss, strict=True)]
    return [p + u for p, (u, _) in zip(ps, outs, strict=True)], [s for _, s in outs]

  ps, ss = [p0] * len(txs), [tx.init(p0) for tx in txs]
  traj = [np.asarray(ps)]
  for _ in range(steps):
    ps, ss = step(ps, ss)
    traj.append(np.asarray(ps))
  return np.stack(traj), ss


def _assert_close_rel(actual, expected, rtol, what):
  scale = np.max(np.abs(expected))
  err = np.max(np.abs(np.asarray(actual) - np.asarray(expected))) / scale
  assert np.all(np.isfinite(actual)) and np.all(np.isfinite(expected)), what
  assert err <= rtol, f"{what}: max relative deviation {err:.3g} > {rtol:g}"


def _buffer(state, name):
  """The one buffer called ``name`` in a state (ours or optax's), or None."""
  found = optax.tree_utils.tree_get(state, name, default=None)
  return None if found is None else np.asarray(found)


# ---------------------------------------------------------------------------------------------
# (a) Parity with live optax 0.2.8 over the grid of shared arguments.

_RMSPROP_GRID = [
    dict(centered=c, momentum=m, nesterov=n, bias_correction=b, eps_in_sqrt=e, initial_scale=i)
    for c, m, n, b, e, i in itertools.product(
        [False, True], [None, 0.0, 0.9], [False, True], [False, True], [False, True], [0.0, 0.5]
    )
    if not (m is None and n)  # nesterov without momentum is the same program as without
]


@pytest.mark.parametrize("momentum", [None, 0.0, 0.9], ids=lambda m: f"momentum={m}")
@pytest.mark.parametrize("centered", [False, True], ids=lambda c: f"centered={c}")
def test_rmsprop_matches_optax_over_flag_grid(centered, momentum):
  """Every shared flag combination, called positionally with a float learning rate and by keyword
  with a schedule: the same 50-step trajectory and buffers as optax.rmsprop, up to float64 rounding."""
  grid = [f for f in _RMSPROP_GRID if f["centered"] == centered and f["momentum"] == momentum]
  txs = []
  for f in grid:
    # decay=0.75 and eps=0.1 differ from the defaults, so a swapped argument would show.
    positional = (0.05, 0.75, 0.1, f["initial_scale"], f["eps_in_sqrt"], centered, momentum, f["nesterov"])
    positional += (f["bias_correction"],)
    keyword = dict(learning_rate=_SCHEDULE, decay=0.75, eps=0.1, **f)
    txs += [
        optax_rmsprop.rmsprop(*positional),
        optax.rmsprop(*positional),
        optax_rmsprop.rmsprop(**keyword),
        optax.rmsprop(**keyword),
    ]
  traj, states = _run_lockstep(txs)
  for k, f in enumerate(grid):
    for j, call in ((0, "positional, float lr"), (2, "keyword, schedule")):
      what = f"{call}, {f}"
      ours, theirs = 4 * k + j, 4 * k + j + 1
      _assert_close_rel(traj[:, ours], traj[:, theirs], 1e-10, what)
      for name in ("nu", "mu", "trace"):
        b_theirs = _buffer(states[theirs], name)
        if b_theirs is not None:
          _assert_close_rel(_buffer(states[ours], name), b_theirs, 1e-10, f"{what}: {name}")
  # The trajectories must actually go somewhere, or the comparison says little.
  assert np.max(np.abs(traj[-1] - _P0)) > 0.5


def test_adagrad_matches_optax():
  grid = list(itertools.product([0.1, 0.0], [1e-7, 0.1]))
  txs = []
  for iav, eps in grid:
    txs += [
        optax_rmsprop.adagrad(0.3, iav, eps),
        optax.adagrad(0.3, iav, eps),
        optax_rmsprop.adagrad(learning_rate=_SCHEDULE, initial_accumulator_value=iav, eps=eps),
        optax.adagrad(learning_rate=_SCHEDULE, initial_accumulator_value=iav, eps=eps),
    ]
  traj, _ = _run_lockstep(txs)
  for k, (iav, eps) in enumerate(grid):
    for j in (0, 2):
      _assert_close_rel(traj[:, 4 * k + j], traj[:, 4 * k + j + 1], 1e-10, f"adagrad iav={iav} eps={eps} call {j}")
  assert np.max(np.abs(traj[-1] - _P0)) > 0.5


@pytest.mark.parametrize("centered", [False, True])
def test_scale_by_rms_matches_optax(centered):
  """The building block alone (no learning rate), against optax's scale_by_rms / scale_by_stddev."""
  g = jnp.asarray([[0.5, -2.0, 3.0], [1.0, 0.25, -4.0]], jnp.float64)
  ours = optax_rmsprop.scale_by_rms(0.8, 1e-3, 0.2, True, True, centered=centered)
  theirs = (optax.scale_by_stddev if centered else optax.scale_by_rms)(0.8, 1e-3, 0.2, True, True)
  so, st = ours.init(g), theirs.init(g)
  for k in range(5):
    gk = g * (1 + 0.3 * k)
    uo, so = ours.update(gk, so)
    ut, st = theirs.update(gk, st)
    np.testing.assert_allclose(uo, ut, rtol=1e-12)
  np.testing.assert_allclose(_buffer(so, "nu"), _buffer(st, "nu"), rtol=1e-12)


def test_scale_by_rss_matches_optax():
  g = jnp.asarray([0.5, -2.0, 0.0, 3.0], jnp.float64)
  ours, theirs = optax_rmsprop.scale_by_rss(0.0, 1e-3), optax.scale_by_rss(0.0, 1e-3)
  so, st = ours.init(g), theirs.init(g)
  for k in range(4):
    uo, so = ours.update(g * (k - 1), so)
    ut, st = theirs.update(g * (k - 1), st)
    np.testing.assert_allclose(uo, ut, rtol=1e-12, atol=0)


def test_reference_itself_matches_optax():
  """The NumPy transcription, with our two safety differences switched off, is optax's rule: so
  where it is used as the reference below it is checked against the peer, not just against us."""
  combos = [_RMSPROP_GRID[i] for i in (0, 7, 21, 33, 50, 79)]
  txs = [optax.rmsprop(learning_rate=_schedule64, decay=0.75, eps=0.1, **f) for f in combos]
  txs.append(optax.adagrad(0.3, 0.1, 1e-7))
  traj, _ = _run_lockstep(txs)
  for k, f in enumerate(combos):
    flags = dict(learning_rate=_schedule64, decay=0.75, eps=0.1, **f)
    expected = ref.rmsprop(_ref_grad, [_P0], _STEPS, **flags, clamp_variance=False, zero_safe=False)
    _assert_close_rel(np.stack([x[0] for x in expected]), traj[:, k], 1e-10, f"reference vs optax, {f}")
  expected = ref.adagrad(_ref_grad, [_P0], _STEPS, learning_rate=0.3)
  _assert_close_rel(np.stack([x[0] for x in expected]), traj[:, -1], 1e-10, "reference vs optax.adagrad")


# ---------------------------------------------------------------------------------------------
# (b) What optax lacks, against the NumPy reference.


_MASK_CASES = {
    "no-mask": None,
    "tree-mask": {"w": True, "b": False},
    "callable-mask": lambda params: {k: v.ndim > 1 for k, v in params.items()},
}


@pytest.mark.parametrize("mask_kind", list(_MASK_CASES))
@pytest.mark.parametrize("extra", [dict(), dict(momentum=0.9, nesterov=True, centered=True, bias_correction=True)])
def test_weight_decay_matches_reference(mask_kind, extra):
  """Decoupled weight decay u -= lr * wd * p (on the pre-step params, after momentum), masked."""
  mask = _MASK_CASES[mask_kind]
  params = {"b": jnp.asarray([0.5, -1.0], jnp.float64), "w": jnp.asarray([[1.0, 2.0], [-3.0, 0.5]], jnp.float64)}
  target = {"b": jnp.asarray([1.0, 1.0], jnp.float64), "w": jnp.zeros((2, 2), jnp.float64)}
  flags = dict(learning_rate=_SCHEDULE, decay=0.8, eps=1e-3, weight_decay=0.3, **extra)
  tx = optax_rmsprop.rmsprop(**flags, weight_decay_mask=mask)

  def grad(p):
    return jax.tree.map(lambda x, t: 2 * (x - t), p, target)

  p, s = params, tx.init(params)
  for _ in range(30):
    u, s = tx.update(grad(p), s, p)
    p = optax.apply_updates(p, u)
  # The reference works on a list of leaves in the tree's order ("b", "w").
  keys = ["b", "w"]
  ref_mask = None
  if mask is not None:
    m = mask(params) if callable(mask) else mask
    ref_mask = [m[k] for k in keys]
  traj = ref.rmsprop(
      lambda ps: [2 * (x - np.asarray(target[k])) for k, x in zip(keys, ps, strict=True)],
      [np.asarray(params[k]) for k in keys],
      30,
      **flags,
      weight_decay_mask=ref_mask,
  )
  for k, expected in zip(keys, traj[-1], strict=True):
    np.testing.assert_allclose(p[k], expected, rtol=1e-10, atol=1e-12, err_msg=k)
  # Weight decay really acted: without it the trajectory is different.
  no_wd = ref.rmsprop(
      lambda ps: [2 * (x - np.asarray(target[k])) for k, x in zip(keys, ps, strict=True)],
      [np.asarray(params[k]) for k in keys],
      30,
      **{**flags, "weight_decay": None},
  )
  assert np.max(np.abs(no_wd[-1][1] - np.asarray(p["w"]))) > 1e-3


def test_weight_decay_prefix_mask_and_mask_without_decay():
  params = {"a": {"x": jnp.ones(2, jnp.float64), "y": jnp.ones(2, jnp.float64)}, "b": jnp.ones(3, jnp.float64)}
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.5, weight_decay_mask={"a": True, "b": False})
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(u["a"]["x"], -0.05 * np.ones(2))  # -lr * wd * p with a zero gradient
  np.testing.assert_allclose(u["b"], np.zeros(3))
  with pytest.raises(ValueError, match="weight_decay_mask"):
    optax_rmsprop.rmsprop(0.1, weight_decay_mask={"a": True, "b": False})
  with pytest.raises(ValueError, match=r"params"):
    optax_rmsprop.rmsprop(0.1, weight_decay=0.1).update(zeros, tx.init(params))


@pytest.mark.parametrize("extra", [dict(), dict(momentum=0.5, weight_decay=0.1)])
def test_maximize_matches_reference(extra):
  flags = dict(learning_rate=0.05, decay=0.8, eps=1e-3, maximize=True, **extra)
  tx = optax_rmsprop.rmsprop(**flags)
  p = jnp.asarray(_P0)
  s = tx.init(p)
  for _ in range(20):
    u, s = tx.update(jnp.asarray(_quad_grad(np.asarray(p))), s, p)
    p = p + u
  expected = ref.rmsprop(_ref_grad, [_P0], 20, **flags)[-1][0]
  np.testing.assert_allclose(p, expected, rtol=1e-10)
  # Ascent on the quadratic: further from the minimum than where it started.
  assert np.linalg.norm(np.asarray(p) - _C) > np.linalg.norm(_P0 - _C) + 0.5


@pytest.mark.parametrize("state_dtype", [jnp.float32, jnp.bfloat16])
def test_state_dtype_matches_reference(state_dtype):
  """float64 params with buffers stored in a narrower dtype: the reference rounds its stored
  buffers the same way; a float64-state run is measurably different."""
  flags = dict(learning_rate=0.05, decay=0.8, eps=1e-3, centered=True, momentum=0.9)
  tx = optax_rmsprop.rmsprop(**flags, state_dtype=state_dtype)
  p = jnp.asarray(_P0 * np.pi)
  s = tx.init(p)
  for leaf in jax.tree.leaves(s[0].nu) + jax.tree.leaves(s[0].mu) + jax.tree.leaves(s[2].trace):
    assert leaf.dtype == jnp.dtype(state_dtype)
  for _ in range(20):
    u, s = tx.update(jnp.asarray(_quad_grad(np.asarray(p))), s, p)
    assert u.dtype == jnp.float64
    p = p + u
  expected = ref.rmsprop(_ref_grad, [_P0 * np.pi], 20, **flags, state_dtype=state_dtype)[-1][0]
  full = ref.rmsprop(_ref_grad, [_P0 * np.pi], 20, **flags)[-1][0]
  rtol = 1e-5 if state_dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(p, expected, rtol=rtol)
  assert np.max(np.abs(full - expected)) > 10 * np.max(np.abs(np.asarray(p) - expected))


# ---------------------------------------------------------------------------------------------
# (c) State layout.


def test_tree_get_finds_exactly_one_nu():
  params = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones((2, 2), jnp.float32)}
  state = optax_rmsprop.rmsprop(0.1).init(params)
  nu = optax.tree_utils.tree_get(state, "nu")  # raises if there were several
  assert jax.tree.structure(nu) == jax.tree.structure(params)
  # As optax.rmsprop: no count without bias correction (or a schedule), one with it.
  assert optax.tree_utils.tree_get(state, "count") is None
  counted = optax_rmsprop.rmsprop(0.1, bias_correction=True).init(params)
  assert optax.tree_utils.tree_get(counted, "count").dtype == jnp.int32


def test_state_is_optaxs_whatever_the_flags():
  params = {"w": jnp.ones(3, jnp.float32)}
  for f in _RMSPROP_GRID:
    ours, theirs = optax_rmsprop.rmsprop(0.1, **f).init(params), optax.rmsprop(0.1, **f).init(params)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs), f
    assert [type(x) for x in ours] == [type(x) for x in theirs], f
  for make in (lambda m: m.adagrad(0.1), lambda m: m.scale_by_rms(), lambda m: m.scale_by_rss(), lambda m: m.scale_by_stddev()):
    assert jax.tree.structure(make(optax_rmsprop).init(params)) == jax.tree.structure(make(optax).init(params))


# ---------------------------------------------------------------------------------------------
# (d) Numerical safety.


def _jit_step(tx):
  @jax.jit
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return p + u, s, u

  return step


def test_centered_constant_large_gradients_stay_finite_where_optax_goes_nan():
  """Constant large float32 gradients make nu_hat - mu_hat^2 a difference of nearly equal numbers;
  rounding makes it negative and optax's rsqrt turns that into NaN. Ours clamps it at 0."""
  g = jnp.asarray([1.0, 3.7, 1e2, 1.7e3, 1e5, 3.3e6, 1e8, 1.1e10, 1e15, 1e18], jnp.float32)
  flags = dict(learning_rate=1e-3, centered=True, bias_correction=True)
  runs = {}
  for name, make in (("ours", optax_rmsprop.rmsprop), ("optax", optax.rmsprop)):
    tx = make(**flags)
    step = _jit_step(tx)
    p = jnp.zeros_like(g)
    s = tx.init(p)
    finite = True
    for _ in range(300):
      p, s, u = step(p, s, g)
      finite = finite and bool(jnp.all(jnp.isfinite(u)))
    runs[name] = (finite, p, s)
  assert not runs["optax"][0], "optax no longer goes NaN here: update the documented difference"
  finite, p, s = runs["ours"]
  assert finite and bool(jnp.all(jnp.isfinite(p)))
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s))


def test_eps_zero_with_zero_gradient_gives_zero_update():
  for flags in (dict(), dict(centered=True), dict(eps_in_sqrt=False), dict(momentum=0.9, bias_correction=True)):
    tx = optax_rmsprop.rmsprop(0.1, eps=0.0, **flags)
    p = jnp.ones(3, jnp.float32)
    u, s = tx.update(jnp.zeros(3, jnp.float32), tx.init(p), p)
    np.testing.assert_array_equal(u, np.zeros(3), err_msg=str(flags))
    # The next, ordinary gradient moves the parameter normally.
    u, _ = tx.update(jnp.asarray([1.0, -1.0, 2.0], jnp.float32), s, p)
    assert bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(u != 0)), flags
  # The documented reason: optax divides 0 by 0.
  tx = optax.rmsprop(0.1, eps=0.0)
  u, _ = tx.update(jnp.zeros(3, jnp.float32), tx.init(jnp.ones(3, jnp.float32)))
  assert bool(jnp.all(jnp.isnan(u)))
  u, _ = optax_rmsprop.adagrad(0.1, 0.0, 0.0).update(jnp.zeros(2, jnp.float32), optax_rmsprop.adagrad(0.1, 0.0, 0.0).init(jnp.ones(2, jnp.float32)))
  np.testing.assert_array_equal(u, np.zeros(2))


def test_float16_zero_gradient_default_eps_gives_zero_update():
  # eps = 1e-8 is below float16's smallest subnormal (6e-8): stored in f16 it would be 0.
  assert float(jnp.asarray(1e-8, jnp.float16)) == 0.0
  for flags in (dict(), dict(centered=True), dict(momentum=0.9)):
    tx = optax_rmsprop.rmsprop(0.1, **flags)
    p = jnp.ones(4, jnp.float16)
    s = tx.init(p)
    for _ in range(3):
      u, s = tx.update(jnp.zeros(4, jnp.float16), s, p)
      assert u.dtype == jnp.float16
      np.testing.assert_array_equal(np.asarray(u, np.float32), np.zeros(4), err_msg=str(flags))
    u, _ = tx.update(jnp.full(4, 0.5, jnp.float16), s, p)
    assert bool(jnp.all(jnp.isfinite(u))) and bool(jnp.all(u != 0))


@pytest.mark.parametrize("momentum", [None, 0.9], ids=["no-momentum", "momentum"])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_steps_computed_in_float32(dtype, momentum):
  """Each step against the reference computed in float32 from the same low-precision inputs (the
  state as stored, the gradient, the params), rounded to the storage dtype.

  The chain's stages hand each other float32 values and the update is rounded to the gradients'
  dtype once, at the end: so the update is within one unit in the last place of the float32
  reference even with momentum, where the rms step and the decayed buffer nearly cancel (rounding
  between stages, as optax.chain does, was 30 units off there). The buffers are rounded to their
  storage dtype when kept: within 2 units of the reference.
  """
  flags = dict(learning_rate=0.01, decay=0.9, eps=1e-6, centered=True, momentum=momentum)
  tx = optax_rmsprop.rmsprop(**flags)
  rng = np.random.default_rng(0)
  p = jnp.asarray(rng.normal(size=64), dtype)
  s = tx.init(p)
  eps, tiny = float(jnp.finfo(dtype).eps), float(jnp.finfo(dtype).smallest_subnormal)
  for t in range(5):
    g = rng.normal(size=64) * 10.0 ** rng.integers(-3, 3, size=64)
    g[0] = 400.0  # g^2 = 1.6e5 overflows float16 (max 65504); 0.1 g^2 does not
    g = jnp.asarray(g, dtype)
    trace = np.asarray(s[2].trace, np.float32) if momentum else np.zeros(64, np.float32)
    ref_state = dict(t=t, nu=[np.asarray(s[0].nu, np.float32)], mu=[np.asarray(s[0].mu, np.float32)], trace=[trace])
    expected, ref_new = ref.rmsprop_step(
        ref_state,
        [np.asarray(g, np.float32)],
        [np.asarray(p, np.float32)],
        **flags,
        dtype=np.float32,
        state_dtype=dtype,
    )
    u, s = tx.update(g, s, p)
    assert u.dtype == dtype and s[0].nu.dtype == dtype and s[0].mu.dtype == dtype
    for name, got, want, terms in (
        ("update", u, expected[0], np.abs(expected[0]) / 2),
        ("nu", s[0].nu, ref_new["nu"][0], np.abs(ref_new["nu"][0])),
        ("mu", s[0].mu, ref_new["mu"][0], np.abs(ref_new["mu"][0])),
    ):
      err = np.abs(np.asarray(got, np.float32) - np.asarray(jnp.asarray(want, dtype), np.float32))
      bound = 2 * eps * terms + tiny
      assert np.all(err <= bound), f"step {t} {name}: worst excess {np.max(err / bound):.3g}x the bound"
    p = (p.astype(jnp.float32) + u.astype(jnp.float32)).astype(dtype)


def test_complex_params_keep_a_real_float32_nu():
  tx = optax_rmsprop.rmsprop(0.1, centered=True, momentum=0.9)
  p = jnp.asarray([1 + 2j, -0.5j, 3.0], jnp.complex64)
  s = tx.init(p)
  g = jnp.asarray([0.5 - 1j, 2j, -1.0], jnp.complex64)
  u, s = tx.update(g, s, p)
  assert s[0].nu.dtype == jnp.float32
  assert s[0].mu.dtype == jnp.complex64 and s[2].trace.dtype == jnp.complex64
  assert u.dtype == jnp.complex64
  expected, _ = ref.rmsprop_step(
      ref.rmsprop_init([np.asarray(p)], dtype=np.float32),
      [np.asarray(g)],
      [np.asarray(p)],
      learning_rate=0.1,
      centered=True,
      momentum=0.9,
      dtype=np.float32,
  )
  np.testing.assert_allclose(u, expected[0], rtol=1e-6)
  np.testing.assert_allclose(s[0].nu, 0.1 * np.abs(np.asarray(g)) ** 2, rtol=1e-6)


def test_one_huge_gradient_does_not_freeze_the_parameter():
  """g = 1e20 (float32): g^2 overflows. nu is stored clamped to the largest float32, F, and decays
  as decay^k F + (1 - decay^k) for unit gradients afterwards, so the step lr / sqrt(nu) is at least
  lr / 2 once decay^k F <= 3, i.e. after k* = ceil(log(F / 3) / log(1 / decay)) = 831 steps for
  decay = 0.9. optax stores nu = inf and returns zero updates for ever."""
  lr, decay = 0.01, 0.9
  big = float(np.finfo(np.float32).max)
  k_star = math.ceil(math.log(big / 3) / math.log(1 / decay))
  tx = optax_rmsprop.rmsprop(lr, decay, state_dtype=jnp.float32)  # None: optax's buffers, inf too
  p = jnp.zeros(2, jnp.float32)
  s = tx.init(p)
  _, s = tx.update(jnp.asarray([1e20, 1.0], jnp.float32), s, p)
  assert bool(jnp.all(jnp.isfinite(s[0].nu)))
  assert float(s[0].nu[0]) == big

  def body(s, _):
    u, s = tx.update(jnp.ones(2, jnp.float32), s, p)
    return s, u[0]

  _, us = jax.lax.scan(body, s, None, length=k_star + 5)
  us = -np.asarray(us)
  assert np.all(np.isfinite(us)) and np.all(us > 0)
  assert us[k_star] >= lr / 2, (k_star, us[k_star])
  assert us[0] < 1e-20  # not yet ordinary right after the overflow: the bound is not vacuous
  # The documented reason: optax's nu becomes inf and freezes the parameter.
  otx = optax.rmsprop(lr, decay)
  _, os_ = otx.update(jnp.asarray([1e20, 1.0], jnp.float32), otx.init(p))
  u, _ = otx.update(jnp.ones(2, jnp.float32), os_)
  assert np.isinf(np.asarray(os_[0].nu)[0]) and float(u[0]) == 0.0


def test_state_dtype_float32_for_bfloat16_params():
  tx = optax_rmsprop.rmsprop(0.01, centered=True, momentum=0.9, state_dtype=jnp.float32)
  p = jnp.ones(8, jnp.bfloat16)
  s = tx.init(p)
  u, s2 = tx.update(jnp.full(8, 1e-3, jnp.bfloat16), s, p)
  for st in (s, s2):
    assert st[0].nu.dtype == jnp.float32 and st[0].mu.dtype == jnp.float32 and st[2].trace.dtype == jnp.float32
  assert u.dtype == jnp.bfloat16
  # 0.1 * (1e-3)^2 = 1e-7 keeps float32's precision, which bfloat16 storage (8 bits) would lose.
  g32 = float(jnp.asarray(1e-3, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(s2[0].nu, np.float32(0.1) * np.float32(g32) ** 2, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# (e) Bad input.

_NAN, _INF = float("nan"), float("inf")

_BAD = [
    # (constructor, argument, bad value, text the message must contain)
    *[(f, "decay", v, r"\[0, 1\]") for f in ("rmsprop", "scale_by_rms") for v in (-0.1, 1.5)],
    *[(f, "eps", -1e-8, r"\[0, inf\)") for f in ("rmsprop", "scale_by_rms", "adagrad", "scale_by_rss")],
    *[(f, "initial_scale", -1.0, r"\[0, inf\)") for f in ("rmsprop", "scale_by_rms")],
    *[(f, "initial_accumulator_value", -0.1, r"\[0, inf\)") for f in ("adagrad", "scale_by_rss")],
    ("rmsprop", "momentum", 1.0, r"\[0, 1\)"),
    ("rmsprop", "momentum", -0.5, r"\[0, 1\)"),
    ("rmsprop", "weight_decay", -1e-4, r"\[0, inf\)"),
    ("rmsprop", "learning_rate", -0.1, r"\[0, inf\)"),
    ("adagrad", "learning_rate", -0.1, r"\[0, inf\)"),
]
_NUMERIC_ARGS = {
    "rmsprop": ("learning_rate", "decay", "eps", "initial_scale", "momentum", "weight_decay"),
    "adagrad": ("learning_rate", "initial_accumulator_value", "eps"),
    "scale_by_rms": ("decay", "eps", "initial_scale"),
    "scale_by_rss": ("initial_accumulator_value", "eps"),
}
_RANGES = dict(
    learning_rate=r"\[0, inf\)",
    decay=r"\[0, 1\]",
    eps=r"\[0, inf\)",
    initial_scale=r"\[0, inf\)",
    initial_accumulator_value=r"\[0, inf\)",
    momentum=r"\[0, 1\)",
    weight_decay=r"\[0, inf\)",
)
_BAD += [
    (f, a, v, "finite.*" + _RANGES[a]) for f, args in _NUMERIC_ARGS.items() for a in args for v in (_NAN, _INF, -_INF)
]


def _call(fn, arg, value):
  kwargs = {"learning_rate": 0.1} if fn in ("rmsprop", "adagrad") else {}
  kwargs[arg] = value
  return getattr(optax_rmsprop, fn)(**kwargs)


@pytest.mark.parametrize(("fn", "arg", "value", "expect"), _BAD, ids=[f"{f}-{a}={v}" for f, a, v, _ in _BAD])
def test_bad_hyperparameter_names_argument_range_and_value(fn, arg, value, expect):
  with pytest.raises(ValueError) as err:
    _call(fn, arg, value)
  msg = str(err.value)
  assert f"{fn}(" in msg and arg in msg, msg
  assert re.search(expect, msg), msg
  assert str(value) in msg or repr(value) in msg, msg


@pytest.mark.parametrize("fn", list(_NUMERIC_ARGS))
def test_edges_of_the_ranges_are_accepted(fn):
  edges = dict(decay=(0.0, 1.0), eps=(0.0,), initial_scale=(0.0,), momentum=(0.0,), weight_decay=(0.0,))
  edges.update(learning_rate=(0.0,), initial_accumulator_value=(0.0,))
  for arg in _NUMERIC_ARGS[fn]:
    for v in edges[arg]:
      _call(fn, arg, v)


def test_gradient_tree_not_matching_state_names_the_paths():
  params = {"dense": {"w": jnp.ones((2, 3), jnp.float32), "b": jnp.ones(3, jnp.float32)}}
  for tx in (optax_rmsprop.rmsprop(0.1, momentum=0.9), optax_rmsprop.adagrad(0.1), optax_rmsprop.scale_by_rms()):
    state = tx.init(params)
    wrong = {"dense": {"w": jnp.ones((2, 3), jnp.float32), "bias": jnp.ones(3, jnp.float32)}}
    with pytest.raises(ValueError, match="does not match") as err:
      tx.update(wrong, state, wrong)
    assert "['dense']['b']" in str(err.value) and "['dense']['bias']" in str(err.value), str(err.value)
    bad_shape = {"dense": {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(3, jnp.float32)}}
    with pytest.raises(ValueError) as err:
      tx.update(bad_shape, state, params)
    msg = str(err.value)
    assert "['dense']['w']" in msg and "(3, 2)" in msg and "(2, 3)" in msg, msg


def test_state_of_another_transformation_is_rejected():
  tx = optax_rmsprop.scale_by_rms()
  p = jnp.ones(2, jnp.float32)
  with pytest.raises(TypeError, match="ScaleByAdamState"):
    tx.update(p, optax.scale_by_adam().init(p))
