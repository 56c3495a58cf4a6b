"""Regression: the transforms accept any pytree container of parameters, not only dict/list/tuple.

flax NNX's ``nnx.Optimizer`` hands ``tx.update`` an ``nnx.State`` (a Mapping, not a dict); the core
once rejected it as "a state not made by init()". The reference is live optax on the same tree.
"""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optax_rmsprop

CASES = [
    (lambda: optax_rmsprop.rmsprop(1e-2), lambda: optax.rmsprop(1e-2)),
    (
        lambda: optax_rmsprop.rmsprop(1e-2, momentum=0.9, centered=True),
        lambda: optax.rmsprop(1e-2, momentum=0.9, centered=True),
    ),
    (lambda: optax_rmsprop.adagrad(1e-1), lambda: optax.adagrad(1e-1)),
]


def _train(tx):
  model = nnx.Linear(3, 2, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.arange(12, dtype=jnp.float32).reshape(4, 3) / 12

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

  for _ in range(5):
    step(model, optimizer)
  return np.asarray(model.kernel[...]), np.asarray(model.bias[...])


@pytest.mark.parametrize("ours, theirs", CASES)
def test_nnx_optimizer_matches_optax(ours, theirs):
  for a, b in zip(_train(ours()), _train(theirs()), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_state_with_a_non_array_leaf_is_rejected():
  tx = optax_rmsprop.scale_by_rms()
  bad = optax.ScaleByRmsState(nu={"w": 3.0})
  with pytest.raises(TypeError, match="not made by this transformation's init"):
    tx.update({"w": jnp.ones(2, jnp.float32)}, bad)
