"""Running a leaf's update in bounded chunks, so that low-bit state lowers the step's peak memory.

A blockwise code needs each block's maximum of the *new* values before it can write a code, and
XLA:CPU (which has no multi-output fusion) then materialises the new values in float32: 4 bytes
per parameter and buffer of temporaries, more than the codes save. Here the buffers of one leaf are
advanced by a loop over chunks of whole blocks (``lax.fori_loop``, writing each chunk's codes into
the donated buffers in place), so that every float temporary has the size of one chunk; the step's
output is then recomputed from the stored buffers and the inputs (cheap, elementwise), which XLA
fuses into whatever consumes it (``optax.apply_updates``).

A leaf is advanced by a sequence of *stages* (the scaling and the momentum of ``rmsprop``, which
``chain`` runs together so that the momentum's input need not be materialised either); each stage
gives ``advance(x, buffers) -> (y, new_buffers)`` and ``read(x, new_buffers) -> y``, where ``x``
is the previous stage's output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optax_rmsprop import _storage

# Elements per chunk: a 64th of the leaf, at least 2**16 (a float32 temporary of 256 KiB; smaller
# chunks spend more time starting XLA:CPU's kernels than in them) and at most 2**20.
MIN_CHUNK, MAX_CHUNK, CHUNKS = 1 << 16, 1 << 20, 64


def chunk_size(size: int) -> int:
  """Elements per chunk for a leaf of ``size`` elements."""
  return min(max(size // CHUNKS, MIN_CHUNK), MAX_CHUNK)


class Stage(NamedTuple):
  """One stage's arithmetic on one leaf (see the module docstring)."""

  advance: Callable[[jax.Array, tuple], tuple[jax.Array, tuple]]
  read: Callable[[jax.Array, tuple], jax.Array]


def _layout(shape, buffers) -> tuple[int, int] | None:
  """(rows, row length) of the view the chunks are cut from, or ``None`` to run the leaf whole.

  Chunks are rows of the view. Where every codec's blocks tile the last axis exactly, the view's
  rows are the least common multiple of the block lengths (any number of them makes a chunk);
  otherwise the rows are the parameter's rows, whose last block is padded.
  """
  size = math.prod(shape)
  codecs = [(b, _storage.codec_of(b)) for b in buffers if _storage.codec_of(b) is not None]
  if not codecs or size <= MIN_CHUNK or len(shape) == 0:
    return None
  last = shape[-1]
  geometry = [codec.block(b) for b, codec in codecs]
  if all(nb * block == last for nb, block in geometry):
    width = math.lcm(*(block for _, block in geometry))
  else:
    width = last
  rows = size // width
  if rows < 2:
    return None
  return rows, width


def _view(buffers, width: int) -> tuple[int, ...] | None:
  """The axes a row of the view is cut into inside the loop, such that every codec's blocks are
  runs of trailing axes (``None``: no such axes, the rows stay flat). The step then reshapes
  nothing element-sized inside the loop: XLA:CPU emits fusions that reshape as scalar code, which
  made the 4-bit step 5-7x slower."""
  codecs = [(b, _storage.codec_of(b)) for b in buffers if _storage.codec_of(b) is not None]
  views = [codec.view(b, width) for b, codec in codecs]
  if any(v is None for v in views):
    return None
  view = max(views, key=len)
  return view if all(codec.fits(b, view) for b, codec in codecs) else None


def _parts(buffer, rows: int, view) -> list[jax.Array]:
  codec = _storage.codec_of(buffer)
  if codec is None:
    return [buffer.reshape(rows, *(view or (-1,)))]
  if isinstance(buffer, codec.view_type):
    return [buffer.codes, buffer.scale]
  return codec.parts(buffer, rows, view)


def _node(parts, like, width: int | None, view=None):
  """A buffer from its parts: a chunk's (``width``: its row length) or the whole one's
  (``None``); in ``view``, the codec's view node."""
  codec = _storage.codec_of(like)
  if codec is None:
    return parts[0] if width is not None or view is not None else parts[0].reshape(like.shape)
  if view is not None:
    return codec.from_parts(parts, like, view=view)
  return codec.from_parts(parts, like, chunk_last=width)


def _nonnegative(x):
  """An int32 >= 0 computed from ``x`` (which XLA cannot simplify to a constant)."""
  if jnp.issubdtype(x.dtype, jnp.unsignedinteger):
    # (Its lowest bit: a word of 4-bit codes read as an int32 may be negative, and a large ``t``
    # would overflow ``start + t``.)
    return (x & 1).astype(jnp.int32)
  return jnp.isnan(jnp.real(x) if jnp.iscomplexobj(x) else x).astype(jnp.int32)


def run(stages: Sequence[Stage], x, buffers: Sequence[tuple]) -> tuple[jax.Array, list[tuple]]:
  """Advances one leaf through ``stages`` (``buffers[i]``: stage i's buffers for this leaf).

  Returns the last stage's output and every stage's new buffers.
  """
  flat = [b for bufs in buffers for b in bufs]
  layout = _layout(jnp.shape(x), flat)
  if layout is None:
    y, new = x, []
    for stage, bufs in zip(stages, buffers, strict=True):
      y, out = stage.advance(y, bufs)
      new.append(tuple(out))
    return y, new
  rows, width = layout
  per_chunk = max(1, chunk_size(math.prod(jnp.shape(x))) // width)
  loops, tail = divmod(rows, per_chunk)
  view = _view(flat, width)
  x_rows = x.reshape(rows, *(view or (width,)))
  parts = [_parts(b, rows, view) for b in flat]
  counts = [len(bufs) for bufs in buffers]
  # The loop carries the parts as (rows, elements per row), and cuts a chunk into the view only once
  # sliced (a reshape splitting the minor axis: a bitcast). Its in-place writes into buffers of the
  # view's shape (u8[65536, 2, 8, 16] beside 4-bit codes, say) XLA:CPU ran a few bytes at a time:
  # on a 2-core AMD EPYC (Zen 2) the centered + momentum 4-bit step went from 2.56-2.78x optax's to
  # 2.39-2.52x, 8-bit from 1.89-1.90x to 1.86x (interleaved). The 4-bit words (uint32) stay in the
  # view: carried flat, their encoding fusion took 5x longer there (3.4-3.8x optax's in all).
  inner = [[a.shape[1:] for a in ps] for ps in parts]
  parts = [[a if a.dtype == jnp.uint32 else a.reshape(rows, -1) for a in ps] for ps in parts]
  unflat = lambda arrays, shapes: [a.reshape(a.shape[0], *s) for a, s in zip(arrays, shapes, strict=True)]

  # A buffer's first part (its codes, or the array) is rewritten in place, chunk by chunk. Its
  # other parts (the block scales, 1/64 of the codes' bytes or less) are read from the old arrays
  # and written into new ones: rewritten in place too, XLA:CPU copied them at every chunk (the
  # codes' update reads the old scales, and XLA does not order it before their rewrite).
  old = [ps[1:] for ps in parts]
  parts = [[ps[0], *(jnp.zeros_like(a) for a in ps[1:])] for ps in parts]

  def write(parts, piece_node, at, size):
    """``piece_node``'s arrays written into ``parts`` at row ``at``; the token of the write."""
    pieces = [p.astype(a.dtype).reshape(size, *a.shape[1:]) for a, p in zip(parts, _parts(piece_node, size, view), strict=True)]
    put = lambda ps: [jax.lax.dynamic_update_slice_in_dim(a, p, at, 0) for a, p in zip(ps, pieces, strict=True)]

    def on_cpu():
      # XLA:CPU only: the in-place write inside a loop whose trip count (1, from a value XLA cannot
      # fold) is unknown at compile time. XLA:CPU then computes the pieces in their own fusion,
      # which it splits over the cores, and only copies them in place in the loop; fused into the
      # in-place write (which XLA:CPU runs on one core), computing them took most of the step.
      # Writing the same pieces again would change nothing. Other backends parallelise the fused
      # write and get the plain one.
      floats = [p for p in pieces if jnp.issubdtype(p.dtype, jnp.inexact)]
      trips = 1 + _nonnegative(floats[0].reshape(-1)[0]) if floats else 1
      return jax.lax.fori_loop(0, trips, lambda _, ps: put(ps), parts)

    written = jax.lax.platform_dependent(cpu=on_cpu, default=lambda: put(parts))
    first = written[0]
    token = _nonnegative(jax.lax.dynamic_slice(first, (at, *(jnp.int32(0),) * (first.ndim - 1)), (1,) * first.ndim).reshape(()))
    return written, token

  def advance_chunk(start, size, parts):
    """The chunk of ``size`` rows at ``start``: every stage advanced, its buffers written."""
    start = jnp.asarray(start, jnp.int32)
    take = lambda a, at=start: jax.lax.dynamic_slice_in_dim(a, at, size)
    chunk = [
        _node(unflat([take(ps[0]), *map(take, olds)], shapes), like, width, view)
        for ps, olds, like, shapes in zip(parts, old, flat, inner, strict=True)
    ]
    # Stage by stage, the in-place writes one after the other (within a stage in order: a centered
    # variance reads the old mean), each followed by reading the chunk back as written, from
    # which the next stage's input is computed. A write that XLA cannot order after every read
    # of the old values costs a copy of the whole buffer per chunk; a stage reading the codes as
    # written (one byte per element) rather than as computed keeps XLA from storing the computed
    # codes in float32 for both of their readers. Each write's offset depends (as
    # min(start, start + t), t >= 0) on one element that the previous write stored, which orders
    # them without changing where they land.
    y, i, token = take(x_rows), 0, None
    written = [None] * len(parts)
    for stage, n in zip(stages, counts, strict=True):
      y_new, out = stage.advance(y, tuple(chunk[i : i + n]))
      back = []
      for j, k in enumerate(range(i, i + n)):
        at = start if token is None else jnp.minimum(start, start + token)
        written[k], token = write(parts[k], out[j], at, size)
        back.append(_node(unflat([take(a, at) for a in written[k]], inner[k]), flat[k], width, view))
      y = stage.read(y, tuple(back)) if n else y_new
      i += n
    return written

  if loops:
    parts = jax.lax.fori_loop(0, loops, lambda i, ps: advance_chunk(i * per_chunk, per_chunk, ps), parts)
  if tail:
    parts = advance_chunk(loops * per_chunk, tail, parts)
  parts = [unflat(ps, shapes) for ps, shapes in zip(parts, inner, strict=True)]
  new_flat = [_node(ps, like, None) for ps, like in zip(parts, flat, strict=True)]
  # The output from the stored buffers, elementwise (in the loop's view): XLA fuses it into its
  # consumer.
  viewed = new_flat if view is None else [_node(ps, like, None, view) for ps, like in zip(parts, flat, strict=True)]
  new, y, i = [], x if view is None else x_rows, 0
  for stage, n in zip(stages, counts, strict=True):
    y = stage.read(y, tuple(viewed[i : i + n]))
    new.append(tuple(new_flat[i : i + n]))
    i += n
  return y.reshape(jnp.shape(x)), new


def has_codec(tree: Any) -> bool:
  """Whether any buffer in ``tree`` is kept by a codec (low-bit state)."""
  return any(_storage.codec_of(b) is not None for b in jax.tree.leaves(tree, is_leaf=_storage.is_buffer))
