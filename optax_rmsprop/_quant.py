"""Blockwise low-bit optimizer state: ``state_dtype="8bit"`` and ``state_dtype="4bit"``.

A buffer of a real parameter with at least :data:`MIN_SIZE` elements is kept as integer codes plus
one float32 scale per block of consecutive elements of the last axis. Blocks never cross a row
(a sharded last axis keeps whole blocks per shard when its shard length is a multiple of the
block); a row whose length is not a multiple of the block length pads its last block. Smaller (or
complex) buffers stay in full precision: their bytes are negligible, or codes do not fit them.

``"8bit"``: one uint8 code per element, blocks of at most :data:`BLOCK8` elements (1.016 bytes per
parameter). Two analytic maps (no lookup table; square roots only, which XLA vectorises):

* second moments (non-negative): ``v = scale * (c / 255) ** 4`` for ``c`` in 0..255, the scale
  being the block's maximum. All 256 codes cover [0, max], the relative step is ``4 / c`` (1.6 %
  at the top) and the smallest non-zero value is ``2.4e-10`` of the block's maximum.
* signed buffers (mean gradient, momentum): ``v = scale * sign(q) * (q / 127) ** 2`` with
  ``q = c - 127`` in -127..127, the scale being the block's largest magnitude: relative step
  ``2 / |q|`` (1.6 % at the top), smallest non-zero magnitude ``6.2e-5`` of the block's largest.

``"4bit"``: the second moment in 4 bits, eight codes per uint32 word (bits ``4j`` to ``4j + 3``
of a block's word ``w`` hold its element ``8w + j`` (eight neighbours): two codes per
byte), blocks of at most :data:`BLOCK4` elements, a multiple of 8 (0.53 bytes per parameter; rows
shorter than 8 stay in full precision), on a map without zero after Li, Chen & Zhu (2023): ``v = scale * ((q + 1) / 16) ** 4``
for ``q`` in 0..15, the scale being the block's maximum. No code means 0, so a small second moment
is never rounded to zero (which would turn ``g / sqrt(v)`` into ``g / sqrt(eps)``, their
"zero-point problem"): it is rounded up to at least 16^-4 (1.5e-5) of the block's maximum, which
only shortens that element's step. The paper's map is linear in ``v``, whose smallest level is 1/16
of the maximum; this one is linear in ``v ** (1/4)``, as the 8-bit map is. Linear in ``sqrt(v)``
(smallest level 1/256) the final loss on the digits and synthetic tasks moved from 7-21 % off the
float32 state's to up to 3.0 % in one seed's run, the centered runs the worst (their variance spans
more decades within a block); linear in ``v ** (1/4)``, levels 25 % apart at the top rather than
12.5 %, which stochastic rounding averages out, for a range 256 times wider below. A 4-bit code
rounds up or down with a probability linear in ``sqrt(v)`` (:func:`_up4`), not ``v ** (1/4)``. The mean
gradient and the momentum have no zero-point problem (a zero is harmless there) and are kept in the
8-bit signed map.

Codes are rounded stochastically (see :func:`_dither`): rounded to nearest, an average that moves
by less than half a level per step never moves at all.

Centered (``rmsprop(centered=True)``) over low-bit codes, the ``nu`` buffer holds the variance
``nu - mu^2`` rather than ``nu``: see ``_rmsprop``.

Codes and scales are plain arrays in a registered dataclass node, so a state holding them is an
ordinary pytree (jit, ``eval_shape``, ``lax.cond``, Orbax, sharding). This module depends on
``_storage`` and registers itself there; the update rules never see codes.

References:
  Dettmers, Lewis, Shleifer, Zettlemoyer, `8-bit Optimizers via Block-wise Quantization
  <https://arxiv.org/abs/2110.02861>`_, ICLR 2022.

  Li, Chen, Zhu, `Memory Efficient Optimizers with 4-bit States
  <https://arxiv.org/abs/2309.01507>`_, NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from optax_rmsprop import _storage

BLOCK8 = 256
BLOCK4 = 128
WORD = 8  # 4-bit codes per uint32 word
MIN_SIZE = 4096


def blocks(last: int, most: int, *, multiple: int = 1) -> tuple[int, int]:
  """(number of blocks, block length) for a row of ``last`` elements: equal blocks of at most
  ``most`` elements, the last one padded when ``last`` is not a multiple of their length
  (``multiple``: the length is a multiple of it, so that codes fill whole words)."""
  nb = max(1, math.ceil(last / most))
  block = math.ceil(last / nb)
  return nb, -(-block // multiple) * multiple


def _split(x, nb: int, block: int):
  """``x`` (..., last) as (..., nb, block), zero-padding the last axis if needed."""
  pad = nb * block - x.shape[-1]
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], nb, block)


def _merge(xb, last: int):
  x = xb.reshape(*xb.shape[:-2], xb.shape[-2] * xb.shape[-1])
  return x[..., :last] if x.shape[-1] != last else x


def _inverse(scale):
  return jnp.where(scale > 0, 1 / jnp.where(scale > 0, scale, 1), 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized8bit:
  """One 8-bit buffer: ``codes`` (uint8, the parameter's shape) and ``scale`` (float32, the
  parameter's shape with the last axis replaced by its number of blocks).

  ``signed`` selects the code map (static); the block length follows from the shapes.
  """

  codes: jax.Array
  scale: jax.Array
  signed: bool = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self):
    return self.codes.shape

  @property
  def dtype(self):
    return self.codes.dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Quantized4bit:
  """One 4-bit buffer of non-negative values: ``codes`` (uint32, eight codes per word: the
  parameter's shape with the last axis replaced by an eighth of its padded length, a block's
  ``L / 8`` words after the previous block's; bits ``4j`` to ``4j + 3`` of a block's word ``w``
  hold its element ``8w + j``) and ``scale`` (float32, the
  parameter's shape with the last axis replaced by its number of blocks). ``last`` (static) is the
  parameter's last-axis length."""

  codes: jax.Array
  scale: jax.Array
  last: int = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self):
    return (*self.codes.shape[:-1], self.last)

  @property
  def dtype(self):
    return self.codes.dtype


# jax.export serialises a step's pytrees of arguments and results by registered names; the static
# fields (``signed``, ``last``) travel as JSON.
for _node in (Quantized8bit, Quantized4bit):
  try:
    jax_export.register_pytree_node_serialization(
        _node,
        serialized_name=f"optax_rmsprop.{_node.__name__}",
        serialize_auxdata=lambda aux: json.dumps(list(aux)).encode(),
        deserialize_auxdata=lambda data: tuple(json.loads(data)),
    )
  except ValueError:  # the name is taken: this file imported a second time
    pass


_PHI = 0.6180339887498949  # the golden ratio's fractional part


def _dither(scale, block_shape: tuple[int, ...]):
  """A number in [0, 1) per element of blocks of ``block_shape`` (the trailing axes), one block
  per element of ``scale``, for rounding codes stochastically.

  Rounded to nearest, a code stalls where a step changes the value by less than half a level
  (an average moving by 10 % per step, against levels 1.6 % apart in 8 bits and 6 % or more in 4),
  and the stored average stops following the gradients. Rounding up with probability equal to the
  fraction keeps it unbiased. The noise of the element at place ``i`` of its block is
  ``frac(i * phi + o)``: a golden-ratio sequence (evenly spread over [0, 1) within the block) shifted
  by ``o``, a hash (murmur3's finaliser) of the bits of the block's new scale. So it is uniform for
  every element, deterministic, different at every step where the block's maximum moves, and the
  same however the buffer is cut into chunks; hashing per block rather than per element (and the
  new scale rather than the old, which the loop would read again at every element) keeps the
  rounding at the speed of the rest of the step.
  """
  h = jax.lax.bitcast_convert_type(scale.astype(jnp.float32), jnp.uint32)
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  offset = (h >> 8).astype(jnp.float32) * (1 / 2**24)
  size = math.prod(block_shape)
  place = jnp.asarray((np.arange(size) * _PHI % 1.0).astype(np.float32).reshape(block_shape))
  t = offset.reshape(*offset.shape, *(1,) * len(block_shape)) + place
  return jnp.where(t >= 1, t - 1, t)


# Codes are computed in a *view* of the elements in which every block is a run of trailing axes
# (``k`` of them): reductions and broadcasts over trailing axes, no reshape of element-sized
# arrays. XLA:CPU emits a fusion that reshapes (a merge of block axes, say) as scalar code; in
# the chunk loop of ``_chunks`` that made the 4-bit step 5-7x slower.


def _expand(scale, k: int):
  return scale.reshape(*scale.shape, *(1,) * k)


def _encode8_blocks(xb, k: int, signed: bool):
  """8-bit codes (same shape) and scales (the leading axes) of ``xb``, float32 already clamped to
  float32's range, whose blocks are its ``k`` trailing axes; rounded with :func:`_dither`'s noise."""
  axes = tuple(range(-k, 0))
  scale = jnp.max(jnp.abs(xb) if signed else xb, axis=axes)
  r = xb * _expand(_inverse(scale), k)
  u = _dither(scale, xb.shape[xb.ndim - k :])
  if signed:
    c = jnp.minimum(jnp.floor(127 * jnp.sqrt(jnp.abs(r)) + u), 127) * jnp.sign(r) + 127
  else:
    # Negative values cannot occur in a second moment; 0 guards rounding of (1 - d) * g^2 + d * v.
    c = jnp.minimum(jnp.floor(255 * jnp.sqrt(jnp.sqrt(jnp.maximum(r, 0))) + u), 255)
  return c.astype(jnp.uint8), scale


def _decode8_blocks(codes, scale, k: int, signed: bool, cdt):
  c = codes.astype(cdt)
  if signed:
    t = (c - 127) * (1 / 127)
    r = t * jnp.abs(t)
  else:
    t = c * (1 / 255)
    t = t * t
    r = t * t
  return r * _expand(scale.astype(cdt), k)


def _encode8(x, nb: int, signed: bool):
  """Codes and scales of ``x`` (..., last): ``nb`` blocks per row (see :func:`_encode8_blocks`)."""
  last = x.shape[-1]
  codes, scale = _encode8_blocks(_split(x, nb, math.ceil(last / nb)), 1, signed)
  return _merge(codes, last), scale


def _decode8(buf: Quantized8bit, cdt):
  last, nb = buf.codes.shape[-1], buf.scale.shape[-1]
  codes = _split(buf.codes, nb, math.ceil(last / nb))
  return _merge(_decode8_blocks(codes, buf.scale, 1, buf.signed, cdt), last)


def view4(width: int, block: int) -> tuple[int, ...]:
  """A row of ``width`` elements of 4-bit blocks of ``block`` viewed as ``(width / block, block / 8,
  8)`` (without a leading axis of length 1, which XLA:CPU lays out apart from the others and copies
  into place): the last axis is a word's eight codes (eight neighbours), the last two a block.

  Words of eight neighbours, so that the step's output, which XLA fuses into the user's update of
  the parameters over their flat shape, reads one word per eight lanes: with a block's codes in
  runs of ``block / 8`` (code ``j`` of every word from run ``j``) it read a word per lane, eight
  scalar loads per eight lanes (see ``docs/guides/low_bit.md``)."""
  return (*((width // block,) if width > block else ()), block // WORD, WORD)


_SHIFTS = tuple(range(0, 4 * WORD, 4))  # a word's code j in bits 4j to 4j + 3


def _up4(s, low, u):
  """1 where an element rounds up from level ``low`` to ``low + 1`` (levels ``L / 16`` of
  ``(v / scale) ** (1/4)``), 0 where it stays; ``s = sqrt(v / scale)``, ``u`` the noise, uniform in
  [0, 1). Up with probability ``(256 s - low^2) / ((low + 1)^2 - low^2)``: the stored ``sqrt(v)``,
  the update's denominator, is unbiased.

  Why ``sqrt(v)``: levels a factor 16 apart at the bottom (and 1.3 at the top) make the choice
  matter, the 8-bit map's 1.6 % steps much less. Rounded with a probability linear in
  ``v ** (1/4)`` (the 8-bit map's rule), the stored ``v`` comes out too large on average (Jensen),
  the bias compounds through the average, and steps are too short: the centered runs on the
  synthetic task (hidden width 128) ended +2.9 % above the float32 state's loss on average over 6
  seeds, up to +6.2 %. Linear in ``v`` the average is unbiased but ``1 / sqrt(v)`` is too large
  on average and the steps too long (plain: -3.6 % on average, up to -4.7 %). Linear in
  ``sqrt(v)``: within +-1.9 % on average for every variant and both tasks at width 128. Neither
  holds the centered runs with a 1536-wide layer (``docs/guides/low_bit.md``). The comparison
  needs no division."""
  return jnp.where(256 * s - low * low > u * (2 * low + 1), 1.0, 0.0)


def _encode4_view(x, k: int):
  """Words (``x``'s shape without its last axis) and scales of ``x`` (a view of :func:`view4`,
  non-negative float32), blocks over its ``k`` trailing axes; rounded with :func:`_dither`'s
  noise by :func:`_up4`'s rule."""
  axes = tuple(range(-k, 0))
  scale = jnp.max(x, axis=axes)
  # (v / scale)^(1/4) to one of L / 16, L = 1..16 (code q = L - 1), rounded stochastically (see
  # :func:`_up4`); from 0 up to 1/16: L = 1.
  s = jnp.sqrt(x * _expand(_inverse(scale), k))
  low = jnp.floor(16 * jnp.sqrt(s))
  q = low + _up4(s, low, _dither(scale, x.shape[x.ndim - k :])) - 1
  q = jnp.where(q > 0, jnp.where(q < 15, q, 15), 0).astype(jnp.uint32)
  words = q[..., 0]
  for j, shift in enumerate(_SHIFTS[1:], 1):
    words = words | (q[..., j] << shift)
  return words, scale


def _decode4_view(words, scale, k: int, cdt):
  # Each element reads its word (the same word for eight neighbours) and shifts it by its place.
  q = (words[..., None] >> jnp.array(_SHIFTS, jnp.uint32)) & 15
  t = (q.astype(cdt) + 1) * (1 / 16)
  t = t * t
  return t * t * _expand(scale.astype(cdt), k)


def _encode4(x, nb: int, block: int):
  """Words and scales of ``x`` (..., last), non-negative float32, ``nb`` blocks of ``block`` per
  row (see :class:`Quantized4bit`). Reshapes only split or merge axes, never both at once, so
  that a sharded axis keeps its sharding through them."""
  lead = x.shape[:-1]
  words, scale = _encode4_view(_split(x, nb, block).reshape(*lead, nb, block // WORD, WORD), 2)
  return words.reshape(*lead, nb * block // WORD), scale


def _decode4(buf: Quantized4bit, cdt):
  nb, lead = buf.scale.shape[-1], buf.codes.shape[:-1]
  words = buf.codes.reshape(*lead, nb, buf.codes.shape[-1] // nb)
  v = _decode4_view(words, buf.scale, 2, cdt)
  return _merge(v.reshape(*lead, nb, -1), buf.last)


@dataclasses.dataclass(frozen=True)
class View8:
  """Part of an 8-bit buffer in the chunk loop's view of its rows (see ``_chunks``): ``codes``
  ``(rows, *view)``, ``scale`` ``(rows, *view[:-k])``, blocks over the ``k`` trailing axes."""

  codes: jax.Array
  scale: jax.Array
  signed: bool
  k: int

  @property
  def shape(self):
    return self.codes.shape


@dataclasses.dataclass(frozen=True)
class View4:
  """Part of a 4-bit buffer in the chunk loop's view ``(rows, *view)`` (see :func:`view4`):
  ``codes`` ``(rows, *view[:-2], view[-1])`` (words), ``scale`` ``(rows, *view[:-k])``."""

  codes: jax.Array
  scale: jax.Array
  k: int

  @property
  def shape(self):
    return (*self.codes.shape, WORD)


def _full_precision(param, *, row: int = 1) -> bool:
  """Small or complex buffers stay in full precision (their bytes are negligible, or codes do not
  fit), as do those whose rows are shorter than ``row`` elements (a 4-bit row pads to 8 codes)."""
  shape = jnp.shape(param)
  return jnp.issubdtype(jnp.result_type(param), jnp.complexfloating) or math.prod(shape) < MIN_SIZE or shape[-1] < row


def _filled(param, code, fill, nb: int, block: int, *, packed: bool):
  """Codes and scales of a buffer holding ``fill`` everywhere, built without a reduction (XLA
  spends seconds constant-folding a blockwise maximum over a large constant buffer): every code is
  ``code`` and every scale ``fill`` (numbers, or scalars traced under inject_hyperparams). From an
  array ``param`` they are computed from it elementwise (and by slicing), so that under jit they
  take its sharding (see ``_storage._like_param``)."""
  shape = jnp.shape(param)
  code_shape = (*shape[:-1], nb * block // WORD) if packed else shape
  scale_shape = (*shape[:-1], nb)
  c = jnp.asarray(code, jnp.uint32 if packed else jnp.uint8)
  v = _storage.hyper(fill, jnp.float32)
  if not isinstance(param, (jax.Array, jax.core.Tracer)) and not hasattr(param, "__array__"):
    # An abstract leaf (jax.ShapeDtypeStruct): its sharding fits only a buffer of its shape.
    sharding = getattr(param, "sharding", None)
    codes = jnp.full(code_shape, c, c.dtype, device=None if packed else sharding)
    return codes, jnp.full(scale_shape, v, jnp.float32)
  probe = _split(jnp.isnan(jnp.asarray(param)), nb, block)
  first = probe[..., 0]
  scale = jnp.where(first, v, v)
  if packed:
    return jnp.where(probe[..., : block // WORD], c, c).reshape(code_shape), scale
  return jnp.where(jnp.isnan(jnp.asarray(param)), c, c), scale


def _suffix(view, size: int) -> int | None:
  """How many trailing axes of ``view`` make ``size`` elements (``None``: no run of them does)."""
  n = 1
  for k in range(1, len(view) + 1):
    n *= view[-k]
    if n == size:
      return k
    if n > size:
      return None
  return None


class Blockwise8bit:
  """The ``"8bit"`` codec (see the module docstring)."""

  name = "8bit"
  node_type = Quantized8bit
  view_type = View8

  def create(self, param, fill: float, *, real: bool):
    if _full_precision(param):
      return _storage.create(param, fill, jnp.dtype(_storage.compute_dtype(jnp.result_type(param))), real=real)
    last = jnp.shape(param)[-1]
    nb, block = blocks(last, BLOCK8)
    # Every element at the block's maximum (the fill), or a zero scale (signed buffers start at 0).
    code = 127 if not real else jnp.where(_storage.hyper(fill, jnp.float32) > 0, 255, 0)
    codes, scale = _filled(param, code, fill if real else 0.0, nb, block, packed=False)
    return Quantized8bit(codes=codes, scale=scale, signed=not real)

  def load(self, buffer, cdt):
    if isinstance(buffer, View8):
      return _decode8_blocks(buffer.codes, buffer.scale, buffer.k, buffer.signed, cdt)
    return _decode8(buffer, cdt)

  def store(self, x, like):
    if isinstance(like, View8):
      codes, scale = _encode8_blocks(x.astype(jnp.float32), like.k, like.signed)
      return View8(codes=codes, scale=scale, signed=like.signed, k=like.k)
    codes, scale = _encode8(x.astype(jnp.float32), like.scale.shape[-1], like.signed)
    return Quantized8bit(codes=codes, scale=scale, signed=like.signed)

  def shape(self, buffer):
    return buffer.codes.shape


  def block(self, buffer: Quantized8bit) -> tuple[int, int]:
    nb = buffer.scale.shape[-1]
    return nb, math.ceil(buffer.codes.shape[-1] / nb)

  def view(self, buffer: Quantized8bit, width: int) -> tuple[int, ...] | None:
    nb, block = self.block(buffer)
    if nb * block != buffer.codes.shape[-1] or width % block or block == 1:
      return None
    # (Axes of length 1 XLA:CPU lays out apart from the others, and copies into place.)
    return (width // block, block) if width > block else (block,)

  def fits(self, buffer: Quantized8bit, view) -> bool:
    nb, block = self.block(buffer)
    return nb * block == buffer.codes.shape[-1] and _suffix(view, block) is not None

  def parts(self, buffer: Quantized8bit, rows: int, view=None):
    if view is None:
      return [buffer.codes.reshape(rows, -1), buffer.scale.reshape(rows, -1)]
    k = _suffix(view, self.block(buffer)[1])
    return [buffer.codes.reshape(rows, *view), buffer.scale.reshape(rows, *view[:-k])]

  def from_parts(self, parts, like: Quantized8bit, *, chunk_last: int | None = None, view=None):
    codes, scale = parts
    if view is not None:
      return View8(codes=codes, scale=scale, signed=like.signed, k=_suffix(view, self.block(like)[1]))
    if chunk_last is None:  # the whole buffer again
      codes, scale = codes.reshape(like.codes.shape), scale.reshape(like.scale.shape)
    return Quantized8bit(codes=codes, scale=scale, signed=like.signed)


class Blockwise4bit:
  """The ``"4bit"`` codec (see the module docstring): 4-bit second moments, 8-bit signed buffers."""

  name = "4bit"
  node_type = Quantized4bit
  view_type = View4

  def create(self, param, fill: float, *, real: bool):
    if not real:
      return _EIGHT.create(param, fill, real=real)
    if _full_precision(param, row=WORD):
      return _storage.create(param, fill, jnp.dtype(_storage.compute_dtype(jnp.result_type(param))), real=real)
    last = jnp.shape(param)[-1]
    nb, block = blocks(last, BLOCK4, multiple=WORD)
    # q = 15 (every code of the word) is the block's maximum, the fill itself; any code of a zero scale is 0.
    codes, scale = _filled(param, 0xFFFFFFFF, fill, nb, block, packed=True)
    return Quantized4bit(codes=codes, scale=scale, last=last)

  def load(self, buffer, cdt):
    if isinstance(buffer, View4):
      return _decode4_view(buffer.codes, buffer.scale, buffer.k, cdt)
    return _decode4(buffer, cdt)

  def store(self, x, like):
    if isinstance(like, View4):
      codes, scale = _encode4_view(x.astype(jnp.float32), like.k)
      return View4(codes=codes, scale=scale, k=like.k)
    nb = like.scale.shape[-1]
    codes, scale = _encode4(x.astype(jnp.float32), nb, WORD * like.codes.shape[-1] // nb)
    return Quantized4bit(codes=codes, scale=scale, last=like.last)

  def shape(self, buffer):
    return buffer.shape


  def block(self, buffer: Quantized4bit) -> tuple[int, int]:
    nb = buffer.scale.shape[-1]
    return nb, WORD * buffer.codes.shape[-1] // nb

  def view(self, buffer: Quantized4bit, width: int) -> tuple[int, ...] | None:
    nb, block = self.block(buffer)
    if nb * block != buffer.last or width % block:
      return None
    return view4(width, block)

  def fits(self, buffer: Quantized4bit, view) -> bool:
    return tuple(view) == self.view(buffer, math.prod(view))

  def parts(self, buffer: Quantized4bit, rows: int, view=None):
    if view is None:
      return [buffer.codes.reshape(rows, -1), buffer.scale.reshape(rows, -1)]
    k = _suffix(view, self.block(buffer)[1])
    return [buffer.codes.reshape(rows, *view[:-1]), buffer.scale.reshape(rows, *view[:-k])]

  def from_parts(self, parts, like: Quantized4bit, *, chunk_last: int | None = None, view=None):
    codes, scale = parts
    if view is not None:
      return View4(codes=codes, scale=scale, k=_suffix(view, self.block(like)[1]))
    if chunk_last is None:  # the whole buffer again
      return Quantized4bit(codes=codes.reshape(like.codes.shape), scale=scale.reshape(like.scale.shape), last=like.last)
    return Quantized4bit(codes=codes, scale=scale, last=chunk_last)


_EIGHT = Blockwise8bit()
_storage.register_codec(_EIGHT, "8-bit")
_storage.register_codec(Blockwise4bit(), "4-bit")
