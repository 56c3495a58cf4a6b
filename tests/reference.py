"""Independent NumPy transcriptions of the published update rules, for tests and notebooks.

Written from the rules as stated (optax 0.2.8's ``rmsprop``/``adagrad`` and the differences
``optax_rmsprop`` documents), element by element, with no JAX and no code shared with the package.
Parameters are a list of NumPy arrays (real or complex); a gradient function maps that list to a
list of gradients. All arithmetic runs in ``dtype`` (float64 by default; complex parameters use
the matching complex type), so a low-precision step can be reproduced in float32 as the package
promises to compute it.

Conventions (optax): ``nu`` starts at ``initial_scale``, ``mu`` (centered) and the momentum buffer
at 0; ``t`` counts updates from 1; a schedule is evaluated at ``t - 1``; the learning rate sits
inside the momentum buffer; an update is *added* to the parameters.

Documented differences from optax, each switchable so a test can also reproduce plain optax:

* ``clamp_variance``: the centered variance ``nu_hat - |mu_hat|^2`` (negative through rounding) is
  taken as 0 where it would make the denominator ``<= 0``: ``var + eps <= 0`` with eps inside the
  root, ``var < 0`` with eps outside (optax: NaN or inf); elsewhere it is used as it is;
* ``zero_safe``: a zero denominator gives a zero update (optax: ``0 * inf = NaN``);
* ``weight_decay``: decoupled, ``u -= lr * wd * p`` on the parameters before the step, after
  momentum, optionally masked (list of bools or a callable from params to one);
* ``maximize``: flips the sign of the RMS step, not of the decay;
* buffers are stored clamped to the finite range of their storage dtype (``state_dtype``, by
  default ``dtype``), so one overflowing square cannot leave an infinite second moment;
* a storage dtype narrower than ``dtype`` other than float16 (bfloat16): the step reads the buffers as
  stored (rounded), as PyTorch and Keras do with low-precision state, with ``nu`` floored by a
  bound the exact value satisfies: ``(1 - decay)|g|^2`` or, centered, ``|mu|^2 + (1 - decay) /
  decay * |g - mu|^2`` (``mu`` as read back; 0 for the ratio at decay 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def _complex_of(dtype) -> np.dtype:
  return np.dtype(np.complex64) if np.dtype(dtype).itemsize <= 4 else np.dtype(np.complex128)


def _work(x, dtype) -> np.ndarray:
  """``x`` as an array in ``dtype``, or its complex counterpart for complex ``x``."""
  x = np.asarray(x)
  return x.astype(_complex_of(dtype) if np.iscomplexobj(x) else dtype)


def _abs_sq(x) -> np.ndarray:
  return (x.real * x.real + x.imag * x.imag) if np.iscomplexobj(x) else x * x


def _finfo_max(dtype) -> float:
  try:
    return float(np.finfo(dtype).max)
  except ValueError:  # bfloat16 (an ml_dtypes type, which NumPy's finfo does not know)
    import ml_dtypes

    return float(ml_dtypes.finfo(dtype).max)


def _finite_clamp(x, dtype) -> np.ndarray:
  """Clamp to the finite range of ``dtype`` (real and imaginary parts separately); NaN stays NaN."""
  real = x.real.dtype
  big = min(_finfo_max(dtype), _finfo_max(real))
  if np.iscomplexobj(x):
    return np.clip(x.real, -big, big) + 1j * np.clip(x.imag, -big, big)
  return np.clip(x, -big, big)


def _storage_dtype(dtype, state_dtype) -> np.dtype:
  return np.dtype(state_dtype if state_dtype is not None else dtype)


def _rounded(x, dtype, state_dtype):
  """A buffer as kept between steps: rounded to its storage dtype and read back in ``dtype``."""
  storage = _storage_dtype(dtype, state_dtype)
  if np.iscomplexobj(x):
    return (x.real.astype(storage).astype(dtype) + 1j * x.imag.astype(storage).astype(dtype)).astype(_complex_of(dtype))
  return x.astype(storage).astype(dtype)


def _lr_at(learning_rate, t: int) -> float:
  # Schedules see the update count as optax keeps it: an int32 starting at 0.
  return float(learning_rate(np.int32(t - 1))) if callable(learning_rate) else float(learning_rate)


def rmsprop_init(params: Sequence[Any], *, initial_scale: float = 0.0, dtype=np.float64) -> dict:
  """The reference state: lists of per-leaf buffers and the update count."""
  return dict(
      t=0,
      nu=[np.full(np.shape(p), initial_scale, dtype) for p in params],  # real even for complex p
      mu=[np.zeros_like(_work(p, dtype)) for p in params],
      trace=[np.zeros_like(_work(p, dtype)) for p in params],
  )


def rmsprop_step(
    state: dict,
    grads: Sequence[Any],
    params: Sequence[Any],
    *,
    learning_rate: Any,
    decay: float = 0.9,
    eps: float = 1e-8,
    eps_in_sqrt: bool = True,
    centered: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    bias_correction: bool = False,
    weight_decay: float | None = None,
    weight_decay_mask: Any = None,
    maximize: bool = False,
    clamp_variance: bool = True,
    zero_safe: bool = True,
    dtype=np.float64,
    state_dtype=None,
    initial_scale: float = 0.0,  # only used by rmsprop_init; accepted here so flags can be shared
) -> tuple[list[np.ndarray], dict]:
  """One RMSProp update. Returns ``(updates, new_state)``; ``state`` is not modified.

  Arithmetic is in ``dtype``; buffers are clamped to the finite range of ``state_dtype`` (default
  ``dtype``) and rounded to it when kept. A narrower ``state_dtype`` is read back rounded by this
  step too, with the floors of the module docstring.
  """
  del initial_scale
  t = state["t"] + 1
  lr = _lr_at(learning_rate, t)
  d = dtype(decay)
  one = dtype(1)
  correction = one - d**t  # bias correction 1 - decay^t
  if bias_correction and correction == 0:  # decay == 1: no correction (0/0)
    correction = one
  new = dict(t=t, nu=[], mu=[], trace=[])
  if weight_decay_mask is None:
    mask = [True] * len(params)
  else:
    mask = list(weight_decay_mask(params) if callable(weight_decay_mask) else weight_decay_mask)
  updates = []
  with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
    for i, g in enumerate(grads):
      g = _work(g, dtype)
      # Second moment (real) and, centered, the mean gradient.
      # Buffers are clamped to their storage type's finite range; this step uses them in compute
      # precision, and they are rounded to the storage type when kept.
      storage = _storage_dtype(dtype, state_dtype)
      # float16 (a range that ordinary gradients overflow) is used unrounded, as computed.
      lossy = storage.itemsize < np.dtype(dtype).itemsize and storage != np.float16
      nu = _finite_clamp(d * state["nu"][i] + (one - d) * _abs_sq(g), storage)
      mu = _finite_clamp(d * state["mu"][i] + (one - d) * g, storage)
      mu_s = _rounded(mu, dtype, state_dtype) if lossy else mu
      if lossy and centered:
        ratio = (one - d) / d if d > 0 else dtype(0)
        nu_s = np.maximum(_rounded(nu, dtype, state_dtype), _abs_sq(mu_s) + ratio * _abs_sq(g - mu_s))
      elif lossy:
        nu_s = np.maximum(_rounded(nu, dtype, state_dtype), (one - d) * _abs_sq(g))
      else:
        nu_s = nu
      nu_hat = nu_s / correction if bias_correction else nu_s
      if centered:
        mu_hat = mu_s / correction if bias_correction else mu_s
        var = nu_hat - _abs_sq(mu_hat)
        if clamp_variance:
          var = np.where(var + dtype(eps) > 0, var, dtype(0)) if eps_in_sqrt else np.maximum(var, dtype(0))
      else:
        var = nu_hat
      den = np.sqrt(var + dtype(eps)) if eps_in_sqrt else np.sqrt(var) + dtype(eps)
      if zero_safe:
        step = np.where(den > 0, g / np.where(den > 0, den, one), dtype(0))
      else:
        step = g / den
      # The learning rate is inside the momentum buffer (optax, Keras, TF1).
      step = (lr if maximize else -lr) * step
      b = state["trace"][i]
      if momentum is not None:
        b = _finite_clamp(step + dtype(momentum) * b, storage)
        b_s = _rounded(b, dtype, state_dtype) if lossy else b
        step = step + dtype(momentum) * b_s if nesterov else b_s
      if weight_decay is not None and mask[i]:
        step = step - lr * dtype(weight_decay) * _work(params[i], dtype)
      updates.append(step.astype(g.dtype))
      new["nu"].append(_rounded(nu, dtype, state_dtype))
      new["mu"].append(_rounded(mu, dtype, state_dtype))
      new["trace"].append(_rounded(b, dtype, state_dtype))
  return updates, new


def rmsprop(
    grad_fn: Callable[[list[np.ndarray]], Sequence[Any]],
    params: Sequence[Any],
    steps: int,
    **flags,
) -> list[list[np.ndarray]]:
  """Runs ``steps`` RMSProp updates from ``params``; returns the trajectory ``[p_0, ..., p_steps]``.

  ``flags`` are :func:`rmsprop_step`'s keyword arguments plus ``initial_scale``.
  """
  dtype = flags.get("dtype", np.float64)
  p = [_work(x, dtype) for x in params]
  state = rmsprop_init(p, initial_scale=flags.get("initial_scale", 0.0), dtype=dtype)
  trajectory = [p]
  for _ in range(steps):
    u, state = rmsprop_step(state, grad_fn(p), p, **flags)
    p = [x + v for x, v in zip(p, u, strict=True)]
    trajectory.append(p)
  return trajectory


def adagrad(
    grad_fn: Callable[[list[np.ndarray]], Sequence[Any]],
    params: Sequence[Any],
    steps: int,
    *,
    learning_rate: Any,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
    dtype=np.float64,
) -> list[list[np.ndarray]]:
  """AdaGrad as optax 0.2.8: ``s <- s + |g|^2``; ``u = -lr g / sqrt(s + eps)``, 0 where ``s = 0``."""
  p = [_work(x, dtype) for x in params]
  s = [np.full(np.shape(x), initial_accumulator_value, dtype) for x in p]
  trajectory = [p]
  for t in range(1, steps + 1):
    lr = _lr_at(learning_rate, t)
    new_p = []
    for i, g in enumerate(grad_fn(p)):
      g = _work(g, dtype)
      s[i] = s[i] + _abs_sq(g)
      with np.errstate(divide="ignore"):
        scale = np.where(s[i] > 0, 1 / np.sqrt(s[i] + dtype(eps)), dtype(0))
      new_p.append(p[i] - lr * g * scale)
    p = new_p
    trajectory.append(p)
  return trajectory

