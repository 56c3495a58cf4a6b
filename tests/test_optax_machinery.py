"""optax_rmsprop inside Optax's combinators: one test per combinator, each against a NumPy
transcription of the RMSProp rule (``np_rmsprop`` below) or an exactly known value.

Runs in float64 (the conftest enables x64) unless a combinator fixes a dtype, so the tolerances
are tight enough that a wrong hyperparameter, a skipped step or a misplaced clip shows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop
from tests.registry import CORE


def np_rmsprop(grads_seq, params, *, hyper_seq=None, centered=False, nesterov=False, bias_correction=False, **hyper):
  """The RMSProp rule of docs/guides/drop_in.md, step by step in float64 NumPy; returns the list of updates.

  Hyperparameters (learning_rate, decay, eps, momentum, weight_decay, initial_scale) come from
  ``hyper``, overridden per step by ``hyper_seq[t]`` when given. Per leaf and step t = 1, 2, ...:
  nu = decay nu + (1 - decay) g^2; mu = decay mu + (1 - decay) g (centered); with bias correction
  both divided by 1 - decay^t; s = max(nu - mu^2, 0) or nu; d = -lr g / sqrt(s + eps);
  b = momentum b + d, out = b (nesterov: d + momentum b); out -= lr wd p; p += out.
  """
  keys = list(params)
  p = {k: np.asarray(params[k], np.float64) for k in keys}
  nu = {k: np.full_like(p[k], hyper.get("initial_scale", 0.0)) for k in keys}
  mu = {k: np.zeros_like(p[k]) for k in keys}
  b = {k: np.zeros_like(p[k]) for k in keys}
  out = []
  for t, grads in enumerate(grads_seq, start=1):
    h = {"decay": 0.9, "eps": 1e-8, "momentum": None, "weight_decay": None, **hyper}
    if hyper_seq is not None:
      h.update(hyper_seq[t - 1])
    lr = h["learning_rate"](t - 1) if callable(h["learning_rate"]) else h["learning_rate"]
    d, step = h["decay"], {}
    for k in keys:
      g = np.asarray(grads[k], np.float64)
      nu[k] = d * nu[k] + (1 - d) * g * g
      mu[k] = d * mu[k] + (1 - d) * g
      corr = 1 - d**t if bias_correction else 1.0
      s = np.maximum(nu[k] / corr - (mu[k] / corr) ** 2, 0) if centered else nu[k] / corr
      u = -lr * g / np.sqrt(s + h["eps"])
      if h["momentum"] is not None:
        b[k] = h["momentum"] * b[k] + u
        u = u + h["momentum"] * b[k] if nesterov else b[k]
      if h["weight_decay"] is not None:
        u = u - lr * h["weight_decay"] * p[k]
      step[k] = u
      p[k] = p[k] + u
    out.append(step)
  return out


def _params(dtype=jnp.float64):
  rng = np.random.default_rng(0)
  return {"a": jnp.asarray(rng.normal(size=(3, 4)), dtype), "b": jnp.asarray(rng.normal(size=(5,)), dtype)}


def _grads(n, dtype=jnp.float64, seed=1, scale=1.0):
  rng = np.random.default_rng(seed)
  return [
      {"a": jnp.asarray(scale * rng.normal(size=(3, 4)), dtype), "b": jnp.asarray(scale * rng.normal(size=(5,)), dtype)}
      for _ in range(n)
  ]


def _run(tx, grads_seq, params, jit=True):
  """Applies ``tx`` to a fixed gradient sequence; returns the updates and the final state."""
  update = jax.jit(tx.update) if jit else tx.update
  state, outs = tx.init(params), []
  for g in grads_seq:
    u, state = update(g, state, params)
    params = optax.apply_updates(params, u)
    outs.append(u)
  return outs, state


def _assert_close(ours, reference, rtol=1e-10, atol=1e-13):
  for t, (u, r) in enumerate(zip(ours, reference, strict=True)):
    for k in r:
      np.testing.assert_allclose(np.asarray(u[k]), r[k], rtol=rtol, atol=atol, err_msg=f"step {t}, leaf {k}")


def test_reference_transcription_matches_optax():
  # Anchors the NumPy transcription to the peer library (centered, momentum, bias correction).
  params, grads = _params(), _grads(6)
  # Centered with bias correction has a zero variance at step 1: eps keeps it well-conditioned.
  kw = dict(learning_rate=0.03, centered=True, momentum=0.8, bias_correction=True, eps=1e-3)
  _assert_close(_run(optax.rmsprop(**kw), grads, params)[0], np_rmsprop(grads, params, **kw))


def test_chain_and_named_chain():
  params, grads = _params(), _grads(5)
  kw = dict(learning_rate=0.02, centered=True, momentum=0.9, weight_decay=0.1)
  reference = np_rmsprop(grads, params, **kw)
  # chain: our pieces composed by hand equal the published rule.
  tx = optax.chain(
      optax_rmsprop.scale_by_rms(centered=True),
      optax_rmsprop.scale_by_learning_rate(0.02),
      optax_rmsprop.trace(0.9),
      optax_rmsprop.decoupled_weight_decay(0.02, 0.1),
  )
  _assert_close(_run(tx, grads, params)[0], reference)
  # named_chain: same updates, and the state is addressable by name and by field.
  tx = optax.named_chain(("identity", optax.identity()), ("rmsprop", optax_rmsprop.rmsprop(**kw)))
  outs, state = _run(tx, grads, params)
  _assert_close(outs, reference)
  assert set(state) == {"identity", "rmsprop"}
  assert isinstance(state["rmsprop"][0], optax.ScaleByRStdDevState)  # optax's centered state
  nu = optax.tree_utils.tree_get(state, "nu")
  np.testing.assert_allclose(nu["b"], np.asarray(optax.tree_utils.tree_get(state["rmsprop"], "nu")["b"]))
  assert nu["a"].shape == (3, 4)


def test_clip_by_global_norm_before_rmsprop():
  params, grads = _params(), _grads(4, scale=10.0)
  max_norm = 1.0
  clipped = []
  for g in grads:
    norm = np.sqrt(sum(np.sum(np.asarray(v) ** 2) for v in g.values()))
    clipped.append({k: np.asarray(v) * min(1.0, max_norm / norm) for k, v in g.items()})
  # A large eps makes RMSProp sensitive to the gradient's scale, so clipping changes the result.
  kw = dict(learning_rate=0.1, eps=1.0, momentum=0.5)
  tx = optax.chain(optax.clip_by_global_norm(max_norm), optax_rmsprop.rmsprop(**kw))
  outs = _run(tx, grads, params)[0]
  _assert_close(outs, np_rmsprop(clipped, params, **kw))
  unclipped = np_rmsprop(grads, params, **kw)
  assert not np.allclose(np.asarray(outs[0]["a"]), unclipped[0]["a"], rtol=1e-3)


@pytest.mark.parametrize(
    "schedule",
    [
        optax.piecewise_constant_schedule(0.1, {2: 0.5, 4: 0.1}),
        optax.warmup_cosine_decay_schedule(0.0, 0.1, 2, 8, 0.01),
    ],
    ids=["piecewise", "warmup-cosine"],
)
def test_learning_rate_schedule_is_evaluated_at_each_step(schedule):
  params, grads = _params(), _grads(8)
  # The schedule drives both the step and the decoupled weight decay, from count 0.
  kw = dict(momentum=0.9, weight_decay=0.05, bias_correction=True)
  tx = optax_rmsprop.rmsprop(schedule, **kw)
  outs, state = _run(tx, grads, params)
  # optax evaluates schedules in float32 (XLA and NumPy cosines differ by ulps): float32 tolerance.
  _assert_close(outs, np_rmsprop(grads, params, learning_rate=schedule, **kw), rtol=1e-6, atol=2e-8)
  counts = [int(leaf) for leaf in jax.tree.leaves(state) if jnp.ndim(leaf) == 0]
  assert counts and all(c == len(grads) for c in counts), counts


def test_inject_hyperparams_changes_decay_eps_and_momentum_mid_run():
  params, grads = _params(), _grads(8)
  tx = optax.inject_hyperparams(optax_rmsprop.rmsprop)(
      learning_rate=0.05, decay=0.9, eps=1e-3, momentum=0.9, weight_decay=0.01, centered=True, bias_correction=True
  )
  before = dict(learning_rate=0.05, decay=0.9, eps=1e-3, momentum=0.9, weight_decay=0.01)
  after = dict(learning_rate=0.02, decay=0.5, eps=0.3, momentum=0.2, weight_decay=0.1)
  update = jax.jit(tx.update)
  state, outs = tx.init(params), []
  p = params
  for t, g in enumerate(grads):
    if t == 4:
      for name, value in after.items():
        state.hyperparams[name] = jnp.asarray(value, jnp.float64)
    u, state = update(g, state, p)
    p = optax.apply_updates(p, u)
    outs.append(u)
  hyper_seq = [before] * 4 + [after] * 4
  reference = np_rmsprop(grads, params, hyper_seq=hyper_seq, centered=True, bias_correction=True, **before)
  _assert_close(outs, reference)
  # The change took effect for each of decay, eps and momentum on its own (not only the rate):
  # the reference with that one hyperparameter left unchanged differs from what we computed.
  for name in ("decay", "eps", "momentum"):
    partial = [before] * 4 + [{**after, name: before[name]}] * 4
    other = np_rmsprop(grads, params, hyper_seq=partial, centered=True, bias_correction=True, **before)
    assert not np.allclose(np.asarray(outs[-1]["a"]), other[-1]["a"], rtol=1e-6), name
  # One compilation serves both settings: the hyperparameters are traced, not baked in.
  assert update._cache_size() == 1


def test_multisteps_k_micro_steps_equal_one_step_on_the_mean_gradient():
  k = 4
  params, micro = _params(jnp.float32), _grads(3 * k, jnp.float32)
  # float32 (MultiSteps accumulates in float32); centered + bias correction cancels to ~0 at
  # step 1, so eps must dominate float32 rounding for a tight comparison.
  kw = dict(learning_rate=0.05, centered=True, momentum=0.9, bias_correction=True, eps=0.1)
  tx = optax.MultiSteps(optax_rmsprop.rmsprop(**kw), every_k_schedule=k)
  outs, state = _run(tx, micro, params)
  means = [
      {key: np.mean([np.asarray(g[key], np.float64) for g in micro[i : i + k]], axis=0) for key in params}
      for i in range(0, len(micro), k)
  ]
  reference = np_rmsprop(means, params, **kw)
  for i, u in enumerate(outs):
    if (i + 1) % k:  # accumulating: no update
      assert all(bool(jnp.all(v == 0)) for v in u.values()), i
    else:
      _assert_close([u], [reference[i // k]], rtol=2e-5, atol=1e-7)
  assert int(state.gradient_step) == len(micro) // k
  assert int(state.inner_opt_state[0].count) == len(micro) // k


def test_masked_applies_rmsprop_only_where_the_mask_is_true():
  params, grads = _params(), _grads(4)
  kw = dict(learning_rate=0.05, momentum=0.9, centered=True)
  tx = optax.masked(optax_rmsprop.rmsprop(**kw), {"a": True, "b": False})
  outs, state = _run(tx, grads, params)
  reference = np_rmsprop([{"a": g["a"]} for g in grads], {"a": params["a"]}, **kw)
  _assert_close([{"a": u["a"]} for u in outs], reference)
  for u, g in zip(outs, grads, strict=True):  # unmasked leaves pass through untouched
    np.testing.assert_array_equal(np.asarray(u["b"]), np.asarray(g["b"]))
  inner = state.inner_state[0]
  assert isinstance(inner.nu["b"], optax.MaskedNode) and isinstance(inner.mu["b"], optax.MaskedNode)
  assert inner.nu["a"].shape == (3, 4)


@pytest.mark.parametrize("combinator", ["multi_transform", "partition"])
def test_multi_transform_and_partition_route_leaves(combinator):
  params, grads = _params(), _grads(4)
  kw = dict(learning_rate=0.05, momentum=0.5, weight_decay=0.1)
  transforms = {"rms": optax_rmsprop.rmsprop(**kw), "sgd": optax.sgd(0.1)}
  labels = {"a": "rms", "b": "sgd"}
  tx = getattr(optax, combinator)(transforms, labels)
  outs, _ = _run(tx, grads, params)
  _assert_close([{"a": u["a"]} for u in outs], np_rmsprop([{"a": g["a"]} for g in grads], {"a": params["a"]}, **kw))
  for u, g in zip(outs, grads, strict=True):
    np.testing.assert_allclose(np.asarray(u["b"]), -0.1 * np.asarray(g["b"]), rtol=1e-15)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_apply_if_finite_leaves_inner_state_bit_for_bit_unchanged(jit):
  params = _params(jnp.float32)
  grads = _grads(5, jnp.float32)
  bad = {"a": grads[2]["a"].at[1, 2].set(jnp.nan), "b": grads[2]["b"].at[0].set(jnp.inf)}
  seq = grads[:2] + [bad] + grads[3:]
  kw = dict(learning_rate=0.05, centered=True, momentum=0.9, bias_correction=True, weight_decay=0.01, eps=0.1)
  tx = optax.apply_if_finite(optax_rmsprop.rmsprop(**kw), max_consecutive_errors=3)
  update = jax.jit(tx.update) if jit else tx.update
  state, p, outs = tx.init(params), params, []
  for t, g in enumerate(seq):
    before = state
    u, state = update(g, state, p)
    if t == 2:
      assert not bool(state.last_finite) and int(state.notfinite_count) == 1
      assert all(bool(jnp.all(v == 0)) for v in u.values())
      old, new = jax.tree.leaves(before.inner_state), jax.tree.leaves(state.inner_state)
      assert len(old) == len(new) > 0
      for a, b in zip(old, new, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    p = optax.apply_updates(p, u)
    outs.append(u)
  # After the skipped step the run continues as if the bad gradient never arrived.
  good = grads[:2] + grads[3:]
  _assert_close(outs[:2] + outs[3:], np_rmsprop(good, params, **kw), rtol=2e-5, atol=1e-7)
  assert int(state.total_notfinite) == 1 and int(state.notfinite_count) == 0


def test_tree_map_params_reaches_every_buffer_and_only_the_buffers():
  params = _params(jnp.float32)
  tx = optax_rmsprop.rmsprop(0.1, centered=True, momentum=0.9, weight_decay=0.1, initial_scale=2.0, bias_correction=True)
  state = tx.init(params)
  # E.g. a user moving the state to bfloat16 for storage: every buffer changes dtype, the
  # int32 counter stays as it is.
  cast = optax.tree_map_params(tx, lambda v: v.astype(jnp.bfloat16), state)
  rms, trace = cast[0], cast[2]
  for tree, fill in ((rms.nu, 2.0), (rms.mu, 0.0), (trace.trace, 0.0)):
    for key in params:
      assert tree[key].dtype == jnp.bfloat16 and tree[key].shape == params[key].shape
      np.testing.assert_array_equal(np.asarray(tree[key], np.float32), fill)
  assert rms.count.dtype == jnp.int32


@pytest.mark.parametrize("case", CORE, ids=[c.id for c in CORE])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_eval_shape_of_init_matches_real_init(case, dtype):
  params = jax.tree.map(lambda x: x.astype(dtype), _params(jnp.float32))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  tx = case.build()
  shapes = jax.eval_shape(tx.init, abstract)
  real = tx.init(params)
  assert jax.tree.structure(shapes) == jax.tree.structure(real)
  for s, r in zip(jax.tree.leaves(shapes), jax.tree.leaves(real), strict=True):
    assert (s.shape, s.dtype) == (r.shape, r.dtype)
  # Real buffers of the parameters' dtype (or the requested state dtype), int32 counters.
  want = jnp.dtype(case.kwargs.get("state_dtype") or dtype)
  buffers = [r for r in jax.tree.leaves(real) if r.ndim > 0]
  assert buffers and all(b.dtype == want for b in buffers)
