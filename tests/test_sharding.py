"""Optimizer state on a device mesh: every buffer sharded like its parameter, no collectives.

JAX's SPMD partitioner is this package's distributed engine: parameters placed with a
``NamedSharding`` on a (data x model) mesh must get state buffers with the same sharding from
``jax.jit(tx.init)``, so that the compiled ``update`` is purely elementwise per device (no
all-gather, all-reduce, reduce-scatter, all-to-all or collective-permute) and returns the state
with the sharding it received (no re-sharding between steps).

The device count is fixed when JAX starts, so ``tests/sharding_probe.py`` measures in a
subprocess started with 8 virtual CPU devices and prints a JSON report; the assertions are here.
The parameters' shardings are the independent reference for the state's; ``optax.rmsprop`` on
unsharded arrays is the reference for the values.

What optax.rmsprop 0.2.8 does (measured by the same probe, asserted below so that a change shows):
its ``init`` builds buffers with ``jnp.zeros_like``, which carries no data dependence on the
parameter, so with Auto mesh axes and no mesh context ``jax.jit(tx.init)`` puts every buffer on
a single device (SingleDeviceSharding, device 0), and under ``jax.set_mesh`` it replicates them
(``P()``) on all 8 devices; either way the first compiled ``update`` outputs the state with the
parameters' sharding, i.e. re-shards it. With Explicit axes (``jax.make_mesh``'s default in JAX
0.10) ``zeros_like`` carries the sharding type and optax's buffers are sharded like the
parameters, but ``jax.jit(tx.init)`` outside a ``jax.set_mesh`` context fails ("Length of device
assignment 1 is not equal to the size of the mesh 8") on jax 0.6 to 0.10; from jax 0.11 it runs
and puts every buffer on a single device, as with Auto axes. Ours shards like the parameters in
all four settings, on every jax.
"""

import json

import numpy as np
import pytest

from tests.devices import ROOT, run_on_8_devices

PROBE = ROOT / "tests" / "sharding_probe.py"

pytestmark = pytest.mark.slow  # one subprocess compiling ~35 init/update pairs: ~40 s CPU


@pytest.fixture(scope="module")
def report():
  proc = run_on_8_devices(PROBE)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return json.loads(proc.stdout)


def _runs(report, impl):
  return [r for r in report["runs"] if r["impl"] == impl]


def _label(run):
  return f"{run['axis_type']}/{run['context']}/{run['variant']}"


def test_probe_runs_on_eight_devices_with_a_2d_mesh(report):
  assert report["devices"] == 8
  # The mesh really splits the parameters over both axes: 'w' is (data, model) on 8 devices.
  assert report["params"]["w"] == {"kind": "named", "spec": "P('data', 'model')", "devices": 8}
  settings = {(r["axis_type"], r["context"]) for r in _runs(report, "ours")}
  assert settings == {("Auto", "no_context"), ("Auto", "set_mesh"), ("Explicit", "no_context"), ("Explicit", "set_mesh")}


def test_every_state_buffer_has_its_parameters_sharding(report):
  runs = _runs(report, "ours")
  assert len(runs) >= 20
  failures = []
  for run in runs:
    if "error" in run:
      failures.append(f"{_label(run)}: {run['error']}")
      continue
    buffers = [leaf for leaf in run["state"] if leaf["param"] is not None]
    assert buffers, _label(run)
    failures += [
        f"{_label(run)}: {leaf['path']} is {leaf['sharding']}, its parameter is {report['params'][leaf['param']]}"
        for leaf in buffers
        if not leaf["same_as_param"]
    ]
    # Counters are scalars: replicated over the mesh, never parked on one device.
    failures += [
        f"{_label(run)}: scalar {leaf['path']} is {leaf['sharding']}"
        for leaf in run["state"]
        if leaf["param"] is None and leaf["sharding"]["devices"] != 8
    ]
  assert not failures, "\n".join(failures)


def test_state_buffers_exist_for_every_flag(report):
  # The sharding checks above are only as good as the buffers they saw: centered runs must have
  # mu, momentum runs a trace, every run nu for every parameter.
  expected = {"centered": [".mu['w']"], "momentum": [".trace['w']"], "all-flags": [".mu['w']", ".trace['w']"]}
  for run in _runs(report, "ours"):
    paths = [leaf["path"] for leaf in run["state"]]
    counted = {"bias-correction", "all-flags"}  # optax keeps a count only with bias correction
    fields = [".nu['w']", ".nu['b']", *([".count"] if run["variant"] in counted else [])]
    for field in [*fields, *expected.get(run["variant"], [])]:
      assert any(p.endswith(field) for p in paths), (_label(run), field, paths)


def test_compiled_update_has_no_collective(report):
  runs = _runs(report, "ours")
  failures = [f"{_label(r)}: {r['collectives']} e.g. {r['collective_lines'][:2]}" for r in runs if r["collectives"]]
  assert not failures, "\n".join(failures)


def test_compiled_update_returns_the_state_with_the_sharding_it_received(report):
  runs = _runs(report, "ours")
  failures = [_label(r) for r in runs if not r["update_keeps_state_sharding"]]
  assert not failures, failures


def test_sharded_updates_equal_optax_on_one_device(report):
  runs = [r for r in _runs(report, "ours") if "updates" in r]
  assert {r["variant"] for r in runs} >= {"plain", "centered", "momentum", "nesterov", "bias-correction", "schedule"}
  for run in runs:
    for step, (ours, ref) in enumerate(zip(run["updates"], run["reference_updates"], strict=True)):
      for k in ref:
        np.testing.assert_allclose(
            np.asarray(ours[k], np.float32),
            np.asarray(ref[k], np.float32),
            rtol=2e-5,
            atol=1e-7,
            err_msg=f"{_label(run)} step {step} leaf {k}",
        )


def test_optax_rmsprop_state_is_not_sharded_like_its_parameters(report):
  """Documents the measured optax 0.2.8 behaviour described in the module docstring."""
  optax_runs = {(_label(r)): r for r in _runs(report, "optax")}
  msg = "optax.rmsprop's sharding behaviour changed: update this test's docstring and docs/guides/sharding.md"
  single = optax_runs["Auto/no_context/plain"]
  assert all(leaf["sharding"]["kind"] == "SingleDeviceSharding" for leaf in single["state"]), msg
  assert not single["update_keeps_state_sharding"], msg
  replicated = optax_runs["Auto/set_mesh/plain"]
  w_buffers = [leaf for leaf in replicated["state"] if leaf["param"] == "w"]
  assert w_buffers and all(leaf["sharding"]["spec"] == "P()" for leaf in w_buffers), msg
  explicit = optax_runs["Explicit/set_mesh/plain"]
  assert all(leaf["same_as_param"] for leaf in explicit["state"] if leaf["param"]), msg
  outside = optax_runs["Explicit/no_context/plain"]
  if tuple(int(x) for x in report["jax"].split(".")[:2]) < (0, 11):
    # jax 0.6 to 0.10: jax.jit(optax's init) fails on an Explicit mesh outside jax.set_mesh.
    assert "error" in outside, msg
  else:
    # jax 0.11 and later: it runs, and its buffers land on one device, re-sharded by the update.
    assert "error" not in outside, msg
    assert all(leaf["sharding"]["kind"] == "SingleDeviceSharding" for leaf in outside["state"]), msg
    assert not outside["update_keeps_state_sharding"], msg
  assert not any(r["collectives"] for r in optax_runs.values() if "collectives" in r)


def test_orbax_restores_sharded_state_with_the_shardings_of_jitted_init(report):
  # docs/guides/sharding.md's recipe for a sharded restore target: eval_shape for shapes, the compiled
  # init's output shardings for placement.
  for axis_type, result in report["checkpoint"].items():
    assert result["values_equal"], axis_type
    assert result["same_sharding_as_saved"], axis_type
    nu_w = next(leaf for leaf in result["state"] if leaf["path"].endswith(".nu['w']"))
    assert nu_w["sharding"] == {"kind": "named", "spec": "P('data', 'model')", "devices": 8}, axis_type


def test_init_on_sharded_nan_and_inf_params_gives_finite_sharded_buffers(report):
  # Buffers are made by a select on isnan(p), not p * 0 (NaN where p is inf or NaN).
  assert report["nonfinite_params_init"] == {
      "nu_is_fill": True,
      "mu_is_zero": True,
      "trace_is_zero": True,
      "sharded_like_params": True,
  }
