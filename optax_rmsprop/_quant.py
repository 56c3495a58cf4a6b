"""Blockwise 8-bit optimizer state: ``state_dtype="8bit"``.

A buffer of a real parameter with at least :data:`MIN_SIZE` elements is kept as one uint8 code per
element plus one float32 scale per block of at most :data:`BLOCK` consecutive elements of the last
axis (block boundaries never cross a row, so a sharded last axis keeps whole blocks per shard when
its shard length is a multiple of the block). Smaller (or complex) buffers stay in float32.

Two code maps, both analytic (no lookup table; square roots only, which XLA vectorises, where a
cube root is a scalar library call that made the step 20x slower on CPU):

* second moments (non-negative): ``v = scale * (c / 255) ** 4`` for ``c`` in 0..255, the scale
  being the block's maximum. All 256 codes cover [0, max] (a signed map would waste the 128
  negative ones), the relative step is ``4 / c`` (1.6 % at the top) and the smallest non-zero value
  is ``2.4e-10`` of the block's maximum, so small second moments do not collapse to zero.
* signed buffers (mean gradient, momentum): ``v = scale * sign(q) * (q / 127) ** 2`` with
  ``q = c - 127`` in -127..127, the scale being the block's largest magnitude: relative step
  ``2 / |q|`` (1.6 % at the top), smallest non-zero magnitude ``6.2e-5`` of the block's largest.

This module depends on ``_storage`` and registers itself there; the update rules never see codes.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from optax_rmsprop import _storage

BLOCK = 256
MIN_SIZE = 4096


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


def _blocks(last: int) -> tuple[int, int]:
  """(number of blocks, block length) for a last axis of ``last`` elements: equal blocks of at most
  BLOCK elements (the last one padded when ``last`` is not a multiple of their length)."""
  nb = max(1, math.ceil(last / BLOCK))
  return nb, math.ceil(last / nb)


def _split(x, nb: int, block: int):
  """``x`` as (..., nb, block), zero-padding the last axis if needed."""
  pad = nb * block - x.shape[-1]
  if pad:
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
  return x.reshape(*x.shape[:-1], nb, block)


def _merge(xb, last: int):
  x = xb.reshape(*xb.shape[:-2], xb.shape[-2] * xb.shape[-1])
  return x[..., :last] if x.shape[-1] != last else x


def _encode(x, signed: bool):
  """Codes and scales of ``x`` (float32, already clamped to float32's range)."""
  last = x.shape[-1]
  nb, block = _blocks(last)
  xb = _split(x, nb, block)
  scale = jnp.max(jnp.abs(xb) if signed else xb, axis=-1)
  inv = jnp.where(scale > 0, 1 / jnp.where(scale > 0, scale, 1), 0)
  r = xb * inv[..., None]
  if signed:
    c = jnp.round(127 * jnp.sqrt(jnp.abs(r))) * jnp.sign(r) + 127
  else:
    # Negative values cannot occur in a second moment; 0 guards rounding of (1 - d) * g^2 + d * v.
    c = jnp.round(255 * jnp.sqrt(jnp.sqrt(jnp.maximum(r, 0))))
  return _merge(c.astype(jnp.uint8), last), scale


def _decode(buf: Quantized8bit, cdt):
  last = buf.codes.shape[-1]
  nb, block = _blocks(last)
  c = _split(buf.codes, nb, block).astype(cdt)
  if buf.signed:
    t = (c - 127) * (1 / 127)
    r = t * jnp.abs(t)
  else:
    t = c * (1 / 255)
    t = t * t
    r = t * t
  return _merge(r * buf.scale.astype(cdt)[..., None], last)


class Blockwise8bit:
  """The ``"8bit"`` codec (see the module docstring)."""

  name = "8bit"
  node_type = Quantized8bit

  def create(self, param, fill: float, *, real: bool):
    dtype = jnp.result_type(param)
    if jnp.issubdtype(dtype, jnp.complexfloating) or math.prod(jnp.shape(param)) < MIN_SIZE:
      # Small or complex buffers: full precision (their bytes are negligible or codes do not fit).
      return _storage.create(param, fill, jnp.dtype(_storage.compute_dtype(dtype)), real=real)
    full = _storage.create(param, fill, jnp.dtype(jnp.float32), real=real)
    codes, scale = _encode(full, signed=not real)
    return Quantized8bit(codes=codes, scale=scale, signed=not real)

  def load(self, buffer: Quantized8bit, cdt):
    return _decode(buffer, cdt)

  def store(self, x, like: Quantized8bit):
    codes, scale = _encode(x.astype(jnp.float32), signed=like.signed)
    return Quantized8bit(codes=codes, scale=scale, signed=like.signed)

  def shape(self, buffer: Quantized8bit):
    return buffer.codes.shape


_storage.register_codec(Blockwise8bit())

