"""Mismatched trees fail with a message naming the mismatch, never a bare tree-util or XLA trace.

Covers gradients vs. state (every buffer-holding transform, eager and under jit), gradients vs.
params (weight decay reads the params), a state built for other params, a state whose 8-bit
nodes were split into their arrays after init (named as the state's fault, not the gradient's),
and weight_decay_mask trees that do not fit the params.
"""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import optax_rmsprop
from optax_rmsprop import _storage

PARAMS = {"a": jnp.ones(3, jnp.float32), "b": jnp.ones((2, 2), jnp.float32)}

VARIANTS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.9),
    "weight-decay": dict(weight_decay=0.1),
}

# (gradient tree, a regex the error must match: it names the offending leaf path)
BAD_GRADIENTS = {
    "missing-leaf": ({"a": PARAMS["a"]}, r"missing from the gradient: \['b'\]"),
    "extra-leaf": ({**PARAMS, "c": jnp.ones(1, jnp.float32)}, r"not in the optimizer state: \['c'\]"),
    "renamed-leaf": ({"a": PARAMS["a"], "c": PARAMS["b"]}, r"missing from the gradient: \['b'\].*not in .*\['c'\]"),
    "list-for-dict": ([PARAMS["a"], PARAMS["b"]], r"missing from the gradient: \['a'\], \['b'\]"),
    "wrong-shape": (
        {"a": jnp.ones(4, jnp.float32), "b": PARAMS["b"]},
        r"leaf \['a'\] has shape \(4,\) in the gradient but \(3,\)",
    ),
}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("bad", list(BAD_GRADIENTS), ids=list(BAD_GRADIENTS))
@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_gradient_tree_must_match_state(variant, bad, jit):
  tx = optax_rmsprop.rmsprop(0.1, **VARIANTS[variant])
  state = tx.init(PARAMS)
  grads, pattern = BAD_GRADIENTS[bad]
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(ValueError, match=r"scale_by_rms: .*" + pattern):
    update(grads, state, PARAMS)


def test_state_built_for_other_params_is_rejected():
  tx = optax_rmsprop.rmsprop(0.1)
  other_state = tx.init({"x": PARAMS["a"]})
  with pytest.raises(ValueError, match=r"missing from the gradient: \['x'\].*not in the optimizer state: \['a'\]"):
    tx.update(PARAMS, other_state, PARAMS)


def test_momentum_state_must_match_gradient():
  # The trace transform checks its own buffers: feed it a state whose momentum tree is foreign.
  tx = optax_rmsprop.trace(0.9)
  state = tx.init({"x": PARAMS["a"]})
  with pytest.raises(ValueError, match=r"trace: the gradient tree does not match the optimizer state tree"):
    tx.update(PARAMS, state)


def test_params_tree_must_match_gradient_for_weight_decay():
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.1)
  state = tx.init(PARAMS)
  with pytest.raises(ValueError, match=r"decoupled_weight_decay: .*not in the params: \['b'\]"):
    tx.update(PARAMS, state, {"a": PARAMS["a"]})


def test_params_shape_must_match_gradient_for_weight_decay():
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.1)
  state = tx.init(PARAMS)
  bad_params = {"a": jnp.ones(4, jnp.float32), "b": PARAMS["b"]}
  with pytest.raises(ValueError, match=r"decoupled_weight_decay: leaf \['a'\] has shape \(3,\) in the gradient but \(4,\) in the params"):
    tx.update(PARAMS, state, bad_params)


def test_weight_decay_without_params_says_how_to_call():
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.1)
  with pytest.raises(ValueError, match=r"call update\(grads, state, params\)"):
    tx.update(PARAMS, tx.init(PARAMS))


BAD_MASKS = {
    "missing-leaf": ({"a": True}, r"missing from the mask: \['b'\]"),
    "extra-leaf": ({"a": True, "b": False, "c": True}, r"not in the params: \['c'\]"),
    "list-for-dict": ([True, False], r"missing from the mask: \['a'\], \['b'\]"),
    "too-deep": ({"a": True, "b": {"x": True}}, r"not in the params: \['b'\]\['x'\]"),
    "callable-missing-leaf": (lambda p: {"a": True}, r"missing from the mask: \['b'\]"),
}


@pytest.mark.parametrize("bad", list(BAD_MASKS), ids=list(BAD_MASKS))
def test_weight_decay_mask_must_match_params(bad):
  mask, pattern = BAD_MASKS[bad]
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.1, weight_decay_mask=mask)
  with pytest.raises(ValueError, match=r"weight_decay_mask does not match the params tree \(.*" + pattern):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS)


def test_matching_prefix_mask_is_accepted_and_applied():
  # The negative cases above must not reject good masks: a prefix mask decays only 'a'.
  tx = optax_rmsprop.rmsprop(0.1, weight_decay=0.5, weight_decay_mask={"a": True, "b": False})
  params = {"a": jnp.full(3, 2.0, jnp.float32), "b": jnp.full((2, 2), 2.0, jnp.float32)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  # Zero gradients give a zero RMSProp step, so the update is u = -lr * wd * p on masked leaves.
  assert jnp.allclose(updates["a"], -0.1 * 0.5 * 2.0)
  assert bool(jnp.all(updates["b"] == 0))


def test_state_whose_buffers_are_not_arrays_is_rejected():
  tx = optax_rmsprop.scale_by_rms()
  state = tx.init(PARAMS)._replace(nu="not a buffer")
  with pytest.raises(TypeError, match=r"scale_by_rms: the state passed to update\(\) was not made by this"):
    tx.update(PARAMS, state)


# A state whose codec nodes were split into their arrays after init (what nnx.Optimizer's leaf
# by leaf write-back once did to 8-bit state): the state changed, and the message must say so.
BIG = {"kernel": jnp.ones((64, 128), jnp.float32), "bias": jnp.ones(128, jnp.float32)}


def _split_nodes(tree):
  """Every codec node replaced by a plain dict of its fields, as a leaf-wise write-back leaves it."""
  is_node = lambda x: _storage.codec_of(x) is not None
  return jax.tree.map(lambda x: {f.name: getattr(x, f.name) for f in dataclasses.fields(x) if not f.metadata.get("static")}
                      if is_node(x) else x, tree, is_leaf=is_node)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize(
    "make, fn",
    [
        (lambda: optax_rmsprop.rmsprop(0.1, state_dtype="8bit"), "scale_by_rms"),
        (lambda: optax_rmsprop.rmsprop(0.1, centered=True, state_dtype="8bit"), "scale_by_rms"),
        (lambda: optax_rmsprop.trace(0.9, state_dtype="8bit"), "trace"),
    ],
    ids=["rmsprop", "centered", "trace"],
)
def test_state_whose_codec_nodes_were_split_says_the_state_changed(make, fn, jit):
  tx = make()
  state = _split_nodes(tx.init(BIG))
  update = jax.jit(tx.update) if jit else tx.update
  with pytest.raises(ValueError) as info:
    update(BIG, state, BIG)
  msg = str(info.value)
  assert msg.startswith(f"{fn}: the optimizer state no longer has the structure init() made"), msg
  assert "['kernel']['codes'], ['kernel']['scale']" in msg, msg
  assert "gradient tree does not match" not in msg and "missing from the gradient" not in msg, msg


def test_nnx_write_back_of_a_boxed_codec_node_is_named():
  """The original failure: a state holding each 8-bit buffer as one nnx.Variable value, written
  back with nnx.update from the next state, hands update() the node's arrays as an nnx.State."""
  nnx = pytest.importorskip("flax.nnx")
  from nnx_compat import pure

  tx = optax_rmsprop.rmsprop(0.1, state_dtype="8bit")
  state = tx.init(BIG)
  held = jax.tree.map(nnx.Variable, state, is_leaf=_storage.is_buffer)  # one box per buffer
  _, new_state = tx.update(BIG, state, BIG)
  nnx.update(held, nnx.state(new_state))
  with pytest.raises(ValueError, match=r"scale_by_rms: the optimizer state no longer has the structure init\(\) made: "
                                       r"its state leaves \['kernel'\]\['codes'\], \['kernel'\]\['scale'\]") as info:
    tx.update(BIG, pure(held), BIG)
  assert "gradient tree does not match" not in str(info.value)


def test_a_deeper_state_tree_that_is_no_split_node_still_blames_the_trees():
  # Leaves below a gradient leaf that are not named as a codec node's fields: the usual message.
  tx = optax_rmsprop.rmsprop(0.1, state_dtype="8bit")
  other = tx.init({"kernel": {"x": BIG["kernel"], "y": BIG["bias"]}, "bias": BIG["bias"]})
  with pytest.raises(ValueError, match=r"the gradient tree does not match the optimizer state tree \(missing from "
                                       r"the gradient: \['kernel'\]\['x'\], \['kernel'\]\['y'\]"):
    tx.update(BIG, other, BIG)
