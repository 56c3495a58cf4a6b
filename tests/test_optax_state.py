"""Drop-in, literally: optax's own state and optax's own float32/float64 trajectory, checked live.

For every registry constructor the state is compared with the one optax's own pieces make (the
same NamedTuple classes, fields, order and chain positions; extensions append their stage), and,
where optax has the same rule, the trajectory is compared bit for bit over 120 jitted float32
steps wherever optax's is finite. Then: every ``rmsprop`` flag combination with constant,
scheduled and ``inject_hyperparams`` hyperparameters, jit (``lax.scan``) and eager, float32 and
float64; states made by one library updated by the other; Orbax checkpoints in both directions;
``optax.tree_utils.tree_get``; and ports of what optax's ``test_rms_match_adam`` and
``test_map_params_to_none`` check. ``tests/tally.py`` counts the results for the run's summary.

The losses are separable (each element's gradient depends on that element alone), so an element
where optax's arithmetic makes a NaN (centered variance rounded below ``-eps``) leaves every other
element comparable.
"""

from __future__ import annotations

import inspect
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_rmsprop as orp
from optax_rmsprop import compat
from tests import registry, tally

F32, F64 = jnp.float32, jnp.float64
STEPS = 120
_SCHEDULE = optax.cosine_decay_schedule(0.02, 150, alpha=0.1)


def _params(dtype=F32):
  rng = np.random.default_rng(7)
  return {"w": jnp.asarray(rng.normal(size=(16, 9)), dtype), "b": jnp.asarray(rng.normal(size=(9,)), dtype)}


def _loss(p):
  # Separable and non-convex: gradients change sign and size along the run.
  return sum(jnp.sum(jnp.sin(3 * x) * x**2 + 0.1 * x**4) for x in jax.tree.leaves(p))


def _bits_equal_where_finite(ref, got) -> tuple[bool, int]:
  """Whether ``got`` equals ``ref`` bit for bit wherever ``ref`` is finite; and how many elements
  were compared."""
  ok, compared = True, 0
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    fin = np.isfinite(a)
    compared += int(fin.sum())
    ok &= a.dtype == b.dtype and a[fin].tobytes() == b[fin].tobytes()
  return ok, compared


def _size(tree) -> int:
  return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# The registry: for each case, the state optax's own pieces make, and (where optax has the same
# rule) optax's transformation for the trajectory.

_IDENTITY_STATE = optax.EmptyState()


def _rmsprop_peer(kw):
  """optax.rmsprop's arguments among ``kw``; and the stage our extensions append."""
  shared = {k: v for k, v in kw.items() if k in inspect.signature(optax.rmsprop).parameters}
  extra = []
  if kw.get("weight_decay") is not None:
    lr = kw["learning_rate"]
    extra = [orp.DecoupledWeightDecayState(step=jnp.zeros([], jnp.int32)) if callable(lr) else optax.EmptyState()]
  return optax.rmsprop(**shared), extra


def _state_and_peer(case: registry.Case):
  """``(expected_state(params), optax_tx or None)`` for a registry case."""
  kw = case.kwargs
  if case.make is orp.rmsprop:
    peer, extra = _rmsprop_peer(kw)
    # maximize flips a sign (no optax peer for the trajectory); state_dtype float32 is the default.
    same_rule = not extra and not kw.get("maximize")
    return (lambda p: (*peer.init(p), *extra)), (peer if same_rule else None)
  if case.make is orp.adagrad:
    peer = optax.adagrad(**kw)
    return peer.init, peer
  if case.make is orp.scale_by_rms:
    make = optax.scale_by_stddev if kw.get("centered") else optax.scale_by_rms
    peer = make(**{k: v for k, v in kw.items() if k != "centered"})
    return peer.init, peer
  if case.make is orp.scale_by_stddev:
    peer = optax.scale_by_stddev(**kw)
    return peer.init, peer
  if case.make is orp.scale_by_rss:
    peer = optax.scale_by_rss(**kw)
    return peer.init, peer
  return _compat_peer(case)


def _compat_peer(case):
  """The ports as chains of optax's own pieces, in the ports' order (tests/registry.py's cases)."""
  o = optax
  peers = {
      "torch_rmsprop": o.chain(o.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False), o.scale_by_learning_rate(0.01)),
      "torch_rmsprop-all": o.chain(
          o.scale(-1.0),
          o.add_decayed_weights(1e-2),
          o.scale_by_stddev(0.99, 1e-8, eps_in_sqrt=False),
          o.trace(0.9),
          o.scale_by_learning_rate(0.01),
      ),
      "keras_rmsprop": o.chain(o.scale_by_rms(0.9, 1e-7), o.scale_by_learning_rate(0.001)),
      "keras_adagrad": o.chain(o.scale_by_rss(0.1, 1e-7), o.scale_by_learning_rate(0.001)),
      "tf1_rmsprop": o.chain(
          o.scale_by_stddev(0.9, 1e-10, initial_scale=1.0), o.scale_by_learning_rate(0.01), o.trace(0.9)
      ),
      "graves_rmsprop": o.chain(o.scale_by_stddev(0.95, 1e-4), o.scale_by_learning_rate(1e-4), o.trace(0.9)),
      "dqn_rmsprop": o.chain(o.scale_by_stddev(0.95, 0.01), o.scale_by_learning_rate(2.5e-4)),
  }
  if case.id in peers:
    return peers[case.id].init, peers[case.id]
  # No optax peer for these rules: eps outside AdaGrad's root (torch_adagrad) and Keras's
  # per-tensor clipnorm with decoupled decay; their states still use optax's classes.
  states = {
      "torch_adagrad": lambda p: (
          optax.EmptyState(),
          optax.ScaleByRssState(sum_of_squares=optax.tree.full_like(p, 0.0)),
          optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)),
      ),
      "keras_rmsprop-all": lambda p: (
          optax.EmptyState(),
          *o.rmsprop(0.001, 0.9, 1e-7, centered=True, momentum=0.9).init(p),
          optax.EmptyState(),
      ),
  }
  return states[case.id], None


@pytest.mark.parametrize("case", registry.ALL, ids=registry.IDS)
def test_state_is_optaxs_own(case):
  params = _params()
  expected, _ = _state_and_peer(case)
  ours, theirs = case.build().init(params), expected(params)
  same = jax.tree.structure(ours) == jax.tree.structure(theirs)
  tally.record("state structure identical to optax's (registry)", same)
  assert same, f"{case.id}:\n ours   {jax.tree.structure(ours)}\n optax  {jax.tree.structure(theirs)}"
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
    assert (a.shape, a.dtype) == (b.shape, b.dtype), case.id


def _jit_trajectory(tx, params, steps=STEPS, state=None):
  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(_loss)(p), s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params) if state is None else state
  out = []
  for _ in range(steps):
    params, state = step(params, state)
    out.append(params)
  return out, state


@pytest.mark.parametrize("case", registry.ALL, ids=registry.IDS)
def test_trajectory_is_optaxs_bit_for_bit(case):
  _, peer = _state_and_peer(case)
  if peer is None:
    pytest.skip(f"{case.id}: optax has no transformation with this rule")
  params = _params()
  ours, s_ours = _jit_trajectory(case.build(), params)
  theirs, s_theirs = _jit_trajectory(peer, params)
  ok, compared = _bits_equal_where_finite(theirs, ours)
  ok_state, _ = _bits_equal_where_finite(s_theirs, s_ours)
  tally.record("bit-identical to optax over 120 jitted float32 steps (registry)", ok and ok_state)
  assert ok and ok_state, case.id
  # Centered with bias correction, optax's first step is NaN wherever nu_hat - mu_hat^2 = g^2 - g^2
  # rounds below -eps (a quarter of the elements here); most must stay comparable.
  assert compared >= 0.5 * STEPS * _size(params), f"{case.id}: optax went non-finite almost everywhere"
  assert not np.array_equal(np.asarray(ours[-1]["w"]), np.asarray(params["w"]))  # it moved


def test_every_rule_optax_has_is_compared():
  # The skips above are exactly the rules optax lacks: extensions and two port-only rules.
  lacking = {c.id for c in registry.ALL if _state_and_peer(c)[1] is None}
  assert lacking == {
      "rmsprop-weight-decay",
      "rmsprop-maximize",
      "rmsprop-all-flags",
      "torch_adagrad",
      "keras_rmsprop-all",
  }


# ---------------------------------------------------------------------------------------------
# Every rmsprop flag combination, three ways of giving the hyperparameters, jit and eager.

_FLAGS = [
    dict(centered=c, bias_correction=b, eps_in_sqrt=e, momentum=m, nesterov=n)
    for c, b, e, m, n in itertools.product([False, True], [False, True], [True, False], [None, 0.9], [False, True])
    if not (m is None and n)
]
_HYPER = {
    "constant": lambda make, f: make(learning_rate=0.02, decay=0.9, eps=1e-8, **f),
    "schedule": lambda make, f: make(learning_rate=_SCHEDULE, decay=0.95, eps=1e-6, initial_scale=0.1, **f),
    "inject": lambda make, f: optax.inject_hyperparams(make, static_args=("momentum",) if f["momentum"] is None else ())(
        learning_rate=0.02, decay=0.9, eps=1e-8, **f
    ),
}


def _scan_trajectory(tx, params, steps):
  @jax.jit
  def run(params):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(_loss)(p), s, p)
      p = optax.apply_updates(p, u)
      return (p, s), p

    (_, s), ps = jax.lax.scan(body, (params, tx.init(params)), None, length=steps)
    return ps, s

  return run(params)


_GRAD = jax.jit(jax.grad(_loss))  # the optimizer runs eagerly; the gradient need not


def _eager_trajectory(tx, params, steps):
  state, out = tx.init(params), []
  for _ in range(steps):
    u, state = tx.update(_GRAD(params), state, params)
    params = optax.apply_updates(params, u)
    out.append(params)
  return out, state


def _grid_check(dtype, hyper, mode, flags, steps):
  params = _params(dtype)
  run = _scan_trajectory if mode == "jit" else _eager_trajectory
  failures = []
  for f in flags:
    ours, s_ours = run(_HYPER[hyper](orp.rmsprop, f), params, steps)
    theirs, s_theirs = run(_HYPER[hyper](optax.rmsprop, f), params, steps)
    same_structure = jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    same, compared = _bits_equal_where_finite(theirs, ours)
    tally.record(f"bit-identical to optax.rmsprop, {jnp.dtype(dtype).name}, {mode}", same and same_structure)
    if not (same and same_structure):
      failures.append(f)
    # Not vacuous. Centered + bias correction + eps outside the root is the hardest case: optax's
    # first step is NaN wherever g^2 - g^2 rounds below 0 (about half the elements), and every
    # later step where the variance rounds below 0 takes more (70 % of them after 100 steps).
    assert compared >= 0.2 * steps * _size(params), (f, compared)
  assert not failures, f"{len(failures)}/{len(flags)} differ from optax: {failures}"


@pytest.mark.parametrize("hyper", list(_HYPER))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_every_flag_combination_is_optaxs_bit_for_bit_jit(dtype, hyper):
  _grid_check(dtype, hyper, "jit", _FLAGS, STEPS)


# Eager: each flag on its own and all together (eager steps are slow: one dispatch per op).
_EAGER_FLAGS = [
    dict(centered=False, bias_correction=False, eps_in_sqrt=True, momentum=None, nesterov=False),
    dict(centered=True, bias_correction=False, eps_in_sqrt=True, momentum=None, nesterov=False),
    dict(centered=False, bias_correction=True, eps_in_sqrt=False, momentum=None, nesterov=False),
    dict(centered=True, bias_correction=True, eps_in_sqrt=True, momentum=0.9, nesterov=True),
]


@pytest.mark.parametrize("hyper", list(_HYPER))
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
def test_flag_combinations_are_optaxs_bit_for_bit_eager(dtype, hyper):
  _grid_check(dtype, hyper, "eager", _EAGER_FLAGS, 100)


@pytest.mark.slow
@pytest.mark.parametrize("hyper", list(_HYPER))
def test_every_flag_combination_is_optaxs_bit_for_bit_eager_float32(hyper):
  _grid_check(F32, hyper, "eager", _FLAGS, 100)


def test_adagrad_and_scalings_are_optaxs_bit_for_bit_eager():
  params = _params()
  for make in (
      lambda m: m.adagrad(0.3),
      lambda m: m.adagrad(_SCHEDULE, initial_accumulator_value=0.0, eps=1e-10),
      lambda m: m.scale_by_rss(),
      lambda m: m.scale_by_stddev(0.9, bias_correction=True),
      lambda m: m.scale_by_rms(0.99, eps_in_sqrt=False),
  ):
    ours, s_ours = _eager_trajectory(optax.chain(make(orp), optax.scale(-0.01)), params, 100)
    theirs, s_theirs = _eager_trajectory(optax.chain(make(optax), optax.scale(-0.01)), params, 100)
    assert jax.tree.structure(s_ours) == jax.tree.structure(s_theirs)
    ok, _ = _bits_equal_where_finite(theirs, ours)
    tally.record("bit-identical to optax, eager (adagrad, scale_by_rss/_stddev/_rms)", ok)
    assert ok


# ---------------------------------------------------------------------------------------------
# One library's state, the other library's update.

_MIXED = [
    dict(),
    dict(centered=True, momentum=0.9),
    dict(bias_correction=True, nesterov=True, momentum=0.5),
    dict(centered=True, bias_correction=True, eps_in_sqrt=False),
]


@pytest.mark.parametrize("flags", _MIXED, ids=lambda f: ",".join(f) or "plain")
def test_a_state_made_by_either_library_updates_with_the_other(flags):
  params = _params()
  ours, theirs = orp.rmsprop(_SCHEDULE, **flags), optax.rmsprop(_SCHEDULE, **flags)
  half = STEPS // 2
  reference, _ = _jit_trajectory(theirs, params)
  for first, second in ((theirs, ours), (ours, theirs)):
    a, state = _jit_trajectory(first, params, half)
    b, _ = _jit_trajectory(second, a[-1], STEPS - half, state=state)
    ok, _ = _bits_equal_where_finite(reference, a + b)
    assert ok, (flags, "optax then ours" if first is theirs else "ours then optax")


# ---------------------------------------------------------------------------------------------
# Orbax checkpoints, both directions: written by one library, restored and continued by the other.


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.rmsprop(0.01),
        lambda m: m.rmsprop(_SCHEDULE, centered=True, momentum=0.9, bias_correction=True),
        lambda m: m.adagrad(0.1),
        lambda m: optax.inject_hyperparams(m.rmsprop)(learning_rate=0.01, decay=0.95, momentum=0.9),
    ],
    ids=["rmsprop", "all-flags-schedule", "adagrad", "inject_hyperparams"],
)
@pytest.mark.parametrize("direction", ["optax->ours", "ours->optax"])
def test_orbax_checkpoint_interchange(make, direction, tmp_path):
  params = _params()
  writer, reader = (make(optax), make(orp)) if direction == "optax->ours" else (make(orp), make(optax))
  half = STEPS // 2
  uninterrupted, _ = _jit_trajectory(make(optax), params)
  before, state = _jit_trajectory(writer, params, half)
  path = tmp_path / "ckpt"
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, {"params": before[-1], "opt_state": state})
  # The reader knows only shapes: its own init, abstractly, is the restore target.
  abstract = jax.eval_shape(lambda: params)
  target = {"params": abstract, "opt_state": jax.eval_shape(reader.init, abstract)}
  with ocp.StandardCheckpointer() as ckpt:
    restored = ckpt.restore(path, target)
  assert jax.tree.structure(restored["opt_state"]) == jax.tree.structure(state)
  after, _ = _jit_trajectory(reader, restored["params"], STEPS - half, state=restored["opt_state"])
  ok, _ = _bits_equal_where_finite(uninterrupted, before + after)
  tally.record("Orbax checkpoint interchange, continued bit for bit", ok)
  assert ok, direction


# ---------------------------------------------------------------------------------------------
# optax.tree_utils finds what it finds in optax's state.


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.rmsprop(0.01),
        lambda m: m.rmsprop(_SCHEDULE),
        lambda m: m.rmsprop(0.01, bias_correction=True, centered=True),
        lambda m: m.rmsprop(_SCHEDULE, momentum=0.9, centered=True),
        lambda m: optax.inject_hyperparams(m.rmsprop)(learning_rate=0.01, momentum=0.9),
        lambda m: m.adagrad(0.1),
        lambda m: m.adagrad(_SCHEDULE),
    ],
    ids=["plain", "schedule", "bias-correction", "schedule-momentum", "inject", "adagrad", "adagrad-schedule"],
)
@pytest.mark.parametrize("key", ["count", "nu", "mu", "sum_of_squares", "trace"])
def test_tree_get_matches_optax(make, key):
  params = _params()
  _, ours = _jit_trajectory(make(orp), params, 5)
  _, theirs = _jit_trajectory(make(optax), params, 5)

  def get(state):
    try:
      return ("value", optax.tree_utils.tree_get(state, key))
    except KeyError as e:  # several values: optax raises, so must we
      return ("KeyError", str(e))

  kind_o, got_o = get(ours)
  kind_t, got_t = get(theirs)
  assert kind_o == kind_t, (key, got_o, got_t)
  if kind_o == "value":
    assert (got_o is None) == (got_t is None), key
    if got_t is not None:
      assert jax.tree.structure(got_o) == jax.tree.structure(got_t)
      assert _bits_equal_where_finite(got_t, got_o)[0], key


def test_tree_get_count_with_weight_decay_and_a_schedule_finds_the_step():
  # The extension's own counter is not called count: tree_get still finds exactly one.
  params = _params()
  _, state = _jit_trajectory(orp.rmsprop(_SCHEDULE, weight_decay=1e-2), params, 7)
  assert int(optax.tree_utils.tree_get(state, "count")) == 7


# ---------------------------------------------------------------------------------------------
# What optax's own tests check (ported, not copied): transform_test.test_rms_match_adam and
# tree_utils/_state_utils_test.test_map_params_to_none, with this package in optax's place.


def test_rms_without_first_moment_matches_adam_with_b1_zero():
  norm2 = lambda x: sum(jnp.sum(v * v) for v in jax.tree.leaves(x))
  init = (jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
  rms = orp.scale_by_rms(decay=0.999, eps_in_sqrt=False, bias_correction=True)
  adam = optax.scale_by_adam(b1=0.0)
  p_rms, p_adam, s_rms, s_adam = init, init, rms.init(init), adam.init(init)
  for _ in range(5):
    u, s_rms = rms.update(jax.grad(norm2)(p_rms), s_rms)
    p_rms = optax.apply_updates(p_rms, u)
    u, s_adam = adam.update(jax.grad(norm2)(p_adam), s_adam)
    p_adam = optax.apply_updates(p_adam, u)
  for a, b in zip(jax.tree.leaves(p_adam), jax.tree.leaves(p_rms), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not np.allclose(np.asarray(p_rms[0]), np.asarray(init[0]))


def test_tree_map_params_to_none_gives_optaxs_layout():
  opt = orp.adagrad(1e-4)
  state = opt.init({"a": jnp.zeros((1, 2))})
  mapped = optax.tree_map_params(opt, lambda _: None, state)
  assert mapped == (optax.ScaleByRssState(sum_of_squares={"a": None}), optax.EmptyState())


# ---------------------------------------------------------------------------------------------
# Signatures as optax's (its schedule contract tests look for the annotation) and Python scalars.


@pytest.mark.parametrize(
    "fn", [orp.rmsprop, orp.adagrad, orp.scale_by_learning_rate, orp.decoupled_weight_decay, compat.keras_rmsprop]
)
def test_learning_rate_is_annotated_as_optaxs(fn):
  assert inspect.signature(fn).parameters["learning_rate"].annotation is optax.ScalarOrSchedule


@pytest.mark.parametrize("make", [orp.rmsprop, orp.adagrad])
def test_a_constant_schedule_equals_the_constant(make):
  # What optax's contract test checks once the annotation lets it in.
  params = _params()
  a, _ = _jit_trajectory(make(learning_rate=optax.constant_schedule(1e-3)), params, 10)
  b, _ = _jit_trajectory(make(learning_rate=1e-3), params, 10)
  assert _bits_equal_where_finite(b, a)[0]


@pytest.mark.parametrize("make", [lambda m: m.rmsprop(0.1, momentum=0.9), lambda m: m.adagrad(0.1)], ids=["rmsprop", "adagrad"])
def test_python_float_leaves_are_accepted(make):
  params = {"a": 1.5, "b": jnp.ones(2, F32)}
  grads = {"a": 0.25, "b": jnp.full(2, 0.5, F32)}
  ours, theirs = make(orp), make(optax)
  u_o, s_o = ours.update(grads, ours.init(params), params)
  # optax.rmsprop takes them as they are; optax.adagrad's abs_sq refuses a Python float, so it
  # gets them as arrays.
  as_arrays = lambda t: jax.tree.map(jnp.asarray, t)
  u_t, s_t = theirs.update(as_arrays(grads), theirs.init(as_arrays(params)), as_arrays(params))
  assert jax.tree.structure(s_o) == jax.tree.structure(s_t)
  for a, b in zip(jax.tree.leaves((u_t, s_t)), jax.tree.leaves((u_o, s_o)), strict=True):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6)


def test_optax_rmsprop_itself_takes_python_float_leaves():
  # The behaviour the previous test follows (if optax stopped accepting them, it would say so).
  tx = optax.rmsprop(0.1, momentum=0.9)
  u, _ = tx.update({"a": 0.25}, tx.init({"a": 1.5}), {"a": 1.5})
  assert np.isfinite(float(u["a"]))
