"""Bad input: every mistake gets an error that names it, raised before anything is computed.

Checks that a wrong call fails loudly and readably (the argument in call syntax, the allowed range,
the value received; the leaf path that differs) and that the caller's arrays survive the failure,
even under ``jax.jit`` with donated buffers.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_rmsprop as orp

F32 = jnp.float32


def _params():
  return {"w": jnp.ones((2, 3), F32), "b": [jnp.zeros(3, F32), jnp.full((), 0.5, F32)]}


# ---------------------------------------------------------------------------------------------
# Invalid hyperparameters, for every public constructor.
#
# Each entry: (constructor, the required arguments, {argument: kind}). Kinds:
#   "unit"      a number in [0, 1];      "unit_open"  a number in [0, 1);
#   "nonneg"    a number >= 0;            "positive"   a number > 0;
#   "lr"        a number >= 0 or a schedule;
#   "flag"      True or False;           optional ones (None allowed) are marked with a "?" suffix.

CORE_SPECS = [
    (
        orp.rmsprop,
        dict(learning_rate=0.1),
        dict(
            learning_rate="lr",
            decay="unit",
            eps="nonneg",
            initial_scale="nonneg",
            momentum="unit_open?",
            weight_decay="nonneg?",
            eps_in_sqrt="flag",
            centered="flag",
            nesterov="flag",
            bias_correction="flag",
            maximize="flag",
        ),
    ),
    (orp.adagrad, dict(learning_rate=0.1), dict(learning_rate="lr", initial_accumulator_value="nonneg", eps="nonneg")),
    (
        orp.scale_by_rms,
        dict(),
        dict(
            decay="unit",
            eps="nonneg",
            initial_scale="nonneg",
            eps_in_sqrt="flag",
            bias_correction="flag",
            centered="flag",
        ),
    ),
    (orp.scale_by_rss, dict(), dict(initial_accumulator_value="nonneg", eps="nonneg", eps_in_sqrt="flag")),
    (orp.trace, dict(decay=0.9), dict(decay="unit_open", nesterov="flag")),
    (orp.scale_by_learning_rate, dict(learning_rate=0.1), dict(learning_rate="lr", flip_sign="flag")),
    (orp.decoupled_weight_decay, dict(learning_rate=0.1, weight_decay=0.1), dict(learning_rate="lr", weight_decay="nonneg")),
]


def _compat_specs():
  try:
    from optax_rmsprop import compat
  except ImportError:
    return []
  # Only values that every framework rejects: the ports validate as their sources do (issue 3).
  return [
      (
          compat.torch_rmsprop,
          dict(),
          dict(lr="lr", alpha="unit", eps="nonneg", weight_decay="nonneg", momentum="nonneg", centered="flag"),
      ),
      (
          compat.torch_adagrad,
          dict(),
          dict(lr="lr", lr_decay="nonneg", weight_decay="nonneg", initial_accumulator_value="nonneg", eps="nonneg"),
      ),
      (
          compat.keras_rmsprop,
          dict(),
          dict(
              learning_rate="lr",
              rho="unit",
              momentum="nonneg",
              epsilon="nonneg",
              centered="flag",
              weight_decay="nonneg?",
              clipnorm="positive?",
              clipvalue="positive?",
              global_clipnorm="positive?",
          ),
      ),
      (compat.keras_adagrad, dict(), dict(learning_rate="lr", initial_accumulator_value="nonneg", epsilon="nonneg")),
      (
          compat.tf1_rmsprop,
          dict(learning_rate=0.01),
          dict(learning_rate="lr", decay="unit", momentum="nonneg", epsilon="nonneg", centered="flag"),
      ),
      (compat.graves_rmsprop, dict(), dict(learning_rate="lr", decay="unit", momentum="nonneg", eps="nonneg")),
      (compat.dqn_rmsprop, dict(), dict(learning_rate="lr", decay="unit", eps="nonneg")),
  ]


def _bad_values(kind: str) -> list[tuple[object, type[Exception]]]:
  """Values every argument of this kind must reject, with the exception type expected."""
  base = kind.rstrip("?")
  if base == "flag":
    return [("yes", TypeError), (None, TypeError), (1.5, TypeError), ("False", TypeError)]
  bad: list[tuple[object, type[Exception]]] = [
      (math.nan, ValueError),
      (math.inf, ValueError),
      (-math.inf, ValueError),
      (np.float32("nan"), ValueError),
      (-1.0, ValueError),
      (-1e-12, ValueError),
      ("0.1", TypeError),
      (True, TypeError),
      ([0.1], TypeError),
      (jnp.array([0.1, 0.2]), TypeError),
  ]
  if base in ("unit", "unit_open"):
    bad += [(1.5, ValueError), (1.0 + 1e-6, ValueError)]
  if base == "unit_open":
    bad.append((1.0, ValueError))
  if base == "positive":
    bad.append((0.0, ValueError))
  if not kind.endswith("?"):
    bad.append((None, TypeError))
  return bad


def _hyper_cases(specs):
  for make, required, args in specs:
    for name, kind in args.items():
      for value, exc in _bad_values(kind):
        yield pytest.param(make, required, name, value, exc, id=f"{make.__name__}-{name}={value!r}")


def _check_invalid(make, required, name, value, exc):
  fn = make.__name__
  with pytest.raises(exc) as info:
    make(**{**required, name: value})
  msg = str(info.value)
  # The call as the user wrote it, then the argument's name again in the explanation.
  assert msg.startswith(f"{fn}({name}="), msg
  assert name in msg.split(":", 1)[1], msg


@pytest.mark.parametrize("make, required, name, value, exc", list(_hyper_cases(CORE_SPECS)))
def test_invalid_hyperparameter_core(make, required, name, value, exc):
  _check_invalid(make, required, name, value, exc)


_COMPAT = list(_hyper_cases(_compat_specs()))


@pytest.mark.skipif(not _COMPAT, reason="optax_rmsprop.compat is not importable")
@pytest.mark.parametrize("make, required, name, value, exc", _COMPAT or [pytest.param(*[None] * 5, id="none")])
def test_invalid_hyperparameter_compat(make, required, name, value, exc):
  _check_invalid(make, required, name, value, exc)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: orp.rmsprop(0.1, decay=1.5), "rmsprop(decay=1.5): decay must be in [0, 1], got 1.5"),
        (lambda: orp.rmsprop(0.1, momentum=1.0), "rmsprop(momentum=1.0): momentum must be in [0, 1), got 1"),
        (lambda: orp.rmsprop(-0.1), "rmsprop(learning_rate=-0.1): learning_rate must be in [0, inf), got -0.1"),
        (lambda: orp.adagrad(0.1, eps=math.nan), "adagrad(eps=nan): eps must be a finite number in [0, inf), got nan"),
        (lambda: orp.trace(decay="0.9"), "trace(decay='0.9'): decay must be a real number, got str"),
        (lambda: orp.rmsprop(0.1, centered="no"), "rmsprop(centered='no'): centered must be True or False, got str"),
    ],
)
def test_hyperparameter_messages_read_as_documented(call, message):
  with pytest.raises((ValueError, TypeError)) as info:
    call()
  assert str(info.value).startswith(message), str(info.value)


def test_negative_learning_rate_suggests_maximize():
  with pytest.raises(ValueError, match=re.escape("use maximize=True to ascend")):
    orp.rmsprop(-1e-3)


@pytest.mark.parametrize("state_dtype", [jnp.int32, jnp.int8, jnp.complex64, "int8", "uint8", "16bit", "float", object()])
@pytest.mark.parametrize("make", [orp.rmsprop, orp.scale_by_rms, orp.scale_by_rss, orp.trace])
def test_invalid_state_dtype(make, state_dtype):
  required = {"learning_rate": 0.1} if make is orp.rmsprop else {"decay": 0.9} if make is orp.trace else {}
  if state_dtype == "float":  # numpy reads "float" as float64: a valid choice, not an error
    make(**required, state_dtype=state_dtype)
    return
  with pytest.raises(ValueError, match=re.escape(f"{make.__name__}(state_dtype=")):
    make(**required, state_dtype=state_dtype)


@pytest.mark.parametrize("spelling", ["8-bit", "4-bit", "8BIT", "4Bit"])
def test_state_dtype_names_with_a_hyphen_or_capitals_are_accepted(spelling):
  """"8-bit" stores the same codes as "8bit" (its nu a uint8 code per element), "4-bit" as "4bit"."""
  params = {"w": jnp.ones((64, 128))}
  width = {"8": jnp.uint8, "4": jnp.uint32}[spelling[0]]
  state = orp.rmsprop(0.1, state_dtype=spelling).init(params)
  assert state[0].nu["w"].codes.dtype == width


@pytest.mark.parametrize("state_dtype", ["8 bit", "2bit", "int4", "bits"])
def test_unknown_state_dtype_names_list_the_choices(state_dtype):
  """Our own error (not numpy's "format number 1 of ... is not recognized"), listing every choice."""
  with pytest.raises(ValueError) as info:
    orp.rmsprop(0.1, state_dtype=state_dtype)
  message = str(info.value)
  assert message.startswith(f"rmsprop(state_dtype={state_dtype!r}): state_dtype must be None or one of ")
  for choice in ("float16", "bfloat16", "float32", "float64", "'8bit'", "'4bit'"):
    assert choice in message


def test_dtype_class_under_inject_hyperparams_says_how_to_pass_it():
  """inject_hyperparams calls a callable argument as a schedule: jnp.bfloat16 arrives as an array."""
  params = {"w": jnp.ones(4)}
  tx = optax.inject_hyperparams(orp.rmsprop)(learning_rate=0.1, state_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=re.escape("pass its name (state_dtype='bfloat16') or static_args=('state_dtype',)")):
    tx.init(params)
  for tx in (
      optax.inject_hyperparams(orp.rmsprop)(learning_rate=0.1, state_dtype="bfloat16"),
      optax.inject_hyperparams(orp.rmsprop, static_args=("state_dtype",))(learning_rate=0.1, state_dtype=jnp.bfloat16),
  ):
    assert tx.init(params).inner_state[0].nu["w"].dtype == jnp.bfloat16


def test_complex_params_with_half_precision_state_say_why():
  tx = orp.rmsprop(0.1, momentum=0.9, state_dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match="cannot hold the complex buffers"):
    tx.init({"z": jnp.ones(2, jnp.complex64)})


@pytest.mark.parametrize("mask", [3, "yes", {"w": 1, "b": True}, {"w": True, "b": jnp.ones(3)}])
def test_weight_decay_mask_must_be_booleans(mask):
  with pytest.raises(TypeError, match=re.escape("rmsprop(weight_decay_mask=...): weight_decay_mask leaf")):
    orp.rmsprop(0.1, weight_decay=1e-2, weight_decay_mask=mask)
  with pytest.raises(TypeError, match=re.escape("decoupled_weight_decay(mask=...): mask leaf")):
    orp.decoupled_weight_decay(0.1, 1e-2, mask=mask)


def test_weight_decay_mask_callable_checked_at_update():
  params = _params()
  tx = orp.rmsprop(0.1, weight_decay=1e-2, weight_decay_mask=lambda p: jax.tree.map(lambda _: 1.0, p))
  with pytest.raises(TypeError, match=r"weight_decay_mask leaf \['b'\]\[0\] must be a boolean"):
    tx.update(params, tx.init(params), params)


def test_weight_decay_mask_structure_mismatch_names_paths():
  params = _params()
  tx = orp.rmsprop(0.1, weight_decay=1e-2, weight_decay_mask={"w": True, "v": False})
  with pytest.raises(ValueError, match=r"weight_decay_mask does not match the params tree \(.*\['v'\]"):
    tx.update(params, tx.init(params), params)


def test_mask_without_weight_decay():
  with pytest.raises(ValueError, match=re.escape("rmsprop(weight_decay_mask=...): a mask needs weight_decay")):
    orp.rmsprop(0.1, weight_decay_mask={"w": True})


def test_weight_decay_without_params():
  params = _params()
  tx = orp.rmsprop(0.1, weight_decay=1e-2)
  with pytest.raises(ValueError, match=re.escape("call update(grads, state, params)")):
    tx.update(params, tx.init(params))


# ---------------------------------------------------------------------------------------------
# Trees that do not fit the state.

ALL_WITH_STATE = [
    pytest.param(lambda: orp.rmsprop(0.1), id="rmsprop"),
    pytest.param(lambda: orp.rmsprop(0.1, centered=True, momentum=0.9, weight_decay=1e-2), id="rmsprop-all"),
    pytest.param(lambda: orp.adagrad(0.1), id="adagrad"),
    pytest.param(lambda: orp.scale_by_rms(), id="scale_by_rms"),
    pytest.param(lambda: orp.scale_by_rss(), id="scale_by_rss"),
    pytest.param(lambda: orp.trace(0.9), id="trace"),
]


@pytest.mark.parametrize("make", ALL_WITH_STATE)
def test_gradient_tree_missing_and_extra_keys_are_named(make):
  params = _params()
  tx = make()
  state = tx.init(params)
  grads = {"w": params["w"], "c": params["b"]}  # 'b' renamed to 'c'
  with pytest.raises(ValueError) as info:
    tx.update(grads, state, params)
  msg = str(info.value)
  assert "does not match" in msg, msg
  assert "missing from the gradient: ['b'][0], ['b'][1]" in msg, msg
  assert "not in the optimizer state: ['c'][0], ['c'][1]" in msg, msg


@pytest.mark.parametrize("make", ALL_WITH_STATE)
def test_gradient_tree_with_other_containers_is_explained(make):
  params = {"a": jnp.ones(2, F32), "b": jnp.ones(2, F32)}
  tx = make()
  state = tx.init(params)
  grads = [params["a"], params["b"]]  # a list where the state has a dict
  with pytest.raises(ValueError, match="gradient tree does not match") as info:
    tx.update(grads, state, params if "weight" not in repr(make) else grads)
  assert "[0]" in str(info.value) and "['a']" in str(info.value), str(info.value)


@pytest.mark.parametrize("make", ALL_WITH_STATE)
def test_leaf_shape_mismatch_names_the_leaf(make):
  params = _params()
  tx = make()
  state = tx.init(params)
  grads = {"w": jnp.ones((3, 2), F32), "b": params["b"]}
  with pytest.raises(ValueError) as info:
    tx.update(grads, state, params)
  msg = str(info.value)
  assert "['w']" in msg and "(3, 2)" in msg and "(2, 3)" in msg, msg


def test_none_leaf_where_state_has_array():
  params = {"a": jnp.ones(2, F32), "b": jnp.ones(2, F32)}
  tx = orp.rmsprop(0.1)
  with pytest.raises(ValueError, match=r"missing from the gradient: \['b'\]"):
    tx.update({"a": params["a"], "b": None}, tx.init(params))


# ---------------------------------------------------------------------------------------------
# A state from somewhere else.


@pytest.mark.parametrize(
    "tx, foreign, expected",
    [
        # optax's own states are ours (tests/test_optax_state.py); a state of other flags is not.
        (lambda: orp.rmsprop(0.1), lambda p: optax.rmsprop(0.1, centered=True).init(p), "ScaleByRStdDevState"),
        (lambda: orp.rmsprop(0.1, centered=True), lambda p: optax.rmsprop(0.1).init(p), "ScaleByRmsState"),
        (lambda: orp.scale_by_rms(bias_correction=True), lambda p: optax.scale_by_rms().init(p), "ScaleByRmsState"),
        (lambda: orp.scale_by_rms(), lambda p: optax.scale_by_adam().init(p), "ScaleByAdamState"),
        (lambda: orp.scale_by_rss(), lambda p: optax.scale_by_rms().init(p), "ScaleByRmsState"),
        (lambda: orp.trace(0.9), lambda p: orp.scale_by_rms().init(p), "ScaleByRmsState"),
        (lambda: orp.trace(0.9), lambda p: optax.ema(0.9).init(p), "EmaState"),
        (lambda: orp.scale_by_rms(), lambda p: orp.trace(0.9).init(p), "TraceState"),
    ],
)
def test_foreign_state_is_rejected_by_type(tx, foreign, expected):
  params = _params()
  with pytest.raises(TypeError) as info:
    tx().update(params, foreign(params), params)
  msg = str(info.value)
  assert "update() got a state of type" in msg and expected in msg, msg
  assert "init()" in msg, msg


def test_state_of_a_longer_chain_is_rejected():
  params = _params()
  state = orp.rmsprop(0.1, weight_decay=1e-2).init(params)
  with pytest.raises(ValueError, match="number of updates and states"):  # optax.chain's own check
    orp.rmsprop(0.1).update(params, state, params)


def test_state_built_for_other_params_names_the_leaf():
  params = _params()
  state = orp.rmsprop(0.1).init({"w": jnp.ones((2, 3), F32)})
  with pytest.raises(ValueError, match=r"missing from the optimizer state: \['b'\]\[0\]|not in the optimizer state"):
    orp.rmsprop(0.1).update(params, state, params)


# ---------------------------------------------------------------------------------------------
# Integer and boolean leaves: a TypeError naming the leaf, at init and at update, with the cure.

_INT_MAKERS = [
    pytest.param(lambda: orp.rmsprop(0.1), id="rmsprop"),
    pytest.param(lambda: orp.rmsprop(0.1, momentum=0.9, weight_decay=1e-2), id="rmsprop-momentum-wd"),
    pytest.param(lambda: orp.adagrad(0.1), id="adagrad"),
    pytest.param(lambda: orp.scale_by_rms(centered=True), id="scale_by_rms-centered"),
    pytest.param(lambda: orp.trace(0.9), id="trace"),
]


def _assert_int_message(msg: str, kind: str):
  assert f"{kind} leaf ['step']" in msg, msg
  assert "floating-point" in msg, msg
  assert "wrt=nnx.Param" in msg and "optax.set_to_zero()" in msg, msg


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.bool_])
@pytest.mark.parametrize("make", _INT_MAKERS)
def test_integer_params_rejected_at_init(make, dtype):
  params = {"w": jnp.ones(3, F32), "step": jnp.zeros(2, dtype)}
  with pytest.raises(TypeError) as info:
    make().init(params)
  _assert_int_message(str(info.value), "params")


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_])
@pytest.mark.parametrize(
    "make",
    _INT_MAKERS
    + [
        pytest.param(lambda: orp.scale_by_learning_rate(0.1), id="scale_by_learning_rate"),
        pytest.param(lambda: orp.decoupled_weight_decay(0.1, 0.1), id="decoupled_weight_decay"),
    ],
)
def test_integer_gradients_rejected_at_update(make, dtype):
  float_params = {"w": jnp.ones(3, F32), "step": jnp.zeros(2, F32)}
  tx = make()
  state = tx.init(float_params)
  grads = {"w": jnp.ones(3, F32), "step": jnp.zeros(2, dtype)}
  with pytest.raises(TypeError) as info:
    tx.update(grads, state, float_params)
  _assert_int_message(str(info.value), "gradient")


def test_integer_leaves_pass_when_masked_out_as_the_message_suggests():
  params = {"w": jnp.ones(3, F32), "step": jnp.zeros((), jnp.int32)}
  tx = optax.multi_transform(
      {"train": orp.rmsprop(0.1), "frozen": optax.set_to_zero()},
      lambda p: {"w": "train", "step": "frozen"},
  )
  state = tx.init(params)
  grads = {"w": jnp.ones(3, F32), "step": jnp.zeros((), jnp.int32)}
  updates, _ = tx.update(grads, state, params)
  assert updates["step"] == 0 and bool(jnp.all(updates["w"] < 0))


# ---------------------------------------------------------------------------------------------
# Nothing half-updated: a failing update leaves the caller's arrays intact, even when they were
# offered for donation, and the state still works with the right gradients afterwards.


def test_failed_update_under_jit_with_donation_leaves_state_usable():
  params = _params()
  tx = orp.rmsprop(0.1, centered=True, momentum=0.9, weight_decay=1e-2)
  state = tx.init(params)
  before = jax.tree.map(np.asarray, state)

  @jax.jit
  def step(grads, state, params):
    return tx.update(grads, state, params)

  step_donated = jax.jit(lambda g, s, p: tx.update(g, s, p), donate_argnums=(1,))
  bad = {"w": jnp.ones((3, 2), F32), "b": params["b"]}
  for fn in (step, step_donated):
    with pytest.raises(ValueError, match=r"leaf \['w'\] has shape \(3, 2\)"):
      fn(bad, state, params)
  for leaf in jax.tree.leaves(state):
    assert not leaf.is_deleted()
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)
  updates, new_state = step(params, state, params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves((updates, new_state)))


def test_failed_chain_update_returns_nothing_partial():
  # The first transform of the chain succeeds, the second rejects a foreign state: the call raises
  # and no partially updated state escapes (the state is a value; the caller's copy is unchanged).
  params = _params()
  tx = orp.rmsprop(0.1, momentum=0.9, bias_correction=True)
  state = tx.init(params)
  broken = (state[0], state[1], optax.ScaleByRmsState(nu=params))
  with pytest.raises(TypeError, match="ScaleByRmsState"):
    tx.update(params, broken, params)
  assert int(state[0].count) == 0
