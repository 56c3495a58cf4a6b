"""Partitioning optimizer state over a mesh axis (ZeRO-1), by JAX's own SPMD partitioner.

By default every state buffer takes its parameter's sharding, so parameters replicated over a
data-parallel axis give every device of that axis a full copy of the state. :func:`shard_over`
returns shardings that also split each large buffer over that axis; used as the ``out_shardings``
of ``jax.jit(tx.init)`` and of the training step, XLA's SPMD partitioner computes each device's
slice of the update there and all-gathers the parameter update (Rajbhandari et al., ZeRO stage 1),
with no communication code of ours.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from optax_rmsprop import _storage


def _spec(x, ndim: int, fallback=None) -> list:
  """``x``'s partition spec as a list of ``ndim`` entries (``None``: not split); where ``x``
  carries no named sharding, ``fallback``'s (its parameter's)."""
  sharding = getattr(x, "sharding", None)
  if not isinstance(sharding, NamedSharding) and fallback is not None and len(fallback.spec) <= ndim:
    sharding = fallback
  spec = list(sharding.spec) if isinstance(sharding, NamedSharding) else []
  return spec + [None] * (ndim - len(spec))


def _uses(spec, axis: str) -> bool:
  return any(axis == e or (isinstance(e, tuple) and axis in e) for e in spec)


def _named(mesh: Mesh, spec) -> NamedSharding:
  while spec and spec[-1] is None:
    spec = spec[:-1]
  return NamedSharding(mesh, P(*spec))


def _axes(entry) -> tuple:
  return () if entry is None else entry if isinstance(entry, tuple) else (entry,)


def _split(shape, spec, mesh: Mesh, axis: str, allowed) -> list:
  """``spec`` with ``axis`` added: on the largest dimension not split yet that ``axis`` divides
  (and that is ``allowed``); failing that, beside the axes of a split dimension whose length
  their product and ``axis``'s divide; failing that, unchanged."""
  n = mesh.shape[axis]
  free = [d for d, size in enumerate(shape) if spec[d] is None and size % n == 0 and allowed(d)]
  shared = [
      d for d, size in enumerate(shape) if spec[d] is not None and size % (n * math.prod(mesh.shape[a] for a in _axes(spec[d]))) == 0 and allowed(d)
  ]
  for candidates in (free, shared):
    if candidates:
      d = max(candidates, key=lambda d: (shape[d], -d))
      spec = list(spec)
      spec[d] = axis if spec[d] is None else (*_axes(spec[d]), axis)
      return spec
  return spec


def _array(x, mesh: Mesh, axis: str, fallback=None):
  shape = tuple(x.shape)
  spec = _spec(x, len(shape), fallback)
  if len(shape) == 0 or _uses(spec, axis):
    return _named(mesh, spec)
  return _named(mesh, _split(shape, spec, mesh, axis, lambda d: True))


def _node(node, mesh: Mesh, axis: str, fallback=None):
  """Shardings for a codec node's codes and scales, split on the same dimension: a leading one,
  or the last one where each device then holds whole blocks."""
  codec = _storage.codec_of(node)
  shape = tuple(node.codes.shape)
  # A parameter's sharding, where the node's arrays carry none: the codes and scales take it (as
  # ``jax.jit(tx.init)`` gives them).
  spec_c, spec_s = _spec(node.codes, len(shape), fallback), _spec(node.scale, len(shape), fallback)
  if not _uses(spec_c, axis) and not _uses(spec_s, axis):
    units = codec.block(node)[0]  # blocks per row
    padded = math.prod(codec.block(node)) != codec.shape(node)[-1]

    def whole(d):
      if d < len(shape) - 1:
        return True
      shards = mesh.shape[axis] * math.prod(mesh.shape[a] for a in _axes(spec_c[d]))
      return not padded and units % shards == 0

    spec = _split(shape, [c or s for c, s in zip(spec_c, spec_s, strict=True)], mesh, axis, whole)
    spec_c = spec_s = spec
  return type(node)(**{**_fields(node), "codes": _named(mesh, spec_c), "scale": _named(mesh, spec_s)})


def _param_shardings(params, mesh: Mesh) -> dict:
  """{key path: NamedSharding} of ``params`` (arrays, abstract arrays or shardings)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, NamedSharding))[0]:
    sharding = leaf if isinstance(leaf, NamedSharding) else getattr(leaf, "sharding", None)
    if isinstance(sharding, NamedSharding):
      out[tuple(path)] = sharding
  return out


def _matching(path, table: dict):
  """The sharding of the parameter whose key path ends ``path`` (the longest such), or None."""
  for start in range(len(path)):
    if tuple(path[start:]) in table:
      return table[tuple(path[start:])]
  return None


def _fields(node) -> dict:
  return {k: getattr(node, k) for k in node.__dataclass_fields__}


def shard_over(tree: Any, mesh: Mesh, axis: str, *, params: Any = None) -> Any:
  """Shardings for an optimizer state that partition it over ``mesh``'s ``axis`` too (ZeRO-1).

  Every buffer keeps the sharding it has (a model axis, say) and is split over ``axis`` too: on
  the largest dimension that is not split yet and whose length ``axis`` divides, or else beside
  the axes already splitting a dimension (``P(("model", "data"))``) where the length divides by
  all of them. Low-bit codes and their block scales are split on the same dimension, the last one
  only where each device then holds whole blocks. Scalars (the step count), and buffers with no
  such dimension, keep their sharding (replicated if they had none).

  Args:
    tree: an optimizer state, concrete (``tx.init(params)``) or abstract
      (``jax.eval_shape(tx.init, params)``); its leaves' shardings are kept.
    mesh: the device mesh.
    axis: the name of the axis to partition over (in data parallelism: the data axis, over which
      the parameters are replicated).
    params: optional, the parameters (arrays, or a tree of their shardings), whose shardings
      a buffer keeps where it carries none itself: ``jax.eval_shape`` gives abstract leaves
      shardings under explicit mesh axes (``jax.sharding.AxisType.Explicit``), not under
      ``Auto`` ones. A buffer belongs to the parameter whose key path ends its own.

  Returns:
    A tree of :class:`jax.sharding.NamedSharding` with the structure of ``tree``, for
    ``jax.jit(tx.init, out_shardings=...)`` and the training step's ``out_shardings``.

  Example:
    >>> import jax, jax.numpy as jnp, optax_rmsprop
    >>> mesh = jax.make_mesh((1,), ("data",))
    >>> tx = optax_rmsprop.rmsprop(1e-3)
    >>> params = {"w": jnp.zeros((64, 32))}
    >>> shardings = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data")
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> state[0].nu["w"].sharding.spec == jax.sharding.PartitionSpec("data")
    True

  References:
    Rajbhandari, Rasley, Ruwase, He, `ZeRO: Memory Optimizations Toward Training Trillion Parameter
    Models <https://arxiv.org/abs/1910.02054>`_, SC 2020.
  """
  if not isinstance(mesh, (Mesh, AbstractMesh)):
    raise TypeError(f"shard_over(mesh=...): expected a jax.sharding.Mesh, got {type(mesh).__name__}")
  if axis not in mesh.axis_names:
    raise ValueError(f"shard_over(axis={axis!r}): the mesh has no axis {axis!r}; its axes are {tuple(mesh.axis_names)}")
  leaves = jax.tree.leaves(tree, is_leaf=_storage.is_buffer)
  if not isinstance(tree, tuple) or not leaves or not all(_storage.is_buffer(x) or isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
    raise TypeError(
        f"shard_over(tree=...): expected an optimizer state (what tx.init(params) or "
        f"jax.eval_shape(tx.init, params) returns: a tuple of state records), got {type(tree).__name__}; "
        f"partitioning over axis {axis!r} of a mesh with axes {tuple(mesh.axis_names)}"
    )
  table = {} if params is None else _param_shardings(params, mesh)

  def one(path, x):
    fallback = _matching(path, table)
    if _storage.codec_of(x) is not None:
      return _node(x, mesh, axis, fallback)
    return _array(x, mesh, axis, fallback)

  return jax.tree_util.tree_map_with_path(one, tree, is_leaf=lambda x: _storage.codec_of(x) is not None)
