"""The framework ports reproduce their sources step for step.

Three independent references: the NumPy transcriptions in ``compat_reference`` (always), the
peers themselves (``torch.optim`` and Keras 3 on the JAX backend, when installed), and the golden
values published in Keras's ``rmsprop_test.py``. Every trajectory runs 120 float64 steps of a noisy
quadratic whose gradient depends on the parameters, over two tensors.

Each optimizer's whole flag grid is compared with its NumPy reference (and with PyTorch live).
To keep that affordable, configurations that differ only in numbers share one compiled, vmapped
trajectory in which the numbers arrive as traced arrays, exactly as under
``optax.inject_hyperparams``; the plain-Python-argument path (which leaves unused stages out of
the chain) is checked separately on a spread of configurations.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optax_rmsprop import _quant, _storage, compat
from tests import compat_reference as ref

STEPS = 120
RTOL = 1e-8

# ---------------------------------------------------------------------------------------------
# The problem: f(p) = sum_i a_i (p_i - c_i)^2 / 2, plus seeded noise so the variance is not 0.

_RNG = np.random.default_rng(20260311)
_SHAPES = [(4, 3), (5,)]
P0 = [_RNG.normal(size=s) for s in _SHAPES]
_CURV = [_RNG.uniform(0.5, 2.0, size=s) for s in _SHAPES]
_TARGET = [_RNG.normal(size=s) for s in _SHAPES]
_NOISE = [np.stack([0.3 * _RNG.normal(size=s) for _ in range(STEPS)]) for s in _SHAPES]


def grad_np(t: int, params) -> list[np.ndarray]:
  return [a * (np.asarray(p, np.float64) - c) + n[t] for p, a, c, n in zip(params, _CURV, _TARGET, _NOISE, strict=True)]


def flat(params) -> np.ndarray:
  return np.concatenate([np.asarray(p, np.float64).ravel() for p in params])


def run_reference(opt) -> np.ndarray:
  """A NumPy reference's parameter trajectory, shape (STEPS, n_params)."""
  out = []
  for t in range(STEPS):
    opt.step(grad_np(t, opt.params))
    out.append(flat(opt.params))
  return np.stack(out)


def _trajectory(tx: optax.GradientTransformation, params0):
  """Our trajectory as a traceable function (a lax.scan over the steps)."""
  curv = [jnp.asarray(a, jnp.float64) for a in _CURV]
  target = [jnp.asarray(c, jnp.float64) for c in _TARGET]
  noise = [jnp.asarray(n, jnp.float64) for n in _NOISE]

  def body(carry, noise_t):
    params, state = carry
    grads = [a * (p - c) + n for p, a, c, n in zip(params, curv, target, noise_t, strict=True)]
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    return (params, state), jnp.concatenate([p.ravel() for p in params])

  return jax.lax.scan(body, (params0, tx.init(params0)), noise)[1]


def run_ours(tx: optax.GradientTransformation) -> np.ndarray:
  return np.asarray(jax.jit(functools.partial(_trajectory, tx))([jnp.asarray(p, jnp.float64) for p in P0]))


MAX_REL: dict[str, float] = {}


def assert_same_trajectory(got: np.ndarray, want: np.ndarray, what: str, rtol: float = RTOL) -> None:
  """Elementwise relative agreement (with an absolute floor of rtol * 1e-3 for coordinates near 0)."""
  assert np.all(np.isfinite(want)), f"{what}: the reference went non-finite"
  rel = np.abs(got - want) / np.maximum(np.abs(want), 1e-3)
  key = what.split("[")[0]
  MAX_REL[key] = max(MAX_REL.get(key, 0.0), float(rel.max()))
  np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3, err_msg=what)


@pytest.fixture(scope="module", autouse=True)
def _report_max_errors():
  yield
  if MAX_REL:
    print("\nmax relative error per comparison: " + ", ".join(f"{k}={v:.3g}" for k, v in sorted(MAX_REL.items())))


# ---------------------------------------------------------------------------------------------
# Learning rates: a constant, or a warmup-from-0-then-cosine schedule that changes every step
# (which separates lr inside from lr outside the momentum buffer). Both as float64 tables indexed
# by the update count, so every framework gets the very same rate whatever its counter's type.


def lr_table(kind: str, peak: float) -> np.ndarray:
  t = np.arange(STEPS + 1, dtype=np.float64)
  if kind == "const":
    return np.full_like(t, peak)
  return np.where(t < 10, peak * t / 10, peak * 0.5 * (1 + np.cos(np.pi * np.minimum(t - 10, STEPS) / STEPS)))


def table_schedule(table) -> Callable:
  table = jnp.asarray(table, jnp.float64)
  return lambda count: table[count]


def table_rate(table: np.ndarray) -> Callable[[int], float]:
  return lambda t: float(table[t])


# ---------------------------------------------------------------------------------------------
# One spec per port: its flag grid, which flags change the chain's structure, how to build ours
# from traced numbers and from plain Python values, and its NumPy reference.


@dataclasses.dataclass(frozen=True)
class Spec:
  name: str
  grid: list[dict]
  static: tuple[str, ...]  # flags that change the chain's structure (bools, None-or-not, clip kind)
  build: Callable[[dict], optax.GradientTransformation]  # from a config whose numbers may be traced
  reference: Callable[[dict], object]
  peak: float

  def groups(self) -> list[tuple]:
    return sorted({tuple((k, c[k]) for k in self.static) for c in self.grid}, key=repr)

  def members(self, group: tuple) -> list[dict]:
    return [c for c in self.grid if all(c[k] == v for k, v in group)]


def _numeric(cfg: dict, static: tuple[str, ...]) -> dict:
  return {k: v for k, v in cfg.items() if k not in static and k != "lr" and v is not None and not isinstance(v, str)}


@functools.cache
def ours_batched(spec_name: str, group: tuple) -> dict[tuple, np.ndarray]:
  """Our trajectories for every config of a group from one compiled, vmapped scan."""
  spec = SPECS[spec_name]
  members = spec.members(group)
  numeric = {k: jnp.asarray([_numeric(c, spec.static)[k] for c in members], jnp.float64)
             for k in _numeric(members[0], spec.static)}
  tables = jnp.asarray(np.stack([spec_lr(spec, c) for c in members]), jnp.float64)

  def one(nums, table):
    cfg = {**members[0], **nums, "lr": table_schedule(table)}
    return _trajectory(spec.build(cfg), [jnp.asarray(p, jnp.float64) for p in P0])

  out = np.asarray(jax.jit(jax.vmap(one))(numeric, tables))
  return {_key(c): out[i] for i, c in enumerate(members)}


def spec_lr(spec: Spec, cfg: dict) -> np.ndarray:
  table = lr_table(cfg["lr"], spec.peak)
  if spec.name.startswith("keras") and cfg["lr"] == "const":
    table = np.full_like(table, ref.keras_float32_rate(spec.peak))  # Keras's float32 variable
  return table


def _key(cfg: dict) -> tuple:
  return tuple(sorted(cfg.items()))


def _id(cfg) -> str:
  return ",".join(f"{k}={v}" for k, v in (cfg.items() if isinstance(cfg, dict) else cfg)) or "default"


def plain_lr(spec: Spec, cfg: dict):
  """The learning rate as a user passes it: a Python float or a schedule."""
  if cfg["lr"] == "const":
    return ref.keras_float32_rate(spec.peak) if spec.name.startswith("keras") else spec.peak
  return table_schedule(lr_table("sched", spec.peak))


def reference_trajectory(spec: Spec, cfg: dict) -> np.ndarray:
  return run_reference(spec.reference({**cfg, "lr": table_rate(lr_table(cfg["lr"], spec.peak)) if cfg["lr"] == "sched"
                                       else spec.peak}))


_CLIP = {"clipnorm": 1.5, "clipvalue": 0.8, "global_clipnorm": 2.0}
ALPHA = 0.9  # PyTorch's alpha (its 0.99 default needs more steps to exercise; defaults are checked below)


def _keras_clip_kwargs(cfg):
  return {cfg["clip"]: _CLIP[cfg["clip"]]} if cfg["clip"] != "none" else {}


def _wd_or_none(cfg):
  return None if isinstance(cfg["weight_decay"], str) else cfg["weight_decay"]


SPECS: dict[str, Spec] = {}


def _register(spec: Spec) -> None:
  SPECS[spec.name] = spec


_register(Spec(
    "torch_rmsprop",
    [dict(centered=c, maximize=mx, momentum=m, weight_decay=wd, eps=e, lr=s)
     for c, mx, m, wd, e, s in itertools.product([False, True], [False, True], [0.0, 0.9], [0.0, 1e-2],
                                                [1e-8, 1e-2], ["const", "sched"])],
    ("centered", "maximize"),
    lambda c: compat.torch_rmsprop(lr=c["lr"], alpha=ALPHA, eps=c["eps"], weight_decay=c["weight_decay"],
                                   momentum=c["momentum"], centered=c["centered"], maximize=c["maximize"]),
    lambda c: ref.TorchRMSprop(P0, lr=c["lr"], alpha=ALPHA, eps=c["eps"], weight_decay=c["weight_decay"],
                               momentum=c["momentum"], centered=c["centered"], maximize=c["maximize"]),
    peak=0.01,
))
_register(Spec(
    "torch_adagrad",
    [dict(lr_decay=d, weight_decay=wd, initial_accumulator_value=a, eps=e, lr=s)
     for d, wd, a, e, s in itertools.product([0.0, 1e-2], [0.0, 1e-2], [0.0, 0.1], [1e-10, 1e-2], ["const", "sched"])],
    (),
    lambda c: compat.torch_adagrad(lr=c["lr"], lr_decay=c["lr_decay"], weight_decay=c["weight_decay"],
                                   initial_accumulator_value=c["initial_accumulator_value"], eps=c["eps"]),
    lambda c: ref.TorchAdagrad(P0, lr=c["lr"], lr_decay=c["lr_decay"], weight_decay=c["weight_decay"],
                               initial_accumulator_value=c["initial_accumulator_value"], eps=c["eps"]),
    peak=0.1,
))
_register(Spec(
    "keras_rmsprop",
    [dict(centered=c, weight_decay=wd, clip=k, momentum=m, epsilon=e, lr=s)
     for c, wd, k, m, e, s in itertools.product([False, True], ["none", 0.05], ["none", *_CLIP], [0.0, 0.9],
                                               [1e-7, 1e-2], ["const", "sched"])],
    ("centered", "weight_decay", "clip"),
    lambda c: compat.keras_rmsprop(learning_rate=c["lr"], rho=0.9, momentum=c["momentum"], epsilon=c["epsilon"],
                                   centered=c["centered"], weight_decay=_wd_or_none(c), **_keras_clip_kwargs(c)),
    lambda c: ref.KerasRMSprop(P0, learning_rate=c["lr"], rho=0.9, momentum=c["momentum"], epsilon=c["epsilon"],
                               centered=c["centered"], weight_decay=_wd_or_none(c), **_keras_clip_kwargs(c)),
    peak=0.01,
))
_register(Spec(
    "keras_adagrad",
    [dict(initial_accumulator_value=a, epsilon=e, lr=s)
     for a, e, s in itertools.product([0.1, 1.0], [1e-7, 1e-2], ["const", "sched"])],
    (),
    lambda c: compat.keras_adagrad(learning_rate=c["lr"], initial_accumulator_value=c["initial_accumulator_value"],
                                   epsilon=c["epsilon"]),
    lambda c: ref.KerasAdagrad(P0, learning_rate=c["lr"], initial_accumulator_value=c["initial_accumulator_value"],
                               epsilon=c["epsilon"]),
    peak=0.1,
))
_register(Spec(
    "tf1_rmsprop",
    [dict(centered=c, momentum=m, epsilon=e, lr=s)
     for c, m, e, s in itertools.product([False, True], [0.0, 0.9], [1e-10, 1e-2], ["const", "sched"])],
    ("centered",),
    lambda c: compat.tf1_rmsprop(c["lr"], decay=0.9, momentum=c["momentum"], epsilon=c["epsilon"],
                                 centered=c["centered"]),
    lambda c: ref.TF1RMSProp(P0, c["lr"], decay=0.9, momentum=c["momentum"], epsilon=c["epsilon"],
                             centered=c["centered"]),
    peak=0.01,
))
_register(Spec(
    "graves_rmsprop",
    [dict(momentum=m, eps=e, lr=s) for m, e, s in itertools.product([0.0, 0.9], [1e-4, 1e-2], ["const", "sched"])],
    (),
    lambda c: compat.graves_rmsprop(learning_rate=c["lr"], decay=0.95, momentum=c["momentum"], eps=c["eps"]),
    lambda c: ref.GravesRMSProp(P0, learning_rate=c["lr"], decay=0.95, momentum=c["momentum"], eps=c["eps"]),
    peak=1e-3,
))
_register(Spec(
    "dqn_rmsprop",
    [dict(eps=e, lr=s) for e, s in itertools.product([0.01, 1e-6], ["const", "sched"])],
    (),
    lambda c: compat.dqn_rmsprop(learning_rate=c["lr"], decay=0.95, eps=c["eps"]),
    lambda c: ref.DQNRMSProp(P0, learning_rate=c["lr"], decay=0.95, eps=c["eps"]),
    peak=2.5e-3,
))

_GROUPS = [pytest.param(s.name, g, id=f"{s.name}[{_id(g)}]") for s in SPECS.values() for g in s.groups()]


def _spread(grid: list[dict], n: int) -> list[dict]:
  """n configurations spread over the grid (first and last included): every flag value shows up."""
  return [grid[round(i * (len(grid) - 1) / (n - 1))] for i in range(n)] if len(grid) > n else list(grid)


# ---------------------------------------------------------------------------------------------
# Against the NumPy references: the whole grid.


@pytest.mark.parametrize(("name", "group"), _GROUPS)
def test_grid_matches_numpy_reference(name, group):
  spec = SPECS[name]
  ours = ours_batched(name, group)
  for cfg in spec.members(group):
    assert_same_trajectory(ours[_key(cfg)], reference_trajectory(spec, cfg), f"ours-vs-numpy:{name}[{_id(cfg)}]")


_PLAIN = [pytest.param(s.name, c, id=f"{s.name}[{_id(c)}]") for s in SPECS.values() for c in _spread(s.grid, 3)]


@pytest.mark.parametrize(("name", "cfg"), _PLAIN)
def test_plain_python_arguments_match_numpy_reference(name, cfg):
  """Python numbers (0 momentum or weight decay leaves the stage out of the chain) and a constant
  learning rate (no schedule state) give the same trajectory as the reference."""
  spec = SPECS[name]
  tx = spec.build({**cfg, "lr": plain_lr(spec, cfg)})
  assert_same_trajectory(run_ours(tx), reference_trajectory(spec, cfg), f"ours-vs-numpy:{name}[{_id(cfg)}]")


def test_defaults_match_numpy_reference():
  """Every constructor called with its source's defaults (only a learning rate where one is required)."""
  pairs = [
      (compat.torch_rmsprop(), ref.TorchRMSprop(P0)),
      (compat.torch_adagrad(), ref.TorchAdagrad(P0)),
      (compat.keras_rmsprop(learning_rate=ref.keras_float32_rate(1e-3)), ref.KerasRMSprop(P0)),
      (compat.keras_adagrad(learning_rate=ref.keras_float32_rate(1e-3)), ref.KerasAdagrad(P0)),
      (compat.tf1_rmsprop(0.01), ref.TF1RMSProp(P0, 0.01)),
      (compat.graves_rmsprop(), ref.GravesRMSProp(P0)),
      (compat.dqn_rmsprop(), ref.DQNRMSProp(P0)),
  ]
  for tx, reference in pairs:
    what = f"ours-vs-numpy:defaults[{type(reference).__name__}]"
    assert_same_trajectory(run_ours(tx), run_reference(reference), what)


def test_keras_published_golden_values():
  """Keras's rmsprop_test.py: one step from [1, 2, 3, 4], and the centered five-step sequence."""
  p = jnp.array([1.0, 2.0, 3.0, 4.0], jnp.float64)
  tx = compat.keras_rmsprop(learning_rate=0.5)
  u, _ = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0], jnp.float64), tx.init(p), p)
  np.testing.assert_allclose(optax.apply_updates(p, u), [-0.5811, 0.4189, 1.4189, 2.4189], atol=1e-4)

  # test_correctness_with_golden: after each of five steps every coordinate is near the golden value.
  tx = compat.keras_rmsprop(centered=True)
  p = jnp.ones(10, jnp.float64)
  state = tx.init(p)
  grads = [jnp.full(10, 0.01, jnp.float64)] + [jnp.linspace(0.1, 1.0, 10, dtype=jnp.float64)] * 4
  for g, golden in zip(grads, [0.9967, 0.9933, 0.9908, 0.9885, 0.9864], strict=True):
    u, state = tx.update(g, state, p)
    p = optax.apply_updates(p, u)
    np.testing.assert_allclose(p, np.full(10, golden), rtol=5e-4, atol=5e-4)

  # test_weight_decay: three fresh optimizers, zero gradients, each decays the variable once.
  p = jnp.asarray(2.0, jnp.float64)
  for _ in range(3):
    tx = compat.keras_rmsprop(learning_rate=1.0, weight_decay=0.004)
    u, _ = tx.update(jnp.zeros((), jnp.float64), tx.init(p), p)
    p = optax.apply_updates(p, u)
  assert abs(float(p) - 1.9760959) < 1e-6


# ---------------------------------------------------------------------------------------------
# Live against PyTorch: the whole grids, float64 tensors, lr written into param_group each step.


def torch_trajectory(spec: Spec, cfg: dict) -> np.ndarray:
  torch = pytest.importorskip("torch")
  params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in P0]
  table = lr_table(cfg["lr"], spec.peak)
  if spec.name == "torch_rmsprop":
    opt = torch.optim.RMSprop(params, lr=spec.peak, alpha=ALPHA, eps=cfg["eps"], weight_decay=cfg["weight_decay"],
                              momentum=cfg["momentum"], centered=cfg["centered"], maximize=cfg["maximize"])
  else:
    opt = torch.optim.Adagrad(params, lr=spec.peak, lr_decay=cfg["lr_decay"], weight_decay=cfg["weight_decay"],
                              initial_accumulator_value=cfg["initial_accumulator_value"], eps=cfg["eps"])
  out = []
  for t in range(STEPS):
    with torch.no_grad():
      for p, g in zip(params, grad_np(t, [p.detach().numpy() for p in params]), strict=True):
        p.grad = torch.from_numpy(g)
    opt.param_groups[0]["lr"] = float(table[t])
    opt.step()
    out.append(flat([p.detach().numpy() for p in params]))
  return np.stack(out)


_TORCH_GROUPS = [p for p in _GROUPS if p.values[0].startswith("torch")]


@pytest.mark.parametrize(("name", "group"), _TORCH_GROUPS)
def test_grid_matches_torch_live(name, group):
  pytest.importorskip("torch")
  spec = SPECS[name]
  ours = ours_batched(name, group)
  for cfg in spec.members(group):
    theirs = torch_trajectory(spec, cfg)
    assert_same_trajectory(ours[_key(cfg)], theirs, f"ours-vs-torch:{name}[{_id(cfg)}]")
    assert_same_trajectory(reference_trajectory(spec, cfg), theirs, f"numpy-vs-torch:{name}[{_id(cfg)}]")


def test_torch_defaults_live():
  torch = pytest.importorskip("torch")
  for tx, make in [(compat.torch_rmsprop(), torch.optim.RMSprop), (compat.torch_adagrad(), torch.optim.Adagrad)]:
    params = [torch.tensor(p, dtype=torch.float64, requires_grad=True) for p in P0]
    opt = make(params)
    out = []
    for t in range(STEPS):
      for p, g in zip(params, grad_np(t, [p.detach().numpy() for p in params]), strict=True):
        p.grad = torch.from_numpy(g)
      opt.step()
      out.append(flat([p.detach().numpy() for p in params]))
    assert_same_trajectory(run_ours(tx), np.stack(out), f"ours-vs-torch:defaults[{make.__name__}]")


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(centered=True, momentum=0.9), dict(weight_decay=0.1, maximize=True, momentum=0.5, centered=True)],
    ids=_id,
)
@pytest.mark.parametrize("which", ["RMSprop", "Adagrad"])
def test_complex_parameters_match_torch_live(which, kwargs):
  """PyTorch optimizes a complex parameter as two reals (view_as_real): so do the PyTorch ports."""
  torch = pytest.importorskip("torch")
  if which == "Adagrad":
    kwargs = {k: v for k, v in kwargs.items() if k == "weight_decay"}
    kwargs |= dict(lr_decay=0.01, initial_accumulator_value=0.1)
  rng = np.random.default_rng(7)
  p0 = rng.normal(size=6) + 1j * rng.normal(size=6)
  target = rng.normal(size=6) + 1j * rng.normal(size=6)
  noise = 0.3 * (rng.normal(size=(40, 6)) + 1j * rng.normal(size=(40, 6)))
  make = compat.torch_rmsprop if which == "RMSprop" else compat.torch_adagrad
  tx = make(lr=0.05, **kwargs)
  p = jnp.asarray(p0, jnp.complex128)
  state, update = tx.init(p), jax.jit(tx.update)
  tp = torch.tensor(p0, dtype=torch.complex128, requires_grad=True)
  opt = getattr(torch.optim, which)([tp], lr=0.05, **kwargs)
  for t in range(40):
    g = (np.asarray(p) - target) + noise[t]
    u, state = update(jnp.asarray(g, jnp.complex128), state, p)
    p = optax.apply_updates(p, u)
    tp.grad = torch.from_numpy((tp.detach().numpy() - target) + noise[t])
    opt.step()
  got, want = np.asarray(p), tp.detach().numpy()
  MAX_REL["ours-vs-torch:complex"] = max(MAX_REL.get("ours-vs-torch:complex", 0.0),
                                         float(np.max(np.abs(got - want) / np.abs(want))))
  np.testing.assert_allclose(got, want, rtol=RTOL)


# ---------------------------------------------------------------------------------------------
# Live against Keras 3 (JAX backend). Keras's eager step costs ~20 ms, so the live comparison
# covers a spread of the grid (every flag value, all four clipping modes); the NumPy reference,
# which these runs validate, covers the whole grid above.


@pytest.fixture(scope="module")
def keras():
  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
  keras = pytest.importorskip("keras")
  if keras.backend.backend() != "jax":
    pytest.skip(f"keras was already imported with the {keras.backend.backend()} backend")
  return keras


def keras_trajectory(keras, spec: Spec, cfg: dict) -> np.ndarray:
  table = lr_table(cfg["lr"], spec.peak)
  if cfg["lr"] == "sched":
    table64 = jnp.asarray(table, jnp.float64)

    class Table(keras.optimizers.schedules.LearningRateSchedule):
      def __call__(self, step):
        return table64[jnp.asarray(step)]

    lr = Table()
  else:
    lr = spec.peak  # Keras keeps it in a float32 variable
  if spec.name == "keras_rmsprop":
    opt = keras.optimizers.RMSprop(learning_rate=lr, rho=0.9, momentum=cfg["momentum"], epsilon=cfg["epsilon"],
                                   centered=cfg["centered"], weight_decay=_wd_or_none(cfg), **_keras_clip_kwargs(cfg))
  else:
    opt = keras.optimizers.Adagrad(learning_rate=lr, initial_accumulator_value=cfg["initial_accumulator_value"],
                                   epsilon=cfg["epsilon"])
  variables = [keras.Variable(p, dtype="float64") for p in P0]
  out = []
  for t in range(STEPS):
    grads = grad_np(t, [np.asarray(v.value) for v in variables])
    opt.apply([jnp.asarray(g, jnp.float64) for g in grads], variables)
    out.append(flat([np.asarray(v.value) for v in variables]))
  return np.stack(out)


def _keras_live_cases():
  rms = SPECS["keras_rmsprop"]
  # Every clipping mode with every other flag varied across the four picks, plus a spread.
  picks = [c for c in rms.grid
           if c["centered"] == (c["momentum"] > 0) and c["lr"] == ("sched" if c["centered"] else "const")
           and c["epsilon"] == (1e-2 if c["weight_decay"] == "none" else 1e-7)]
  quick = [picks[i] for i in (0, 5, 10, 15)]
  cases = [pytest.param("keras_rmsprop", c, id=_id(c)) for c in quick]
  cases += [pytest.param("keras_rmsprop", c, id=_id(c), marks=pytest.mark.slow) for c in picks if c not in quick]
  cases += [pytest.param("keras_adagrad", c, id="adagrad-" + _id(c)) for c in _spread(SPECS["keras_adagrad"].grid, 2)]
  return cases


@pytest.mark.parametrize(("name", "cfg"), _keras_live_cases())
def test_matches_keras_live(keras, name, cfg):
  spec = SPECS[name]
  theirs = keras_trajectory(keras, spec, cfg)
  group = tuple((k, cfg[k]) for k in spec.static)
  assert_same_trajectory(ours_batched(name, group)[_key(cfg)], theirs, f"ours-vs-keras:{name}[{_id(cfg)}]")
  assert_same_trajectory(reference_trajectory(spec, cfg), theirs, f"numpy-vs-keras:{name}[{_id(cfg)}]")


# ---------------------------------------------------------------------------------------------
# Conventions that tell the frameworks apart, each checked on its own.


def test_lr_outside_vs_inside_the_momentum_buffer_differ_under_a_schedule():
  """PyTorch (lr outside) and Keras (lr inside) agree for a constant rate and not for a schedule."""
  sched = table_schedule(lr_table("sched", 0.01))

  def pair(lr):
    t = compat.torch_rmsprop(lr=lr, alpha=0.9, eps=0.0, momentum=0.9)
    k = compat.keras_rmsprop(learning_rate=lr, rho=0.9, epsilon=0.0, momentum=0.9)
    return run_ours(t), run_ours(k)

  t, k = pair(0.01)
  np.testing.assert_allclose(t, k, rtol=1e-10)
  t, k = pair(sched)
  assert np.max(np.abs(t - k)) > 1e-3


def test_zero_momentum_and_weight_decay_leave_no_state():
  params = [jnp.zeros(3, jnp.float32)]
  for tx in (compat.torch_rmsprop(), compat.keras_rmsprop(), compat.tf1_rmsprop(0.1), compat.torch_adagrad()):
    buffers = [x for x in jax.tree.leaves(tx.init(params)) if jnp.ndim(x) > 0]
    assert len(buffers) == 1, "only the second moment is kept"
  assert len([x for x in jax.tree.leaves(compat.torch_rmsprop(momentum=0.9, centered=True).init(params))
              if jnp.ndim(x) > 0]) == 3


def test_centered_variance_is_clamped_where_the_sources_go_nan():
  """A constant gradient makes v - m^2 round below 0 in float32: the literal rule gives NaN."""
  g = np.float32(123.4)
  alpha = np.float32(0.9)
  v = m = np.float32(0)
  raw = []
  for _ in range(200):
    v = alpha * v + (1 - alpha) * g * g
    m = m + (1 - alpha) * (g - m)
    raw.append(v - m * m)
  assert min(raw) < 0, "the float32 literal rule does reach a negative variance"
  tx = compat.torch_rmsprop(lr=0.1, alpha=0.9, eps=0.0, centered=True)
  p = jnp.zeros(1, jnp.float32)
  state, update = tx.init(p), jax.jit(tx.update)
  for _ in range(200):
    u, state = update(jnp.full(1, g), state, p)
    assert np.all(np.isfinite(np.asarray(u)))


def test_clip_by_tensor_norm_clips_each_tensor_separately():
  tx = compat.clip_by_tensor_norm(1.0)
  a, b, z = jnp.array([3.0, 4.0], jnp.float64), jnp.array([0.3, 0.4], jnp.float64), jnp.zeros(2, jnp.float64)
  (ca, cb, cz), _ = tx.update([a, b, z], tx.init([a, b, z]))
  np.testing.assert_allclose(ca, [0.6, 0.8], rtol=1e-15)
  np.testing.assert_allclose(cb, [0.3, 0.4], rtol=1e-15)
  np.testing.assert_array_equal(cz, [0.0, 0.0])


def test_coupled_weight_decay_adds_the_l2_gradient():
  tx = compat.coupled_weight_decay(0.5)
  g, p = jnp.array([1.0, -2.0], jnp.float16), jnp.array([4.0, 4.0], jnp.float16)
  u, _ = tx.update(g, tx.init(p), p)
  assert u.dtype == jnp.float16
  np.testing.assert_array_equal(u, [3.0, 0.0])
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(g, tx.init(p))


# ---------------------------------------------------------------------------------------------
# Bad input: the sources' own invalid values, named as the user wrote them.

_BAD = [
    (compat.torch_rmsprop, dict(lr=-0.1), r"torch_rmsprop\(lr=-0.1\): lr must be in \[0, inf\), got -0.1"),
    (compat.torch_rmsprop, dict(alpha=1.5), r"torch_rmsprop\(alpha=1.5\): alpha must be in \[0, 1\], got 1.5"),
    (compat.torch_rmsprop, dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (compat.torch_rmsprop, dict(eps=-1e-8), r"torch_rmsprop\(eps=-1e-08\): eps must be"),
    (compat.torch_rmsprop, dict(weight_decay=-1), r"torch_rmsprop\(weight_decay=-1\): weight_decay must be"),
    (compat.torch_rmsprop, dict(momentum=-0.9), r"torch_rmsprop\(momentum=-0.9\): momentum must be in \[0, 1\)"),
    (compat.torch_rmsprop, dict(momentum=1.0), r"torch_rmsprop\(momentum=1.0\): momentum must be in \[0, 1\)"),
    (compat.torch_rmsprop, dict(lr=math.nan), r"torch_rmsprop\(lr=nan\): lr must be a finite number in \[0, inf\), got nan"),
    (compat.torch_adagrad, dict(lr=-1.0), r"torch_adagrad\(lr=-1.0\): lr must be"),
    (compat.torch_adagrad, dict(lr_decay=-0.1), r"torch_adagrad\(lr_decay=-0.1\): lr_decay must be in \[0, inf\)"),
    (compat.torch_adagrad, dict(weight_decay=-0.1), r"torch_adagrad\(weight_decay=-0.1\)"),
    (compat.torch_adagrad, dict(initial_accumulator_value=-1), r"torch_adagrad\(initial_accumulator_value=-1\)"),
    (compat.torch_adagrad, dict(eps=-1e-10), r"torch_adagrad\(eps=-1e-10\): eps must be"),
    (compat.keras_rmsprop, dict(learning_rate=-0.001), r"keras_rmsprop\(learning_rate=-0.001\): learning_rate must"),
    (compat.keras_rmsprop, dict(rho=1.1), r"keras_rmsprop\(rho=1.1\): rho must be in \[0, 1\], got 1.1"),
    (compat.keras_rmsprop, dict(momentum=-0.5), r"keras_rmsprop\(momentum=-0.5\): momentum must be in \[0, 1\)"),
    (compat.keras_rmsprop, dict(epsilon=-1e-7), r"keras_rmsprop\(epsilon=-1e-07\): epsilon must be"),
    (compat.keras_rmsprop, dict(weight_decay=-0.01), r"keras_rmsprop\(weight_decay=-0.01\): weight_decay must"),
    (compat.keras_rmsprop, dict(clipnorm=0.0), r"keras_rmsprop\(clipnorm=0.0\): clipnorm must be in \(0, inf\)"),
    (compat.keras_rmsprop, dict(clipvalue=-1.0), r"keras_rmsprop\(clipvalue=-1.0\): clipvalue must be in \(0, inf\)"),
    (compat.keras_rmsprop, dict(global_clipnorm=-2), r"keras_rmsprop\(global_clipnorm=-2\): global_clipnorm must"),
    (compat.keras_rmsprop, dict(clipnorm=1.0, clipvalue=1.0), r"keras_rmsprop\(clipnorm=..., clipvalue=...\): only"),
    (compat.keras_adagrad, dict(learning_rate=-1.0), r"keras_adagrad\(learning_rate=-1.0\): learning_rate must"),
    (compat.keras_adagrad, dict(initial_accumulator_value=-0.1), r"keras_adagrad\(initial_accumulator_value=-0.1\)"),
    (compat.keras_adagrad, dict(epsilon=-1.0), r"keras_adagrad\(epsilon=-1.0\): epsilon must be"),
    (compat.tf1_rmsprop, dict(learning_rate=-0.1), r"tf1_rmsprop\(learning_rate=-0.1\): learning_rate must"),
    (compat.tf1_rmsprop, dict(learning_rate=0.1, decay=2.0), r"tf1_rmsprop\(decay=2.0\): decay must be in \[0, 1\]"),
    (compat.tf1_rmsprop, dict(learning_rate=0.1, momentum=-0.1), r"tf1_rmsprop\(momentum=-0.1\): momentum must"),
    (compat.tf1_rmsprop, dict(learning_rate=0.1, epsilon=-1e-10), r"tf1_rmsprop\(epsilon=-1e-10\): epsilon must"),
    (compat.graves_rmsprop, dict(learning_rate=-1e-4), r"graves_rmsprop\(learning_rate=-0.0001\): learning_rate"),
    (compat.graves_rmsprop, dict(decay=1.5), r"graves_rmsprop\(decay=1.5\): decay must be in \[0, 1\]"),
    (compat.graves_rmsprop, dict(momentum=1.5), r"graves_rmsprop\(momentum=1.5\): momentum must be in \[0, 1\)"),
    (compat.graves_rmsprop, dict(eps=-1e-4), r"graves_rmsprop\(eps=-0.0001\): eps must be"),
    (compat.dqn_rmsprop, dict(learning_rate=-2.5e-4), r"dqn_rmsprop\(learning_rate=-0.00025\): learning_rate must"),
    (compat.dqn_rmsprop, dict(decay=-0.95), r"dqn_rmsprop\(decay=-0.95\): decay must be in \[0, 1\]"),
    (compat.dqn_rmsprop, dict(eps=-0.01), r"dqn_rmsprop\(eps=-0.01\): eps must be"),
    (compat.clip_by_tensor_norm, dict(max_norm=0.0), r"clip_by_tensor_norm\(max_norm=0.0\): max_norm must be in \(0"),
    (compat.coupled_weight_decay, dict(weight_decay=-1e-4), r"coupled_weight_decay\(weight_decay=-0.0001\)"),
]


@pytest.mark.parametrize(("make", "kwargs", "message"), _BAD, ids=[f"{m.__name__}-{_id(k)}" for m, k, _ in _BAD])
def test_bad_input_names_the_argument(make, kwargs, message):
  with pytest.raises(ValueError, match=message):
    make(**kwargs)


def test_tf1_learning_rate_is_required():
  with pytest.raises(TypeError):
    compat.tf1_rmsprop()


def test_schedules_and_traced_values_are_not_validated_at_construction():
  compat.torch_rmsprop(lr=optax.constant_schedule(-1.0))  # a schedule is the user's to trust
  jax.jit(lambda lr: compat.keras_rmsprop(learning_rate=lr).update(jnp.ones(2), compat.keras_rmsprop().init(
      jnp.ones(2)))[0])(jnp.float32(0.1))


# ---------------------------------------------------------------------------------------------
# Low-bit state: every port takes the core's state_dtype. A problem with a 32 x 256 leaf (so
# "8bit" keeps its buffers as codes) and a small one, float32, 150 steps of gradients whose noise
# is comparable to their signal, as in minibatch training. (Where the signal dominates, a centered
# variance nu - mu^2 is a small difference of two rounded numbers: 8-bit Graves then ends 50 %
# below the float run on this quadratic, bfloat16 7 %.) The peer is the framework itself where
# installed, else its NumPy transcription; the peers keep float32 (NumPy: float64) state.

_LB_SHAPES = [(32, 256), (7,)]
_LB_STEPS = 150
_LB_RNG = np.random.default_rng(20260512)
_LB_TARGET = [_LB_RNG.normal(size=s) for s in _LB_SHAPES]
_LB_P0 = [c + _LB_RNG.normal(size=s) for c, s in zip(_LB_TARGET, _LB_SHAPES, strict=True)]
_LB_CURV = [_LB_RNG.uniform(0.5, 2.0, size=s) for s in _LB_SHAPES]
_LB_NOISE = [np.stack([2.0 * _LB_RNG.normal(size=s) for _ in range(_LB_STEPS)]) for s in _LB_SHAPES]

LOW_BIT = {  # one configuration per port, with every buffer it can keep
    "torch_rmsprop": dict(lr=3e-3, alpha=0.9, centered=True, momentum=0.9),
    "torch_adagrad": dict(lr=0.05),
    "keras_rmsprop": dict(learning_rate=3e-3, centered=True, momentum=0.9),
    "keras_adagrad": dict(learning_rate=0.05),
    "tf1_rmsprop": dict(learning_rate=3e-3, centered=True, momentum=0.9),
    "graves_rmsprop": dict(learning_rate=1e-3),
    "dqn_rmsprop": dict(learning_rate=5e-3),
}
_NUMPY_PEER = {"torch_rmsprop": ref.TorchRMSprop, "torch_adagrad": ref.TorchAdagrad, "keras_rmsprop": ref.KerasRMSprop,
               "keras_adagrad": ref.KerasAdagrad, "tf1_rmsprop": ref.TF1RMSProp, "graves_rmsprop": ref.GravesRMSProp,
               "dqn_rmsprop": ref.DQNRMSProp}


def _lb_grad(t, params):
  return [a * (np.asarray(p, np.float64) - c) + n[t]
          for p, a, c, n in zip(params, _LB_CURV, _LB_TARGET, _LB_NOISE, strict=True)]


def _lb_loss(params) -> float:
  return float(sum(np.sum(a * (np.asarray(p, np.float64) - c) ** 2) / 2
                   for p, a, c in zip(params, _LB_CURV, _LB_TARGET, strict=True)))


def _lb_ours(tx):
  """(final loss, final state) of ours, float32, as one jitted scan."""
  f32 = lambda xs: [jnp.asarray(x, jnp.float32) for x in xs]
  curv, target = f32(_LB_CURV), f32(_LB_TARGET)

  def body(carry, noise_t):
    params, state = carry
    grads = [a * (p - c) + n for p, a, c, n in zip(params, curv, target, noise_t, strict=True)]
    updates, state = tx.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), None

  run = jax.jit(lambda p0, noise: jax.lax.scan(body, (p0, tx.init(p0)), noise)[0])
  params, state = run(f32(_LB_P0), f32(_LB_NOISE))
  return _lb_loss(params), state


def _live_keras():
  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
  try:
    import keras
  except ImportError:
    return None
  return keras if keras.backend.backend() == "jax" else None


@functools.cache
def _lb_peer(name: str) -> tuple[float, str]:
  """(final loss, which peer): live torch / Keras where installed, else the NumPy transcription."""
  kw = LOW_BIT[name]
  grads_at = lambda t, arrays: [g.astype(np.float32) for g in _lb_grad(t, arrays)]
  if name.startswith("torch"):
    try:
      import torch
    except ImportError:
      torch = None
    if torch is not None:
      params = [torch.tensor(p, dtype=torch.float32, requires_grad=True) for p in _LB_P0]
      opt = getattr(torch.optim, "RMSprop" if name == "torch_rmsprop" else "Adagrad")(params, **kw)
      for t in range(_LB_STEPS):
        for p, g in zip(params, grads_at(t, [p.detach().numpy() for p in params]), strict=True):
          p.grad = torch.from_numpy(g)
        opt.step()
      return _lb_loss([p.detach().numpy() for p in params]), "torch"
  if name.startswith("keras") and (keras := _live_keras()) is not None:
    opt = getattr(keras.optimizers, "RMSprop" if name == "keras_rmsprop" else "Adagrad")(**kw)
    variables = [keras.Variable(p, dtype="float32") for p in _LB_P0]
    for t in range(_LB_STEPS):
      opt.apply([jnp.asarray(g) for g in grads_at(t, [np.asarray(v.value) for v in variables])], variables)
    return _lb_loss([np.asarray(v.value) for v in variables]), "keras"
  reference = _NUMPY_PEER[name](_LB_P0, **kw)
  for t in range(_LB_STEPS):
    reference.step(_lb_grad(t, reference.params))
  return _lb_loss(reference.params), "numpy"


def _buffers_of_big_leaf(state):
  return [b for b in jax.tree.leaves(state, is_leaf=_storage.is_buffer)
          if _storage.is_buffer(b) and tuple(_storage.shape_of(b)) == _LB_SHAPES[0]]


@pytest.mark.parametrize("state_dtype", ["8bit", "4bit", jnp.bfloat16], ids=["8bit", "4bit", "bfloat16"])
@pytest.mark.parametrize("name", list(LOW_BIT))
def test_low_bit_state_trains_within_a_few_percent_of_the_peer(name, state_dtype):
  kw = LOW_BIT[name]
  loss, state = _lb_ours(getattr(compat, name)(**kw, state_dtype=state_dtype))
  peer, which = _lb_peer(name)
  start = _lb_loss(_LB_P0)
  assert peer < 0.6 * start, f"the {which} peer did learn ({start:.1f} -> {peer:.1f})"
  assert abs(loss - peer) <= 0.03 * peer, f"{name}: {loss:.2f} vs {which}'s {peer:.2f}"
  # The state really is low-bit: every buffer of the big leaf (nu; mu and the momentum trace
  # where the port keeps them).
  buffers = _buffers_of_big_leaf(state)
  n_buffers = 1 + kw.get("centered", name in ("graves_rmsprop", "dqn_rmsprop")) + (
      kw.get("momentum", 0.9 if name == "graves_rmsprop" else 0) > 0)
  assert len(buffers) == n_buffers, buffers
  size = math.prod(_LB_SHAPES[0])
  for b in buffers:
    if state_dtype in ("8bit", "4bit"):
      assert _storage.codec_of(b) is not None, type(b)
      # 4-bit: the second moment in half a byte per parameter, mean and momentum in 8 bits.
      limit = 0.55 if isinstance(b, _quant.Quantized4bit) else 1.05
      assert sum(leaf.nbytes for leaf in jax.tree.leaves(b)) <= limit * size
    else:
      assert b.dtype == jnp.bfloat16
  if state_dtype == "4bit":
    assert sum(isinstance(b, _quant.Quantized4bit) for b in buffers) == 1, buffers


@pytest.mark.parametrize("state_dtype", ["8bit", "4bit", jnp.bfloat16], ids=["8bit", "4bit", "bfloat16"])
@pytest.mark.parametrize("which", ["RMSprop", "Adagrad"])
def test_low_bit_state_holds_complex_parameters_as_real_pairs(which, state_dtype):
  """The PyTorch ports view a complex parameter as real pairs: the pairs' buffers are low-bit too
  (bfloat16 even for mu and the trace, which the core keeps complex; 8-bit codes with blocks along
  the parameter's last axis, about 1 byte per real; 4-bit: the second moment in half a byte), and
  the run stays within 3 % of PyTorch."""
  rng = np.random.default_rng(11)
  shape = (32, 128)  # 4096 complex elements: 8192 reals
  target = rng.normal(size=shape) + 1j * rng.normal(size=shape)
  p0 = target + rng.normal(size=shape) + 1j * rng.normal(size=shape)
  noise = 2.0 * (rng.normal(size=(60, *shape)) + 1j * rng.normal(size=(60, *shape)))
  kw = dict(lr=3e-3, alpha=0.9, centered=True, momentum=0.9) if which == "RMSprop" else dict(lr=0.05)
  make = compat.torch_rmsprop if which == "RMSprop" else compat.torch_adagrad
  tx = make(**kw, state_dtype=state_dtype)
  p = jnp.asarray(p0, jnp.complex64)
  state, update = tx.init(p), jax.jit(tx.update)
  for t in range(60):
    u, state = update(jnp.asarray((np.asarray(p) - target) + noise[t], jnp.complex64), state, p)
    p = optax.apply_updates(p, u)
  torch = pytest.importorskip("torch")
  tp = torch.tensor(p0, dtype=torch.complex64, requires_grad=True)
  opt = getattr(torch.optim, which)([tp], **kw)
  for t in range(60):
    tp.grad = torch.from_numpy(((tp.detach().numpy() - target) + noise[t]).astype(np.complex64))
    opt.step()
  loss = lambda x: float(np.sum(np.abs(np.asarray(x) - target) ** 2))
  assert loss(tp.detach().numpy()) < 0.6 * loss(p0)
  assert abs(loss(p) - loss(tp.detach().numpy())) <= 0.03 * loss(tp.detach().numpy())
  buffers = [b for b in jax.tree.leaves(state, is_leaf=_storage.is_buffer) if _storage.is_buffer(b) and len(_storage.shape_of(b)) > 0]
  assert len(buffers) == (3 if which == "RMSprop" else 1)
  for b in buffers:
    if state_dtype in ("8bit", "4bit"):
      assert _storage.codec_of(b) is not None and tuple(_storage.shape_of(b)) == (2, *shape)
      limit = 0.55 if isinstance(b, _quant.Quantized4bit) else 1.05
      assert sum(leaf.nbytes for leaf in jax.tree.leaves(b)) <= limit * 2 * math.prod(shape)
    else:
      assert b.dtype == jnp.bfloat16 and b.shape == (*shape, 2)
  if state_dtype == "4bit":
    assert sum(isinstance(b, _quant.Quantized4bit) for b in buffers) == 1, buffers


@pytest.mark.parametrize("name", list(LOW_BIT))
def test_bad_state_dtype_names_the_allowed_values(name):
  with pytest.raises(ValueError, match=rf"{name}\(state_dtype='4bits'\): state_dtype must be None or one of "
                                       r"float16, bfloat16, float32, float64, '4bit', '8bit'"):
    getattr(compat, name)(**LOW_BIT[name], state_dtype="4bits")
  with pytest.raises(ValueError, match=rf"{name}\(state_dtype=.*int8.*\): state_dtype must be None or one of .*got int8"):
    getattr(compat, name)(**LOW_BIT[name], state_dtype=jnp.int8)
