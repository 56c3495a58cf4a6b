r"""Other frameworks' RMSProp and AdaGrad, with their own argument names, step for step.

Copy the optimizer call from PyTorch, Keras 3, TensorFlow 1 or a paper, change the module, and
get the same trajectory (to float rounding, tested live against ``torch.optim`` and Keras over
100+ float64 steps). Each constructor is a few lines chaining the core's building blocks
(:func:`~optax_rmsprop.scale_by_rms`, :func:`~optax_rmsprop.scale_by_rss`,
:func:`~optax_rmsprop.scale_by_learning_rate`, :func:`~optax_rmsprop.trace`,
:func:`~optax_rmsprop.decoupled_weight_decay`); what only ports need lives here:
:func:`coupled_weight_decay` (PyTorch's L2 term added to the gradient) and
:func:`clip_by_tensor_norm` (Keras's ``clipnorm``).

Where the frameworks differ (and what each constructor reproduces):

============  ===========================  ==================  ======================  ==================
framework     eps                          initial 2nd moment  momentum buffer holds   weight decay
============  ===========================  ==================  ======================  ==================
PyTorch       outside: g/(sqrt(v)+eps)     0                   g/d (lr outside)        coupled L2: g+wd*p
Keras 3       inside: g/sqrt(v+eps)        0                   lr*g/d (lr inside)      decoupled, pre-step
TF1           inside                       **1**               lr*g/d (lr inside)      none
Graves 2013   inside                       0                   lr*g/d (lr inside)      none
DQN 2015      inside                       0                   no momentum             none
============  ===========================  ==================  ======================  ==================

The only intended differences from the sources are where theirs make a NaN the maths does not:
the centered variance ``v - m^2``, which rounding can make slightly negative, is taken as 0 where
it would make the denominator ``<= 0`` (theirs: NaN), and a zero denominator (``eps=0`` with a zero gradient) gives a zero step instead
of ``0/0``. Complex parameters: the PyTorch ports treat the real and imaginary parts as two real
parameters, as PyTorch does; the other ports keep the core's one real second moment ``|g|^2``.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_rmsprop import _checks, _rmsprop, _storage

__all__ = [
    "clip_by_tensor_norm",
    "coupled_weight_decay",
    "dqn_rmsprop",
    "graves_rmsprop",
    "keras_adagrad",
    "keras_rmsprop",
    "tf1_rmsprop",
    "torch_adagrad",
    "torch_rmsprop",
]

def _present(value: Any) -> bool:
  """Whether an optional stage is in the chain: absent for ``None`` or a Python/NumPy number 0.

  Arrays (``inject_hyperparams`` hands numeric hyperparameters over as arrays, traced in
  ``update``) always keep the stage, so ``init`` and ``update`` build the same chain.
  """
  if value is None:
    return False
  if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
    return value != 0
  return True


def _lr_inside_momentum(rms, learning_rate: Any, momentum: Any = None, state_dtype: Any = None) -> list:
  """The Keras/TF1/papers order: the rms scaling, then the learning rate, then momentum (so the
  learning rate sits inside the momentum buffer; PyTorch's order differs, see torch_rmsprop)."""
  parts = [rms, _rmsprop.scale_by_learning_rate(learning_rate)]
  if _present(momentum):
    parts.append(_rmsprop.trace(momentum, state_dtype=state_dtype))
  return parts


def _check_lr(fn: str, name: str, value: Any, hint: str = "") -> None:
  _checks.check_range(fn, name, value, 0.0, hint=hint, allow_none=False)


def _check_momentum(fn: str, value: Any) -> None:
  # A momentum of 1 or more never forgets a step and diverges; the core's trace() refuses it.
  _checks.check_range(fn, "momentum", value, 0.0, 1.0, high_open=True, allow_none=False)


# ---------------------------------------------------------------------------------------------
# Building blocks only the ports need.


def coupled_weight_decay(weight_decay: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Coupled L2 weight decay: :math:`g_t \leftarrow g_t + \mathrm{weight\_decay}\,p_{t-1}`.

  The L2 penalty's gradient added to the gradient before anything else, as PyTorch's
  ``weight_decay`` does (it then flows through the second moment and the momentum, unlike
  :func:`~optax_rmsprop.decoupled_weight_decay`). Like :func:`optax.add_decayed_weights`, but the
  arithmetic runs in at least float32 and the updates keep their dtype when ``weight_decay``
  arrives as an array (``inject_hyperparams``).

  Args:
    weight_decay: the L2 coefficient, >= 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with an empty state; ``update`` needs
    ``params``.
  """
  fn = "coupled_weight_decay"
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0, allow_none=False)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    params = _checks.params_for_decay(fn, params, updates)

    def leaf(g, p):
      cdt, w = _storage.compute_dtype(g.dtype), _storage.work_dtype(g.dtype)
      wd = _storage.hyper(weight_decay, cdt).astype(w)
      return (g.astype(w) + wd * p.astype(w)).astype(g.dtype)

    return jax.tree.map(leaf, updates, params), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


def clip_by_tensor_norm(max_norm: jax.typing.ArrayLike) -> optax.GradientTransformationExtraArgs:
  r"""Clips each tensor by its own L2 norm: :math:`g \leftarrow g\,c/\max(\lVert g\rVert_2, c)`.

  Keras's ``clipnorm`` (every gradient tensor rescaled separately so its norm is at most
  :math:`c =` ``max_norm``). :func:`optax.clip_by_global_norm` uses one norm over all tensors
  (Keras's ``global_clipnorm``) and :func:`optax.clip_by_block_rms` the root *mean* square, so
  neither is this. A zero tensor stays zero.

  Args:
    max_norm: the largest norm a tensor keeps, > 0.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs` with an empty state.
  """
  fn = "clip_by_tensor_norm"
  _checks.check_range(fn, "max_norm", max_norm, 0.0, low_open=True, allow_none=False)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args

    def leaf(g):
      cdt, w = _storage.compute_dtype(g.dtype), _storage.work_dtype(g.dtype)
      gc = g.astype(w)
      sq = jnp.real(gc * jnp.conj(gc)) if jnp.iscomplexobj(gc) else gc * gc
      norm = jnp.sqrt(jnp.sum(sq))
      c = _storage.hyper(max_norm, cdt)
      return (gc * c.astype(w) / jnp.maximum(norm, c).astype(w)).astype(g.dtype)

    return jax.tree.map(leaf, updates), state

  return optax.GradientTransformationExtraArgs(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------------------------
# PyTorch.


def _is_complex(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.complexfloating)


def _as_real(x, axis: int = -1):
  """A complex array as a real one with an axis of 2 (real, imaginary) at ``axis`` (0 or -1; -1 is
  ``view_as_real``)."""
  if not _is_complex(x):
    return x
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct((*x.shape, 2) if axis == -1 else (2, *x.shape), _storage.real_dtype(x.dtype))
  return jnp.stack([jnp.real(x), jnp.imag(x)], axis=axis)


def _complex_as_real_pairs(inner: optax.GradientTransformation, spec) -> optax.GradientTransformationExtraArgs:
  """Runs ``inner`` on complex leaves viewed as pairs of reals, as PyTorch's optimizers do.

  PyTorch keeps a separate second moment for the real and the imaginary part of a complex
  parameter (``torch.view_as_real``); the core keeps one real :math:`|g|^2`. Real leaves pass
  through untouched; complex leaves' buffers get a trailing axis of 2, or a leading one when
  ``spec`` (the resolved ``state_dtype``) is a codec: its blocks run along the last axis, and a
  trailing pair would make every block one element's two parts (a scale per pair, 3 bytes per real).
  """
  axis = 0 if _storage.is_codec(spec) else -1

  def init_fn(params):
    return inner.init(jax.tree.map(lambda p: _as_real(p, axis), params))

  def update_fn(updates, state, params=None, **extra_args):
    real_params = None if params is None else jax.tree.map(lambda p: _as_real(p, axis), params)
    new, state = inner.update(jax.tree.map(lambda u: _as_real(u, axis), updates), state, real_params, **extra_args)
    part = lambda n, i: jnp.take(n, i, axis=axis)
    back = lambda n, u: jax.lax.complex(part(n, 0), part(n, 1)) if _is_complex(u) else n
    return jax.tree.map(back, new, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def torch_rmsprop(
    lr: optax.ScalarOrSchedule = 0.01,
    alpha: jax.typing.ArrayLike = 0.99,
    eps: jax.typing.ArrayLike = 1e-08,
    weight_decay: jax.typing.ArrayLike = 0,
    momentum: jax.typing.ArrayLike = 0,
    centered: bool = False,
    maximize: bool = False,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``torch.optim.RMSprop``, step for step, with its argument names and defaults.

  .. math::
    g_t &\leftarrow \pm g_t + \mathrm{weight\_decay}\;p_{t-1}
      \quad(-\text{ with maximize}) \\
    v_t &= \alpha\, v_{t-1} + (1-\alpha)\, g_t^2, \qquad
    m_t = \alpha\, m_{t-1} + (1-\alpha)\, g_t \;\text{(centered)} \\
    d_t &= \sqrt{v_t} + \mathrm{eps} \quad\text{or, centered,}\quad
      \sqrt{\max(v_t - m_t^2, 0)} + \mathrm{eps} \\
    b_t &= \mathrm{momentum}\; b_{t-1} + g_t / d_t, \qquad
    p_t = p_{t-1} - \mathrm{lr}_t\, b_t

  with :math:`\alpha =` ``alpha``, all buffers starting at 0, and without momentum
  :math:`p_t = p_{t-1} - \mathrm{lr}_t\, g_t/d_t`. It is the chain
  ``[negate] -> coupled_weight_decay -> scale_by_rms(eps_in_sqrt=False) -> trace -> scale_by_learning_rate``.

  Args:
    lr: the learning rate, >= 0, or an optax schedule evaluated at the update count (0 for
      the first update), the equivalent of writing ``param_group["lr"]`` before each step.
    alpha: the second moment's decay, in [0, 1].
    eps: added to the root (outside it), >= 0.
    weight_decay: coupled L2 coefficient, >= 0; 0 leaves it out of the chain.
    momentum: in [0, 1); 0 leaves the momentum buffer out.
    centered: divide by the estimated standard deviation.
    maximize: ascend (the gradient is negated before the weight decay is added, as PyTorch).
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype, as PyTorch), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).
      Complex parameters' buffers are real pairs here, so a real ``state_dtype`` holds them too.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; pass ``params`` to ``update`` when
    ``weight_decay`` is set.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_rmsprop import compat
    >>> tx = compat.torch_rmsprop(lr=0.01, momentum=0.9)  # torch.optim.RMSprop(p, lr=0.01, momentum=0.9)
    >>> p = jnp.array([1.0, 2.0])
    >>> u, state = tx.update(2 * p, tx.init(p), p)
    >>> [round(float(x), 4) for x in u]  # -lr * g / (sqrt(0.01 g^2) + eps) = -0.1
    [-0.1, -0.1]

  .. warning::
    PyTorch puts ``eps`` outside the square root and the learning rate *outside* the momentum
    buffer: changing ``lr`` rescales the whole buffer at once, where optax, Keras and TF1
    (learning rate inside) let old steps keep their old learning rate. Its momentum does not
    damp (``b = momentum * b + step``). The centered variance is clamped at 0 here (eps is outside
    the root); PyTorch's can go NaN. PyTorch accepts ``momentum >= 1`` (a divergent setting); this port refuses it.
    As PyTorch, complex parameters are optimized as pairs of reals (separate second moments for
    the real and imaginary parts; their buffers have a trailing axis of 2, a leading one with
    ``state_dtype="8bit"``, whose blocks run along the last axis).

  References:
    `torch.optim.RMSprop <https://docs.pytorch.org/docs/stable/generated/torch.optim.RMSprop.html>`_
    (`source <https://github.com/pytorch/pytorch/blob/main/torch/optim/rmsprop.py>`_).

    Hinton, Srivastava, Swersky, `Lecture 6e of Neural Networks for Machine Learning
    <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.
  """
  fn = "torch_rmsprop"
  _check_lr(fn, "lr", lr, hint=" (use maximize=True to ascend)")
  _checks.check_flag(fn, "centered", centered)
  _checks.check_flag(fn, "maximize", maximize)
  _checks.check_range(fn, "alpha", alpha, 0.0, 1.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0, allow_none=False)
  _check_momentum(fn, momentum)
  spec = _storage.resolve_state_dtype(fn, state_dtype)
  parts = []
  if maximize:
    parts.append(optax.scale(-1.0))
  if _present(weight_decay):
    parts.append(coupled_weight_decay(weight_decay))
  parts.append(_rmsprop.scale_by_rms(alpha, eps, 0.0, eps_in_sqrt=False, centered=centered, state_dtype=state_dtype))
  if _present(momentum):
    parts.append(_rmsprop.trace(momentum, state_dtype=state_dtype))  # before the learning rate: lr outside the buffer
  parts.append(_rmsprop.scale_by_learning_rate(lr))
  return _complex_as_real_pairs(_rmsprop.chain(*parts), spec)


def _torch_adagrad_lr(lr: Any, lr_decay: Any):
  """PyTorch's ``clr = lr / (1 + (t - 1) * lr_decay)`` as a schedule of the update count ``t - 1``."""
  if not _present(lr_decay):
    return lr

  def schedule(count):
    c = count.astype(jnp.result_type(float))
    base = lr(count) if callable(lr) else lr
    return _storage.hyper(base, c.dtype) / (1 + _storage.hyper(lr_decay, c.dtype) * c)

  return schedule


def torch_adagrad(
    lr: optax.ScalarOrSchedule = 0.01,
    lr_decay: jax.typing.ArrayLike = 0,
    weight_decay: jax.typing.ArrayLike = 0,
    initial_accumulator_value: jax.typing.ArrayLike = 0,
    eps: jax.typing.ArrayLike = 1e-10,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``torch.optim.Adagrad``, step for step, with its argument names and defaults.

  .. math::
    g_t &\leftarrow g_t + \mathrm{weight\_decay}\;p_{t-1}, \qquad
    s_t = s_{t-1} + g_t^2 \\
    p_t &= p_{t-1} - \frac{\mathrm{lr}_t}{1 + (t-1)\,\mathrm{lr\_decay}}\;
      \frac{g_t}{\sqrt{s_t} + \mathrm{eps}}

  with :math:`s_0 =` ``initial_accumulator_value`` and :math:`t` counting updates from 1. It is
  the chain ``coupled_weight_decay -> scale_by_rss(eps_in_sqrt=False) -> scale_by_learning_rate``
  with the decayed rate as a schedule.

  Args:
    lr: the learning rate, >= 0, or an optax schedule evaluated at the update count (0 first);
      ``lr_decay`` divides it further.
    lr_decay: the rate's hyperbolic decay, >= 0.
    weight_decay: coupled L2 coefficient, >= 0; 0 leaves it out of the chain.
    initial_accumulator_value: :math:`s_0`, >= 0.
    eps: added to the root (outside it), >= 0.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype, as PyTorch), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).
      Complex parameters' buffers are real pairs here, so a real ``state_dtype`` holds them too.

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; pass ``params`` to ``update`` when
    ``weight_decay`` is set.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_rmsprop import compat
    >>> tx = compat.torch_adagrad(lr=0.5)  # torch.optim.Adagrad(p, lr=0.5)
    >>> p = jnp.array([3.0])
    >>> u, state = tx.update(jnp.array([-4.0]), tx.init(p), p)
    >>> round(float(u[0]), 4)  # -0.5 * -4 / (sqrt(16) + 1e-10)
    0.5

  .. warning::
    PyTorch's AdaGrad starts the accumulator at 0 and puts ``eps`` (1e-10) outside the root;
    optax and Keras start it at 0.1 and put ``eps`` inside. A zero denominator (``eps=0`` and
    no gradient yet) gives a zero step here, NaN in PyTorch. As PyTorch, complex parameters are
    optimized as pairs of reals.

  References:
    `torch.optim.Adagrad <https://docs.pytorch.org/docs/stable/generated/torch.optim.Adagrad.html>`_
    (`source <https://github.com/pytorch/pytorch/blob/main/torch/optim/adagrad.py>`_).

    Duchi, Hazan, Singer, `Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
  """
  fn = "torch_adagrad"
  _check_lr(fn, "lr", lr)
  _checks.check_range(fn, "lr_decay", lr_decay, 0.0, allow_none=False)
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0, allow_none=False)
  _checks.check_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  spec = _storage.resolve_state_dtype(fn, state_dtype)
  parts = [coupled_weight_decay(weight_decay)] if _present(weight_decay) else []
  parts.append(_rmsprop.scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt=False, state_dtype=state_dtype))
  parts.append(_rmsprop.scale_by_learning_rate(_torch_adagrad_lr(lr, lr_decay)))
  return _complex_as_real_pairs(_rmsprop.chain(*parts), spec)


# ---------------------------------------------------------------------------------------------
# Keras 3.


def _keras_clipping(fn: str, clipnorm: Any, clipvalue: Any, global_clipnorm: Any) -> list:
  """Keras's gradient clipping stage (at most one of the three may be set, as Keras requires)."""
  for name, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm)):
    _checks.check_range(fn, name, value, 0.0, low_open=True)
  given = [n for n, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue), ("global_clipnorm", global_clipnorm))
           if v is not None]
  if len(given) > 1:
    raise ValueError(
        f"{fn}({'=..., '.join(given)}=...): only one of clipnorm, clipvalue and global_clipnorm can be set"
    )
  if clipnorm is not None:
    return [clip_by_tensor_norm(clipnorm)]
  if global_clipnorm is not None:
    return [optax.clip_by_global_norm(global_clipnorm)]
  if clipvalue is not None:
    return [optax.clip(clipvalue)]
  return []


def keras_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    rho: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-07,
    centered: bool = False,
    weight_decay: jax.typing.ArrayLike | None = None,
    clipnorm: jax.typing.ArrayLike | None = None,
    clipvalue: jax.typing.ArrayLike | None = None,
    global_clipnorm: jax.typing.ArrayLike | None = None,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``keras.optimizers.RMSprop`` (Keras 3), step for step, with its argument names and defaults.

  .. math::
    g_t &\leftarrow \mathrm{clip}(g_t) \quad(\text{clipnorm, clipvalue or global\_clipnorm}) \\
    v_t &= \rho\, v_{t-1} + (1-\rho)\, g_t^2, \qquad
    m_t = \rho\, m_{t-1} + (1-\rho)\, g_t \;\text{(centered)} \\
    \Delta_t &= \mathrm{lr}_t\, g_t / \sqrt{v_t + \epsilon}
      \quad\text{or, centered,}\quad \mathrm{lr}_t\, g_t / \sqrt{v_t - m_t^2 + \epsilon} \\
    b_t &= \mathrm{momentum}\; b_{t-1} + \Delta_t, \qquad
    p_t = p_{t-1} - \mathrm{lr}_t\,\mathrm{weight\_decay}\;p_{t-1} - b_t

  with :math:`\rho =` ``rho``, :math:`\epsilon =` ``epsilon``, buffers starting at 0 and,
  without momentum, :math:`b_t = \Delta_t`. Keras's order: clip the gradients, shrink the
  parameters (decoupled decay on their value before the step), then step. It is the chain
  ``clip -> scale_by_rms -> scale_by_learning_rate -> trace -> decoupled_weight_decay``.

  Args:
    learning_rate: >= 0, or an optax schedule evaluated at the update count (0 first), as a
      ``keras.optimizers.schedules.LearningRateSchedule`` is evaluated at ``iterations``.
    rho: the averages' decay, in [0, 1].
    momentum: in [0, 1); 0 leaves the momentum buffer out.
    epsilon: added inside the root, >= 0.
    centered: divide by the estimated standard deviation.
    weight_decay: ``None`` or a decoupled decay rate >= 0 (multiplied by the learning rate).
    clipnorm: clip each gradient tensor to this L2 norm (> 0).
    clipvalue: clip each gradient element to [-clipvalue, clipvalue] (> 0).
    global_clipnorm: clip all gradients together to this global L2 norm (> 0). At most one of
      the three clipping arguments may be set.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype, as Keras), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`; pass ``params`` to ``update`` when
    ``weight_decay`` is set.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from optax_rmsprop import compat
    >>> tx = compat.keras_rmsprop(learning_rate=0.5)  # keras.optimizers.RMSprop(learning_rate=0.5)
    >>> p = jnp.array([1.0, 2.0, 3.0, 4.0])
    >>> u, _ = tx.update(jnp.array([1.0, 6.0, 7.0, 2.0]), tx.init(p), p)
    >>> [round(float(x), 4) for x in optax.apply_updates(p, u)]  # Keras's rmsprop_test.py
    [-0.5811, 0.4189, 1.4189, 2.4189]

  .. warning::
    Keras puts ``epsilon`` *inside* the square root (its docstring suggests otherwise), keeps
    the learning rate inside the momentum buffer and decays weights decoupled from the
    gradient, on the value before the step. Keras stores a constant learning rate in a float32
    variable: ``0.001`` becomes ``0.0010000000474974513``; pass ``float(np.float32(lr))`` to
    reproduce a float64 Keras model to the last bit. A centered variance rounded below
    ``-epsilon`` is taken as 0 here; Keras's goes NaN. Keras ignores a ``clipnorm`` etc. of 0 or less; this port
    refuses it.

  References:
    `keras.optimizers.RMSprop <https://keras.io/api/optimizers/rmsprop/>`_ (`source
    <https://github.com/keras-team/keras/blob/master/keras/src/optimizers/rmsprop.py>`_, clipping
    and weight decay in `base_optimizer.py
    <https://github.com/keras-team/keras/blob/master/keras/src/optimizers/base_optimizer.py>`_).

    Hinton, Srivastava, Swersky, `Lecture 6e of Neural Networks for Machine Learning
    <https://www.cs.toronto.edu/~tijmen/csc321/slides/lecture_slides_lec6.pdf>`_, 2012.
  """
  fn = "keras_rmsprop"
  _check_lr(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "rho", rho, 0.0, 1.0, allow_none=False)
  _checks.check_flag(fn, "centered", centered)
  _check_momentum(fn, momentum)
  _checks.check_range(fn, "epsilon", epsilon, 0.0, allow_none=False)
  _checks.check_range(fn, "weight_decay", weight_decay, 0.0)
  _storage.resolve_state_dtype(fn, state_dtype)
  parts = _keras_clipping(fn, clipnorm, clipvalue, global_clipnorm)
  rms = _rmsprop.scale_by_rms(rho, epsilon, 0.0, eps_in_sqrt=True, centered=centered, state_dtype=state_dtype)
  parts += _lr_inside_momentum(rms, learning_rate, momentum, state_dtype)
  if weight_decay is not None:
    parts.append(_rmsprop.decoupled_weight_decay(learning_rate, weight_decay))
  return _rmsprop.chain(*parts)


def keras_adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.001,
    initial_accumulator_value: jax.typing.ArrayLike = 0.1,
    epsilon: jax.typing.ArrayLike = 1e-07,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``keras.optimizers.Adagrad`` (Keras 3), step for step, with its argument names and defaults.

  .. math::
    s_t = s_{t-1} + g_t^2, \qquad p_t = p_{t-1} - \mathrm{lr}_t\, g_t / \sqrt{s_t + \epsilon}

  with :math:`s_0 =` ``initial_accumulator_value`` and :math:`\epsilon =` ``epsilon`` (inside
  the root). It is the chain ``scale_by_rss -> scale_by_learning_rate``.

  Args:
    learning_rate: >= 0, or an optax schedule evaluated at the update count (0 first).
    initial_accumulator_value: :math:`s_0`, >= 0.
    epsilon: added inside the root, >= 0.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype, as Keras), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_rmsprop import compat
    >>> tx = compat.keras_adagrad(learning_rate=1.0)
    >>> u, _ = tx.update(jnp.array([2.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # -2 / sqrt(0.1 + 4 + 1e-7)
    -0.9877

  .. warning::
    Keras's AdaGrad starts the accumulator at 0.1 and puts ``epsilon`` inside the root;
    PyTorch's starts at 0 with ``eps`` outside (:func:`torch_adagrad`). Keras keeps a constant
    learning rate in a float32 variable (see :func:`keras_rmsprop`). A zero denominator gives
    a zero step here, NaN in Keras.

  References:
    `keras.optimizers.Adagrad <https://keras.io/api/optimizers/adagrad/>`_ (`source
    <https://github.com/keras-team/keras/blob/master/keras/src/optimizers/adagrad.py>`_).

    Duchi, Hazan, Singer, `Adaptive Subgradient Methods for Online Learning and Stochastic
    Optimization <https://jmlr.org/papers/v12/duchi11a.html>`_, JMLR 2011.
  """
  fn = "keras_adagrad"
  _check_lr(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "initial_accumulator_value", initial_accumulator_value, 0.0, allow_none=False)
  _checks.check_range(fn, "epsilon", epsilon, 0.0, allow_none=False)
  _storage.resolve_state_dtype(fn, state_dtype)
  return _rmsprop.chain(
      _rmsprop.scale_by_rss(initial_accumulator_value, epsilon, eps_in_sqrt=True, state_dtype=state_dtype),
      _rmsprop.scale_by_learning_rate(learning_rate),
  )


# ---------------------------------------------------------------------------------------------
# TensorFlow 1 and the papers.


def tf1_rmsprop(
    learning_rate: optax.ScalarOrSchedule,
    decay: jax.typing.ArrayLike = 0.9,
    momentum: jax.typing.ArrayLike = 0.0,
    epsilon: jax.typing.ArrayLike = 1e-10,
    centered: bool = False,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""``tf.compat.v1.train.RMSPropOptimizer``, step for step, with its argument names and defaults.

  .. math::
    \mathrm{ms}_t &= \mathrm{ms}_{t-1} + (g_t^2 - \mathrm{ms}_{t-1})(1-\mathrm{decay}), \qquad
    \mathrm{mg}_t = \mathrm{mg}_{t-1} + (g_t - \mathrm{mg}_{t-1})(1-\mathrm{decay})
      \;\text{(centered)} \\
    \mathrm{mom}_t &= \mathrm{momentum}\;\mathrm{mom}_{t-1}
      + \mathrm{lr}_t\, g_t / \sqrt{\mathrm{ms}_t\,[-\,\mathrm{mg}_t^2]_{\ge 0} + \epsilon},
    \qquad p_t = p_{t-1} - \mathrm{mom}_t

  with :math:`\mathrm{ms}_0 = 1` (not 0), :math:`\mathrm{mg}_0 = 0` and :math:`\epsilon =`
  ``epsilon``. It is the chain ``scale_by_rms(initial_scale=1) -> scale_by_learning_rate -> trace``.

  Args:
    learning_rate: >= 0 (required, as in TF1), or an optax schedule evaluated at the update
      count (0 first).
    decay: the averages' decay, in [0, 1].
    momentum: in [0, 1); 0 leaves the momentum buffer out (TF1 keeps one that equals the step).
    epsilon: added inside the root, >= 0.
    centered: divide by the estimated standard deviation.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype, as TF1), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_rmsprop import compat
    >>> tx = compat.tf1_rmsprop(learning_rate=1.0)
    >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 4)  # ms = 1 + (1 - 1) * 0.1 = 1, so the first step is -lr * g
    -1.0

  .. warning::
    TF1 starts the second moment at **1**, so its first steps are about
    :math:`\sqrt{1-\mathrm{decay}}` times smaller than an RMSProp starting at 0 (optax, Keras,
    PyTorch) for unit gradients and much larger for tiny ones; ``epsilon`` goes inside the root
    and the learning rate inside the momentum buffer. A centered variance rounded below
    ``-epsilon`` is taken as 0 here; TF1's goes NaN.

  References:
    `tf.compat.v1.train.RMSPropOptimizer
    <https://www.tensorflow.org/api_docs/python/tf/compat/v1/train/RMSPropOptimizer>`_ (`source
    <https://github.com/tensorflow/tensorflow/blob/master/tensorflow/python/training/rmsprop.py>`_,
    kernels ``ApplyRMSProp``/``ApplyCenteredRMSProp`` in `training_ops.cc
    <https://github.com/tensorflow/tensorflow/blob/master/tensorflow/core/kernels/training_ops.cc>`_).
  """
  fn = "tf1_rmsprop"
  _check_lr(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, allow_none=False)
  _check_momentum(fn, momentum)
  _checks.check_range(fn, "epsilon", epsilon, 0.0, allow_none=False)
  _checks.check_flag(fn, "centered", centered)
  _storage.resolve_state_dtype(fn, state_dtype)
  rms = _rmsprop.scale_by_rms(decay, epsilon, 1.0, eps_in_sqrt=True, centered=centered, state_dtype=state_dtype)  # ms starts at 1
  return _rmsprop.chain(*_lr_inside_momentum(rms, learning_rate, momentum, state_dtype))


def graves_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    decay: jax.typing.ArrayLike = 0.95,
    momentum: jax.typing.ArrayLike = 0.9,
    eps: jax.typing.ArrayLike = 1e-4,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Graves's centered RMSProp with momentum (2013, eqs. 38-41), with the paper's constants.

  .. math::
    n_t &= \aleph\, n_{t-1} + (1-\aleph)\, g_t^2, \qquad
    \bar g_t = \aleph\, \bar g_{t-1} + (1-\aleph)\, g_t \\
    \Delta_t &= \beth\, \Delta_{t-1} - \gimel\, g_t / \sqrt{n_t - \bar g_t^2 + \daleth},
    \qquad p_t = p_{t-1} + \Delta_t

  with :math:`\aleph =` ``decay`` (0.95), :math:`\beth =` ``momentum`` (0.9),
  :math:`\gimel =` ``learning_rate`` (1e-4), :math:`\daleth =` ``eps`` (1e-4), averages
  starting at 0. It is the chain
  ``scale_by_rms(centered=True) -> scale_by_learning_rate -> trace``.

  Args:
    learning_rate: :math:`\gimel`, >= 0, or an optax schedule evaluated at the update count.
    decay: :math:`\aleph`, in [0, 1].
    momentum: :math:`\beth`, in [0, 1); 0 leaves the momentum buffer out.
    eps: :math:`\daleth`, added inside the root, >= 0.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_rmsprop import compat
    >>> tx = compat.graves_rmsprop(learning_rate=0.1)
    >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 3)  # -0.1 / sqrt(0.05 - 0.05^2 + 1e-4)
    -0.458

  .. warning::
    Centered, with ``eps`` inside the root and the learning rate inside the momentum buffer (as
    TF1 and Keras, unlike PyTorch). A variance :math:`n - \bar g^2` rounded below
    :math:`-\daleth` is taken as 0 here; a literal transcription goes NaN.

  References:
    Graves, `Generating Sequences With Recurrent Neural Networks
    <https://arxiv.org/abs/1308.0850>`_, 2013, eqs. 38-41.
  """
  fn = "graves_rmsprop"
  _check_lr(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, allow_none=False)
  _check_momentum(fn, momentum)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _storage.resolve_state_dtype(fn, state_dtype)
  rms = _rmsprop.scale_by_rms(decay, eps, 0.0, eps_in_sqrt=True, centered=True, state_dtype=state_dtype)
  return _rmsprop.chain(*_lr_inside_momentum(rms, learning_rate, momentum, state_dtype))


def dqn_rmsprop(
    learning_rate: optax.ScalarOrSchedule = 2.5e-4,
    decay: jax.typing.ArrayLike = 0.95,
    eps: jax.typing.ArrayLike = 0.01,
    *,
    state_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
  r"""The centered RMSProp of DQN (Mnih et al. 2015), with its constants.

  .. math::
    g^{(2)}_t &= \mathrm{decay}\, g^{(2)}_{t-1} + (1-\mathrm{decay})\, g_t^2, \qquad
    g^{(1)}_t = \mathrm{decay}\, g^{(1)}_{t-1} + (1-\mathrm{decay})\, g_t \\
    p_t &= p_{t-1} - \mathrm{lr}_t\, g_t / \sqrt{g^{(2)}_t - (g^{(1)}_t)^2 + \mathrm{eps}}

  with both averages starting at 0, no momentum. It is the chain
  ``scale_by_rms(centered=True) -> scale_by_learning_rate``.

  Args:
    learning_rate: >= 0 (2.5e-4), or an optax schedule evaluated at the update count (DQN
      anneals it linearly).
    decay: both averages' decay (0.95), in [0, 1].
    eps: added inside the root (0.01), >= 0.
    state_dtype: the buffers' storage, as in :func:`~optax_rmsprop.rmsprop`: ``None`` (the
      parameters' dtype), a float dtype (e.g. ``jnp.bfloat16``), ``"8bit"`` or ``"4bit"``
      (blockwise codes, about 1 byte, or half a byte for ``nu``, per element and buffer).

  Returns:
    An :class:`optax.GradientTransformationExtraArgs`.

  Example:
    >>> import jax.numpy as jnp
    >>> from optax_rmsprop import compat
    >>> tx = compat.dqn_rmsprop(learning_rate=0.1)
    >>> u, _ = tx.update(jnp.array([1.0]), tx.init(jnp.zeros(1)))
    >>> round(float(u[0]), 3)  # -0.1 / sqrt(0.05 - 0.05^2 + 0.01)
    -0.417

  .. warning::
    DQN's large ``eps`` sits *inside* the root: at a variance of 1e-4 and eps 0.01,
    :math:`1/\sqrt{v+\epsilon} \approx 9.95` where PyTorch's placement would give
    :math:`1/(\sqrt{v}+\epsilon) = 50`, so porting DQN to ``torch.optim.RMSprop(eps=0.01)``
    changes the step fivefold. A centered variance rounded below ``-eps`` is taken as 0 here;
    the original goes NaN.

  References:
    Mnih et al., `Human-level control through deep reinforcement learning
    <https://doi.org/10.1038/nature14236>`_, Nature 2015 (`code
    <https://github.com/google-deepmind/dqn/blob/master/dqn/NeuralQLearner.lua>`_).
  """
  fn = "dqn_rmsprop"
  _check_lr(fn, "learning_rate", learning_rate)
  _checks.check_range(fn, "decay", decay, 0.0, 1.0, allow_none=False)
  _checks.check_range(fn, "eps", eps, 0.0, allow_none=False)
  _storage.resolve_state_dtype(fn, state_dtype)
  rms = _rmsprop.scale_by_rms(decay, eps, 0.0, eps_in_sqrt=True, centered=True, state_dtype=state_dtype)
  return _rmsprop.chain(*_lr_inside_momentum(rms, learning_rate, state_dtype=state_dtype))

