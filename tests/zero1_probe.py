"""Measures ZeRO-1 partitioning (``optax_rmsprop.shard_over``) on 8 virtual CPU devices; prints
one JSON report. Run by ``tests/test_zero1.py`` in a subprocess (the device count is fixed when
JAX starts); it only observes, the assertions live in the test.

Meshes: a 1-D data mesh with replicated parameters, and a 4 x 2 (data, model) mesh with the
parameters split over model. For each variant and ``state_dtype`` it records, for every state
buffer, the fraction of it that one device holds after ``jax.jit(tx.init, out_shardings=...)``
and after three compiled steps, the dtypes and shapes the compiled step all-gathers, and the
parameters after three steps next to an unsharded run's (the same gradients); and an Orbax
save/restore of a partitioned state.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_rmsprop  # noqa: E402

SHAPES = {"w": (64, 1024), "v": (512, 96), "b": (1024,), "s": (3,)}
MODEL_SPECS = {"w": P(None, "model"), "v": P("model", None), "b": P("model"), "s": P()}
VARIANTS = {
    "plain": {},
    "centered+momentum": {"centered": True, "momentum": 0.9},
    "bias-correction": {"bias_correction": True},
    "weight-decay": {"weight_decay": 1e-2},
}
STATE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "8bit": "8bit", "4bit": "4bit"}
STEPS = 3


def _meshes():
  yield "data8", jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,)), {k: P() for k in SHAPES}
  yield "data4xmodel2", jax.make_mesh((4, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2), MODEL_SPECS


def _values():
  rng = np.random.default_rng(0)
  params = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
  grads = [{k: (rng.standard_normal(s) * 0.1).astype(np.float32) for k, s in SHAPES.items()} for _ in range(STEPS)]
  return params, grads


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def _fractions(state):
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if x.size >= 1024:
      out[jax.tree_util.keystr(path)] = {
          "size": int(x.size),
          "dtype": str(x.dtype),
          "fraction": max(s.data.size for s in x.addressable_shards) / x.size,
          "spec": str(x.sharding.spec).replace("PartitionSpec(", "P("),  # jax 0.6 spells it out
      }
  return out


def _gathers(compiled) -> list[str]:
  """Result types of the all-gathers in the partitioned program (e.g. ``f32[64,1024]``)."""
  return re.findall(r"= (\w+\[[\d,]*\])\{?[^ ]* all-gather(?:-start)?\(", compiled.as_text())


def run(name, mesh, specs, variant, state_dtype):
  params_np, grads_np = _values()
  tx = optax_rmsprop.rmsprop(1e-2, state_dtype=STATE_DTYPES[state_dtype], **VARIANTS[variant])
  step = _step(tx)

  # Unsharded reference: one device, the same gradients.
  ref_p = params_np
  ref_s = jax.jit(tx.init)(ref_p)
  for g in grads_np:
    ref_p, ref_s = jax.jit(step)(ref_p, ref_s, g)

  param_sh = {k: NamedSharding(mesh, specs[k]) for k in SHAPES}
  params = jax.device_put(params_np, param_sh)
  shardings = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data", params=params)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  after_init = _fractions(state)
  jstep = jax.jit(step, out_shardings=(param_sh, shardings), donate_argnums=(0, 1))
  grads = [jax.device_put(g, param_sh) for g in grads_np]
  compiled = jstep.lower(params, state, grads[0]).compile()
  for g in grads:
    params, state = jstep(params, state, g)
  diff = max(float(np.max(np.abs(np.asarray(params[k]) - np.asarray(ref_p[k])) / (np.abs(np.asarray(ref_p[k])) + 1e-6))) for k in SHAPES)
  return {
      "mesh": name,
      "variant": variant,
      "state_dtype": state_dtype,
      "after_init": after_init,
      "after_steps": _fractions(state),
      "gathers": _gathers(compiled),
      "param_elements": int(sum(np.prod(s) for s in SHAPES.values())),
      "max_rel_diff": diff,
  }


def orbax_round_trip(mesh, specs):
  tx = optax_rmsprop.rmsprop(1e-2, centered=True, momentum=0.9, state_dtype="8bit")
  params = jax.device_put(_values()[0], {k: NamedSharding(mesh, specs[k]) for k in SHAPES})
  shardings = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data", params=params)
  state = jax.jit(tx.init, out_shardings=shardings)(params)
  state, _ = jax.jit(lambda s, g, p: tx.update(g, s, p)[::-1], out_shardings=(shardings, None))(state, params, params)
  with tempfile.TemporaryDirectory() as d:
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.join(d, "state"), state)
    ckpt.wait_until_finished()
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
    restored = ckpt.restore(os.path.join(d, "state"), target)
  pairs = list(zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True))
  return {
      "same_values": all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in pairs),
      "same_shardings": all(a.sharding.is_equivalent_to(b.sharding, a.ndim) for a, b in pairs),
      "same_structure": jax.tree.structure(state) == jax.tree.structure(restored),
      "fractions": _fractions(restored),
  }


def nnx_optimizer(state_dtype):
  """docs/guides/sharding.md's recipe: ``nnx.Optimizer``'s state placed by ``shard_over`` and kept there in the
  jitted step by a sharding constraint; 20 steps against the same run without it."""
  import nnx_compat
  from flax import nnx

  mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.standard_normal((64, 64)).astype(np.float32), NamedSharding(mesh, P("data")))
  y = jax.device_put(rng.standard_normal((64, 256)).astype(np.float32), NamedSharding(mesh, P("data")))
  is_var = lambda v: isinstance(v, nnx.Variable)

  def train(zero1):
    model = nnx.Linear(64, 256, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax_rmsprop.rmsprop(1e-3, momentum=0.9, state_dtype=STATE_DTYPES[state_dtype]), wrt=nnx.Param)
    shardings = optax_rmsprop.shard_over(nnx_compat.pure(opt.opt_state), mesh, "data")

    def place(opt, put):
      jax.tree.map(lambda v, s: nnx_compat.set_value(v, put(nnx_compat.get_value(v), s)), opt.opt_state, shardings, is_leaf=is_var)

    if zero1:
      place(opt, jax.device_put)

    @nnx.jit
    def step(model, opt, x, y):
      loss, grads = nnx.value_and_grad(lambda m: jnp.mean((m(x) - y) ** 2))(model)
      opt.update(model, grads)
      if zero1:
        place(opt, jax.lax.with_sharding_constraint)
      return loss

    losses = [float(step(model, opt, x, y)) for _ in range(20)]
    return losses, _fractions(nnx_compat.pure(opt.opt_state))

  plain, plain_fractions = train(False)
  zero1, zero1_fractions = train(True)
  return {"losses": plain, "zero1_losses": zero1, "fractions": plain_fractions, "zero1_fractions": zero1_fractions}


def main():
  assert jax.device_count() == 8, jax.devices()
  report = {"runs": [], "orbax": {}}
  for name, mesh, specs in _meshes():
    for variant in VARIANTS:
      for state_dtype in STATE_DTYPES:
        report["runs"].append(run(name, mesh, specs, variant, state_dtype))
    report["orbax"][name] = orbax_round_trip(mesh, specs)
  report["nnx"] = {sd: nnx_optimizer(sd) for sd in ("float32", "8bit")}
  mesh = jax.make_mesh((8,), ("data",))
  errors = {}
  for label, call in {
      "axis": lambda: optax_rmsprop.shard_over(optax_rmsprop.rmsprop(1e-3).init({"w": jnp.zeros(8)}), mesh, "batch"),
      "tree": lambda: optax_rmsprop.shard_over({"w": jnp.zeros(8)}, mesh, "data"),
  }.items():
    try:
      call()
      errors[label] = None
    except (TypeError, ValueError) as e:
      errors[label] = f"{type(e).__name__}: {e}"
  report["errors"] = errors
  print(json.dumps(report))


if __name__ == "__main__":
  main()
