"""A native CPU kernel for the chunk loop of low-bit state: block maxima, codes and the in-place
write of one chunk in a single pass (``_native.cc``, an XLA FFI handler).

XLA:CPU runs the encoding of a chunk as three kernels (the block maxima, the codes, the in-place
copy into the state) that each read the chunk again; on a 2-core Intel Xeon they made the 8-bit
step 2.1-2.6x optax's float32 step. The handler does the same arithmetic (``_quant``'s, in float32,
without fused multiply-adds) in one pass per block, split over XLA's intra-op threads.

It is compiled on first use with the system's C++ compiler (``$CXX``, else ``c++``/``g++``/
``clang++``) against the FFI headers that jaxlib ships, with ``-march=native``, and cached under
``$OPTAX_RMSPROP_CACHE`` (default ``~/.cache/optax_rmsprop``) by a hash of the source, jaxlib's
version, the compiler and the CPU. Where that fails (no compiler, no headers), or with
``OPTAX_RMSPROP_NATIVE=0``, or in a process with more than one CPU device (where XLA's SPMD
partitioner would have to gather a custom call's operands), the loop encodes with XLA as before:
the same codes, up to the rounding of ties. On GPU and TPU the XLA path is the only one
(``lax.platform_dependent``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

TARGET = "optax_rmsprop_encode"
UNSIGNED8, SIGNED8, FOUR = 0, 1, 2
_SOURCE = Path(__file__).with_name("_native.cc")


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def _cpu_key() -> str:
  """The CPU the library is compiled for (``-march=native``): its model and instruction flags."""
  try:
    info = Path("/proc/cpuinfo").read_text()
    lines = [line for line in info.splitlines() if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(lines))
  except OSError:
    return platform.processor() or platform.machine()


def _cache_dir() -> Path:
  root = os.environ.get("OPTAX_RMSPROP_CACHE")
  if root:
    return Path(root)
  base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
  return Path(base) / "optax_rmsprop"


def build() -> Path:
  """Compiles ``_native.cc`` (if not cached) and returns the shared library's path; raises
  ``RuntimeError`` saying why where it cannot."""
  import jaxlib

  cxx = _compiler()
  if cxx is None:
    raise RuntimeError("no C++ compiler found (set $CXX)")
  include = Path(jax.ffi.include_dir())
  if not (include / "xla" / "ffi" / "api" / "ffi.h").exists():
    raise RuntimeError(f"jaxlib's FFI headers are missing from {include}")
  flags = ["-O3", "-march=native", "-mprefer-vector-width=512", "-std=c++17", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC"]
  key = hashlib.sha256(
      "\0".join([_SOURCE.read_text(), jaxlib.__version__, cxx, " ".join(flags), _cpu_key(), sys.platform]).encode()
  ).hexdigest()[:16]
  out = _cache_dir() / f"encode-{key}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  # Compiled beside the target and renamed into place: concurrent processes never load half a file.
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
  os.close(fd)
  try:
    cmd = [cxx, *flags, f"-I{include}", str(_SOURCE), "-o", tmp]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
      raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


@functools.cache
def _load() -> bool:
  try:
    lib = ctypes.cdll.LoadLibrary(str(build()))
    jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.OptaxRmspropEncode), platform="cpu")
  except Exception as e:  # noqa: BLE001 (any failure means: encode with XLA)
    warnings.warn(f"optax_rmsprop: the native low-bit kernel is unavailable, XLA encodes instead ({e})", RuntimeWarning, stacklevel=3)
    return False
  return True


def enabled() -> bool:
  """Whether the chunk loop encodes with the native kernel on CPU (checked at trace time)."""
  if os.environ.get("OPTAX_RMSPROP_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
    return False
  try:
    if len(jax.devices("cpu")) != 1:
      return False
  except RuntimeError:
    return False
  return _load()


def encode_rows(x, codes, scales, at, *, kind: int, width: int, block: int, nb: int):
  """``x`` (rows of ``width`` float32 elements, any view of them) encoded into ``codes`` and
  ``scales`` (the whole state's, row-major; donated) from row ``at`` on; returns both, updated."""
  call = jax.ffi.ffi_call(
      TARGET,
      (jax.ShapeDtypeStruct(codes.shape, codes.dtype), jax.ShapeDtypeStruct(scales.shape, scales.dtype)),
      input_output_aliases={1: 0, 2: 1},
      vmap_method="sequential",
  )
  return call(
      x.astype(jnp.float32), codes, scales, jnp.asarray(at, jnp.int32),
      kind=np.int64(kind), width=np.int64(width), block=np.int64(block), nb=np.int64(nb),
  )
