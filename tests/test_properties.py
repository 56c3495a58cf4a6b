"""Property-based tests: random pytrees, dtypes and valid hyperparameters for every constructor.

For any tree (nested dicts, lists and tuples, ``None`` leaves, empty containers, scalars, zero-size
arrays) of float16/bfloat16/float32/float64/complex64 leaves, and any valid hyperparameters of any
public constructor (the ports in ``optax_rmsprop.compat`` join when importable):

* finite gradients give a finite state, and finite updates wherever the update rule itself is
  bounded below the dtype's largest value (|u| <= lr * G / sqrt(eps) * momentum factor + decay);
* updates have the gradients' tree structure, shapes and dtypes;
* the state has the same structure, shapes, dtypes and weak types before and after ``update``
  (what ``lax.cond`` in ``apply_if_finite``/``MultiSteps`` needs);
* ``jax.jit`` and eager execution agree to the dtype's precision;
* ``jax.eval_shape(init)`` describes exactly what ``init`` returns.

Profiles (tests/conftest.py): the default runs a few derandomized examples per property;
``--hypothesis-profile=long`` explores many more.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optax_rmsprop as orp

F16, BF16, F32, F64, C64 = jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64
DTYPES = [F16, BF16, F32, F64, C64]
SHAPES = [(), (0,), (1,), (3,), (2, 2), (0, 3)]

# ---------------------------------------------------------------------------------------------
# Random pytrees.


@dataclasses.dataclass(frozen=True)
class LeafSpec:
  """A leaf to be: its shape, dtype and magnitude (not a pytree node, so tree.map stops here)."""

  shape: tuple[int, ...]
  dtype: Any
  scale: float


def _leaf_specs(dtypes):
  return st.builds(LeafSpec, st.sampled_from(SHAPES), st.sampled_from(dtypes), st.sampled_from([1e-3, 0.3, 1.0]))


def tree_specs(dtypes):
  """Nested dicts/lists/tuples of leaf specs and ``None``, including empty containers."""
  base = _leaf_specs(dtypes) | st.none()
  return st.recursive(
      base,
      lambda children: st.lists(children, max_size=3)
      | st.lists(children, max_size=3).map(tuple)
      | st.dictionaries(st.sampled_from(["a", "b", "w", "bias"]), children, max_size=3),
      max_leaves=5,
  )


def _is_spec(x):
  return isinstance(x, LeafSpec)


def materialize(spec_tree, seed: int):
  """Arrays for the specs, drawn from a seeded generator (finite, of the spec's magnitude)."""
  rng = np.random.default_rng(seed)

  def leaf(s: LeafSpec):
    x = rng.standard_normal(s.shape) * s.scale
    if jnp.issubdtype(s.dtype, jnp.complexfloating):
      x = x + 1j * rng.standard_normal(s.shape) * s.scale
    return jnp.asarray(x, s.dtype)

  return jax.tree.map(leaf, spec_tree, is_leaf=_is_spec)


# ---------------------------------------------------------------------------------------------
# Random valid hyperparameters, for every flag of every public constructor.

UNIT = st.floats(0.0, 1.0)
UNIT_OPEN = st.floats(0.0, 1.0, exclude_max=True)
SMALL = st.floats(0.0, 0.1)
EPS = st.sampled_from([0.0, 1e-10, 1e-8, 1e-6, 1e-3]) | st.floats(0.0, 1.0)
LR = st.floats(0.0, 1.0) | st.sampled_from(
    [optax.exponential_decay(0.1, 2, 0.5), optax.linear_schedule(0.5, 0.0, 3), optax.constant_schedule(0.01)]
)
STATE_DTYPE = st.sampled_from([None, None, F16, BF16, F32, F64])


def _decay_mask(params):
  return jax.tree.map(lambda p: jnp.ndim(p) > 0, params)


@dataclasses.dataclass(frozen=True)
class Bound:
  """What bounds a constructor's update: |u| <= lr * (G + cwd P) / den_min * mom_factor + lr wd P."""

  lr: float
  eps: float  # the smallest denominator eps allows: sqrt(eps) inside the root, eps outside
  momentum: float = 0.0
  decoupled_wd: float = 0.0
  coupled_wd: float = 0.0
  floor: float = 0.0  # a lower bound on the second moment (AdaGrad's initial accumulator)


def _lr_max(lr) -> float:
  return float(lr(0)) if callable(lr) else float(lr)


def _den(eps, in_sqrt, floor=0.0) -> float:
  return math.sqrt(eps + floor) if in_sqrt else eps + math.sqrt(floor)


@dataclasses.dataclass(frozen=True)
class Ctor:
  name: str
  make: Callable[..., optax.GradientTransformation]
  kwargs: st.SearchStrategy
  bound: Callable[[dict], Bound]
  needs_params: bool = False
  complex_ok: Callable[[dict], bool] = lambda kw: kw.get("state_dtype") not in (F16, BF16)


def _rmsprop_kwargs():
  return st.fixed_dictionaries(
      dict(
          learning_rate=LR,
          decay=UNIT,
          eps=EPS,
          initial_scale=st.floats(0.0, 2.0),
          eps_in_sqrt=st.booleans(),
          centered=st.booleans(),
          momentum=st.none() | UNIT_OPEN,
          nesterov=st.booleans(),
          bias_correction=st.booleans(),
          weight_decay=st.none() | SMALL,
          maximize=st.booleans(),
          state_dtype=STATE_DTYPE,
      )
  ).flatmap(
      lambda kw: st.sampled_from([None, _decay_mask]).map(
          lambda m: {**kw, "weight_decay_mask": m if kw["weight_decay"] is not None else None}
      )
  )


CORE: list[Ctor] = [
    Ctor(
        "rmsprop",
        orp.rmsprop,
        _rmsprop_kwargs(),
        lambda kw: Bound(
            _lr_max(kw["learning_rate"]),
            _den(kw["eps"], kw["eps_in_sqrt"]),
            momentum=kw["momentum"] or 0.0,
            decoupled_wd=kw["weight_decay"] or 0.0,
        ),
        needs_params=True,
    ),
    Ctor(
        "adagrad",
        orp.adagrad,
        st.fixed_dictionaries(dict(learning_rate=LR, initial_accumulator_value=st.floats(0.0, 2.0), eps=EPS)),
        lambda kw: Bound(_lr_max(kw["learning_rate"]), _den(kw["eps"], True, kw["initial_accumulator_value"])),
    ),
    Ctor(
        "scale_by_rms",
        orp.scale_by_rms,
        st.fixed_dictionaries(
            dict(
                decay=UNIT,
                eps=EPS,
                initial_scale=st.floats(0.0, 2.0),
                eps_in_sqrt=st.booleans(),
                bias_correction=st.booleans(),
                centered=st.booleans(),
                state_dtype=STATE_DTYPE,
            )
        ),
        lambda kw: Bound(1.0, _den(kw["eps"], kw["eps_in_sqrt"])),
    ),
    Ctor(
        "scale_by_rss",
        orp.scale_by_rss,
        st.fixed_dictionaries(
            dict(
                initial_accumulator_value=st.floats(0.0, 2.0),
                eps=EPS,
                eps_in_sqrt=st.booleans(),
                state_dtype=STATE_DTYPE,
            )
        ),
        lambda kw: Bound(1.0, _den(kw["eps"], kw["eps_in_sqrt"], kw["initial_accumulator_value"])),
    ),
    Ctor(
        "trace",
        orp.trace,
        st.fixed_dictionaries(dict(decay=UNIT_OPEN, nesterov=st.booleans(), state_dtype=STATE_DTYPE)),
        lambda kw: Bound(1.0, 1.0, momentum=kw["decay"]),
    ),
    Ctor(
        "scale_by_learning_rate",
        orp.scale_by_learning_rate,
        st.fixed_dictionaries(dict(learning_rate=LR, flip_sign=st.booleans())),
        lambda kw: Bound(_lr_max(kw["learning_rate"]), 1.0),
    ),
    Ctor(
        "decoupled_weight_decay",
        orp.decoupled_weight_decay,
        st.fixed_dictionaries(dict(learning_rate=LR, weight_decay=SMALL, mask=st.sampled_from([None, _decay_mask]))),
        lambda kw: Bound(_lr_max(kw["learning_rate"]), 1.0, decoupled_wd=kw["weight_decay"]),
        needs_params=True,
    ),
]


def _compat_ctors() -> list[Ctor]:
  try:
    from optax_rmsprop import compat
  except ImportError:
    return []
  mom = st.sampled_from([0.0, 0.0]) | st.floats(0.0, 0.99)

  def keras_clip(kw):
    choice = st.sampled_from(["none", "clipnorm", "clipvalue", "global_clipnorm"])
    return choice.flatmap(
        lambda c: st.just(kw) if c == "none" else st.floats(1e-3, 10.0).map(lambda v: {**kw, c: v})
    )

  return [
      Ctor(
          "torch_rmsprop",
          compat.torch_rmsprop,
          st.fixed_dictionaries(
              dict(
                  lr=LR,
                  alpha=UNIT,
                  eps=EPS,
                  weight_decay=st.sampled_from([0, 0.0]) | SMALL,
                  momentum=mom,
                  centered=st.booleans(),
                  maximize=st.booleans(),
              )
          ),
          lambda kw: Bound(_lr_max(kw["lr"]), kw["eps"], momentum=kw["momentum"], coupled_wd=kw["weight_decay"]),
          needs_params=True,
      ),
      Ctor(
          "torch_adagrad",
          compat.torch_adagrad,
          st.fixed_dictionaries(
              dict(
                  lr=LR,
                  lr_decay=st.floats(0.0, 1.0),
                  weight_decay=st.sampled_from([0, 0.0]) | SMALL,
                  initial_accumulator_value=st.floats(0.0, 2.0),
                  eps=EPS,
              )
          ),
          lambda kw: Bound(
              _lr_max(kw["lr"]),
              _den(kw["eps"], False, kw["initial_accumulator_value"]),
              coupled_wd=kw["weight_decay"],
          ),
          needs_params=True,
      ),
      Ctor(
          "keras_rmsprop",
          compat.keras_rmsprop,
          st.fixed_dictionaries(
              dict(
                  learning_rate=LR,
                  rho=UNIT,
                  momentum=mom,
                  epsilon=EPS,
                  centered=st.booleans(),
                  weight_decay=st.none() | SMALL,
              )
          ).flatmap(keras_clip),
          lambda kw: Bound(
              _lr_max(kw["learning_rate"]),
              _den(kw["epsilon"], True),
              momentum=kw["momentum"],
              decoupled_wd=kw["weight_decay"] or 0.0,
          ),
          needs_params=True,
          # Keras variables are real; its clipvalue (optax.clip) has no meaning for complex values.
          complex_ok=lambda kw: kw.get("clipvalue") is None,
      ),
      Ctor(
          "keras_adagrad",
          compat.keras_adagrad,
          st.fixed_dictionaries(
              dict(learning_rate=LR, initial_accumulator_value=st.floats(0.0, 2.0), epsilon=EPS)
          ),
          lambda kw: Bound(_lr_max(kw["learning_rate"]), _den(kw["epsilon"], True, kw["initial_accumulator_value"])),
      ),
      Ctor(
          "tf1_rmsprop",
          compat.tf1_rmsprop,
          st.fixed_dictionaries(
              dict(learning_rate=LR, decay=UNIT, momentum=mom, epsilon=EPS, centered=st.booleans())
          ),
          lambda kw: Bound(_lr_max(kw["learning_rate"]), _den(kw["epsilon"], True), momentum=kw["momentum"]),
      ),
      Ctor(
          "graves_rmsprop",
          compat.graves_rmsprop,
          st.fixed_dictionaries(dict(learning_rate=LR, decay=UNIT, momentum=mom, eps=EPS)),
          lambda kw: Bound(_lr_max(kw["learning_rate"]), _den(kw["eps"], True), momentum=kw["momentum"]),
      ),
      Ctor(
          "dqn_rmsprop",
          compat.dqn_rmsprop,
          st.fixed_dictionaries(dict(learning_rate=LR, decay=UNIT, eps=EPS)),
          lambda kw: Bound(_lr_max(kw["learning_rate"]), _den(kw["eps"], True)),
      ),
  ]


CTORS = CORE + _compat_ctors()
CTOR_IDS = [c.name for c in CTORS]


@st.composite
def problems(draw, ctor: Ctor):
  """A constructor's kwargs, params, and two gradients with the params' structure and dtypes."""
  kwargs = draw(ctor.kwargs)
  dtypes = DTYPES if ctor.complex_ok(kwargs) else [d for d in DTYPES if d != C64]
  spec = draw(tree_specs(dtypes))
  seed = draw(st.integers(0, 2**31 - 1))
  params = materialize(spec, seed)
  grads = [materialize(spec, seed + 1 + k) for k in range(2)]
  return kwargs, params, grads


# ---------------------------------------------------------------------------------------------
# Checks.


def _describe(tree):
  """Structure plus (shape, dtype, weak type) of every leaf."""
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, [(tuple(jnp.shape(x)), jnp.dtype(x.dtype), bool(getattr(x, "weak_type", False))) for x in leaves]


def _max_abs(tree) -> float:
  vals = [float(jnp.max(jnp.abs(x.astype(jnp.complex128 if jnp.iscomplexobj(x) else F64)))) for x in jax.tree.leaves(tree) if x.size]
  return max(vals, default=0.0)


def _update_bound(b: Bound, grads, params) -> float:
  g, p = _max_abs(grads), _max_abs(params)
  if b.eps == 0:
    return math.inf
  mom_factor = 1 + 2 * b.momentum / (1 - b.momentum) if b.momentum < 1 else math.inf
  # Complex moduli: the real and imaginary parts are each bounded by the modulus.
  return b.lr * (g + b.coupled_wd * p) / b.eps * mom_factor + b.lr * b.decoupled_wd * p


def _run(tx, params, grads, needs_params, jit):
  update = jax.jit(tx.update) if jit else tx.update
  state = jax.jit(tx.init)(params) if jit else tx.init(params)
  states, outs = [state], []
  for g in grads:
    u, state = update(g, state, params) if needs_params else update(g, state)
    outs.append(u)
    states.append(state)
  return states, outs


def _tol(dtype) -> float:
  return {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-6, "float64": 1e-12, "complex64": 2e-6, "complex128": 1e-12}[jnp.dtype(dtype).name]


@pytest.mark.parametrize("ctor", CTORS, ids=CTOR_IDS)
def test_properties_of_update(ctor):
  @given(problems(ctor))
  def check(problem):
    kwargs, params, grads = problem
    tx = ctor.make(**kwargs)
    states, outs = _run(tx, params, grads, ctor.needs_params, jit=True)

    # Structure, shapes and dtypes: updates like the gradients; the state never changes its form.
    for g, u in zip(grads, outs, strict=True):
      g_def, g_leaves = _describe(g)
      u_def, u_leaves = _describe(u)
      assert u_def == g_def
      assert [x[:2] for x in u_leaves] == [x[:2] for x in g_leaves]
    first = _describe(states[0])
    for s in states[1:]:
      assert _describe(s) == first, "state structure/dtype/weak type changed in update"

    # Finite gradients: the state is always finite; the updates are, where the rule is bounded.
    for s in states:
      for x in jax.tree.leaves(s):
        assert bool(jnp.all(jnp.isfinite(x))), (kwargs, s)
    bound = _update_bound(ctor.bound(kwargs), grads, params)
    for u in outs:
      for x in jax.tree.leaves(u):
        if 4 * bound < float(jnp.finfo(x.dtype).max):
          assert bool(jnp.all(jnp.isfinite(x))), (kwargs, bound, u)

  check()


@pytest.mark.parametrize("ctor", CTORS, ids=CTOR_IDS)
def test_jit_and_eager_agree(ctor):
  @given(problems(ctor))
  def check(problem):
    kwargs, params, grads = problem
    tx = ctor.make(**kwargs)
    s_jit, u_jit = _run(tx, params, grads, ctor.needs_params, jit=True)
    s_eag, u_eag = _run(tx, params, grads, ctor.needs_params, jit=False)
    assert _describe(s_jit) == _describe(s_eag)
    assert _describe(u_jit) == _describe(u_eag)

    def close(a, b):
      a64 = np.asarray(a.astype(jnp.complex128 if jnp.iscomplexobj(a) else F64))
      b64 = np.asarray(b.astype(jnp.complex128 if jnp.iscomplexobj(b) else F64))
      if a.dtype == jnp.int32:
        np.testing.assert_array_equal(a64, b64)
        return
      # A float64 state_dtype stores what float32 arithmetic computed (for non-float64 gradients).
      tol = max(_tol(a.dtype), _tol(F32)) if kwargs.get("state_dtype") == F64 else _tol(a.dtype)
      scale = np.max(np.abs(b64), initial=0.0)
      np.testing.assert_allclose(a64, b64, rtol=tol, atol=tol * scale)

    # The state is a smooth function of the gradients: it must agree to the dtype's precision.
    jax.tree.map(close, s_jit, s_eag)
    # The updates too, unless the rule is ill-conditioned here: a centered variance that is a tiny
    # difference of two large numbers, or eps = 0, amplifies last-bit differences without bound.
    # So does an eps or initial second moment at the edge of float32's range (a subnormal): one of
    # the two paths may flush it to zero (a zero step) where the other divides by it.
    tiny = [kwargs.get(k, 1) for k in ("eps", "epsilon", "initial_scale", "initial_accumulator_value")]
    ill = kwargs.get("centered") or any(0 < t < 1e-30 for t in tiny) or 0 in tiny[:2]
    if ctor.name in ("graves_rmsprop", "dqn_rmsprop"):
      ill = True
    if not ill:
      jax.tree.map(close, u_jit, u_eag)

  check()


@pytest.mark.parametrize("ctor", CTORS, ids=CTOR_IDS)
def test_init_under_eval_shape_matches_init(ctor):
  @given(problems(ctor))
  def check(problem):
    kwargs, params, _ = problem
    tx = ctor.make(**kwargs)
    abstract = jax.eval_shape(tx.init, params)
    concrete = tx.init(params)
    a_leaves, a_def = jax.tree.flatten(abstract)
    c_leaves, c_def = jax.tree.flatten(concrete)
    assert a_def == c_def
    for a, c in zip(a_leaves, c_leaves, strict=True):
      assert (a.shape, a.dtype, a.weak_type) == (c.shape, c.dtype, c.weak_type)
    # And init accepts abstract params itself (what sharded/pre-allocation code passes).
    spec = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
    assert _describe(jax.eval_shape(tx.init, spec)) == _describe(concrete)

  check()


@given(tree_specs([F32, F64]), st.integers(0, 2**31 - 1))
def test_rmsprop_updates_match_a_numpy_transcription_on_any_tree(spec, seed):
  # A check on values, not only form: any tree, leaf by leaf, against NumPy (optax's rule).
  params = materialize(spec, seed)
  grads = [materialize(spec, seed + 1 + k) for k in range(3)]
  tx = orp.rmsprop(0.05, decay=0.8, eps=1e-6, momentum=0.5)
  state = tx.init(params)
  nu = jax.tree.map(lambda p: np.zeros(p.shape), params)
  buf = jax.tree.map(lambda p: np.zeros(p.shape), params)
  for g in grads:
    updates, state = tx.update(g, state, params)
    g_np = jax.tree.map(lambda x: np.asarray(x, np.float64), g)
    nu = jax.tree.map(lambda n, x: 0.8 * n + 0.2 * x * x, nu, g_np)
    buf = jax.tree.map(lambda b, n, x: 0.5 * b - 0.05 * x / np.sqrt(n + 1e-6), buf, nu, g_np)
    for u, b in zip(jax.tree.leaves(updates), jax.tree.leaves(buf), strict=True):
      np.testing.assert_allclose(np.asarray(u, np.float64), b, rtol=1e-5 if u.dtype == F32 else 1e-12, atol=1e-30)
