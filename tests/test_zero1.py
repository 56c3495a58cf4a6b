"""ZeRO-1 by JAX's SPMD partitioner: ``shard_over`` partitions the state over the data axis.

``tests/zero1_probe.py`` measures on 8 virtual CPU devices in a subprocess (the device count is
fixed when JAX starts) and prints a JSON report; the assertions are here. References: the mesh
itself (1/8 of each buffer per device), the unsharded step on one device (the values), and the
compiled program (what it all-gathers).
"""

import json
import math
import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optax_rmsprop
from tests.devices import ROOT, run_on_8_devices

PROBE = ROOT / "tests" / "zero1_probe.py"


@pytest.fixture(scope="module")
def report():
  proc = run_on_8_devices(PROBE)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)


def _ids(report):
  return [f"{r['mesh']}-{r['variant']}-{r['state_dtype']}" for r in report["runs"]]


@pytest.mark.slow
def test_every_large_buffer_is_an_eighth_per_device_after_init_and_after_steps(report):
  assert len(report["runs"]) == 2 * 4 * 4  # meshes x variants x state dtypes
  for run in report["runs"]:
    for when in ("after_init", "after_steps"):
      fractions = {k: v["fraction"] for k, v in run[when].items()}
      assert fractions and set(fractions.values()) == {1 / 8}, (run["mesh"], run["variant"], run["state_dtype"], when, fractions)


@pytest.mark.slow
def test_the_partitioned_step_equals_the_unsharded_step(report):
  for run in report["runs"]:
    # Three steps from the same gradients; float32 arithmetic grouped differently per device
    # (and, for codes, a value at a rounding boundary landing one level apart).
    assert run["max_rel_diff"] <= 5e-4, (run["mesh"], run["variant"], run["state_dtype"], run["max_rel_diff"])


@pytest.mark.slow
def test_the_compiled_step_gathers_only_the_parameter_update(report):
  """Each device updates its slice of the state; what XLA all-gathers is the float32 update for
  the parameters (at most once per parameter element), never a state buffer (codes, bfloat16)."""
  for run in report["runs"]:
    assert run["gathers"], run["mesh"]
    assert all(g.startswith("f32[") for g in run["gathers"]), run["gathers"]
    sizes = [math.prod(int(n) for n in re.findall(r"\d+", g.split("[", 1)[1])) for g in run["gathers"]]
    assert sum(sizes) <= run["param_elements"], (run["gathers"], run["param_elements"])


@pytest.mark.slow
@pytest.mark.parametrize("mesh", ["data8", "data4xmodel2"])
def test_orbax_restores_a_partitioned_state_with_its_shardings(report, mesh):
  r = report["orbax"][mesh]
  assert r["same_values"] and r["same_shardings"] and r["same_structure"]
  assert set(v["fraction"] for v in r["fractions"].values()) == {1 / 8}


@pytest.mark.slow
@pytest.mark.parametrize("state_dtype", ["float32", "8bit"])
def test_nnx_optimizer_state_partitioned_by_the_readme_recipe(report, state_dtype):
  r = report["nnx"][state_dtype]
  assert r["zero1_losses"] == r["losses"] and r["losses"][-1] < 0.9 * r["losses"][0]
  assert set(v["fraction"] for v in r["fractions"].values()) == {1.0}  # without: a full copy per device
  assert set(v["fraction"] for v in r["zero1_fractions"].values()) == {1 / 8}


@pytest.mark.slow
def test_bad_axis_and_bad_tree_are_named(report):
  assert report["errors"]["axis"] == "ValueError: shard_over(axis='batch'): the mesh has no axis 'batch'; its axes are ('data',)"
  assert report["errors"]["tree"].startswith("TypeError: shard_over(tree=...): expected an optimizer state")
  assert "axis 'data' of a mesh with axes ('data',)" in report["errors"]["tree"]


# In this process (one device): the rules, from the shapes alone.


def _one_device_mesh():
  return jax.make_mesh((1,), ("data",))


def test_counts_and_scalars_stay_replicated_and_shapes_decide_the_dimension():
  mesh = _one_device_mesh()
  tx = optax_rmsprop.rmsprop(1e-3, bias_correction=True)
  params = {"w": jnp.zeros((6, 64)), "x": jnp.zeros((7, 5))}
  sh = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data")
  assert sh[0].count.spec == P()
  assert sh[0].nu["w"].spec == P(None, "data")  # the largest dimension the axis divides
  assert sh[0].nu["x"].spec == P("data")


def test_low_bit_last_axis_is_split_only_in_whole_blocks():
  # A 4-device axis over a row of 1 block of 256 (4-bit: 2 blocks of 128) cannot give whole
  # blocks: the leading axis it is.
  mesh = jax.sharding.AbstractMesh((4,), ("data",))
  for sd in ("8bit", "4bit"):
    tx = optax_rmsprop.rmsprop(1e-3, state_dtype=sd)
    nu = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((16, 256), jnp.float32)})[0].nu["w"]
    got = optax_rmsprop.shard_over((nu,), mesh, "data")[0]
    assert got.codes.spec == P("data") and got.scale.spec == P("data"), (sd, got)
    wide = jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((3, 4096), jnp.float32)})[0].nu["w"]
    got = optax_rmsprop.shard_over((wide,), mesh, "data")[0]
    # 16 blocks of 256 (8-bit) or 32 blocks of 128 (4-bit) per row: 4 shards of whole ones.
    assert got.codes.spec == P(None, "data") and got.scale.spec == P(None, "data"), (sd, got)


def test_params_give_abstract_buffers_their_sharding():
  mesh = jax.sharding.AbstractMesh((2, 2), ("data", "model"))
  tx = optax_rmsprop.rmsprop(1e-3, momentum=0.9)
  params = {"w": jax.ShapeDtypeStruct((8, 64), jnp.float32)}
  shardings = {"w": NamedSharding(mesh, P(None, "model"))}
  sh = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data", params=shardings)
  assert sh[0].nu["w"].spec == P("data", "model")
  assert sh[2].trace["w"].spec == P("data", "model")
