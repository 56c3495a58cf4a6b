"""Moving an optimizer state between storage kinds: float32 (optax's own) and low-bit, either way.

A state's layout (optax's classes, the chain's positions) does not depend on ``state_dtype``; only
how each buffer is kept does. So a state converts leaf by leaf against a target state of the same
optimizer with another ``state_dtype``, with one exception: centered over low-bit codes, the ``nu``
buffer holds the variance ``nu - |mu|^2`` rather than ``nu`` (see ``_rmsprop``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from optax._src import transform as _optax_transform

from optax_rmsprop import _checks, _storage
from optax_rmsprop._rmsprop import _abs2

__all__ = ["convert_state"]

# optax's states with a mean gradient ``mu`` beside ``nu`` (centered RMSProp).
_CENTERED = (optax.ScaleByRStdDevState, _optax_transform.ScaleByRStdDevWithCountState)


def _is_buffer(x) -> bool:
  return _storage.codec_of(x) is not None or isinstance(x, jax.ShapeDtypeStruct) or _storage.is_buffer(x)


def _holds_variance(nu) -> bool:
  """Whether a centered state's ``nu`` buffer holds the variance (low-bit codes) rather than ``nu``."""
  return _storage.codec_of(nu) is not None


def _value(buffer):
  """A buffer's value in compute precision (a codec's decoded; complex stays complex)."""
  if _storage.codec_of(buffer) is not None:
    return _storage.load(buffer, jnp.float32)
  x = jnp.asarray(buffer)
  if not jnp.issubdtype(x.dtype, jnp.inexact):
    return x
  return _storage.load(x, _storage.compute_dtype(x.dtype))


def _written(x, like):
  """``x`` stored as ``like`` is: clamped to its range and encoded, or cast (counts, integers)."""
  if _storage.codec_of(like) is None and not jnp.issubdtype(like.dtype, jnp.inexact):
    return jnp.asarray(x).astype(like.dtype)
  return _storage.store(x, like)


def _centered(src, dst):
  """A centered state's ``mu`` and ``nu``, with the variance moved in or out of ``nu`` per leaf."""

  def leaf(nu, mu, nu_like):
    m = _value(mu)
    v = _value(nu)
    if _holds_variance(nu):
      v = v + _abs2(m).astype(v.dtype)
    if _holds_variance(nu_like):
      v = jnp.maximum(v - _abs2(m).astype(v.dtype), 0)
    return _written(v, nu_like)

  nu = jax.tree.map(leaf, src.nu, src.mu, dst.nu, is_leaf=_is_buffer)
  mu = jax.tree.map(lambda m, like: _written(_value(m), like), src.mu, dst.mu, is_leaf=_is_buffer)
  return nu, mu


def convert_state(state: Any, like: Any) -> Any:
  """``state``'s values, stored as the buffers of ``like`` are: float32 state into low-bit and back.

  ``like`` is a state of the optimizer to continue with, as its ``init`` makes it (or
  ``jax.eval_shape`` of it): the same optimizer and flags as ``state``'s, another ``state_dtype``.
  Every buffer of ``state`` (a float array, or 8-bit and 4-bit codes) is read in float32 and
  written as ``like``'s buffer at the same place is kept, clamped to its range; counts and other
  integers are copied. ``state`` may be ``optax.rmsprop``'s, ``optax.adagrad``'s or
  ``optax.scale_by_rms``'s own (optax's classes are ours), a restored checkpoint of one, or a
  state of this package with any ``state_dtype``.

  Args:
    state: the state to convert.
    like: a state of the target layout (only its structure, shapes and storage are read).

  Returns:
    A state with ``like``'s structure and storage and ``state``'s values, as close as the target
    storage can hold them (float32 to low-bit and back gives the low-bit codes' values).

  Raises:
    ValueError: when ``state`` and ``like`` do not have the same layout, naming the paths that
      differ.

  Example:
    >>> import jax.numpy as jnp, optax, optax_rmsprop
    >>> params = {"w": jnp.ones((64, 128))}
    >>> float32_state = optax.rmsprop(1e-3).init(params)  # or a restored checkpoint of it
    >>> tx = optax_rmsprop.rmsprop(1e-3, state_dtype="8bit")
    >>> state = optax_rmsprop.convert_state(float32_state, tx.init(params))
    >>> state[0].nu["w"].codes.dtype
    dtype('uint8')
  """

  def node(src, dst):
    if isinstance(dst, _CENTERED):
      if not isinstance(src, _CENTERED):
        raise ValueError(f"convert_state: state holds {type(src).__name__} where like holds {type(dst).__name__}")
      nu, mu = _centered(src, dst)
      counts = {"count": _written(src.count, dst.count)} if "count" in dst._fields else {}
      return dst._replace(nu=nu, mu=mu, **counts)
    return _written(_value(src), dst)

  is_leaf = lambda x: isinstance(x, _CENTERED) or _is_buffer(x)
  source_view = jax.tree.map(lambda x: 0, state, is_leaf=is_leaf)
  target_view = jax.tree.map(lambda x: 0, like, is_leaf=is_leaf)
  if jax.tree.structure(source_view) != jax.tree.structure(target_view):
    raise ValueError(
        "convert_state: state and like must be states of the same optimizer and flags ("
        + _checks.describe_tree_mismatch(target_view, source_view, "like", "state")
        + ")"
    )
  return jax.tree.map(node, state, like, is_leaf=is_leaf)
