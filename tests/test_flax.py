"""Flax: train an MLP on scikit-learn's digits with nnx.Optimizer and with Linen's TrainState.

Each test trains full-batch until the loss is well below its start, and checks the trajectory
against the same training loop driven by optax's own RMSProp (the independent reference): for
the centered + momentum + weight-decay variant that is ``optax.rmsprop(centered, momentum)``
followed by ``optax.add_decayed_weights(-lr * wd)``, which is ``u - lr * wd * p`` as ours.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from flax.training import train_state
from nnx_compat import pure as _pure  # noqa: I001
from sklearn.datasets import load_digits

import optax_rmsprop
from optax_rmsprop import _storage

LR, WD = 3e-3, 1e-2
STEPS = 60

VARIANTS = {
    "plain": (dict(learning_rate=LR), lambda: optax.rmsprop(LR)),
    "centered-momentum-wd": (
        dict(learning_rate=LR, centered=True, momentum=0.9, weight_decay=WD),
        lambda: optax.chain(optax.rmsprop(LR, centered=True, momentum=0.9), optax.add_decayed_weights(-LR * WD)),
    ),
}


@pytest.fixture(scope="module")
def digits():
  x, y = load_digits(return_X_y=True)
  return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y, jnp.int32)


def _check(losses, reference_losses):
  losses, reference_losses = np.asarray(losses), np.asarray(reference_losses)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < 0.3 * losses[0], f"loss went from {losses[0]:.3f} to only {losses[-1]:.3f}"
  # Same maths as optax's RMSProp: the curves agree to float32 rounding, amplified a little by
  # training (tight early, looser late).
  np.testing.assert_allclose(losses[:10], reference_losses[:10], rtol=1e-4)
  np.testing.assert_allclose(losses, reference_losses, rtol=2e-2)


class NnxMLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 32, rngs=rngs)
    self.out = nnx.Linear(32, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _train_nnx(tx, x, y):
  model = NnxMLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(model):
      return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer, x, y)) for _ in range(STEPS)]
  return losses, optimizer


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_nnx_optimizer_trains_mlp_on_digits(digits, variant):
  kwargs, reference = VARIANTS[variant]
  losses, optimizer = _train_nnx(optax_rmsprop.rmsprop(**kwargs), *digits)
  reference_losses, _ = _train_nnx(reference(), *digits)
  _check(losses, reference_losses)
  # The optimizer really holds optax's state over the model's nnx.Params (centered: mu and nu).
  rms_state = _pure(optimizer.opt_state)[0]
  centered = kwargs.get("centered", False)
  assert isinstance(rms_state, optax.ScaleByRStdDevState if centered else optax.ScaleByRmsState)
  assert int(_pure(optimizer.step)) == STEPS


class LinenMLP(nn.Module):
  hidden: int = 32

  @nn.compact
  def __call__(self, x):
    return nn.Dense(10)(nn.relu(nn.Dense(self.hidden)(x)))


def _train_linen(tx, x, y, hidden=32, steps=STEPS):
  model = LinenMLP(hidden)
  params = model.init(jax.random.key(0), x[:1])["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  @jax.jit
  def step(state, x, y):
    def loss_fn(params):
      logits = state.apply_fn({"params": params}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss

  losses = []
  for _ in range(steps):
    state, loss = step(state, x, y)
    losses.append(float(loss))
  return losses, state


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_linen_train_state_trains_mlp_on_digits(digits, variant):
  kwargs, reference = VARIANTS[variant]
  losses, state = _train_linen(optax_rmsprop.rmsprop(**kwargs), *digits)
  reference_losses, _ = _train_linen(reference(), *digits)
  _check(losses, reference_losses)
  assert int(state.step) == STEPS
  assert isinstance(state.opt_state[0], optax.ScaleByRStdDevState if kwargs.get("centered") else optax.ScaleByRmsState)
  assert jax.tree.leaves(state.params)[0].dtype == jnp.float32


LOW_BIT_VARIANTS = {"plain": {}, "centered": {"centered": True}, "momentum": {"momentum": 0.9}}


@pytest.mark.parametrize("variant", list(LOW_BIT_VARIANTS))
def test_linen_train_state_trains_with_8bit_state(digits, variant):
  """200 steps with state_dtype="8bit" (a 64 x 128 first kernel, kept as codes): the final loss is
  within 5 % of optax.rmsprop's with float32 state, and the state is still about 1 byte a parameter."""
  kw = LOW_BIT_VARIANTS[variant]
  losses, state = _train_linen(optax_rmsprop.rmsprop(1e-3, state_dtype="8bit", **kw), *digits, hidden=128, steps=200)
  ref_losses, _ = _train_linen(optax.rmsprop(1e-3, **kw), *digits, hidden=128, steps=200)
  assert np.all(np.isfinite(losses))
  assert ref_losses[-1] < 0.5 * ref_losses[0]
  assert abs(losses[-1] - ref_losses[-1]) <= 0.05 * ref_losses[-1], (losses[-1], ref_losses[-1])
  assert int(state.step) == 200
  (nu,) = [b for b in jax.tree.leaves(state.opt_state[0].nu, is_leaf=_storage.is_buffer) if _storage.shape_of(b) == (64, 128)]
  assert _storage.codec_of(nu) is not None, type(nu)
  assert sum(leaf.nbytes for leaf in jax.tree.leaves(nu)) <= 1.05 * 64 * 128
