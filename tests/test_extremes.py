"""Extremes: overflowing spikes, vanishing gradients, a saturated step count, long noisy runs, NaN.

Every expectation here is derived from the update rule, not from a previous run:

* Spike recovery. The state is clamped to its dtype's largest finite value ``M``, after which the
  excess decays geometrically: ``nu_k - nu_k' = decay^k (nu_0 - nu_0')`` for the spiked and unspiked
  runs. With +-1 gradients the unspiked second moment is 1, so the spiked step is within a factor
  of 2 of the unspiked one (``nu_k <= 4``) once ``decay^k M <= 1``, i.e. after
  ``K = ceil(ln M / ln(1/decay))`` steps: 843 in float32/bfloat16, 106 in float16 (decay 0.9).
* Long runs. For i.i.d. gradients of mean ``m`` and variance ``s^2``, an exponential average has
  expectation ``E[g^2] = m^2 + s^2`` (and ``m`` for the mean, centered); a running sum grows by
  ``E[g^2]`` per step. The time average over the second half of the run of the mean over ``N``
  elements has a standard deviation of about ``sqrt(Var(g^2) / (N L))``; we allow 6 of them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import ALL, IDS

import optax_rmsprop as orp

F16, BF16, F32, F64 = jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64
INT32_MAX = 2**31 - 1


def _finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


_MOMENT_STATES = (
    optax.ScaleByRmsState,
    optax.ScaleByRStdDevState,
    optax.ScaleByRssState,
    type(optax.scale_by_rms(bias_correction=True).init(jnp.zeros(1))),
    type(optax.scale_by_stddev(bias_correction=True).init(jnp.zeros(1))),
)


def _rms_states(state):
  """Every second-moment state (optax's classes) inside a (chained, wrapped) optimizer state."""
  is_rms = lambda x: isinstance(x, _MOMENT_STATES)
  return [s for s in jax.tree.leaves(state, is_leaf=is_rms) if is_rms(s)]


def _nu(s):
  return s.sum_of_squares if isinstance(s, optax.ScaleByRssState) else s.nu


def _mu(s):
  return getattr(s, "mu", None)


# ---------------------------------------------------------------------------------------------
# A gradient spike whose square overflows must not freeze the parameter: with a state_dtype given
# (float32 included), buffers are clamped to its range. state_dtype=None keeps optax's buffers and
# arithmetic, overflow included (see test_default_state_overflows_as_optax_s).

SPIKE_VARIANTS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.9),
    "bias-correction": dict(bias_correction=True),
    "eps-outside": dict(eps_in_sqrt=False),
    "centered-bias-momentum": dict(centered=True, bias_correction=True, momentum=0.9, nesterov=True),
}
# (dtype, spike): the square overflows the state's dtype in each case.
SPIKES = [
    (F32, 1e20),  # g^2 = 1e40 > 3.4e38: inf in float32 arithmetic
    (F32, 1e21),  # and (0.1 g)^2 overflows too: the centered mean's square
    (F32, 3e38),  # the largest finite gradients
    (BF16, 1e20),
    (F16, 1e3),  # g^2 = 1e6 > 65504 (computed in float32, clamped when stored in float16)
    (F16, 6e4),  # close to float16's maximum 65504 (1e5 itself is inf in float16)
]


def _recovery_steps(dtype, decay: float) -> int:
  return math.ceil(math.log(float(jnp.finfo(dtype).max)) / math.log(1 / decay))


def _spiked_and_clean(tx, dtype, spike, n_before, n_after, n=8):
  """Updates after a spike at step ``n_before`` and the same run without it (+-1 gradients)."""
  signs = jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, (n_before + 1 + n_after, n))
  clean = jnp.where(signs, 1.0, -1.0).astype(dtype)
  spiked = clean.at[n_before].multiply(jnp.asarray(spike, dtype))
  params = jnp.zeros(n, dtype)

  @jax.jit
  def run(grads):
    def body(state, g):
      u, state = tx.update(g, state, params)
      return state, u

    return jax.lax.scan(body, tx.init(params), grads)

  (s_state, s_upd), (_, c_upd) = run(spiked), run(clean)
  cut = n_before + 1
  return s_state, np.asarray(s_upd[cut:], np.float64), np.asarray(c_upd[cut:], np.float64)


# Every variant with the two hardest spikes; the plain and centered rules with all of them.
SPIKE_CASES = [
    pytest.param(v, d, s, id=f"{v}-{jnp.dtype(d).name}-{s:g}")
    for d, s in SPIKES
    for v in SPIKE_VARIANTS
    if (d, s) in ((F32, 1e21), (F16, 6e4)) or v in ("plain", "centered")
]


@pytest.mark.parametrize("variant, dtype, spike", SPIKE_CASES)
def test_spike_does_not_freeze_the_parameter(variant, dtype, spike):
  kwargs = SPIKE_VARIANTS[variant]
  decay = 0.9
  k = _recovery_steps(dtype, decay)
  # Momentum (0.9) keeps the mismatch of earlier steps: allow it ln(100)/ln(1/0.9) = 44 more steps,
  # enough for the spike step's own update (at most |g|/sqrt(M) * lr) to decay too.
  slack = 50 + (math.ceil(math.log(float(spike) + 1e3) / math.log(1 / 0.9)) if "momentum" in kwargs else 0)
  tx = orp.rmsprop(0.1, decay=decay, state_dtype=dtype, **kwargs)
  state, spiked, clean = _spiked_and_clean(tx, dtype, spike, n_before=20, n_after=k + slack + 50)

  assert np.isfinite(spiked).all() and _finite(state)
  scale = np.abs(clean).max()
  if "momentum" not in kwargs:
    # Right after the spike the larger second moment can only make steps smaller, never larger
    # (a collapsed centered variance used to make them g / sqrt(eps) = 1e4 * lr).
    assert np.abs(spiked).max() <= 1.01 * scale, np.abs(spiked).max()
  # ... and after K steps they are ordinary again: same sign, within a factor of 2, never zero.
  late_s, late_c = spiked[k + slack :], clean[k + slack :]
  assert np.all(late_s != 0)
  np.testing.assert_array_less(np.abs(late_s - late_c), 0.5 * np.abs(late_c) + 0.05 * scale)


@pytest.mark.parametrize("dtype, spike", [(F32, 1e20), (F16, 1e3)], ids=["float32", "float16"])
def test_spike_recovery_happens_when_the_maths_says(dtype, spike):
  # Not earlier either: before decay^k M falls to the size of the ordinary second moment, the steps
  # are still visibly smaller. This pins K to the clamp at M, not to some other mechanism.
  decay = 0.9
  m = float(jnp.finfo(dtype).max)
  tx = orp.rmsprop(1.0, decay=decay, state_dtype=dtype)
  _, spiked, clean = _spiked_and_clean(tx, dtype, spike, n_before=20, n_after=_recovery_steps(dtype, decay) + 20)
  # nu_k = decay^(k+1) M + O(1): |u_k| = 1/sqrt(nu_k) while decay^k M >> 1.
  for k in (0, 10, _recovery_steps(dtype, decay) // 2):
    predicted = 1 / math.sqrt(decay ** (k + 1) * m + 1)
    np.testing.assert_allclose(np.abs(spiked[k]), predicted, rtol=0.05)
  # At K steps the excess decay^K M is below 1 (within the factor 2 of the other test), and it goes on
  # shrinking geometrically towards the clean run's 1.
  for k in (_recovery_steps(dtype, decay), len(spiked) - 1):
    predicted = 1 / math.sqrt(decay ** (k + 1) * m + 1 - decay ** (k + 1))
    np.testing.assert_allclose(np.abs(spiked[k]), predicted, rtol=0.01)
    assert 0.5 * np.abs(clean[k]).min() < predicted < 1.0


def test_adagrad_spike_gives_zero_steps_as_optax_s():
  # AdaGrad's sum never forgets (the maths): after a spike whose square overflows, optax's sum is
  # inf and the steps are 0 from then on (a clamped sum would make them g / sqrt(M) = 5e-20 g).
  # Ours keeps optax's buffers and arithmetic: the same zeros, never NaN, the same bits.
  params = jnp.zeros(4, F32)
  runs = []
  for tx in (orp.adagrad(1.0), optax.adagrad(1.0)):
    state, out = tx.init(params), []
    for g in [jnp.full(4, 1e20, F32)] + [jnp.ones(4, F32)] * 3:
      u, state = tx.update(g, state, params)
      out.append(np.asarray(u))
    runs.append((np.stack(out), np.asarray(state[0].sum_of_squares)))
  (ours, sum_ours), (theirs, sum_theirs) = runs
  assert not np.isnan(ours).any() and np.all(ours[1:] == 0) and np.all(np.isinf(sum_ours))
  np.testing.assert_array_equal(ours, theirs)
  np.testing.assert_array_equal(sum_ours, sum_theirs)


@pytest.mark.parametrize("variant", list(SPIKE_VARIANTS))
def test_default_state_overflows_as_optax_s(variant):
  # state_dtype=None: optax's buffers and arithmetic, nothing added, so that every XLA compiles the
  # same operations as for optax.rmsprop. After a spike the second moment is inf, as optax's, and
  # that parameter's steps are 0 (never NaN); the trajectory is optax's bit for bit.
  kwargs = SPIKE_VARIANTS[variant]
  ours, theirs = orp.rmsprop(0.1, **kwargs), optax.rmsprop(0.1, **kwargs)
  s_ours, up_ours, up_clean = _spiked_and_clean(ours, F32, 1e20, n_before=5, n_after=30)
  s_theirs, up_theirs, _ = _spiked_and_clean(theirs, F32, 1e20, n_before=5, n_after=30)
  # Centered, |mu|^2 overflows too and optax's variance inf - inf is NaN (or inf, where XLA
  # contracts it into an fma): ours is a zero step there, as for the overflowed nu alone.
  assert not np.isnan(up_ours).any() and np.all(np.abs(up_ours) <= np.abs(up_clean).max())
  assert any(np.isinf(np.asarray(leaf)).any() for leaf in jax.tree.leaves(s_ours[0]))
  finite = np.isfinite(up_theirs)
  assert finite.all() or "centered" in variant
  np.testing.assert_array_equal(up_ours[finite], up_theirs[finite])
  if "momentum" not in kwargs:  # (with momentum, the trace of earlier steps goes on)
    assert np.all(up_ours[~finite] == 0)
  for a, b in zip(jax.tree.leaves(s_ours), jax.tree.leaves(s_theirs), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    assert not np.isnan(a).any()
    np.testing.assert_array_equal(a[~np.isnan(b)], b[~np.isnan(b)])


def test_spike_with_float32_gradients_and_float16_state():
  # state_dtype narrower than the gradients: |mu| itself overflows float16 (g = 1e6).
  tx = orp.rmsprop(0.1, centered=True, state_dtype=F16)
  _, spiked, clean = _spiked_and_clean(tx, F32, 1e6, n_before=20, n_after=200)
  assert np.isfinite(spiked).all()
  assert np.abs(spiked).max() <= 1.01 * np.abs(clean).max()
  k = _recovery_steps(F16, 0.9) + 50
  np.testing.assert_array_less(np.abs(spiked[k:] - clean[k:]), 0.5 * np.abs(clean[k:]) + 1e-3)


# ---------------------------------------------------------------------------------------------
# Tiny, zero and denormal gradients: no NaN, no inf, with eps = 0 and the default eps.

TINY_VARIANTS = [
    dict(),
    dict(centered=True),
    dict(eps_in_sqrt=False),
    dict(centered=True, bias_correction=True),
    dict(momentum=0.9, nesterov=True),
    dict(initial_scale=0.0, decay=0.0),
]


def _tiny_values(dtype):
  fi = jnp.finfo(dtype)
  return [1e-30, 0.0, -0.0, float(fi.smallest_subnormal), float(fi.tiny), float(fi.tiny) * 4, float(fi.eps)]


@pytest.mark.parametrize("eps", [0.0, None], ids=["eps0", "default-eps"])
@pytest.mark.parametrize("dtype", [F16, BF16, F32], ids=["float16", "bfloat16", "float32"])
def test_tiny_zero_and_denormal_gradients_stay_finite(dtype, eps):
  values = _tiny_values(dtype)
  # Every tiny value with both signs, and a large one next to a denormal.
  g = jnp.array(values + [-v for v in values] + [1.0, values[3]], dtype)
  params = jnp.zeros_like(g)
  e = {} if eps is None else {"eps": eps}
  # (transformation, sign of its output relative to the gradient)
  makers = [(orp.rmsprop(0.1, **kw, **e), -1) for kw in TINY_VARIANTS]
  makers += [(orp.adagrad(0.1, initial_accumulator_value=0.0, **e), -1), (orp.scale_by_rss(0.0, **e, eps_in_sqrt=False), 1)]
  gn = np.asarray(g, np.float64)
  for tx, sign in makers:
    state = tx.init(params)
    step = jax.jit(tx.update)
    for _ in range(3):
      updates, state = step(g, state, params)
      assert _finite((updates, state)), (updates, state)
      u = np.asarray(updates, np.float64)
      # A zero gradient never moves the parameter; a non-zero step never has the wrong sign.
      assert np.all(u[gn == 0] == 0)
      assert np.all(sign * u * gn >= 0)


def test_eps_zero_and_zero_gradient_is_a_zero_step_not_nan():
  # 0 / sqrt(0 + 0) is 0/0 in the maths; the step is defined as 0 (optax: NaN, its issue #1553).
  for kw in (dict(), dict(eps_in_sqrt=False), dict(centered=True), dict(bias_correction=True)):
    tx = orp.rmsprop(0.1, eps=0.0, **kw)
    p = jnp.zeros(3, F32)
    u, s = tx.update(jnp.zeros(3, F32), tx.init(p), p)
    assert np.array_equal(np.asarray(u), np.zeros(3)) and _finite(s)


# ---------------------------------------------------------------------------------------------
# The step count saturates at the int32 maximum; bias correction keeps using it.


def _bias_corrected_reference(grads, decay, eps, t0):
  """NumPy float64 transcription of optax's scale_by_rms with bias correction, from count t0, with
  the count saturating at the int32 maximum (t counts from 1)."""
  nu = np.zeros_like(grads[0])
  out, t = [], t0
  for g in grads:
    t = min(t + 1, INT32_MAX)
    nu = decay * nu + (1 - decay) * g * g
    out.append(g / np.sqrt(nu / (1 - decay**t) + eps))
  return out


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_count_saturates_and_bias_correction_keeps_working(jit):
  # decay 1 - 1e-9 makes the correction 1 - decay^t non-trivial at t ~ 2^31 (about 0.88):
  # a wrapped (negative) count would make decay^t > 1 and the correction negative.
  decay, eps, t0 = 1 - 1e-9, 1e-8, INT32_MAX - 3
  tx = orp.scale_by_rms(decay=decay, eps=eps, bias_correction=True)
  params = jnp.zeros(3, F64)
  state = tx.init(params)._replace(count=jnp.asarray(t0, jnp.int32))
  grads = [np.array([1.0, -2.0, 0.5]) * (k + 1) for k in range(6)]
  update = jax.jit(tx.update) if jit else tx.update
  counts, outs = [], []
  for g in grads:
    u, state = update(jnp.asarray(g, F64), state)
    counts.append(int(state.count))
    outs.append(np.asarray(u))
  assert counts == [INT32_MAX - 2, INT32_MAX - 1, INT32_MAX, INT32_MAX, INT32_MAX, INT32_MAX]
  assert state.count.dtype == jnp.int32
  for got, want in zip(outs, _bias_corrected_reference(grads, decay, eps, t0), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_schedule_count_saturates_too():
  # The learning-rate schedule's own counter (and the optimizer's) stop at the int32 maximum.
  sched = optax.linear_schedule(1.0, 0.0, transition_steps=INT32_MAX)
  tx = orp.rmsprop(sched, weight_decay=0.5)
  params = jnp.ones(2, F64)
  state = tx.init(params)
  near = jnp.asarray(INT32_MAX - 1, jnp.int32)
  state = jax.tree.map(lambda x: near if (x.dtype == jnp.int32 and x.shape == ()) else x, state)
  for _ in range(3):
    u, state = tx.update(jnp.ones(2, F64), state, params)
  counts = [int(x) for x in jax.tree.leaves(state) if x.dtype == jnp.int32]
  assert counts and all(c == INT32_MAX for c in counts), counts
  # At count INT32_MAX the schedule is at its end value 0: no step, no decay.
  np.testing.assert_array_equal(np.asarray(u), 0.0)


# ---------------------------------------------------------------------------------------------
# Long runs of noisy gradients: no NaN, and the second moment where the maths puts it.

MEAN, STD = 0.5, 1.0


def _long_run(case, steps: int, n: int):
  tx = case.build()
  params = jnp.zeros(n, F32)  # zero params: coupled or decoupled weight decay adds nothing
  state0 = tx.init(params)
  key = jax.random.PRNGKey(42)
  half = steps // 2

  @jax.jit
  def run():
    def body(carry, t):
      state, ok, acc_nu, acc_mu = carry
      g = (MEAN + STD * jax.random.normal(jax.random.fold_in(key, t), (n,), F32)).astype(F32)
      u, state = tx.update(g, state, params)
      ok = ok & jnp.all(jnp.isfinite(u))
      rms = _rms_states(state)
      late = (t >= half).astype(F32)
      if rms:
        acc_nu = acc_nu + late * jnp.mean(_nu(rms[0]).astype(F32))
        if _mu(rms[0]) is not None:
          acc_mu = acc_mu + late * jnp.mean(_mu(rms[0]).astype(F32))
      return (state, ok, acc_nu, acc_mu), None

    init = (state0, jnp.asarray(True), jnp.zeros((), F32), jnp.zeros((), F32))
    (state, ok, acc_nu, acc_mu), _ = jax.lax.scan(body, init, jnp.arange(steps))
    return state, ok, acc_nu / (steps - half), acc_mu / (steps - half)

  state, ok, mean_nu, mean_mu = run()
  return state0, state, bool(ok), float(mean_nu), float(mean_mu)


def _check_long_run(case, steps, n):
  state0, state, ok, mean_nu, mean_mu = _long_run(case, steps, n)
  assert ok, "a non-finite update"
  assert _finite(state)
  rms0, rms = _rms_states(state0), _rms_states(state)
  if not rms:
    return
  e_g2, var_g2 = MEAN**2 + STD**2, 2 * STD**4 + 4 * MEAN**2 * STD**2
  clip = case.kwargs.get("clipnorm")
  if clip:
    # Keras clips each tensor to norm `clipnorm`: the mean of g'^2 over the elements is clip^2 / n.
    e_g2, var_g2 = clip**2 / n, 0.0
  accumulate = "adagrad" in case.id or "rss" in case.id
  if accumulate:
    grown = float(jnp.mean(_nu(rms[0]) - _nu(rms0[0]))) / steps
    tol = 6 * math.sqrt(var_g2 / (n * steps)) + 1e-3 * e_g2
    assert abs(grown - e_g2) <= tol, (grown, e_g2, tol)
  else:
    tol = 6 * math.sqrt(var_g2 / (n * (steps // 2))) + 1e-3 * e_g2
    assert abs(mean_nu - e_g2) <= tol, (mean_nu, e_g2, tol)
    if _mu(rms[0]) is not None and not clip:
      tol_mu = 6 * STD * math.sqrt(1 / (n * (steps // 2))) + 1e-3
      assert abs(abs(mean_mu) - MEAN) <= tol_mu, (mean_mu, MEAN, tol_mu)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_long_noisy_run_short(case):
  _check_long_run(case, steps=4000, n=128)


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_long_noisy_run_1e5_steps(case):
  _check_long_run(case, steps=100_000, n=256)


# ---------------------------------------------------------------------------------------------
# NaN and inf gradients: the documented behaviour, and the apply_if_finite recipe.


@pytest.mark.parametrize("kwargs", [dict(), dict(centered=True), dict(momentum=0.9)], ids=["plain", "centered", "momentum"])
def test_nan_gradient_propagates_into_update_and_state(kwargs):
  # Documented: NaN is the input's, not ours to hide. It reaches the update and the buffers of
  # that element (and only that element).
  tx = orp.rmsprop(0.1, **kwargs)
  p = jnp.zeros(2, F32)
  u, s = tx.update(jnp.array([jnp.nan, 1.0], F32), tx.init(p), p)
  assert np.isnan(np.asarray(u)[0]) and np.isfinite(np.asarray(u)[1])
  assert np.isnan(np.asarray(s[0].nu)[0]) and np.isfinite(np.asarray(s[0].nu)[1])


@pytest.mark.parametrize("kwargs", [dict(), dict(centered=True), dict(momentum=0.9)], ids=["plain", "centered", "momentum"])
def test_inf_gradient_gives_nonfinite_update_but_finite_state(kwargs):
  tx = orp.rmsprop(0.1, state_dtype=F32, **kwargs)
  p = jnp.zeros(2, F32)
  u, s = tx.update(jnp.array([jnp.inf, 1.0], F32), tx.init(p), p)
  if "momentum" in kwargs:  # the momentum buffer is clamped too, so its output is the max, not inf
    assert abs(float(u[0])) >= 1e38
  else:
    assert not np.isfinite(np.asarray(u)[0])
  assert _finite(s)


@pytest.mark.parametrize("case", ALL, ids=IDS)
def test_apply_if_finite_skips_bad_steps_and_keeps_the_state_clean(case):
  # The recipe in docs/guides/numerical_safety.md: wrap the optimizer; a step with a NaN or inf gradient is skipped
  # (zero update, inner state untouched), and training continues exactly as if it never happened.
  params = {"w": jnp.linspace(-1, 1, 6, dtype=F32).reshape(2, 3), "b": jnp.full(3, 0.5, F32)}
  good = [jax.tree.map(lambda x, k=k: jnp.sin(x * (k + 1) + k).astype(F32), params) for k in range(5)]
  bad_nan = jax.tree.map(lambda x: x.at[0].set(jnp.nan), good[0])
  bad_inf = jax.tree.map(lambda x: x.at[-1].set(-jnp.inf), good[1])

  safe = optax.apply_if_finite(case.build(), max_consecutive_errors=3)
  step = jax.jit(safe.update)
  state = safe.init(params)
  for g in [good[0], bad_nan, good[1], good[2], bad_inf, good[3], good[4]]:
    updates, state = step(g, state, params)
    is_bad = g is bad_nan or g is bad_inf
    assert _finite(updates)
    if is_bad:
      assert all(bool(jnp.all(u == 0)) for u in jax.tree.leaves(updates))
  assert _finite(state.inner_state)
  assert int(state.total_notfinite) == 2

  plain = jax.jit(case.build().update)
  ref = case.build().init(params)
  for g in good:
    ref_updates, ref = plain(g, ref, params)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), state.inner_state, ref)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), updates, ref_updates)


@pytest.mark.parametrize("centered", [False, True], ids=["plain", "centered"])
@pytest.mark.parametrize("spike", [1e3, 6e4])
def test_float16_spike_step_itself_follows_the_maths(spike, centered):
  # The spike's square overflows the float16 buffer, not the float32 arithmetic: the step on which
  # it arrives is the exact rule (only the stored value is clamped), not |g| / sqrt(65504).
  decay, lr = 0.9, 0.1
  tx = orp.rmsprop(lr, decay=decay, centered=centered)
  params = jnp.zeros(3, F16)
  state = tx.init(params)
  g0 = np.array([1.0, -1.0, 0.5])
  _, state = tx.update(jnp.asarray(g0, F16), state, params)
  u, state = tx.update(jnp.asarray([spike, -spike, 1.0], F16), state, params)
  g1 = np.asarray(jnp.asarray([spike, -spike, 1.0], F16), np.float64)
  nu = decay * (1 - decay) * g0**2 + (1 - decay) * g1**2
  var = nu - (decay * (1 - decay) * g0 + (1 - decay) * g1) ** 2 if centered else nu
  want = -lr * g1 / np.sqrt(var + 1e-8)
  np.testing.assert_allclose(np.asarray(u, np.float64), want, rtol=2e-3)
  assert float(jnp.max(state[0].nu)) == float(jnp.finfo(F16).max)


def test_spike_with_float32_gradients_and_float64_state():
  # A state wider than the arithmetic: the float32 square overflows to inf and must still be
  # clamped (to float32's max, the narrower range), not stored as inf in the float64 buffer.
  tx = orp.rmsprop(0.1, centered=True, state_dtype=F64)
  state, spiked, clean = _spiked_and_clean(tx, F32, 1e21, n_before=20, n_after=_recovery_steps(F32, 0.9) + 100)
  assert _finite(state) and np.isfinite(spiked).all()
  assert np.abs(spiked).max() <= 1.01 * np.abs(clean).max()
  np.testing.assert_array_less(np.abs(spiked[-50:] - clean[-50:]), 0.5 * np.abs(clean[-50:]) + 1e-3)
