"""Flax NNX integration: nnx.Optimizer hands the transforms nnx.State trees, not dicts."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop

nnx = pytest.importorskip("flax.nnx")


def _train(tx, steps=5):
  model = nnx.Linear(3, 2, rngs=nnx.Rngs(0), param_dtype=jnp.float32)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3)), jnp.float32)

  @nnx.jit
  def step(model, opt):
    grads = nnx.grad(lambda m: jnp.mean((m(x) - 1.0) ** 2))(model)
    opt.update(model, grads)

  for _ in range(steps):
    step(model, opt)
  return np.asarray(model.kernel[...])


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: optax_rmsprop.rmsprop(0.01, momentum=0.9), lambda: optax.rmsprop(0.01, momentum=0.9)),
        (lambda: optax_rmsprop.rmsprop(0.01, centered=True), lambda: optax.rmsprop(0.01, centered=True)),
        (lambda: optax_rmsprop.adagrad(0.1), lambda: optax.adagrad(0.1)),
        (
            lambda: optax.inject_hyperparams(optax_rmsprop.rmsprop)(learning_rate=0.01, decay=0.95),
            lambda: optax.rmsprop(0.01, decay=0.95),
        ),
    ],
    ids=["rmsprop-momentum", "rmsprop-centered", "adagrad", "inject_hyperparams"],
)
def test_nnx_optimizer_matches_optax(ours, theirs):
  np.testing.assert_allclose(_train(ours()), _train(theirs()), rtol=1e-5, atol=1e-6)
