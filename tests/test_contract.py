"""The contract every registered transformation keeps, in the spirit of optax's ``alias_test.py``.

Each check runs over ``tests/registry.py``: convergence on a parabola and on the Rosenbrock function
(float32 and, where supported, complex64), jit == eager, no retracing on later steps, state
dtypes and weak types unchanged by ``update`` (so ``lax.cond(pred, new_state, old_state)``
type-checks, under strict dtype promotion), ``optax.inject_hyperparams`` equivalence and updates in the gradients' dtype. The
checks only use what a case declares (``numeric``, ``complex_ok``, ``needs_params``) and the
constructor's signature, so new constructors join by adding a registry entry.
"""

from __future__ import annotations

import contextlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests import registry

CASES = pytest.mark.parametrize("case", registry.ALL, ids=registry.IDS)

_DTYPES = [jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64, jnp.complex64]


def _lr_name(case) -> str | None:
  """The constructor's learning-rate argument (``learning_rate`` or PyTorch's ``lr``), if any."""
  params = inspect.signature(case.make).parameters
  return next((n for n in ("learning_rate", "lr") if n in params), None)


def _optimizer(case, lr: float, **override) -> optax.GradientTransformation:
  """The case as a descent method with step size ``lr``: building blocks without a learning rate
  (scale_by_rms, scale_by_rss) are followed by ``optax.scale(-lr)``."""
  name = _lr_name(case)
  if name is None:
    return optax.chain(case.build(**override), optax.scale(-lr))
  return case.build(**{name: lr}, **override)


def _ascends(case) -> bool:
  return bool(case.kwargs.get("maximize", False))


def _conj_grad(f, params):
  """The descent direction optax expects: for complex leaves the conjugate of ``jax.grad``."""
  g = jax.grad(f)(params)
  return jax.tree.map(lambda x: jnp.conj(x) if jnp.iscomplexobj(x) else x, g)


# ---------------------------------------------------------------------------------------------
# Convergence: a parabola and the Rosenbrock function, minimised together (every transformation
# here acts per element or per leaf, so the problems do not interact) in one compiled loop.


def _abs_sq(x):
  return jnp.real(x * jnp.conj(x))


def _problems(complex_ok: bool):
  """Initial params, objective and minimiser of the joint problem, keyed by problem and dtype."""
  init, target = {}, {}
  dtypes = [jnp.float32] + ([jnp.complex64] if complex_ok else [])
  for dt in dtypes:
    k = jnp.dtype(dt).name
    rot = 1 + 1j if dt == jnp.complex64 else 1.0
    c = np.array([1.0, -2.0, 0.5]) * rot
    init[f"parabola/{k}"] = jnp.zeros(3, dt)
    target[f"parabola/{k}"] = np.asarray(c)
    # Rosenbrock (a - x)^2 + 100 (y - x^2)^2 with a = 1 (or 1 + i): minimum at x = a, y = a^2.
    a = 1.0 * rot
    init[f"rosenbrock/{k}"] = jnp.zeros(2, dt)
    target[f"rosenbrock/{k}"] = np.asarray([a, a * a])

  def objective(p):
    total = 0.0
    for key, x in p.items():
      if key.startswith("parabola"):
        c = jnp.asarray(target[key], x.dtype)
        total += jnp.sum(jnp.asarray([1.0, 2.0, 0.5], jnp.float32) * _abs_sq(x - c))
      else:
        a = jnp.asarray(target[key][0], x.dtype)
        total += _abs_sq(a - x[0]) + 100.0 * _abs_sq(x[1] - x[0] ** 2)
    return total

  return init, objective, target


# Step sizes: RMSProp-type steps have size ~lr whatever the gradient scale, so lr bounds both how
# fast they travel and how closely they settle. AdaGrad's step shrinks like lr / sqrt(t), so it
# gets a larger lr. Per case id prefix; the first match wins.
_LR = [("adagrad", 0.3), ("scale_by_rss", 0.3), ("torch_adagrad", 0.3), ("keras_adagrad", 0.3), ("", 1e-3)]
_STEPS = 10_000
_TOL = 0.05
# Decoupled weight decay pulls towards 0, which moves the fixed point along Rosenbrock's flat valley.
_TOL_WEIGHT_DECAY = 0.1


def _lr_for(case) -> float:
  return next(lr for prefix, lr in _LR if case.id.startswith(prefix))


def _convergence_overrides(case) -> dict:
  """centered + bias_correction: the variance estimate is exactly 0 at step 1 (one sample), so
  the first step is lr * g / sqrt(eps); with eps = 1e-8 that throws Rosenbrock's iterate ~1e4 * lr
  * g away. A larger eps, as Graves (1e-4) and DQN (1e-2) use, keeps the first steps sane."""
  overrides = {}
  if case.kwargs.get("centered") and case.kwargs.get("bias_correction") and "eps" in inspect.signature(case.make).parameters:
    overrides["eps"] = 1e-3
  # Weight decay (coupled or decoupled) moves the minimiser by O(weight_decay * |p*|): keep it
  # small here so the check is about reaching the objective's minimum, not the regularised one.
  if case.kwargs.get("weight_decay"):
    overrides["weight_decay"] = 1e-4
  # PyTorch Adagrad's lr_decay shrinks the rate like 1/t on top of AdaGrad's own 1/sqrt(t): with it
  # complex Rosenbrock (4 real dims) is still 0.2 away after 10k steps — the vanishing step size
  # the notebooks study, not a defect this check is about.
  if case.kwargs.get("lr_decay"):
    overrides["lr_decay"] = 0.0
  return overrides


@CASES
def test_converges_on_parabola_and_rosenbrock(case):
  init, objective, target = _problems(case.complex_ok)
  sign = -1.0 if _ascends(case) else 1.0
  tx = _optimizer(case, _lr_for(case), **_convergence_overrides(case))
  tol = _TOL_WEIGHT_DECAY if case.needs_params else _TOL

  @jax.jit
  def run(params):
    def body(_, carry):
      p, s = carry
      g = _conj_grad(lambda q: sign * objective(q), p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    return jax.lax.fori_loop(0, _STEPS, body, (params, tx.init(params)))[0]

  final = run(init)
  for key, want in target.items():
    got = np.asarray(final[key])
    assert got.dtype == init[key].dtype, key
    err = np.max(np.abs(got - want))
    start = np.max(np.abs(np.asarray(init[key]) - want))
    assert err < tol, f"{case.id} on {key}: |p - p*| = {err:.3g} after {_STEPS} steps (started at {start:.3g})"


# ---------------------------------------------------------------------------------------------
# Compilation and types.


def _tree_params(dtype):
  """A small nested tree of params in ``dtype`` and a gradient for it."""
  rng = np.random.default_rng(0)

  def arr(*shape):
    x = rng.normal(size=shape)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      x = x + 1j * rng.normal(size=shape)
    return jnp.asarray(x, dtype)

  params = {"dense": {"w": arr(3, 2), "b": arr(2)}, "scale": arr()}
  grads = jax.tree.map(lambda p: (p * 0.5 - 0.25).astype(dtype), params)
  return params, grads


def _avals(tree):
  return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x), getattr(x, "weak_type", False)), tree)


@CASES
def test_jit_equals_eager_and_compiles_once(case):
  """Three updates eagerly and jitted agree; the jitted update is traced once: the state's types
  (dtype, shape, weak type) after an update are those init made, so later steps reuse the program."""
  # float64: with centered + bias_correction the first variance estimate is 0 up to rounding, and
  # in float32 that rounding noise (~1e-7 g^2) exceeds eps = 1e-8, so the first step is
  # noise-dominated in any implementation; in float64 it is ~1e-8 relative, hence rtol 1e-7.
  tx = case.build()
  params, grads = _tree_params(jnp.float64)
  traces = []

  def counted_update(g, s, p):
    traces.append(1)  # runs only when jit traces, i.e. when the argument types changed
    return tx.update(g, s, p)

  outs = {}
  for mode in ("eager", "jit"):
    update = jax.jit(counted_update) if mode == "jit" else tx.update
    p, s = params, tx.init(params)
    for k in range(4):
      g = jax.tree.map(lambda x, k=k: x * (1.0 + k), grads)
      u, s = update(g, s, p)
      p = optax.apply_updates(p, u)
    outs[mode] = p
  assert len(traces) == 1, f"{case.id}: the update was traced {len(traces)} times in 4 steps"
  for a, b in zip(jax.tree.leaves(outs["eager"]), jax.tree.leaves(outs["jit"]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
  # The run moved the params, so equality says something.
  assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(outs["jit"]), jax.tree.leaves(params), strict=True))


def _dtype_ok(case, dtype) -> bool:
  return case.complex_ok or not jnp.issubdtype(dtype, jnp.complexfloating)


@CASES
@pytest.mark.parametrize("dtype", _DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_state_types_stable_and_lax_cond_typechecks(case, dtype):
  if not _dtype_ok(case, dtype):
    pytest.skip(f"{case.id} does not support complex parameters")
  tx = case.build()
  params, grads = _tree_params(dtype)
  # Our arithmetic promotes explicitly: strict promotion holds, except inside optax's own schedules
  # (they multiply the int32 count by Python floats).
  uses_schedule = any(callable(v) for v in case.kwargs.values())
  strict = contextlib.nullcontext() if uses_schedule else jax.numpy_dtype_promotion("strict")
  with strict:
    s0 = tx.init(params)
    p_arg = params if case.needs_params else None  # params=None must do where they are not needed
    u, s1 = tx.update(grads, s0, p_arg)
    u2, s2 = tx.update(grads, s1, p_arg)
  assert _avals(s1) == _avals(s0), f"{case.id}: state types changed by update"
  assert _avals(s2) == _avals(s0)
  # What MultiSteps / apply_if_finite do: choose between the new and the old state.
  chosen = jax.lax.cond(jnp.asarray(True), lambda: s1, lambda: s0)
  assert _avals(chosen) == _avals(s0)
  # Updates come back in the gradients' dtype, leaf by leaf, and are finite.
  for uu in (u, u2):
    for leaf, g in zip(jax.tree.leaves(uu), jax.tree.leaves(grads), strict=True):
      assert leaf.dtype == g.dtype and leaf.shape == g.shape, f"{case.id}: update {leaf.dtype} for {g.dtype}"
      assert bool(jnp.all(jnp.isfinite(leaf)))


@CASES
def test_optax_apply_if_finite_and_multisteps_accept(case):
  """The lax.cond inside optax's wrappers, exercised for real (float32, one compiled step)."""
  params, grads = _tree_params(jnp.float32)
  wrapped = (optax.apply_if_finite(case.build(), 3), optax.MultiSteps(case.build(), 2))

  @jax.jit
  def step(states, g):
    return [w.update(g, s, params)[1] for w, s in zip(wrapped, states, strict=True)]

  states = [w.init(params) for w in wrapped]
  nan = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), grads)
  for g in (grads, nan, grads, grads):
    states = step(states, g)
  assert int(states[0].total_notfinite) == 1
  assert int(states[1].gradient_step) == 2  # four mini-steps of two


# ---------------------------------------------------------------------------------------------
# inject_hyperparams.


def _numeric_values(case) -> dict:
  """The case's numeric hyperparameters: its own values, or the constructor's defaults."""
  sig = inspect.signature(case.make).parameters
  values = {}
  for name in case.numeric:
    value = case.kwargs.get(name, sig[name].default)
    assert value is not inspect.Parameter.empty and value is not None, f"{case.id}: {name} has no value"
    values[name] = value
  return values


def _run(tx, params, grads, state=None, steps=3):
  """``steps`` jitted updates with gradients that change from step to step; the final params."""
  update = jax.jit(tx.update)
  p, s = params, tx.init(params) if state is None else state
  for k in range(steps):
    u, s = update(jax.tree.map(lambda x, k=k: x * (1.0 - 0.3 * k), grads), s, p)
    p = optax.apply_updates(p, u)
  return p


@CASES
def test_inject_hyperparams_matches_constants(case):
  """Traced hyperparameters with the same values give the same trajectory as constants."""
  if not case.numeric:
    pytest.skip(f"{case.id} declares no numeric hyperparameters")
  sig = inspect.signature(case.make).parameters
  named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
  static = tuple(n for n, p in sig.items() if p.kind in named and n not in case.numeric)
  inject = optax.inject_hyperparams(case.make, static_args=static)
  values = _numeric_values(case)
  injected = inject(**{**case.kwargs, **values})
  params, grads = _tree_params(jnp.float64)
  want = _run(case.build(), params, grads)
  got = _run(injected, params, grads)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
  # The values really travel in the state as arrays (so a schedule could change them) ...
  hp = injected.init(params).hyperparams
  assert set(case.numeric) <= set(hp), (case.numeric, hp.keys())
  assert all(isinstance(hp[n], jax.Array) for n in case.numeric)
  # ... and are used: another value gives another trajectory. The state built with the other value
  # has the same types, so the compiled update is reused (values used only by init, such as
  # initial_scale, show through the inner state).
  for name in case.numeric:
    changed = values[name] * 0.5 if values[name] else 0.1
    state = inject(**{**case.kwargs, **values, name: changed}).init(params)
    other = _run(injected, params, grads, state)
    assert any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(other), jax.tree.leaves(got), strict=True)), name
