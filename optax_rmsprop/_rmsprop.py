"""RMSProp and AdaGrad as Optax gradient transformations.

Read top to bottom: the state type, the second-moment scaling that RMSProp and AdaGrad share, the
small transforms the optimizers are chained from (learning rate, momentum, decoupled weight decay),
and the public optimizers ``rmsprop`` and ``adagrad``.

Every per-element computation runs in at least float32 (float64 for float64 inputs), reads and
writes its buffers through ``_storage`` (which keeps them finite and in the requested dtype), and
returns updates in the gradients' dtype.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import export as jax_export
from optax._src import transform as _optax_transform

from optax_rmsprop import _checks, _chunks, _storage

__all__ = [
    "DecoupledWeightDecayState",
    "adagrad",
    "decoupled_weight_decay",
    "rmsprop",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
    "trace",
]


# optax's own state classes, so that checkpoints, ``optax.tree_utils`` and partition rules written
# for optax.rmsprop/adagrad work unchanged. optax does not re-export the two "WithCount" classes.
_RMS_STATE = {False: optax.ScaleByRmsState, True: _optax_transform.ScaleByRmsWithCountState}
_STDDEV_STATE = {False: optax.ScaleByRStdDevState, True: _optax_transform.ScaleByRStdDevWithCountState}


class DecoupledWeightDecayState(NamedTuple):
  """State of :func:`decoupled_weight_decay` with a scheduled learning rate.

  Attributes:
    step: int32 scalar, the number of updates applied so far (the schedule's argument). Not
      called ``count``, so that ``optax.tree_utils.tree_get(state, "count")`` still finds the one
      count of the learning-rate stage, as it does for ``optax.rmsprop``.
  """

  step: jax.Array


try:  # for jax.export's serialisation of a step's state
  jax_export.register_namedtuple_serialization(DecoupledWeightDecayState, serialized_name="optax_rmsprop.DecoupledWeightDecayState")
except ValueError:  # the name is taken: this file imported a second time (as doctest runs it)
  pass


class _Kernel(NamedTuple):
  """A stage's arithmetic per leaf, for running it (and its neighbours in :func:`chain`) chunk by
  chunk over low-bit state (see ``_chunks``): ``prepare(updates, state) -> (ctx, buffer trees)``
  (checks, scalars), ``stage(ctx) -> _chunks.Stage``, ``finish(ctx, new buffer trees) -> state``."""

  prepare: Callable
  stage: Callable
  finish: Callable


def _with_kernel(update_fn, kernel: _Kernel):
  update_fn.kernel = kernel
  return update_fn


def _run_kernels(kernels, updates, states):
  """``updates`` through consecutive stages, leaf by leaf (chunked where a buffer is low-bit)."""
  updates = jax.tree.map(jnp.asarray, updates)
  treedef = jax.tree.structure(updates)
  gs = treedef.flatten_up_to(updates)
  ctxs, stages, flat = [], [], []
  for kernel, state in zip(kernels, states, strict=True):
    ctx, trees = kernel.prepare(updates, state)
    ctxs.append(ctx)
    stages.append(kernel.stage(ctx))
    flat.append([treedef.flatten_up_to(t) for t in trees])
  ys, news = [], []
  for j, g in enumerate(gs):
    y, new = _chunks.run(stages, g, [tuple(tree[j] for tree in trees) for trees in flat])
    ys.append(y)
    news.append(new)
  new_states = []
  for i, (kernel, ctx) in enumerate(zip(kernels, ctxs, strict=True)):
    trees = [treedef.unflatten([news[j][i][m] for j in range(len(gs))]) for m in range(len(flat[i]))]
    new_states.append(kernel.finish(ctx, trees))
  return treedef.unflatten(ys), new_states


# ---------------------------------------------------------------------------------------------
# The second-moment scaling shared by RMSProp (exponential average) and AdaGrad (running sum).


def _per_dtype(make):
  """``make(cdt)`` memoised per compute dtype: scalar hyperparameter work is done once per update,
  not once per leaf (with thousands of leaves, per-leaf scalar ops dominate tracing time)."""
  cache: dict[Any, Any] = {}

  def get(cdt):
    if cdt not in cache:
      cache[cdt] = make(cdt)
    return cache[cdt]

  return get


def _check_tree(fn: str, updates, buffers, buffers_name: str = "optimizer state") -> None:
  """Fails with a readable message when ``updates`` does not fit the state built by ``init``."""
  # Any pytree container may hold the buffers (dicts, tuples, flax's nnx.State, ...); a leaf
  # that is not an array means the state came from somewhere else.
  if not all(_storage.is_buffer(leaf) for leaf in jax.tree.leaves(buffers)):
    raise TypeError(f"{fn}: the state passed to update() was not made by this transformation's init()")
  # A codec's buffer (8-bit codes and scales) is one node: compare the parameters' shapes.
  views = jax.tree.map(lambda b: jax.ShapeDtypeStruct(_storage.shape_of(b), jnp.float32), buffers, is_leaf=_storage.is_buffer)
  if jax.tree.structure(views) != jax.tree.structure(updates):
    _checks.check_buffers_not_split(fn, views, updates, _storage.node_fields())
  _checks.check_same_structure(fn, views, updates, buffers_name, "gradient")
  _checks.check_same_shapes(fn, views, updates, buffers_name, "gradient")


def _abs2(x):
  """|x|^2, real."""
  return jnp.real(x * jnp.conj(x)) if jnp.iscomplexobj(x) else x * x


def _is_traced(tree) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _per_leaf(fn, **hyper):
  """``fn(*arrays, **hyper)`` for one leaf, run as optax runs its update.

  Hyperparameters known at construction (Python or NumPy numbers, concrete arrays) are closed over,
  as optax's constants are; traced ones (inject_hyperparams under jit) are arguments. While traced,
  ``fn`` is jitted, so it is traced once per leaf shape and dtype (with thousands of leaves, tracing
  the same elementwise update again is most of the cost); eagerly it runs op by op, as optax's
  update does: one fused kernel rounds differently (XLA:CPU contracts a * b + c into one fma).
  """
  dynamic = {k: v for k, v in hyper.items() if isinstance(v, jax.core.Tracer)}
  fixed = {k: v for k, v in hyper.items() if k not in dynamic}
  eager = lambda dyn, *arrays: fn(*arrays, **fixed, **dyn)
  jitted = jax.jit(eager)
  return lambda *arrays: (jitted if _is_traced((arrays, dynamic)) else eager)(dynamic, *arrays)


def _scalar(value, cdt):
  """A hyperparameter where it meets an array, with optax's arithmetic: a Python or NumPy number
  stays a (weakly typed) Python number, an array is cast to ``cdt`` (its real part for the complex
  hyperparameters inject_hyperparams makes for complex parameters)."""
  if isinstance(value, (jax.Array, jax.core.Tracer)):
    return _storage.hyper(value, cdt)
  return float(np.real(value))


def _like(scalar, x):
  """A :func:`_scalar` in ``x``'s dtype where it is an array (complex ``x``: no implicit promotion)."""
  return scalar.astype(x.dtype) if isinstance(scalar, (jax.Array, jax.core.Tracer)) else scalar


def _decay_for_correction(decay):
  """``decay`` as optax hands it to ``optax.tree.bias_correction`` (real part if complex)."""
  if isinstance(decay, (jax.Array, jax.core.Tracer)) and jnp.iscomplexobj(decay):
    return jnp.real(decay)
  return decay


def _scale_by_second_moment(
    fn: str,
    *,
    accumulate: bool,
    decay: Any,
    eps: Any,
    initial_scale: Any,
    eps_in_sqrt: bool,
    bias_correction: bool,
    centered: bool,
    state_dtype: Any,
) -> optax.GradientTransformationExtraArgs:
  """Divides updates by the root of a per-element second moment of the gradients.

  ``accumulate=False``: ``nu <- decay * nu + (1 - decay) * |g|^2`` (RMSProp);
  ``accumulate=True``: ``nu <- nu + |g|^2`` (AdaGrad). The state is optax's for the same rule.
  """
  spec = _storage.resolve_state_dtype(fn, state_dtype)

  state_type = optax.ScaleByRssState if accumulate else (_STDDEV_STATE if centered else _RMS_STATE)[bias_correction]

  def pack(nu, mu, count):
    """optax's state for these flags: no mu unless centered, no count without bias correction."""
    nu, mu = _storage.nodes_outside_boxes(nu, spec), _storage.nodes_outside_boxes(mu, spec)
    if accumulate:
      return optax.ScaleByRssState(sum_of_squares=nu)
    fields = {"nu": nu, **({"mu": mu} if centered else {}), **({"count": count} if bias_correction else {})}
    return state_type(**fields)

  def init_fn(params):
    _checks.check_float_leaves(fn, params, "params")
    nu = jax.tree.map(lambda p: _storage.create(p, initial_scale, spec, real=True), params)
    mu = jax.tree.map(lambda p: _storage.create(p, 0.0, spec, real=False), params) if centered else None
    return pack(nu, mu, jnp.zeros([], jnp.int32))

  static_eps = _checks.static_float(eps)
  static_decay = _checks.static_float(decay)
  # decay == 1 makes the bias-correction factor 0 (0/0 in the maths): no correction then.
  correct = bias_correction and static_decay != 1.0

  def eps_is_normal(cdt) -> bool:
    """Whether eps is known at trace time to be a normal (not zero, not subnormal) number."""
    return static_eps is not None and static_eps >= float(jnp.finfo(cdt).tiny)

  def keeps_variance(nu) -> bool:
    """Centered over low-bit codes, the ``nu`` buffer holds the variance ``nu - |mu|^2`` itself:
    where the variance is small against ``nu`` (a steady gradient), codes of ``nu`` and ``mu``
    each round away more than the difference, which then reads as 0 (a ``g / sqrt(eps)`` step)."""
    return centered and _storage.codec_of(nu) is not None

  def variance_moments(g, var, mu, *, decay):
    """:func:`moments` for a variance buffer: ``var <- d var + d (1 - d) |g - mu|^2`` (exact for
    ``var = nu - |mu|^2``, whatever ``d`` is at each step), ``mu <- d mu + (1 - d) g``."""
    cdt = _storage.compute_dtype(g.dtype)
    d, one_minus_d = _scalar(decay, cdt), _scalar(1 - decay, cdt)
    gc = g.astype(_storage.work_dtype(g.dtype))
    mu_c = _storage.load(mu, cdt)
    var_raw = d * _storage.load(var, cdt) + d * one_minus_d * _abs2(gc - mu_c)
    var_out = _storage.write(_storage.clamp(var_raw, var, nonnegative=True), var)
    mu_out = _storage.write(_storage.clamp(_like(one_minus_d, gc) * gc + _like(d, gc) * mu_c, mu), mu)
    return (var_out, mu_out, *read_moments(g, var_out, mu_out))

  def moments(g, nu, mu, *, decay):
    """The new buffers (as stored) and the moments the step uses."""
    if keeps_variance(nu):
      return variance_moments(g, nu, mu, decay=decay)
    cdt = _storage.compute_dtype(g.dtype)
    # 1 - decay in decay's own arithmetic (a Python float: in double), as optax.
    d, one_minus_d = _scalar(decay, cdt), _scalar(1 - decay, cdt)
    gc = g.astype(_storage.work_dtype(g.dtype))
    g2 = _abs2(gc)
    nu_c = _storage.load(nu, cdt)
    nu_raw = g2 + nu_c if accumulate else one_minus_d * g2 + d * nu_c
    if _storage.as_optax(spec, nu, cdt):
      # optax's state and arithmetic, nothing added (see _storage.as_optax).
      mu_raw = _like(one_minus_d, gc) * gc + _like(d, gc) * _storage.load(mu, cdt) if centered else None
      return nu_raw, mu_raw, nu_raw, mu_raw
    nu_new = _storage.clamp(nu_raw, nu, nonnegative=True)
    nu_out = _storage.write(nu_new, nu)
    # float16 state (see _storage.reads_back) overflows long before float32 arithmetic does: its
    # step uses the unclamped values wherever they are finite; only the stored ones are clamped.
    fits = jnp.isfinite(nu_raw) if _storage.small_range(nu) else None
    mu_out = mu_step = None
    if centered:
      mu_raw = _like(one_minus_d, gc) * gc + _like(d, gc) * _storage.load(mu, cdt)
      # Where nu overflows and is clamped, mu must shrink with it (by sqrt(clamped / true nu)) so
      # that |mu|^2 <= nu still holds and the variance nu - |mu|^2 does not collapse to 0 (which
      # made steps of g / sqrt(eps) for hundreds of steps). The true root, by hypot, is finite for
      # any finite gradient.
      if _storage.small_range(nu):
        # float16 state: overflows at ordinary gradients (|g| > 256), so shrink exactly.
        root = jnp.hypot(jnp.sqrt(d * nu_c), jnp.sqrt(one_minus_d) * jnp.abs(gc))
        shrink = jnp.where(nu_raw > nu_new, jnp.sqrt(nu_new) / root, 1)
        mu_new = _storage.clamp(mu_raw, mu) * shrink.astype(mu_raw.dtype)
      else:
        # The stored nu is <= M (the clamp's limit), so an overflow needs |g| > sqrt(M) (1.8e19 in
        # float32). There mu is clamped and scaled by sqrt(M) / (sqrt(d M) + sqrt(1 - d)|g|), at
        # least the exact shrink (the true root is at most hypot(sqrt(d M), sqrt(1 - d)|g|) <=
        # that sum), from g alone: reading the old nu here too made XLA:CPU copy the donated nu
        # buffer every step (3x slower), and a hypot per element doubled the centered step's
        # compile time. Elsewhere mu, a convex combination of finite values, is finite and left
        # as optax computes it (clamping it there too changed how XLA:CPU contracts its
        # multiply-add into an fma, and so its last bit).
        m = min(_storage.max_of(nu), float(jnp.finfo(cdt).max))
        big = jnp.abs(gc) > m**0.5
        shrink = m**0.5 / (jnp.sqrt(d * m) + jnp.sqrt(one_minus_d) * jnp.abs(gc))
        mu_new = jnp.where(big, _storage.clamp(mu_raw, mu) * shrink.astype(mu_raw.dtype), mu_raw)
      mu_out = _storage.write(mu_new, mu)
      if _storage.reads_back(mu, cdt):
        mu_step = _storage.load(mu_out, cdt)
      else:
        mu_step = mu_new if fits is None else jnp.where(fits, mu_raw, mu_new)
    # Buffers that round what they store (bfloat16 state, 8-bit codes): the step reads them
    # back as stored, as PyTorch and Keras do with low-precision state. Using the unrounded values
    # would keep the old buffers alive after the new ones are written, and XLA:CPU (which has no
    # multi-output fusion) then copies every donated buffer each step. Floored by bounds that the
    # exact values satisfy, so that a value rounded down (to 0 at worst) cannot inflate the step:
    # nu_t >= (1 - decay)|g_t|^2 (AdaGrad: |g_t|^2) and, centered, from var_t = decay var_{t-1} +
    # decay (1 - decay)|g_t - mu_{t-1}|^2, nu_t >= |mu_t|^2 + (1 - decay) / decay |g_t - mu_t|^2
    # (which implies the first). Float32 state with float32 gradients: nothing changes.
    if _storage.reads_back(nu, cdt) or (centered and _storage.reads_back(mu, cdt)):
      nu_step = floored(gc, nu_out, mu_step, d, one_minus_d)
    else:
      nu_step = nu_new if fits is None else jnp.where(fits, nu_raw, nu_new)

    return nu_out, mu_out, nu_step, mu_step

  def floored(gc, nu_out, mu_step, d, one_minus_d):
    """The stored second moment, floored by a bound the exact value satisfies."""
    cdt = _storage.compute_dtype(gc.dtype)
    if centered:
      # (1 - decay) / decay (0 at decay 0: mu = g).
      ratio = jnp.where(d > 0, one_minus_d / jnp.where(d > 0, d, 1), 0)
      floor = _abs2(mu_step) + ratio * _abs2(gc - mu_step)
    else:
      floor = _abs2(gc) if accumulate else one_minus_d * _abs2(gc)
    return jnp.maximum(_storage.load(nu_out, cdt), floor)

  def read_moments(g, nu_out, mu_out):
    """The moments :func:`moments` gives the step, from the new buffers as stored."""
    cdt = _storage.compute_dtype(g.dtype)
    d, one_minus_d = _scalar(decay, cdt), _scalar(1 - decay, cdt)
    gc = g.astype(_storage.work_dtype(g.dtype))
    mu_step = _storage.load(mu_out, cdt) if centered else None
    if keeps_variance(nu_out):
      # var_t >= d (1 - d) |g - mu_{t-1}|^2 = (1 - d) / d |g - mu_t|^2. Without bias correction the
      # step divides by the variance itself (nu - |mu|^2 with mu = 0); with it, by
      # (var + |mu|^2) / c - |mu / c|^2, whose cancellation is the bias correction's own.
      ratio = jnp.where(d > 0, one_minus_d / jnp.where(d > 0, d, 1), 0)
      var = jnp.maximum(_storage.load(nu_out, cdt), ratio * _abs2(gc - mu_step))
      return (var + _abs2(mu_step), mu_step) if correct else (var, jnp.zeros_like(mu_step))
    if _storage.reads_back(nu_out, cdt) or (centered and _storage.reads_back(mu_out, cdt)):
      return floored(gc, nu_out, mu_step, d, one_minus_d), mu_step
    return _storage.load(nu_out, cdt), mu_step

  def correct_leaf(x, count):
    """``x / (1 - decay^t)`` for one leaf (low-bit state: optax's tree-level arithmetic is moot)."""
    rdt = _storage.real_dtype(x.dtype)
    d = _storage.hyper(_decay_for_correction(decay), rdt)
    hat = x / (1 - d ** count.astype(rdt)).astype(x.dtype)
    return hat if static_decay is not None else jnp.where(d == 1, x, hat)

  def scaled(g, nu_hat, mu_hat, *, eps):
    """The update from the (bias-corrected) moments."""
    cdt = _storage.compute_dtype(g.dtype)
    e = _scalar(eps, cdt)
    gc = g.astype(_storage.work_dtype(g.dtype))
    if centered:
      # v - |m|^2 >= 0 in exact arithmetic; rounding can make it negative. Where that makes
      # optax's denominator <= 0 (NaN or inf), the variance is taken as 0.
      # NaN only as inf - inf, where |g| overflowed nu and |mu|^2 (optax's state): a zero step
      # then, as for the overflowed nu alone. (A NaN gradient still gives a NaN update.)
      var = nu_hat - _abs2(mu_hat)
      if eps_in_sqrt:
        den = var + e
        den = jnp.where(den > 0, den, jnp.where(den <= 0, e, jnp.inf))
      else:
        den = jnp.sqrt(jnp.where(var > 0, var, jnp.where(var <= 0, 0, jnp.inf))) + e
    else:
      den = nu_hat + e if eps_in_sqrt else jnp.sqrt(nu_hat) + e
    inv = jax.lax.rsqrt(den) if eps_in_sqrt else 1 / den
    if accumulate and eps_in_sqrt:
      # optax.scale_by_rss: a zero update where the sum of squares is 0.
      scale = jnp.where(nu_hat > 0, inv, 0)
    elif eps_is_normal(cdt):
      # var >= 0 (or den >= eps), so den >= eps > 0: no guard needed (and none paid for in the hot loop).
      scale = inv
    else:
      # A zero denominator (eps = 0 and no gradient yet) gives a zero step, not 0 * inf = NaN.
      # (The discarded branch may be inf or NaN; the select never lets it through.) Tested on
      # ``inv`` rather than ``den > 0``: den >= 0 or NaN, so the same elements, and also a den so
      # small (a subnormal eps outside the root) that 1 / den overflows. A second reader of ``den``
      # made XLA recompute the 4-bit decode of nu for each: 5x the step with a static eps (traced
      # under inject_hyperparams, eps takes this branch).
      scale = jnp.where(inv < jnp.inf, inv, 0)
    return (scale.astype(gc.dtype) * gc).astype(g.dtype)

  run_moments, run_scaled = _per_leaf(moments, decay=decay), _per_leaf(scaled, eps=eps)

  def correct_tree(xs, count):
    """optax's bias correction, called as optax calls it (on the whole tree): XLA turns its
    divisions into multiplications by one reciprocal or not depending on the graph around them."""
    d = _decay_for_correction(decay)
    # The count as optax's decay**count promotes it (to decay's dtype, or the default float for
    # a Python float), explicitly: the same arithmetic, and strict dtype promotion holds.
    t = count.astype(jnp.result_type(float) if isinstance(d, (int, float)) else jnp.result_type(d))
    hats = optax.tree.bias_correction(xs, d, t)
    if static_decay is None:  # a traced decay may be 1: 0/0, no correction there
      hats = [jnp.where(_storage.hyper(d, x.dtype) == 1, x, h) for x, h in zip(xs, hats, strict=True)]
    return hats

  def prepare(updates, state):
    """Checks ``updates`` against ``state``; the incremented count and the buffer trees."""
    _checks.check_state_type(fn, state, state_type)
    state = _storage.nodes_inside_boxes(state, spec)
    nus = state.sum_of_squares if accumulate else state.nu
    _check_tree(fn, updates, nus)
    _checks.check_float_leaves(fn, updates, "gradient")
    count_inc = optax.safe_increment(state.count) if bias_correction else None
    return count_inc, [nus, state.mu] if centered else [nus]

  def stage(count_inc):
    def hats(nu_step, mu_step):
      if not correct:
        return nu_step, mu_step
      return correct_leaf(nu_step, count_inc), correct_leaf(mu_step, count_inc) if centered else None

    def advance(g, bufs):
      nu_out, mu_out, nu_step, mu_step = moments(g, bufs[0], bufs[1] if centered else bufs[0], decay=decay)
      y = scaled(g, *hats(nu_step, mu_step), eps=eps)
      return y, (nu_out, mu_out) if centered else (nu_out,)

    def read(g, bufs):
      return scaled(g, *hats(*read_moments(g, bufs[0], bufs[1] if centered else None)), eps=eps)

    return _chunks.Stage(advance, read)

  def finish(count_inc, trees):
    return pack(trees[0], trees[1] if centered else None, count_inc)

  kernel = _Kernel(prepare, stage, finish)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if _chunks.has_codec(state):
      out, (new_state,) = _run_kernels([kernel], updates, [state])
      return out, new_state
    count_inc, trees = prepare(updates, state)
    nus = trees[0]
    updates = jax.tree.map(jnp.asarray, updates)  # Python scalars (as optax accepts them)
    treedef = jax.tree.structure(updates)
    gs = treedef.flatten_up_to(updates)
    nu_in = treedef.flatten_up_to(nus)
    # Without centering, nu stands in for the absent mu tree (moments() ignores it).
    mu_in = treedef.flatten_up_to(state.mu) if centered else nu_in
    out = [run_moments(g, nu, mu) for g, nu, mu in zip(gs, nu_in, mu_in, strict=True)]
    nu_steps = [o[2] for o in out]
    mu_steps = [o[3] for o in out] if centered else nu_steps
    if correct:
      nu_steps = correct_tree(nu_steps, count_inc)
      mu_steps = correct_tree(mu_steps, count_inc) if centered else nu_steps
    new_updates = treedef.unflatten([run_scaled(g, n, m) for g, n, m in zip(gs, nu_steps, mu_steps, strict=True)])
    nu = treedef.unflatten([o[0] for o in out])
    mu = treedef.unflatten([o[1] for o in out]) if centered else None
    return new_updates, pack(nu, mu, count_inc)

  return optax.GradientTransformationExtraArgs(init_fn, _with_kernel(update_fn, kernel))


def scale_by_rms(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    centered: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by the root of an exponential average of squared gradients.

  .. math::
    \nu_t = \mathrm{decay}\,\nu_{t-1} + (1-\mathrm{decay})\,|g_t|^2, \qquad
    \mu_t = \mathrm{decay}\,\mu_{t-1} + (1-\mathrm{decay})\,g_t \;\text{(centered)}

  with :math:`\nu_0 =` ``initial_scale`` and :math:`\mu_0 = 0`; with ``bias_correction`` both
  are divided by :math:`1-\mathrm{decay}^t` (:math:`t` counts from 1). The variance estimate is
  :math:`s_t = \hat\nu_t` or, centered, :math:`\hat\nu_t - |\hat\mu_t|^2` (taken as 0 where
  rounding makes the denominator :math:`\le 0`, where optax's is NaN or inf), and the output is
  :math:`g_t/\sqrt{s_t+\epsilon}` (``eps_in_sqrt=True``) or :math:`g_t/(\sqrt{s_t}+\epsilon)`,
  with :math:`\epsilon =` ``eps``.

  Args:
    decay: the averages' decay rate, in [0, 1].
    eps: added to the denominator, >= 0.
    initial_scale: the initial second moment :math:`\nu_0`, >= 0.
    eps_in_sqrt: whether ``eps`` goes inside the square root (optax, Keras, TF1) or outside
      (PyTorch).
    bias_correction: divide the averages by :math:`1-\mathrm{decay}^t`.
    centered: subtract the squared mean gradient (Graves 2013): :func:`scale_by_stddev`.
    state_dtype: ``None`` keeps buffers in the parameters' dtype; a float dtype, ``"8bit"`` or
      ``"4bit"`` stores them in it (see :func:`rmsprop` for how a narrower buffer enters the step).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is optax's own:
    ``optax.ScaleByRmsState(nu)``, with ``bias_correction`` optax's
    ``ScaleByRmsWithCountState(count, nu)`` (centered: see :func:`scale_by_stddev`).

  Example:
    >>> import jax.numpy as jnp, optax_rmsprop
    >>> tx = optax_rmsprop.scale_by_rms()
    >>> g = jnp.array([3.0, -4.0])
    >>> u, state = tx.update(g, tx.init(g))
    >>> [round(float(x), 4) for x in u]  # g / sqrt(0.1 g^2 + eps) = sign(g) sqrt(10)
    [3.1623, -3.1623]

  Float32 and float64 updates are bit for bit :func:`optax.scale_by_rms`'s wherever those are
  finite. Beyond it: a zero denominator gives a zero update, arithmetic is in at least float32,
  complex parameters keep a real :math:`\nu`, and buffers of a given ``state_dtype`` are clamped
  to its finite range (``None``: optax's buffers and arithmetic, overflow to inf included).

  References:
    Hinton, Srivastava, Swersky, `Lecture 6e of Neural Networks for Machine Learning
    <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.

    Graves, `Generating Sequences With Recurrent Neural Networks
    <https://arxiv.org/abs/1308.0850>`_, 2013 (centered, eqs. 38-41).
  """
  return _rms("scale_by_rms", decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, state_dtype)


def _rms(fn, decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered, state_dtype):
  """:func:`scale_by_rms` / :func:`scale_by_stddev`, its checks naming ``fn``."""
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _checks.check_range(fn, "initial_scale", initial_scale, 0.0, allow_none=False)
  for name, flag in (("eps_in_sqrt", eps_in_sqrt), ("bias_correction", bias_correction), ("centered", centered)):
    _checks.check_flag(fn, name, flag)
  return _scale_by_second_moment(
      fn,
      accumulate=False,
      decay=decay,
      eps=eps,
      initial_scale=initial_scale,
      eps_in_sqrt=eps_in_sqrt,
      bias_correction=bias_correction,
      centered=centered,
      state_dtype=state_dtype,
  )


def scale_by_stddev(
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    bias_correction: bool = False,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by the root of the centered exponential average of squared gradients.

  :func:`scale_by_rms` with ``centered=True``, under optax's name (:func:`optax.scale_by_stddev`):

  .. math::
    \mu_t = \mathrm{decay}\,\mu_{t-1} + (1-\mathrm{decay})\,g_t, \qquad
    u_t = g_t / \sqrt{\hat\nu_t - |\hat\mu_t|^2 + \epsilon}

  (or :math:`g_t/(\sqrt{\hat\nu_t - |\hat\mu_t|^2} + \epsilon)` without ``eps_in_sqrt``), with
  :math:`\nu_t` as in :func:`scale_by_rms`. The variance :math:`\hat\nu_t - |\hat\mu_t|^2` is
  non-negative in exact arithmetic; where rounding makes the denominator :math:`\le 0` (optax:
  NaN or inf) it is taken as 0.

  Args:
    decay: the averages' decay rate, in [0, 1].
    eps: added to the denominator, >= 0.
    initial_scale: the initial second moment :math:`\nu_0`, >= 0.
    eps_in_sqrt: whether ``eps`` goes inside the square root.
    bias_correction: divide both averages by :math:`1-\mathrm{decay}^t`.
    state_dtype: as in :func:`scale_by_rms`.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is optax's
    ``optax.ScaleByRStdDevState(mu, nu)`` (with ``bias_correction``,
    ``ScaleByRStdDevWithCountState(count, mu, nu)``).

  Example:
    >>> import jax.numpy as jnp, optax_rmsprop
    >>> tx = optax_rmsprop.scale_by_stddev()
    >>> g = jnp.array([3.0, -4.0])
    >>> u, state = tx.update(g, tx.init(g))
    >>> [round(float(x), 4) for x in u]  # g / sqrt(0.1 g^2 - (0.1 g)^2 + eps) = g / (0.3 |g|)
    [3.3333, -3.3333]

  References:
    Graves, `Generating Sequences With Recurrent Neural Networks
    <https://arxiv.org/abs/1308.0850>`_, 2013 (eqs. 38-41).
  """
  return _rms("scale_by_stddev", decay, eps, initial_scale, eps_in_sqrt, bias_correction, True, state_dtype)


def scale_by_rss(
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
    eps_in_sqrt: bool = True,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales updates by the root of the running sum of squared gradients (AdaGrad).

  .. math::
    \nu_t = \nu_{t-1} + |g_t|^2, \qquad u_t = g_t / \sqrt{\nu_t + \epsilon}
    \;\text{or}\; g_t / (\sqrt{\nu_t} + \epsilon)

  with :math:`\nu_0 =` ``initial_accumulator_value`` and :math:`\epsilon =` ``eps`` inside the
  root when ``eps_in_sqrt`` (optax, Keras) or outside it (PyTorch). A zero denominator gives a
  zero update.

  Args:
    initial_accumulator_value: :math:`\nu_0`, >= 0.
    eps: added to the denominator, >= 0.
    eps_in_sqrt: where ``eps`` goes.
    state_dtype: ``None`` keeps the accumulator in the parameters' dtype; a float dtype stores it
      in it.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is optax's
    ``optax.ScaleByRssState(sum_of_squares)``.

  References:
    Duchi, Hazan, Singer, `Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
  """
  fn = "scale_by_rss"
  _checks.check_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _checks.check_flag(fn, "eps_in_sqrt", eps_in_sqrt)
  return _scale_by_second_moment(
      fn,
      accumulate=True,
      decay=1.0,
      eps=eps,
      initial_scale=initial_accumulator_value,
      eps_in_sqrt=eps_in_sqrt,
      bias_correction=False,
      centered=False,
      state_dtype=state_dtype,
  )


# ---------------------------------------------------------------------------------------------
# Small transforms the optimizers are chained from. Ours rather than optax's because optax's
# multiply low-precision updates by float32 hyperparameters (changing their dtype under
# inject_hyperparams) and keep their buffers in the updates' precision.


def _schedule_init(learning_rate):
  return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)) if callable(learning_rate) else optax.EmptyState()


def _schedule_step(learning_rate, state):
  """The learning rate for this update and the next schedule state."""
  if callable(learning_rate):
    return learning_rate(state.count), optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return learning_rate, state


def _mul(u, factor):
  """``u * factor`` in compute precision, returned in ``u``'s dtype."""
  w = _storage.work_dtype(u.dtype)
  return (u.astype(w) * _storage.hyper(factor, _storage.compute_dtype(u.dtype)).astype(w)).astype(u.dtype)


def scale_by_learning_rate(
    learning_rate: optax.ScalarOrSchedule, *, flip_sign: bool = True
) -> optax.GradientTransformationExtraArgs:
  r"""Multiplies updates by :math:`-\mathrm{lr}_t` (or :math:`+\mathrm{lr}_t` without ``flip_sign``).

  ``learning_rate`` is a number or an optax schedule evaluated at the update count (0 first).
  Unlike :func:`optax.scale_by_learning_rate` the updates keep their dtype when the learning rate
  arrives as a float32 array (``inject_hyperparams``).
  """
  _checks.check_schedule_or_number("scale_by_learning_rate", "learning_rate", learning_rate)
  _checks.check_flag("scale_by_learning_rate", "flip_sign", flip_sign)
  sign = -1 if flip_sign else 1

  def prepare(updates, state):
    _checks.check_float_leaves("scale_by_learning_rate", updates, "gradient")
    lr, state = _schedule_step(learning_rate, state)
    return (lr, state), []

  def stage(ctx):
    # No per-dtype cache here: a value first made inside the chunk loop's trace must not be
    # reused outside it.
    scale = lambda u: _mul(u, sign * ctx[0])
    return _chunks.Stage(lambda u, bufs: (scale(u), ()), lambda u, bufs: scale(u))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    (lr, state), _ = prepare(updates, state)
    factor = _per_dtype(lambda cdt: _storage.hyper(sign * lr, cdt))
    updates = jax.tree.map(jnp.asarray, updates)
    return jax.tree.map(lambda u: _mul(u, factor(_storage.compute_dtype(u.dtype))), updates), state

  kernel = _Kernel(prepare, stage, lambda ctx, trees: ctx[1])
  return optax.GradientTransformationExtraArgs(lambda params: _schedule_init(learning_rate), _with_kernel(update_fn, kernel))


def trace(decay: jax.typing.ArrayLike, nesterov: bool = False, *, state_dtype: Any = None) -> optax.GradientTransformationExtraArgs:
  r"""Momentum: :math:`b_t = \mathrm{decay}\,b_{t-1} + u_t`, output :math:`b_t` (or
  :math:`u_t + \mathrm{decay}\,b_t` with ``nesterov``), as :func:`optax.trace`.

  Where it sits in a chain decides the convention: after :func:`scale_by_learning_rate` the
  learning rate is inside the buffer (optax, Keras, TF1); before it, outside (PyTorch).

  Args:
    decay: the momentum, in [0, 1).
    nesterov: use Nesterov's variant.
    state_dtype: ``None`` keeps the buffer in the parameters' dtype; a float dtype stores it in it.
  """
  fn = "trace"
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, high_open=True, allow_none=False)
  _checks.check_flag(fn, "nesterov", nesterov)
  spec = _storage.resolve_state_dtype(fn, state_dtype)

  def init_fn(params):
    _checks.check_float_leaves(fn, params, "params")
    trace = jax.tree.map(lambda p: _storage.create(p, 0.0, spec, real=False), params)
    return optax.TraceState(trace=_storage.nodes_outside_boxes(trace, spec))

  def leaf(u, b, *, decay):
    cdt = _storage.compute_dtype(u.dtype)
    uc = u.astype(_storage.work_dtype(u.dtype))
    d = _like(_scalar(decay, cdt), uc)
    if _storage.as_optax(spec, b, cdt):  # optax's arithmetic, nothing added (see _storage.as_optax)
      b_raw = uc + d * _storage.load(b, cdt)
      out = uc + d * b_raw if nesterov else b_raw
      return out.astype(u.dtype), b_raw
    b_new = _storage.clamp(uc + d * _storage.load(b, cdt), b)
    b_out = _storage.write(b_new, b)
    # A rounding buffer (bfloat16 or 8-bit state): the step uses the stored momentum, as
    # PyTorch and Keras do; the unrounded one would keep the old buffer alive (a copy per step).
    b_step = _storage.load(b_out, cdt).astype(uc.dtype) if _storage.reads_back(b, cdt) else b_new
    out = uc + d * b_step if nesterov else b_step
    return out.astype(u.dtype), b_out

  def read(u, b_out):
    """:func:`leaf`'s output from the new buffer as stored."""
    cdt = _storage.compute_dtype(u.dtype)
    uc = u.astype(_storage.work_dtype(u.dtype))
    b_step = _storage.load(b_out, cdt).astype(uc.dtype)
    out = uc + _like(_scalar(decay, cdt), uc) * b_step if nesterov else b_step
    return out.astype(u.dtype)

  run = _per_leaf(leaf, decay=decay)

  def prepare(updates, state):
    _checks.check_state_type(fn, state, optax.TraceState)
    state = _storage.nodes_inside_boxes(state, spec)
    _check_tree(fn, updates, state.trace)
    _checks.check_float_leaves(fn, updates, "gradient")
    return None, [state.trace]

  def stage(ctx):
    def advance(u, bufs):
      out, b_out = leaf(u, bufs[0], decay=decay)
      return out, (b_out,)

    return _chunks.Stage(advance, lambda u, bufs: read(u, bufs[0]))

  kernel = _Kernel(prepare, stage, lambda ctx, trees: optax.TraceState(trace=_storage.nodes_outside_boxes(trees[0], spec)))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if _chunks.has_codec(state):
      out, (new_state,) = _run_kernels([kernel], updates, [state])
      return out, new_state
    prepare(updates, state)
    updates = jax.tree.map(jnp.asarray, updates)
    pairs = jax.tree.map(run, updates, state.trace)
    treedef = jax.tree.structure(updates)
    flat = treedef.flatten_up_to(pairs)
    trace = _storage.nodes_outside_boxes(treedef.unflatten([p[1] for p in flat]), spec)
    return treedef.unflatten([p[0] for p in flat]), optax.TraceState(trace=trace)

  return optax.GradientTransformationExtraArgs(init_fn, _with_kernel(update_fn, kernel))


def _check_mask_leaves(fn: str, name: str, mask) -> None:
  """A mask's leaves must be booleans: any other leaf (``"yes"``, ``0.5``) would silently mean True."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(mask)[0]:
    dtype = getattr(leaf, "dtype", None)
    if not (isinstance(leaf, (bool, np.bool_)) or (dtype is not None and jnp.dtype(dtype) == jnp.bool_)):
      where = jax.tree_util.keystr(path) or "<root>"
      raise TypeError(
          f"{fn}({name}=...): {name} leaf {where} must be a boolean (or a boolean array), got {leaf!r}; "
          "pass a tree of booleans shaped like the params (or a prefix of it), or a callable returning one"
      )


def _full_mask(fn: str, mask, params):
  """The mask as a tree of booleans with the parameters' structure (prefix masks broadcast)."""
  m = mask(params) if callable(mask) else mask
  _check_mask_leaves(fn, "weight_decay_mask", m)
  try:
    return jax.tree.map(lambda mk, sub: jax.tree.map(lambda _: mk, sub), m, params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        f"{fn}: weight_decay_mask does not match the params tree ("
        + _checks.describe_tree_mismatch(params, m, "params", "mask")
        + ")"
    ) from e


def decoupled_weight_decay(
    learning_rate: optax.ScalarOrSchedule, weight_decay: jax.typing.ArrayLike, mask: Any = None
) -> optax.GradientTransformationExtraArgs:
  r"""Decoupled weight decay: :math:`u_t \leftarrow u_t - \mathrm{lr}_t\,\mathrm{wd}\,p_{t-1}`.

  Applied after the rest of the step (so after momentum), to the parameters' value before the
  step, as Loshchilov & Hutter's AdamW and Keras do. ``mask`` (a tree of booleans shaped like the
  parameters, or a prefix of it, or a callable returning one) limits it to the leaves marked True.
  ``learning_rate`` may be a schedule; it is evaluated at the update count (0 first), kept in a
  :class:`DecoupledWeightDecayState` (without a schedule the state is ``optax.EmptyState()``).

  References:
    Loshchilov & Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  fn = "decoupled_weight_decay"
  _checks.check_schedule_or_number(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0, allow_none=False)
  if mask is not None and not callable(mask):
    _check_mask_leaves(fn, "mask", mask)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    params = _checks.params_for_decay(fn, params, updates)
    _checks.check_same_shapes(fn, params, updates, "params", "gradient")
    _checks.check_float_leaves(fn, updates, "gradient")
    _checks.check_float_leaves(fn, params, "params")
    updates, params = jax.tree.map(jnp.asarray, updates), jax.tree.map(jnp.asarray, params)
    if callable(learning_rate):
      _checks.check_state_type(fn, state, DecoupledWeightDecayState)
      lr, state = learning_rate(state.step), DecoupledWeightDecayState(step=optax.safe_increment(state.step))
    else:
      lr = learning_rate
    flags = jax.tree.map(lambda _: True, params) if mask is None else _full_mask(fn, mask, params)
    rate_of = _per_dtype(
        lambda w: (_storage.hyper(lr, _storage.compute_dtype(w)) * _storage.hyper(weight_decay, _storage.compute_dtype(w))).astype(w)
    )

    def leaf(u, p, on):
      if on is False:
        return u
      w = _storage.work_dtype(u.dtype)
      rate = rate_of(w)
      new = (u.astype(w) - rate * p.astype(w)).astype(u.dtype)
      return new if on is True else jnp.where(on, new, u)

    return jax.tree.map(leaf, updates, params, flags), state

  def init_fn(params):
    del params
    if callable(learning_rate):
      return DecoupledWeightDecayState(step=jnp.zeros([], jnp.int32))
    return optax.EmptyState()

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def chain(*transforms) -> optax.GradientTransformationExtraArgs:
  """``optax.chain`` whose stages see the updates in compute precision (at least float32).

  Each stage already computes in float32, but between stages ``optax.chain`` would round the
  updates back to float16/bfloat16, and with momentum the rounded rms step and the decayed
  buffer can nearly cancel. Here the gradients are cast up once on entry and the result back to
  the gradients' dtype once on exit; for float32/float64 gradients both casts are no-ops.
  """
  inner = optax.chain(*transforms)
  kernels = [getattr(t.update, "kernel", None) for t in transforms]
  stages = [optax.with_extra_args_support(t) for t in transforms]

  def fused(updates, state, params, extra_args):
    """optax.chain's update, with each run of consecutive stages that have a kernel advanced
    together leaf by leaf: over low-bit state, one stage's output then never has to be stored
    whole for the next (see ``_chunks``)."""
    new_state, i = [], 0
    while i < len(stages):
      j = i
      while j < len(stages) and kernels[j] is not None:
        j += 1
      if j > i and _chunks.has_codec(state[i:j]):
        updates, states = _run_kernels(kernels[i:j], updates, state[i:j])
        new_state.extend(states)
        i = j
      else:
        updates, s = stages[i].update(updates, state[i], params, **extra_args)
        new_state.append(s)
        i += 1
    return updates, tuple(new_state)

  def update_fn(updates, state, params=None, **extra_args):
    _checks.check_float_leaves("update", updates, "gradient")
    updates = jax.tree.map(jnp.asarray, updates)  # Python scalars (as optax accepts them)
    dtypes = jax.tree.map(lambda u: u.dtype, updates)
    wide = jax.tree.map(lambda u: u.astype(_storage.work_dtype(u.dtype)), updates)
    if any(k is not None for k in kernels) and isinstance(state, tuple) and _chunks.has_codec(state):
      out, state = fused(wide, state, params, extra_args)
    else:
      out, state = inner.update(wide, state, params, **extra_args)
    return jax.tree.map(lambda o, dt: o.astype(dt), out, dtypes), state

  return optax.GradientTransformationExtraArgs(inner.init, update_fn)


# ---------------------------------------------------------------------------------------------
# The public optimizers.


def rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-8,
    initial_scale: jax.typing.ArrayLike = 0.0,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: jax.typing.ArrayLike | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    *,
    weight_decay: jax.typing.ArrayLike | None = None,
    weight_decay_mask: Any = None,
    maximize: bool = False,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""RMSProp: a drop-in for :func:`optax.rmsprop` that never makes a NaN the maths does not.

  .. math::
    \nu_t &= \mathrm{decay}\,\nu_{t-1} + (1-\mathrm{decay})\,|g_t|^2 \\
    s_t &= \hat\nu_t \quad\text{or, centered,}\quad \hat\nu_t - |\hat\mu_t|^2 \\
    d_t &= -\mathrm{lr}_t\, g_t / \sqrt{s_t + \epsilon}
      \quad(\text{or } /(\sqrt{s_t}+\epsilon) \text{ without eps\_in\_sqrt}) \\
    b_t &= \mathrm{momentum}\, b_{t-1} + d_t \quad (\text{update } b_t,
      \text{ or } d_t + \mathrm{momentum}\,b_t \text{ with nesterov}) \\
    u_t &= b_t - \mathrm{lr}_t\,\mathrm{weight\_decay}\,p_{t-1}

  where :math:`\mu_t` is the average of :math:`g_t` (``centered``; :math:`s_t` is taken as 0 where
  rounding makes the denominator :math:`\le 0`), hats mean division by
  :math:`1-\mathrm{decay}^t` (``bias_correction``), :math:`\nu_0 =` ``initial_scale``,
  :math:`\epsilon =` ``eps``, and :math:`u_t` is added to the parameters (``optax.apply_updates``).
  With ``maximize`` the sign of :math:`d_t` flips (ascent); weight decay still shrinks.

  It is the chain ``scale_by_rms | scale_by_stddev -> scale_by_learning_rate -> trace | identity``,
  as :func:`optax.rmsprop`, with ``decoupled_weight_decay`` appended when ``weight_decay`` is set:
  the learning rate sits inside the momentum buffer. The state is optax's, stage for stage.

  Args:
    learning_rate: a number >= 0 or an optax schedule.
    decay: decay of the averages, in [0, 1].
    eps: added to the denominator, >= 0.
    initial_scale: the initial second moment, >= 0.
    eps_in_sqrt: ``eps`` inside the square root (default, as optax) or outside (PyTorch).
    centered: divide by the estimated standard deviation instead of the root mean square.
    momentum: ``None`` for no momentum buffer, else in [0, 1).
    nesterov: Nesterov momentum.
    bias_correction: correct the averages' bias towards their initial value.
    weight_decay: ``None`` or a decoupled decay rate >= 0.
    weight_decay_mask: which leaves decay: a tree of booleans (or a prefix of one), or a callable
      from params to one, as optax's masks.
    maximize: ascend instead of descend.
    state_dtype: ``None`` (buffers in the parameters' dtype, as optax), a float dtype for every
      buffer (e.g. ``jnp.float32`` for bfloat16 parameters, ``jnp.bfloat16`` for 2 bytes per
      parameter and buffer), ``"8bit"`` (blockwise codes, 1.016 bytes per parameter and buffer)
      or ``"4bit"`` (``nu`` in 4-bit codes, 0.53 bytes; ``mu`` and momentum 8-bit). Buffers
      narrower than the arithmetic (bfloat16, low-bit) are used in the step as stored, as PyTorch
      and Keras use low-precision state, with ``nu`` floored by a bound the exact value satisfies
      (``(1 - decay)|g|^2``; centered ``|mu|^2 + (1 - decay) / decay |g - mu|^2``); float16
      state, whose range ordinary gradients overflow, is used unrounded. Low-bit buffers of
      parameters with fewer than 4096 elements, or complex ones, stay in full precision (4-bit
      ones too where rows are shorter than 8 elements); centered,
      a low-bit ``nu`` buffer holds the variance ``nu - |mu|^2`` (whose codes would otherwise
      round it away); large leaves are updated in chunks so that the step's temporaries stay a
      fraction of a byte per parameter.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` whose state is :func:`optax.rmsprop`'s:
    ``(ScaleByRmsState(nu) | ScaleByRStdDevState(mu, nu) | ...WithCountState, EmptyState() |
    ScaleByScheduleState(count), EmptyState() | TraceState(trace))``, followed by
    ``EmptyState() | DecoupledWeightDecayState(step)`` when ``weight_decay`` is set.

  Example:
    >>> import jax, jax.numpy as jnp, optax, optax_rmsprop
    >>> f = lambda p: jnp.sum((p - 3.0) ** 2)
    >>> tx = optax_rmsprop.rmsprop(learning_rate=0.1)
    >>> p = jnp.zeros(2)
    >>> state = tx.init(p)
    >>> for _ in range(100):
    ...   u, state = tx.update(jax.grad(f)(p), state, p)
    ...   p = optax.apply_updates(p, u)
    >>> bool(jnp.allclose(p, 3.0, atol=0.1))
    True

  .. warning::
    Frameworks disagree on where ``eps`` goes and where the second moment starts: optax and
    Keras put eps inside the root, PyTorch outside (at ``v = 1e-4, eps = 0.01`` the steps differ
    fivefold); TF1 starts the second moment at 1, everyone else at 0; PyTorch keeps the
    learning rate outside the momentum buffer. Use :mod:`optax_rmsprop.compat` to reproduce a
    given framework exactly.

  References:
    Hinton, Srivastava, Swersky, `Lecture 6e of Neural Networks for Machine Learning
    <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.

    Graves, `Generating Sequences With Recurrent Neural Networks
    <https://arxiv.org/abs/1308.0850>`_, 2013.

    `optax.rmsprop <https://optax.readthedocs.io/en/latest/api/optimizers.html#optax.rmsprop>`_.
  """
  fn = "rmsprop"
  _checks.check_schedule_or_number(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _checks.check_range(fn, "initial_scale", initial_scale, 0.0, allow_none=False)
  _checks.check_range(fn, "momentum", momentum, 0.0, 1.0, high_open=True)
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0)
  _storage.resolve_state_dtype(fn, state_dtype)
  flags = dict(eps_in_sqrt=eps_in_sqrt, centered=centered, nesterov=nesterov, bias_correction=bias_correction)
  for name, flag in {**flags, "maximize": maximize}.items():
    _checks.check_flag(fn, name, flag)
  if weight_decay_mask is not None and weight_decay is None:
    raise ValueError(f"{fn}(weight_decay_mask=...): a mask needs weight_decay to be set")
  if weight_decay_mask is not None and not callable(weight_decay_mask):
    _check_mask_leaves(fn, "weight_decay_mask", weight_decay_mask)
  parts = [
      scale_by_rms(decay, eps, initial_scale, eps_in_sqrt, bias_correction, centered=centered, state_dtype=state_dtype),
      scale_by_learning_rate(learning_rate, flip_sign=not maximize),
  ]
  # optax's layout: always three stages, the identity where there is no momentum.
  parts.append(optax.identity() if momentum is None else trace(momentum, nesterov, state_dtype=state_dtype))
  if weight_decay is not None:
    parts.append(decoupled_weight_decay(learning_rate, weight_decay, weight_decay_mask))
  return chain(*parts)


def adagrad(
    learning_rate: optax.ScalarOrSchedule,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    eps: jax.typing.ArrayLike = 1e-7,
) -> optax.GradientTransformationExtraArgs:
  r"""AdaGrad, a drop-in for :func:`optax.adagrad`.

  .. math::
    \nu_t = \nu_{t-1} + |g_t|^2, \qquad u_t = -\mathrm{lr}_t\, g_t / \sqrt{\nu_t + \epsilon}

  with :math:`\nu_0 =` ``initial_accumulator_value`` and :math:`\epsilon =` ``eps``. Because
  :math:`\nu_t` only grows, the effective step :math:`\mathrm{lr}/\sqrt{\nu_t}` shrinks towards
  zero: the behaviour RMSProp's exponential average was introduced to avoid.

  Args:
    learning_rate: a number >= 0 or an optax schedule.
    initial_accumulator_value: :math:`\nu_0`, >= 0.
    eps: added inside the square root, >= 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp, optax_rmsprop
    >>> tx = optax_rmsprop.adagrad(learning_rate=1.0)
    >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # -2 / sqrt(0.1 + 4)
    -0.9877

  References:
    Duchi, Hazan, Singer, `Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
  """
  fn = "adagrad"
  _checks.check_schedule_or_number(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  return chain(scale_by_rss(initial_accumulator_value, eps), scale_by_learning_rate(learning_rate))
