"""The few Flax NNX calls whose spelling changed between the flax releases the tests run with:
0.11 (the newest beside jax 0.6, the floors leg of .ci/run) and 0.12 (the newest)."""

import jax
from flax import nnx


def _is_var(x) -> bool:
  return isinstance(x, (nnx.Variable, getattr(nnx, "VariableState", nnx.Variable)))


def pure(tree):
  """``nnx.as_pure`` (flax 0.12): the tree with each Variable replaced by its value."""
  if hasattr(nnx, "as_pure"):
    return nnx.as_pure(tree)
  return jax.tree.map(lambda v: v.value if _is_var(v) else v, tree, is_leaf=_is_var)


def get_value(v):
  return v.get_value() if hasattr(v, "get_value") else v.value


def set_value(v, value) -> None:
  if hasattr(v, "set_value"):
    v.set_value(value)
  else:
    v.value = value
