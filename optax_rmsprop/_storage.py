"""How optimizer state buffers are stored: dtype policy, creation, load and store.

The update rules in ``_rmsprop`` compute in at least float32 and never see how a buffer is kept.
A buffer is created from its parameter by :func:`create`, read into the compute dtype by
:func:`load` and written back by :func:`store`, which clamps to the storage type's finite range so
that an overflow in one step cannot leave an infinite (or NaN-making) value in the state.

A buffer is either a plain array (``state_dtype=None`` or a float dtype) or a node of a registered
:class:`Codec` (``state_dtype="8bit"`` or ``"4bit"``, registered by ``_quant``): this module is the single place
that dispatches on how a buffer is kept, and it imports no codec.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class Codec(Protocol):
  """A way of keeping a buffer other than a plain float array (e.g. blockwise 8-bit codes).

  ``node_type`` is the pytree class of its buffers; ``create``/``load``/``store`` mirror the module
  functions of the same names. ``store`` receives values already clamped to float32's range, and
  the buffer they replace (``like``).

  For ``_chunks``, which advances a leaf by rows of whole blocks: ``block`` gives (blocks per row,
  block length); ``view`` the axes a row of ``width`` elements is best cut into for the codec's
  arithmetic (blocks as trailing axes; ``None``: none, a padded row) and ``fits`` whether it can
  work in another codec's view; ``parts`` the buffer's arrays as ``rows`` rows (the codes first),
  in ``view`` if given, and ``from_parts`` a buffer from them again: in ``view``, a node of
  ``view_type`` (which ``load`` and ``store`` also take); else a chunk's, whose rows are
  ``chunk_last`` elements long, or with ``chunk_last=None`` the whole one like ``like``.
  """

  name: str
  node_type: type
  view_type: type

  def create(self, param, fill: float, *, real: bool) -> Any: ...

  def load(self, buffer, cdt) -> jax.Array: ...

  def store(self, x, like) -> Any: ...

  def shape(self, buffer) -> tuple[int, ...]: ...

  def block(self, buffer) -> tuple[int, int]: ...

  def view(self, buffer, width: int) -> tuple[int, ...] | None: ...

  def fits(self, buffer, view: tuple[int, ...]) -> bool: ...

  def parts(self, buffer, rows: int, view: tuple[int, ...] | None = None) -> list[jax.Array]: ...

  def from_parts(self, parts, like, *, chunk_last: int | None = None, view: tuple[int, ...] | None = None) -> Any: ...


_CODECS: dict[str, Codec] = {}
_NODE_CODECS: dict[type, Codec] = {}
_VIEW_CODECS: dict[type, Codec] = {}


def register_codec(codec: Codec, *aliases: str) -> None:
  """Makes ``state_dtype=codec.name`` (or an alias) store buffers with ``codec``."""
  for name in (codec.name, *aliases):
    _CODECS[name.lower()] = codec
  _NODE_CODECS[codec.node_type] = codec
  _VIEW_CODECS[codec.view_type] = codec


def resolve_state_dtype(fn: str, state_dtype: Any):
  """Validates ``state_dtype``: ``None`` (the parameters' dtype), a real float dtype, or the name of a
  registered codec (``"8bit"``, ``"4bit"``, or an alias such as ``"8-bit"``); returns ``None``, a
  dtype or the codec."""
  if state_dtype is None:
    return None
  if isinstance(state_dtype, str) and state_dtype.lower() in _CODECS:
    return _CODECS[state_dtype.lower()]
  codecs = sorted({codec.name for codec in _CODECS.values()})
  allowed = ", ".join((*_FLOAT_DTYPES, *(repr(n) for n in codecs)))
  problem = f"{fn}(state_dtype={state_dtype!r}): state_dtype must be None or one of {allowed}"
  if isinstance(state_dtype, (jax.Array, np.ndarray, jax.core.Tracer)):
    # optax.inject_hyperparams calls a callable argument as a schedule, and a dtype class
    # (jnp.bfloat16) is callable: what arrives is an array.
    raise ValueError(
        f"{problem}, got an array ({state_dtype.dtype}[{','.join(map(str, state_dtype.shape))}]); under "
        "optax.inject_hyperparams a dtype class such as jnp.bfloat16 is called as a schedule: pass its name "
        "(state_dtype='bfloat16') or static_args=('state_dtype',)"
    )
  try:
    dt = jnp.dtype(state_dtype)
  except (TypeError, ValueError) as e:
    raise ValueError(problem) from e
  if dt.name not in _FLOAT_DTYPES:
    raise ValueError(f"{problem}, got {dt.name}")
  return dt


def is_codec(spec) -> bool:
  """Whether a resolved ``state_dtype`` (see :func:`resolve_state_dtype`) is a codec, not a dtype."""
  return spec is not None and not isinstance(spec, np.dtype)


def codec_of(buffer) -> Codec | None:
  """The codec that made ``buffer`` (a node or, inside ``_chunks``' loop, a view), or ``None``
  for a plain array."""
  return _NODE_CODECS.get(type(buffer)) or _VIEW_CODECS.get(type(buffer))


def node_fields() -> list[frozenset[str]]:
  """The names of the array fields of each registered codec's node type (a dataclass; static
  fields excluded): what a node's arrays are called once split out of it."""
  return [
      frozenset(f.name for f in dataclasses.fields(t) if not f.metadata.get("static"))
      for t in _NODE_CODECS
      if dataclasses.is_dataclass(t)
  ]


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
  """A new state buffer for ``param`` filled with ``fill``.

  ``real`` buffers hold a second moment (real, non-negative); the others (mean gradient, momentum)
  are signed and complex for complex parameters.
  """
  if spec is not None and not isinstance(spec, np.dtype):
    return spec.create(param, fill, real=real)
  return _like_param(param, fill, buffer_dtype(jnp.result_type(param), spec, real=real))


def load(buffer, cdt):
  """The buffer's value in compute precision (complex buffers stay complex)."""
  codec = codec_of(buffer)
  if codec is not None:
    return codec.load(buffer, cdt)
  if jnp.issubdtype(buffer.dtype, jnp.complexfloating):
    return buffer.astype(_complex_of(cdt))
  return buffer.astype(cdt)


def _clip(x, limit):
  # Two selects rather than jnp.clip: XLA:CPU turns min/max against constants into a clamp that it
  # then duplicates into every consumer fusion, which forces a copy of the donated state buffer.
  return jnp.where(x > limit, limit, jnp.where(x < -limit, -limit, x))


def _storage_dtype(like):
  return jnp.dtype(jnp.float32) if codec_of(like) is not None else like.dtype


def max_of(like) -> float:
  """The largest finite value ``like``'s storage can hold."""
  return float(jnp.finfo(_storage_dtype(like)).max)


def small_range(like) -> bool:
  """Whether ``like``'s storage overflows at ordinary magnitudes (float16: squares of |g| > 256)."""
  return max_of(like) < 1e30


def reads_back(like, cdt) -> bool:
  """Whether a step should use ``like``'s new value as stored (rounded) rather than as computed.

  True for 8-bit codes and for storage dtypes narrower than ``cdt`` with its range (bfloat16): XLA
  then writes the buffer in place, where recomputing the unrounded value for the step needs the old
  buffer after the new one is written (XLA:CPU, which has no multi-output fusion, copies it every
  step). False for float16, whose range ordinary gradients overflow: its step uses the unclamped
  values (and XLA:CPU keeps one copy of the buffer).
  """
  if codec_of(like) is not None:
    return True
  return real_dtype(like.dtype).itemsize < jnp.dtype(cdt).itemsize and not small_range(like)


def as_optax(spec, like, cdt) -> bool:
  """Whether a buffer is optax's: ``state_dtype=None`` and held in the compute dtype itself
  (float32 state for float32 parameters, float64 for float64). Its update is then optax's
  arithmetic and nothing else (no clamp, no select): XLA:CPU decides per compiled program whether
  each ``a * b + c`` becomes one fma, and from jax 0.12 one extra operation in the step (a clamp,
  even in a fusion of its own) can change that decision for optax's operations beside it, and so
  their last bit. Such a buffer overflows as optax's does: to inf, with a zero step there. A
  ``state_dtype`` given, float32 included, is clamped to its finite range."""
  return spec is None and codec_of(like) is None and real_dtype(like.dtype) == real_dtype(cdt)


def clamp(x, like, *, nonnegative: bool = False):
  """``x`` (compute precision) clamped to the finite range of ``like``'s storage dtype.

  ``nonnegative``: ``x`` is known to be >= 0 or NaN (a second moment), so only the upper bound is
  applied (one select fewer per element and leaf, which shortens compile time for large trees).
  """
  # A Python float (weakly typed) rather than an array per leaf. A storage dtype wider than the
  # compute dtype (float64 state, float32 gradients) clamps to the narrower range, whose max is
  # representable (float64's max would overflow to inf in float32).
  limit = min(float(jnp.finfo(_storage_dtype(like)).max), float(jnp.finfo(real_dtype(x.dtype)).max))
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    return jax.lax.complex(_clip(jnp.real(x), limit), _clip(jnp.imag(x), limit))
  if nonnegative:
    return jnp.where(x > limit, limit, x)
  return _clip(x, limit)


def write(x, like):
  """Writes ``x``, already :func:`clamp`-ed against ``like``, into a buffer of the same kind.

  The update rules clamp once and use the same clamped value for the step and the state: a second
  clamp would make XLA compute the buffer twice (one copy per consumer) and copy the donated input.
  """
  codec = codec_of(like)
  if codec is not None:
    return codec.store(x, like)
  return x.astype(like.dtype)


def store(x, like):
  """Writes ``x`` into a buffer of the same kind as ``like``, clamped to its finite range.

  NaN stays NaN (it is the input's, not ours to hide); +-inf and values beyond the storage type's
  range become its largest finite value, so one overflowing gradient cannot freeze a parameter.
  """
  return write(clamp(x, like), like)


def is_buffer(x) -> bool:
  """Whether ``x`` is one stored buffer (a leaf of the state trees, or a codec's node)."""
  return isinstance(x, (jax.Array, np.ndarray, jax.core.Tracer)) or type(x) in _NODE_CODECS


def shape_of(buffer):
  """The shape of the parameter a buffer belongs to."""
  codec = codec_of(buffer)
  return buffer.shape if codec is None else codec.shape(buffer)


# ---------------------------------------------------------------------------------------------
# Codec nodes and array boxes.
#
# A box is a pytree node that stands for one array: it has one child and converts to an array
# (``__jax_array__``), as flax's ``nnx.Variable`` (``nnx.Param``, ``nnx.OptVariable``). A state
# built by mapping over boxed parameters puts each buffer in its parameter's box. A box around a
# codec node breaks frameworks that treat a box as one array: ``nnx.Optimizer`` writes each new
# state back box by box (``nnx.update``), and a box whose value is a node gets, instead, the
# node's fields as a plain ``nnx.State`` (its type and static fields lost). So the state keeps
# every codec node outside the boxes, each of its arrays in a copy of the box, which such a
# framework updates array by array, the node in place.


def _is_box(x) -> bool:
  if isinstance(x, (jax.Array, jax.core.Tracer)) or not hasattr(x, "__jax_array__"):
    return False
  return jax.tree_util.tree_structure(x, is_leaf=lambda y: y is not x).num_leaves == 1


def _unbox(box):
  """(the box's treedef, its one child)."""
  (child,), treedef = jax.tree_util.tree_flatten(box, is_leaf=lambda y: y is not box)
  return treedef, child


def nodes_outside_boxes(tree, spec):
  """``tree`` with every ``box(node(codes, scale))`` rewritten as ``node(box(codes), box(scale))``
  (a no-op unless ``spec`` is a codec)."""
  if not is_codec(spec):
    return tree

  def lift(x):
    if not _is_box(x):
      return x
    treedef, child = _unbox(x)
    child = lift(child)
    if codec_of(child) is None:
      return x
    return jax.tree.map(lambda a: treedef.unflatten([a]), child)

  return jax.tree.map(lift, tree, is_leaf=_is_box)


def nodes_inside_boxes(tree, spec):
  """The inverse of :func:`nodes_outside_boxes`: the layout the update rules read, one buffer in
  each of the gradient's boxes."""
  if not is_codec(spec):
    return tree

  def lower(x):
    fields = jax.tree.leaves(x, is_leaf=_is_box)
    if not fields or not all(_is_box(f) for f in fields):
      return x
    treedef = _unbox(fields[0])[0]
    if any(_unbox(f)[0] != treedef for f in fields[1:]):
      return x
    return treedef.unflatten([lower(jax.tree.map(lambda b: _unbox(b)[1], x, is_leaf=_is_box))])

  return jax.tree.map(lower, tree, is_leaf=lambda x: codec_of(x) is not None)
