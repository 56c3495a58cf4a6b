"""Measures how optimizer state is sharded on an 8-device CPU mesh; prints one JSON report.

Run by ``tests/test_sharding.py`` in a subprocess, because the device count is fixed when JAX
starts (``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and the pytest process has
already imported JAX. It only observes; the assertions live in the test.

For each mesh axis type (Auto, Explicit), with and without a ``jax.set_mesh`` context, and each
optimizer variant (ours and ``optax.rmsprop``), it records: every parameter's sharding, every
state leaf's sharding after ``jax.jit(tx.init)(params)``, the collectives in the compiled
``jax.jit(tx.update)``, the shardings the compiled update gives its outputs, and the first three
updates' values (for the value check against optax); and an Orbax save/restore of sharded state.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_rmsprop  # noqa: E402

# jax.set_mesh (jax 0.7 and later); jax 0.6's context manager is jax.sharding.use_mesh (its
# jax.sharding.set_mesh sets the mesh for good).
_set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

# name -> (shape, partition spec on the (data, model) mesh)
LAYOUT = {
    "w": ((16, 32), P("data", "model")),
    "v": ((32, 8), P("model", "data")),
    "b": ((32,), P("model")),
    "d": ((6, 4), P("data", None)),
    "r": ((5,), P()),
}

VARIANTS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.9),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "bias-correction": dict(bias_correction=True),
    "weight-decay": dict(weight_decay=1e-2),
    "schedule": dict(learning_rate=optax.cosine_decay_schedule(0.01, 100)),
    "all-flags": dict(centered=True, momentum=0.9, bias_correction=True, weight_decay=1e-2),
    "state-bf16": dict(momentum=0.9, state_dtype=jnp.bfloat16),
}
# The variants optax.rmsprop has (no decoupled weight decay, no state dtype).
OPTAX_VARIANTS = ("plain", "centered", "momentum", "nesterov", "bias-correction", "schedule")


def describe(sharding) -> dict:
  if isinstance(sharding, NamedSharding):
    return {"kind": "named", "spec": str(sharding.spec).replace("PartitionSpec(", "P("), "devices": len(sharding.device_set)}  # jax 0.6 spells it out
  return {"kind": type(sharding).__name__, "spec": None, "devices": len(sharding.device_set)}


def same_layout(a, b, ndim: int = 2) -> bool:
  """Whether two shardings place the same elements on the same devices (``P()`` == ``P(None,)``)."""
  return len(a.device_set) == len(b.device_set) and a.is_equivalent_to(b, ndim)


def make_params(mesh, poison=None):
  """Random parameters placed on ``mesh``; ``poison`` maps a name to (index, value) to plant."""
  rng = np.random.default_rng(0)
  host = {k: rng.normal(size=shape).astype(np.float32) for k, (shape, _) in LAYOUT.items()}
  for k, (index, value) in (poison or {}).items():
    host[k][index] = value
  return {k: jax.device_put(host[k], NamedSharding(mesh, spec)) for k, (_, spec) in LAYOUT.items()}


def probe(tx, params, ctx, reference=None):
  """Shardings and collectives for one transformation; with ``reference`` (an unsharded optax
  transformation) also the first three updates of both."""
  out = {}
  with ctx():
    state = jax.jit(tx.init)(params)
    leaves = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
      name = jax.tree_util.keystr(path)
      param = next((k for k in params if name.endswith(f"['{k}']")), None)
      leaves.append({
          "path": name,
          "param": param,
          "sharding": describe(leaf.sharding),
          "same_as_param": None if param is None else same_layout(leaf.sharding, params[param].sharding, leaf.ndim),
      })
    out["state"] = leaves
    grads = jax.tree.map(lambda p: p * 0.5 + 0.1, params)
    compiled = jax.jit(tx.update).lower(grads, state, params).compile()
    text = compiled.as_text()
    out["collectives"] = sorted({c for c in COLLECTIVES if c in text})
    out["collective_lines"] = [ln.strip()[:200] for ln in text.splitlines() if any(c in ln for c in COLLECTIVES)][:5]
    _, out_state_shardings = compiled.output_shardings
    out["update_keeps_state_sharding"] = all(
        same_layout(s, a.sharding, a.ndim)
        for s, a in zip(jax.tree.leaves(out_state_shardings), jax.tree.leaves(state), strict=True)
    )
    if reference is not None:
      host = {k: np.asarray(v) for k, v in params.items()}
      ref_state = reference.init(host)
      ours, ref = [], []
      for i in range(3):
        g = jax.tree.map(lambda p, i=i: p * (0.5 + i) + 0.1, params)
        u, state = compiled(g, state, params)  # the state keeps its sharding, so this compiled step fits
        ru, ref_state = reference.update(jax.tree.map(np.asarray, g), ref_state, host)
        ours.append({k: np.asarray(v).tolist() for k, v in u.items()})
        ref.append({k: np.asarray(v).tolist() for k, v in ru.items()})
      out["updates"], out["reference_updates"] = ours, ref
  return out


# (axis type, context) -> which variants to probe. All variants where optax's state lands on one
# device (Auto axes, no mesh context) and in JAX's default setting (Explicit axes under set_mesh);
# the two remaining settings with the all-flags variant only, to keep the test short.
SETTINGS = {
    ("Auto", "no_context"): tuple(VARIANTS),
    ("Explicit", "set_mesh"): tuple(VARIANTS),
    ("Auto", "set_mesh"): ("plain", "all-flags"),
    ("Explicit", "no_context"): ("plain", "all-flags"),
}


def sharded_checkpoint(mesh, params) -> dict:
  """Saves a sharded state with Orbax and restores it into a target built from shapes, with the
  shardings that ``jax.jit(tx.init)`` gives the state (as docs/guides/sharding.md describes)."""
  tx = optax_rmsprop.rmsprop(0.01, centered=True, momentum=0.9, weight_decay=1e-3)
  with _set_mesh(mesh):
    state = jax.jit(tx.init)(params)
    _, state = jax.jit(tx.update)(params, state, params)
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "state")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, state)
    checkpointer.wait_until_finished()
    abstract_params = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=p.sharding), params)
    with _set_mesh(mesh):
      shardings = jax.jit(tx.init).lower(abstract_params).compile().output_shardings
      shapes = jax.eval_shape(tx.init, abstract_params)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    restored = ocp.StandardCheckpointer().restore(path, target)
  leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
  return {
      "values_equal": all(
          np.asarray(a).tobytes() == np.asarray(b).tobytes()
          for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
      ),
      "same_sharding_as_saved": all(
          same_layout(a.sharding, b.sharding, a.ndim)
          for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True)
      ),
      "state": [{"path": jax.tree_util.keystr(p), "sharding": describe(leaf.sharding)} for p, leaf in leaves],
  }


def nonfinite_params_init(mesh) -> dict:
  """``jax.jit(tx.init)`` on sharded parameters holding NaN and inf: the buffers must still be
  their constant fill (``p * 0`` would give NaN) and sharded like the parameters."""
  params = make_params(mesh, {"w": ((0, 0), np.nan), "b": (1, np.inf), "v": ((2, 3), -np.inf)})
  tx = optax_rmsprop.rmsprop(0.01, initial_scale=0.5, centered=True, momentum=0.9)
  state = jax.jit(tx.init)(params)
  rms, trace = state[0], state[2]
  return {
      "nu_is_fill": all(bool(np.all(np.asarray(v) == 0.5)) for v in rms.nu.values()),
      "mu_is_zero": all(bool(np.all(np.asarray(v) == 0)) for v in rms.mu.values()),
      "trace_is_zero": all(bool(np.all(np.asarray(v) == 0)) for v in trace.trace.values()),
      "sharded_like_params": all(
          same_layout(buf[k].sharding, params[k].sharding, params[k].ndim)
          for buf in (rms.nu, rms.mu, trace.trace)
          for k in params
      ),
  }


def main() -> None:
  assert jax.device_count() == 8, jax.devices()
  report = {"jax": jax.__version__, "optax": optax.__version__, "devices": jax.device_count(), "runs": []}
  for (axis_name, ctx_name), variants in SETTINGS.items():
    axis_type = getattr(AxisType, axis_name)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type, axis_type))
    params = make_params(mesh)
    ctx = (lambda mesh=mesh: _set_mesh(mesh)) if ctx_name == "set_mesh" else contextlib.nullcontext
    for variant in variants:
      kwargs = {"learning_rate": 0.01, **VARIANTS[variant]}
      impls = {"ours": optax_rmsprop.rmsprop(**kwargs)}
      if variant in OPTAX_VARIANTS:
        impls["optax"] = optax.rmsprop(**kwargs)
      for impl, tx in impls.items():
        run = {"axis_type": axis_name, "context": ctx_name, "variant": variant, "impl": impl}
        reference = impls.get("optax") if impl == "ours" and ctx_name == "no_context" else None
        try:
          run.update(probe(tx, params, ctx, reference))
        except Exception as e:  # optax's init fails on Explicit meshes without a mesh context
          run["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        report["runs"].append(run)
  report["params"] = {k: describe(v.sharding) for k, v in params.items()}
  report["nonfinite_params_init"] = nonfinite_params_init(mesh)
  report["checkpoint"] = {}
  for axis_name in ("Auto", "Explicit"):
    axis_type = getattr(AxisType, axis_name)
    mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(axis_type, axis_type))
    report["checkpoint"][axis_name] = sharded_checkpoint(mesh, make_params(mesh))
  json.dump(report, sys.stdout)


if __name__ == "__main__":
  main()
