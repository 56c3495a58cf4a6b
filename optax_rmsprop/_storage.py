"""How optimizer state buffers are stored: dtype policy, creation, load and store.

The update rules in ``_rmsprop`` compute in at least float32 and never see how a buffer is kept.
A buffer is created from its parameter by :func:`create`, read into the compute dtype by
:func:`load` and written back by :func:`store`, which clamps to the storage type's finite range so
that an overflow in one step cannot leave an infinite (or NaN-making) value in the state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def resolve_state_dtype(fn: str, state_dtype: Any):
  """Validates ``state_dtype``: ``None`` (the parameters' dtype) or a real float dtype."""
  if state_dtype is None:
    return None
  if isinstance(state_dtype, str) and state_dtype.lower() in ("8bit", "int8", "uint8"):
    raise ValueError(f"{fn}(state_dtype={state_dtype!r}): 8-bit state is not available in this version")
  try:
    dt = jnp.dtype(state_dtype)
  except TypeError as e:
    raise ValueError(
        f"{fn}(state_dtype={state_dtype!r}): state_dtype must be None or one of {', '.join(_FLOAT_DTYPES)}"
    ) from e
  if dt.name not in _FLOAT_DTYPES:
    raise ValueError(
        f"{fn}(state_dtype={state_dtype!r}): state_dtype must be None or one of {', '.join(_FLOAT_DTYPES)}, "
        f"got {dt.name}"
    )
  return dt


def real_dtype(dtype) -> np.dtype:
  """The real counterpart of ``dtype`` (float32 for complex64)."""
  return jnp.finfo(dtype).dtype


def compute_dtype(dtype) -> np.dtype:
  """The real dtype arithmetic is done in: at least float32, wider when the input is wider."""
  real = real_dtype(dtype)
  return jnp.dtype(jnp.float32) if real.itemsize < 4 else real


def _complex_of(dtype) -> np.dtype:
  return jnp.dtype(jnp.complex64) if jnp.dtype(dtype).itemsize <= 4 else jnp.dtype(jnp.complex128)


def work_dtype(dtype) -> np.dtype:
  """The dtype a value of ``dtype`` is computed in: :func:`compute_dtype`, complex if it is."""
  cdt = compute_dtype(dtype)
  return _complex_of(cdt) if jnp.issubdtype(dtype, jnp.complexfloating) else cdt


def hyper(value, cdt):
  """A hyperparameter as a ``cdt`` scalar. ``inject_hyperparams`` hands complex parameters'
  hyperparameters over as complex arrays (with a zero imaginary part): their real part is used."""
  x = jnp.asarray(value)
  if jnp.iscomplexobj(x):
    x = jnp.real(x)
  return x.astype(cdt)


def buffer_dtype(param_dtype, spec, *, real: bool) -> np.dtype:
  """The storage dtype of a buffer for a parameter of ``param_dtype``.

  ``real`` buffers (second moments) use the real counterpart of a complex parameter; the others
  (mean gradient, momentum) stay complex for complex parameters.
  """
  base = real_dtype(param_dtype) if spec is None else spec
  if jnp.issubdtype(param_dtype, jnp.complexfloating) and not real:
    if jnp.dtype(base).name in ("float16", "bfloat16"):
      raise ValueError(f"state_dtype={jnp.dtype(base).name} cannot hold the complex buffers of complex parameters")
    return _complex_of(base)
  return jnp.dtype(base)


def _like_param(param, value, dtype):
  """A constant array shaped (and, under jit, sharded) like ``param``.

  ``jnp.full_like`` gives XLA nothing to propagate a sharding from, so under ``jax.jit`` the
  buffer would land on one device; ``p * 0`` is NaN where ``p`` is inf. A select on ``isnan(p)``
  depends on ``p`` elementwise (so the SPMD partitioner gives it ``p``'s sharding) and is the
  constant ``value`` whatever ``p`` holds.
  """
  if not isinstance(param, (jax.Array, np.ndarray, np.generic, jax.core.Tracer)):
    # An abstract leaf (jax.ShapeDtypeStruct) or a Python scalar.
    sharding = getattr(param, "sharding", None)
    return jnp.full(jnp.shape(param), hyper(value, real_dtype(dtype)), dtype=dtype, device=sharding)
  probe = jnp.isnan(jnp.real(param)) if jnp.issubdtype(param.dtype, jnp.complexfloating) else jnp.isnan(param)
  v = hyper(value, real_dtype(dtype)).astype(dtype)
  return jnp.where(probe, v, v)


def create(param, fill: float, spec, *, real: bool):
  """A new state buffer for ``param`` filled with ``fill``."""
  return _like_param(param, fill, buffer_dtype(jnp.result_type(param), spec, real=real))


def load(buffer, cdt):
  """The buffer's value in compute precision (complex buffers stay complex)."""
  if jnp.issubdtype(buffer.dtype, jnp.complexfloating):
    return buffer.astype(_complex_of(cdt))
  return buffer.astype(cdt)


def _clip(x, limit):
  return jnp.clip(x, -limit, limit)


def clamp(x, like):
  """``x`` (compute precision) clamped to the finite range of ``like``'s storage dtype."""
  # A state dtype wider than the compute dtype (float64 state, float32 gradients): clamp to the
  # narrower range, whose max is representable (float64's max would overflow to inf in float32).
  xdt = real_dtype(x.dtype)
  limit = jnp.asarray(min(float(jnp.finfo(like.dtype).max), float(jnp.finfo(xdt).max)), dtype=xdt)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return jax.lax.complex(_clip(jnp.real(x), limit), _clip(jnp.imag(x), limit))
  return _clip(x, limit)


def store(x, like):
  """Writes ``x`` into a buffer of the same kind as ``like``, clamped to its finite range.

  NaN stays NaN (it is the input's, not ours to hide); +-inf and values beyond the storage type's
  range become its largest finite value, so one overflowing gradient cannot freeze a parameter.
  """
  return clamp(x, like).astype(like.dtype)


def is_buffer(x) -> bool:
  """Whether ``x`` is one stored buffer (a leaf of the state trees)."""
  return isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer))
