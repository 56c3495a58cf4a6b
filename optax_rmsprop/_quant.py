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

``"4bit"``: the second moment in 4 bits, two codes per byte (byte ``k`` of a group of up to 4
blocks holds its elements ``k`` and ``k + P``, ``P`` half the group's length), blocks of at most :data:`BLOCK4` elements (0.53 bytes per
parameter), on a map without zero after Li, Chen & Zhu (2023): ``v = scale * ((q + 1) / 16) ** 2``
for ``q`` in 0..15, the scale being the block's maximum. No code means 0, so a small second moment
is never rounded to zero (which would turn ``g / sqrt(v)`` into ``g / sqrt(eps)``, their
"zero-point problem"): it is rounded up to at least 1/256 of the block's maximum, which only
shortens that element's step. The paper's map is linear in ``v``; linear in ``sqrt(v)`` (the
quantity the step divides by) the smallest level is 1/256 of the maximum instead of 1/16, and on
the digits and synthetic tasks the final loss moved from 7-21 % off the float32 state's to a few
per cent. The mean gradient and the momentum have no zero-point problem (a zero is harmless there)
and are kept in the 8-bit signed map.

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
import math

import jax
import jax.numpy as jnp

from optax_rmsprop import _storage

BLOCK8 = 256
BLOCK4 = 128
MIN_SIZE = 4096


def blocks(last: int, most: int, *, even: bool = False) -> tuple[int, int]:
  """(number of blocks, block length) for a row of ``last`` elements: equal blocks of at most
  ``most`` elements, the last one padded when ``last`` is not a multiple of their length
  (``even``: the length is even, so that codes pair up into bytes)."""
  nb = max(1, math.ceil(last / most))
  block = math.ceil(last / nb)
  return nb, block + (block % 2 if even else 0)


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
  """One 4-bit buffer of non-negative values: ``codes`` (uint8, two codes per byte: the parameter's
  shape with the last axis replaced by half its padded length) and ``scale`` (float32, the
  parameter's shape with the last axis replaced by its number of blocks). ``last`` (static) is the
  parameter's last-axis length; ``group`` (static) the number of blocks whose codes share bytes:
  byte ``k`` of a group holds its elements ``k`` and ``k + P``, ``P`` half the group's length."""

  codes: jax.Array
  scale: jax.Array
  last: int = dataclasses.field(metadata=dict(static=True))
  group: int = dataclasses.field(metadata=dict(static=True))

  @property
  def shape(self):
    return (*self.codes.shape[:-1], self.last)

  @property
  def dtype(self):
    return self.codes.dtype


def _dither(scale, block: int):
  """A number in [0, 1) per element of (..., nb, block) blocks, for rounding codes stochastically.

  Rounded to nearest, a code stalls where a step changes the value by less than half a level
  (an average moving by 10 % per step, against levels 1.6 % apart in 8 bits and 6 % or more in 4),
  and the stored average stops following the gradients. Rounding up with probability equal to the
  fraction keeps it unbiased. The noise is a hash (murmur3's finaliser) of the block's previous
  scale and the element's place in its block: deterministic, different at every step (the scale
  moves), and the same however the buffer is cut into chunks.
  """
  bits = jax.lax.bitcast_convert_type(scale.astype(jnp.float32), jnp.uint32)[..., None]
  h = bits + jnp.arange(block, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9)
  h = (h ^ (h >> 16)) * jnp.uint32(0x85EBCA6B)
  h = (h ^ (h >> 13)) * jnp.uint32(0xC2B2AE35)
  h = h ^ (h >> 16)
  return (h >> 8).astype(jnp.float32) * (1 / 2**24)


def _encode8(x, nb: int, signed: bool, old_scale):
  """Codes and scales of ``x`` (..., last), float32 already clamped to float32's range, rounded
  with the noise of :func:`_dither` drawn from ``old_scale`` (the buffer's previous scales)."""
  last = x.shape[-1]
  block = math.ceil(last / nb)
  xb = _split(x, nb, block)
  scale = jnp.max(jnp.abs(xb) if signed else xb, axis=-1)
  r = xb * _inverse(scale)[..., None]
  u = _dither(old_scale, block)
  if signed:
    c = jnp.minimum(jnp.floor(127 * jnp.sqrt(jnp.abs(r)) + u), 127) * jnp.sign(r) + 127
  else:
    # Negative values cannot occur in a second moment; 0 guards rounding of (1 - d) * g^2 + d * v.
    c = jnp.minimum(jnp.floor(255 * jnp.sqrt(jnp.sqrt(jnp.maximum(r, 0))) + u), 255)
  return _merge(c.astype(jnp.uint8), last), scale


def _decode8(buf: Quantized8bit, cdt):
  last, nb = buf.codes.shape[-1], buf.scale.shape[-1]
  c = _split(buf.codes, nb, math.ceil(last / nb)).astype(cdt)
  if buf.signed:
    t = (c - 127) * (1 / 127)
    r = t * jnp.abs(t)
  else:
    t = c * (1 / 255)
    t = t * t
    r = t * t
  return _merge(r * buf.scale.astype(cdt)[..., None], last)


def group_of(nb: int) -> int:
  """Blocks per group of 4-bit codes for a row of ``nb`` blocks: the largest power of two up to 4
  that divides ``nb`` (a group of 128-element blocks is up to 512 elements, so a last axis sharded
  in multiples of 512 keeps whole groups per shard)."""
  g = 4
  while nb % g:
    g //= 2
  return g


def _encode4(x, nb: int, block: int, group: int, old_scale):
  """Packed codes and scales of ``x`` (..., last), non-negative float32, rounded as in
  :func:`_encode8`."""
  xb = _split(x, nb, block)
  scale = jnp.max(xb, axis=-1)
  # sqrt(v / scale) to one of (q + 1) / 16, q = 0..15, rounded stochastically; from 0 up to 1/16: q = 0.
  q = jnp.floor(16 * jnp.sqrt(xb * _inverse(scale)[..., None]) + _dither(old_scale, block)) - 1
  q = jnp.where(q > 0, jnp.where(q < 15, q, 15), 0).astype(jnp.uint8)
  # Byte k of a group of blocks holds its elements k (low nibble) and k + P (high), P half the
  # group: decoding is then a broadcast over contiguous runs of P codes, which XLA:CPU vectorises
  # (pairs within a 128-element block made the step 1.6x slower, neighbours slower still).
  # (Reshapes only split or merge axes, never both at once, so that a sharded axis keeps its
  # sharding through them.)
  lead = x.shape[:-1]
  if group == 1:
    pairs = q.reshape(*lead, nb, 2, block // 2)
  else:
    pairs = q.reshape(*lead, nb // group, 2, group // 2, block).reshape(*lead, nb // group, 2, group * block // 2)
  packed = pairs[..., 0, :] | (pairs[..., 1, :] << 4)
  return packed.reshape(*lead, nb * block // 2), scale


def _decode4(buf: Quantized4bit, cdt):
  nb = buf.scale.shape[-1]
  block = 2 * buf.codes.shape[-1] // nb
  group, lead = buf.group, buf.codes.shape[:-1]
  b = buf.codes.reshape(*lead, nb // group, group * block // 2)
  # Both halves by one broadcast shift (a concatenate of the two, XLA:CPU did not fuse: it stored
  # the codes unpacked, 2 bytes per parameter, before the step read them).
  shifts = jnp.array([[0], [4]], jnp.uint8)
  q = (b[..., None, :] >> shifts) & 15
  if group == 1:
    q = q.reshape(*lead, nb, 1, block)
  else:
    q = q.reshape(*lead, nb // group, 2, group // 2, block).reshape(*lead, nb // group, group, block)
  t = (q.astype(cdt) + 1) * (1 / 16)
  scale = buf.scale.astype(cdt).reshape(*lead, nb // group, group)
  return _merge((t * t * scale[..., None]).reshape(*lead, nb, block), buf.last)


def _full_precision(param) -> bool:
  """Small or complex buffers stay in full precision (their bytes are negligible, or codes do not fit)."""
  return jnp.issubdtype(jnp.result_type(param), jnp.complexfloating) or math.prod(jnp.shape(param)) < MIN_SIZE


def _filled(param, code: int, fill: float, nb: int, block: int, *, packed: bool):
  """Codes and scales of a buffer holding ``fill`` everywhere, built without a reduction (XLA
  spends seconds constant-folding a blockwise maximum over a large constant buffer): every code is
  ``code`` and every scale ``fill``. From an array ``param`` they are computed from it elementwise
  (and by slicing), so that under jit they take its sharding (see ``_storage._like_param``)."""
  shape = jnp.shape(param)
  code_shape = (*shape[:-1], nb * block // 2) if packed else shape
  scale_shape = (*shape[:-1], nb)
  c, v = jnp.uint8(code), jnp.float32(fill)
  if not isinstance(param, (jax.Array, jax.core.Tracer)) and not hasattr(param, "__array__"):
    # An abstract leaf (jax.ShapeDtypeStruct): its sharding fits only a buffer of its shape.
    sharding = getattr(param, "sharding", None)
    codes = jnp.full(code_shape, c, jnp.uint8, device=None if packed else sharding)
    return codes, jnp.full(scale_shape, v, jnp.float32)
  probe = _split(jnp.isnan(jnp.asarray(param)), nb, block)
  first = probe[..., 0]
  scale = jnp.where(first, v, v)
  if packed:
    return jnp.where(probe[..., : block // 2], c, c).reshape(code_shape), scale
  return jnp.where(jnp.isnan(jnp.asarray(param)), c, c), scale


class Blockwise8bit:
  """The ``"8bit"`` codec (see the module docstring)."""

  name = "8bit"
  node_type = Quantized8bit

  def create(self, param, fill: float, *, real: bool):
    if _full_precision(param):
      return _storage.create(param, fill, jnp.dtype(_storage.compute_dtype(jnp.result_type(param))), real=real)
    last = jnp.shape(param)[-1]
    nb, block = blocks(last, BLOCK8)
    # Every element at the block's maximum (the fill), or a zero scale (signed buffers start at 0).
    code = 127 if not real else (255 if fill else 0)
    codes, scale = _filled(param, code, float(fill) if real else 0.0, nb, block, packed=False)
    return Quantized8bit(codes=codes, scale=scale, signed=not real)

  def load(self, buffer: Quantized8bit, cdt):
    return _decode8(buffer, cdt)

  def store(self, x, like: Quantized8bit):
    codes, scale = _encode8(x.astype(jnp.float32), like.scale.shape[-1], like.signed, like.scale)
    return Quantized8bit(codes=codes, scale=scale, signed=like.signed)

  def shape(self, buffer: Quantized8bit):
    return buffer.codes.shape

  def block(self, buffer: Quantized8bit) -> tuple[int, int]:
    nb = buffer.scale.shape[-1]
    return nb, math.ceil(buffer.codes.shape[-1] / nb)

  def parts(self, buffer: Quantized8bit, rows: int):
    return [buffer.codes.reshape(rows, -1), buffer.scale.reshape(rows, -1)]

  def from_parts(self, parts, like: Quantized8bit, *, chunk_last: int | None = None):
    codes, scale = parts
    if chunk_last is None:  # the whole buffer again
      codes, scale = codes.reshape(like.codes.shape), scale.reshape(like.scale.shape)
    return Quantized8bit(codes=codes, scale=scale, signed=like.signed)


class Blockwise4bit:
  """The ``"4bit"`` codec (see the module docstring): 4-bit second moments, 8-bit signed buffers."""

  name = "4bit"
  node_type = Quantized4bit

  def create(self, param, fill: float, *, real: bool):
    if not real:
      return _EIGHT.create(param, fill, real=real)
    if _full_precision(param):
      return _storage.create(param, fill, jnp.dtype(_storage.compute_dtype(jnp.result_type(param))), real=real)
    last = jnp.shape(param)[-1]
    nb, block = blocks(last, BLOCK4, even=True)
    # q = 15 (both nibbles) is the block's maximum, the fill itself; any code of a zero scale is 0.
    codes, scale = _filled(param, 0xFF, float(fill), nb, block, packed=True)
    return Quantized4bit(codes=codes, scale=scale, last=last, group=group_of(nb))

  def load(self, buffer: Quantized4bit, cdt):
    return _decode4(buffer, cdt)

  def store(self, x, like: Quantized4bit):
    nb = like.scale.shape[-1]
    codes, scale = _encode4(x.astype(jnp.float32), nb, 2 * like.codes.shape[-1] // nb, like.group, like.scale)
    return Quantized4bit(codes=codes, scale=scale, last=like.last, group=like.group)

  def shape(self, buffer: Quantized4bit):
    return buffer.shape

  def block(self, buffer: Quantized4bit) -> tuple[int, int]:
    # A group of blocks is the unit: codes pair elements across it.
    nb = buffer.scale.shape[-1]
    return nb // buffer.group, 2 * buffer.group * buffer.codes.shape[-1] // nb

  def parts(self, buffer: Quantized4bit, rows: int):
    return [buffer.codes.reshape(rows, -1), buffer.scale.reshape(rows, -1)]

  def from_parts(self, parts, like: Quantized4bit, *, chunk_last: int | None = None):
    codes, scale = parts
    if chunk_last is None:  # the whole buffer again
      return Quantized4bit(codes=codes.reshape(like.codes.shape), scale=scale.reshape(like.scale.shape), last=like.last, group=like.group)
    return Quantized4bit(codes=codes, scale=scale, last=chunk_last, group=like.group)


_EIGHT = Blockwise8bit()
_storage.register_codec(_EIGHT)
_storage.register_codec(Blockwise4bit())
