"""Validation of hyperparameters and of the trees handed to ``init``/``update``.

Everything here runs at construction or trace time, in Python: none of it reaches the compiled
step. Traced values (hyperparameters under ``optax.inject_hyperparams``) pass through unchecked.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _concrete_scalar(fn: str, name: str, value: Any) -> float | None:
  """Returns ``value`` as a float, ``None`` when it is traced, or raises for a wrong type."""
  if isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (bool, np.bool_)) or isinstance(value, (str, bytes)):
    raise TypeError(
        f"{fn}({name}={value!r}): {name} must be a real number, got {type(value).__name__}"
    )
  try:
    arr = np.asarray(value)
  except Exception as e:  # e.g. a jax array that is not concrete
    raise TypeError(f"{fn}({name}=...): {name} must be a real number, got {type(value).__name__}") from e
  if arr.shape == () and jnp.iscomplexobj(arr) and arr.imag == 0:
    arr = arr.real  # inject_hyperparams casts hyperparameters to complex for complex params
  if arr.shape != () or not (jnp.issubdtype(arr.dtype, jnp.floating) or jnp.issubdtype(arr.dtype, jnp.integer)):
    raise TypeError(
        f"{fn}({name}={value!r}): {name} must be a real scalar, got an array of shape "
        f"{arr.shape} and dtype {arr.dtype}"
    )
  return float(arr)


def static_float(value: Any) -> float | None:
  """``value`` as a Python float when it is a concrete real scalar, else ``None`` (traced, array,
  schedule...). For decisions made at trace time, never for validation."""
  if isinstance(value, (jax.core.Tracer, bool)) or callable(value):
    return None
  try:
    arr = np.asarray(value)
  except Exception:
    return None
  if arr.shape != () or not jnp.issubdtype(arr.dtype, jnp.floating) and not jnp.issubdtype(arr.dtype, jnp.integer):
    return None
  return float(arr)


def check_range(
    fn: str,
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    hint: str = "",
    allow_none: bool = True,
) -> None:
  """Raises if a concrete hyperparameter is NaN, infinite or outside its allowed interval.

  The message names the call as the user wrote it: ``rmsprop(decay=1.5): decay must be in [0, 1],
  got 1.5``. Schedules (callables) and traced values are not checked; ``None`` passes unless
  ``allow_none=False`` (a required number).
  """
  if value is None and not allow_none:
    raise TypeError(f"{fn}({name}=None): {name} must be a real number, got None")
  if value is None or callable(value):
    return
  x = _concrete_scalar(fn, name, value)
  if x is None:
    return
  lo = "(" if low_open or low == -math.inf else "["
  hi = ")" if high_open or high == math.inf else "]"
  lo_s = "-inf" if low == -math.inf else f"{low:g}"
  hi_s = "inf" if high == math.inf else f"{high:g}"
  allowed = f"{lo}{lo_s}, {hi_s}{hi}"
  if not math.isfinite(x):
    raise ValueError(f"{fn}({name}={value!r}): {name} must be a finite number in {allowed}, got {x}")
  too_low = x <= low if low_open else x < low
  too_high = x >= high if high_open else x > high
  if too_low or too_high:
    raise ValueError(f"{fn}({name}={value!r}): {name} must be in {allowed}, got {x:g}{hint}")


def check_schedule_or_number(fn: str, name: str, value: Any, low: float = 0.0) -> None:
  """A learning rate: a finite number >= ``low``, or a schedule (any callable)."""
  if callable(value):
    return
  hint = " (use maximize=True to ascend)" if name == "learning_rate" else ""
  check_range(fn, name, value, low, hint=hint, allow_none=False)


def check_flag(fn: str, name: str, value: Any) -> None:
  """A boolean switch: ``True`` or ``False`` (a string such as ``"no"`` would silently mean True)."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{fn}({name}={value!r}): {name} must be True or False, got {type(value).__name__}")


def check_state_type(fn: str, state: Any, expected: type) -> None:
  """Raises TypeError when ``update`` receives a state its ``init`` did not make (e.g. an
  ``ScaleByRStdDevState`` handed to a non-centered ``rmsprop``)."""
  if not isinstance(state, expected):
    got = type(state)
    raise TypeError(
        f"{fn}: update() got a state of type {got.__module__}.{got.__qualname__}, not the "
        f"{expected.__module__.split('._')[0]}.{expected.__qualname__} that {fn}'s init() makes; "
        "pass the state returned by this transformation's init() (or by its previous update())"
    )


def _path_str(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _leaf_paths(tree) -> dict[str, Any]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {_path_str(p): leaf for p, leaf in leaves}


def describe_tree_mismatch(expected, got, expected_name: str, got_name: str) -> str:
  """A human sentence saying which leaf paths differ between two trees."""
  want, have = _leaf_paths(expected), _leaf_paths(got)
  missing = [p for p in want if p not in have]
  extra = [p for p in have if p not in want]
  parts = []
  if missing:
    parts.append(f"missing from the {got_name}: {', '.join(missing[:8])}" + (" …" if len(missing) > 8 else ""))
  if extra:
    parts.append(f"not in the {expected_name}: {', '.join(extra[:8])}" + (" …" if len(extra) > 8 else ""))
  if not parts:
    parts.append(
        f"same leaf paths but different containers: {expected_name} is "
        f"{jax.tree.structure(expected)}, {got_name} is {jax.tree.structure(got)}"
    )
  return "; ".join(parts)


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def check_buffers_not_split(fn: str, state, gradient, node_fields) -> None:
  """Raises ValueError when a codec's node in the state was split into its arrays after ``init``.

  ``init`` makes one buffer per gradient leaf, a codec's node (8-bit codes and scales) counting as
  one. Leaves directly below a gradient leaf's path, named as one of ``node_fields`` (the array
  fields of each registered node type), are such a node rebuilt as a plain container of its arrays
  (e.g. by code that writes the state back leaf by leaf): the state changed, not the gradient, and
  the message says so. ``state`` has one leaf per buffer.
  """
  grad_paths = {tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(gradient)[0]}
  below: dict[tuple, list] = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]:
    if len(path) > 1 and tuple(path[:-1]) in grad_paths:
      below.setdefault(tuple(path[:-1]), []).append(path)
  split = {o: ps for o, ps in below.items() if frozenset(_key_name(p[-1]) for p in ps) in node_fields}
  if split:
    owners = ", ".join(_path_str(o) for o in list(split)[:8]) + (" …" if len(split) > 8 else "")
    leaves = [_path_str(p) for ps in split.values() for p in ps]
    raise ValueError(
        f"{fn}: the optimizer state no longer has the structure init() made: its state leaves "
        + ", ".join(leaves[:8]) + (" …" if len(leaves) > 8 else "")
        + f" sit below {owners}, where init() put one buffer per parameter (a state_dtype codec's node, "
        "since rebuilt as a plain container of its arrays, e.g. by code that writes the state back leaf "
        "by leaf); pass update() the state that init() or the previous update() returned, with its "
        "structure unchanged"
    )


def check_same_structure(fn: str, expected, got, expected_name: str, got_name: str) -> None:
  """Raises ValueError naming the differing paths when two trees do not match."""
  if jax.tree.structure(expected) != jax.tree.structure(got):
    raise ValueError(
        f"{fn}: the {got_name} tree does not match the {expected_name} tree ("
        + describe_tree_mismatch(expected, got, expected_name, got_name)
        + ")"
    )


def check_same_shapes(fn: str, expected, got, expected_name: str, got_name: str) -> None:
  """Raises ValueError naming the first leaf whose shape differs (trees already match)."""
  for (path, e), g in zip(jax.tree_util.tree_flatten_with_path(expected)[0], jax.tree.leaves(got), strict=True):
    if jnp.shape(e) != jnp.shape(g):
      raise ValueError(
          f"{fn}: leaf {_path_str(path)} has shape {jnp.shape(g)} in the {got_name} but "
          f"{jnp.shape(e)} in the {expected_name}"
      )


def check_float_leaves(fn: str, tree, tree_name: str) -> None:
  """Raises TypeError naming the first leaf that is not floating point or complex."""
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.complexfloating)):
      raise TypeError(
          f"{fn}: {tree_name} leaf {_path_str(path)} has dtype {dtype}; an optimizer needs "
          "floating-point or complex leaves. Keep integer/boolean leaves out of the optimized "
          "tree (e.g. nnx.Optimizer(..., wrt=nnx.Param)) or freeze them with "
          "optax.multi_transform(..., optax.set_to_zero())"
      )


def params_for_decay(fn: str, params, updates):
  """The params a weight-decay transform decays: required unless the gradient tree is empty."""
  if params is None and jax.tree.leaves(updates):
    raise ValueError(f"{fn}: weight decay needs the parameters: call update(grads, state, params)")
  params = updates if params is None else params  # an empty tree (None itself is one): nothing to decay
  check_same_structure(fn, params, updates, "params", "gradient")
  return params
