"""Orbax checkpoints: save params + optimizer state mid-run, restore into a fresh setting, continue.

The resumed trajectory must be bit-identical to the uninterrupted one, for every registry
constructor (centered ``mu``, ``mu=None``, momentum traces, bias-correction and schedule
counters, weight decay's EmptyState/ScaleByScheduleState elements, a bfloat16 state dtype), for
complex and low-precision parameters, and for ``inject_hyperparams`` state whose hyperparameters
were changed mid-run. The "fresh setting" is what a user has in a new process: a newly built
optimizer, and a restore target made from shapes alone with ``jax.eval_shape(tx.init, ...)``.
The Orbax snippet of the docs (docs/guides/ecosystem.md) is executed too.
"""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

import optax_rmsprop
from tests.registry import ALL

STEPS_BEFORE, STEPS_AFTER = 4, 4
_RNG = np.random.default_rng(0)
_X = _RNG.normal(size=(STEPS_BEFORE + STEPS_AFTER, 8, 4))
_Y = _RNG.normal(size=(STEPS_BEFORE + STEPS_AFTER, 8, 3))


def _init_params(dtype=jnp.float32):
  rng = np.random.default_rng(1)
  return {"w": jnp.asarray(rng.normal(size=(4, 3)), dtype), "b": jnp.zeros((3,), dtype)}


def _make_step(tx):
  """A jitted training step on a least-squares problem whose data changes every step."""

  def loss(params, x, y):
    r = x.astype(params["w"].dtype) @ params["w"] + params["b"] - y.astype(params["w"].dtype)
    return jnp.mean(jnp.real(r * jnp.conj(r))).astype(jnp.float32)

  @jax.jit
  def step(params, state, x, y):
    grads = jax.grad(loss)(params, x, y)
    grads = jax.tree.map(jnp.conj, grads)  # descend for complex parameters too
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _run(step, params, state, steps):
  for t in steps:
    params, state = step(params, state, jnp.asarray(_X[t], jnp.float32), jnp.asarray(_Y[t], jnp.float32))
  return params, state


def _assert_bit_identical(a, b, what):
  assert jax.tree.structure(a) == jax.tree.structure(b), what
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b), strict=True):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, (what, jax.tree_util.keystr(path))
    assert x.tobytes() == y.tobytes(), f"{what}: {jax.tree_util.keystr(path)} differs"


def _save_restore_continue(make_tx, tmp_path, dtype=jnp.float32, mutate=None):
  """Returns (uninterrupted, resumed) final (params, state), and checks the restored state."""
  before, after = range(STEPS_BEFORE), range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)

  # Process 1: train, save mid-run, keep going.
  tx = make_tx()
  step = _make_step(tx)
  params = _init_params(dtype)
  state = tx.init(params)
  if mutate is not None:
    state = mutate(state)
  params, state = _run(step, params, state, before)
  checkpointer = ocp.StandardCheckpointer()
  path = tmp_path / "ckpt"
  checkpointer.save(path, {"params": params, "opt_state": state})
  checkpointer.wait_until_finished()
  saved = (params, state)
  uninterrupted = _run(step, params, state, after)

  # "Process 2": a new optimizer object, a restore target from shapes only.
  tx2 = make_tx()
  abstract_params = jax.eval_shape(lambda: _init_params(dtype))
  target = {"params": abstract_params, "opt_state": jax.eval_shape(tx2.init, abstract_params)}
  restored = ocp.StandardCheckpointer().restore(path, target)
  _assert_bit_identical((restored["params"], restored["opt_state"]), saved, "restored vs saved")
  resumed = _run(_make_step(tx2), restored["params"], restored["opt_state"], after)
  return uninterrupted, resumed


@pytest.mark.parametrize("case", ALL, ids=[c.id for c in ALL])
def test_resumed_trajectory_is_bit_identical(case, tmp_path):
  uninterrupted, resumed = _save_restore_continue(case.build, tmp_path)
  _assert_bit_identical(resumed, uninterrupted, case.id)
  # The run really moved after the restore (a frozen optimizer would also be "identical").
  assert not np.array_equal(np.asarray(uninterrupted[0]["w"]), np.asarray(_init_params()["w"]))


@pytest.mark.parametrize("dtype", [jnp.complex64, jnp.bfloat16, jnp.float16], ids=["complex64", "bf16", "f16"])
def test_resume_with_complex_and_low_precision_params(dtype, tmp_path):
  make = lambda: optax_rmsprop.rmsprop(
      optax.linear_schedule(0.01, 0.001, 10), centered=True, momentum=0.9, bias_correction=True, weight_decay=1e-2
  )
  uninterrupted, resumed = _save_restore_continue(make, tmp_path, dtype)
  _assert_bit_identical(resumed, uninterrupted, str(dtype))
  rms = resumed[1][0]
  assert int(rms.count) == STEPS_BEFORE + STEPS_AFTER
  assert rms.nu["w"].dtype == jnp.finfo(dtype).dtype  # real second moment, also for complex
  assert rms.mu["w"].dtype == dtype


def test_resume_keeps_hyperparameters_changed_by_inject_hyperparams(tmp_path):
  make = lambda: optax.inject_hyperparams(optax_rmsprop.rmsprop)(
      learning_rate=0.01, decay=0.9, eps=1e-8, momentum=0.9, centered=True
  )

  def mutate(state):
    state.hyperparams["decay"] = jnp.asarray(0.5, jnp.float32)
    state.hyperparams["momentum"] = jnp.asarray(0.3, jnp.float32)
    return state

  uninterrupted, resumed = _save_restore_continue(make, tmp_path, mutate=mutate)
  _assert_bit_identical(resumed, uninterrupted, "inject_hyperparams")
  assert float(resumed[1].hyperparams["decay"]) == 0.5
  assert float(resumed[1].hyperparams["momentum"]) == pytest.approx(0.3)


GUIDE = pathlib.Path(__file__).resolve().parent.parent / "docs" / "guides" / "ecosystem.md"


def _guide_snippet(name):
  text = GUIDE.read_text()
  match = re.search(rf"^% snippet: {name}\b.*?\n\s*```python\n(.*?)```", text, re.S | re.M)
  assert match, f"{GUIDE} has no '{name}' snippet"
  return match.group(1)


def test_docs_orbax_snippet_runs_and_resumes_exactly(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  exec(compile(_guide_snippet("orbax"), "docs/guides/ecosystem.md:orbax", "exec"), namespace)
  # The snippet ends with both the resumed and the uninterrupted state.
  _assert_bit_identical(namespace["restored"], namespace["saved"], "docs snippet")
