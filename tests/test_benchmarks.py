"""The benchmark suite's smoke configuration runs and writes sane JSON and markdown (no timing is
asserted: benchmarks measure, tests check that they can)."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import run as bench


@pytest.mark.slow
def test_smoke_run_writes_json_and_markdown(tmp_path):
  assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "results.json").read_text())
  md = (tmp_path / "results.md").read_text()
  machine = result["machine"]
  for key in ("cpu", "cores", "jax", "optax", "backend"):
    assert machine[key], key
  assert machine["cpu"] in md and machine["jax"] in md
  rows = result["rows"]
  impls = {r["impl"] for r in rows}
  assert {"ours", "optax", "stream", "ours-bf16", "ours-8bit", "ours-4bit"} <= impls
  for r in rows:
    assert r["step_ms"] > 0 and math.isfinite(r["step_ms"])
    assert r["x_optax"] > 0 and r["x_stream"] > 0
    if r["impl"] != "torch":
      assert r["compile_s"] > 0
      assert r["memory"] is None or r["memory"]["peak"] > 0
  by = {(r["impl"], r["variant"]): r for r in rows if r["leaves"] == 1}
  # State bytes per parameter follow from the dtypes alone: 4 B per float32 buffer, 2 per bf16
  # (plus the 4-byte step count).
  assert by["ours", "plain"]["state_bytes_per_param"] == pytest.approx(4.0, abs=1e-3)
  assert by["optax", "plain"]["state_bytes_per_param"] == pytest.approx(4.0, abs=1e-3)
  assert by["ours-bf16", "plain"]["state_bytes_per_param"] == pytest.approx(2.0, abs=1e-3)
  assert by["ours-8bit", "plain"]["state_bytes_per_param"] <= 1.05
  assert by["ours-4bit", "plain"]["state_bytes_per_param"] <= 0.6
  assert md.count("\n|") == len(rows) + 2  # header, separator, one line per row


@pytest.mark.slow
def test_grouping_experiment_smoke(tmp_path):
  """The many-leaf experiment runs and reports every implementation with its kernel count."""
  from benchmarks import grouping

  assert grouping.main(["--smoke", "--out", str(tmp_path)]) == 0
  md = (tmp_path / "grouping.md").read_text()
  assert "µs per kernel" in md
  rows = [line.split("|")[1:-1] for line in md.splitlines() if line.startswith("| ") and "impl" not in line]
  names = {r[0].strip() for r in rows}
  assert {"optax", "ours", "stream", "grouped k=4"} <= names
  for r in rows:
    assert float(r[1]) > 0 and int(r[3]) > 0  # step ms, kernels


@pytest.mark.slow
def test_low_bit_benchmark_smoke(tmp_path):
  """Every state_dtype reports its bytes between and during the step, a speed ratio and losses;
  the state bytes follow from the codecs (4, 2, 1.016 and 0.53 per parameter for nu alone)."""
  from benchmarks import low_bit

  assert low_bit.main(["--smoke", "--out", str(tmp_path)]) == 0
  result = json.loads((tmp_path / "low_bit.json").read_text())
  assert (tmp_path / "low_bit.png").stat().st_size > 0
  md = (tmp_path / "low_bit.md").read_text()
  assert result["machine"]["cpu"] in md
  by = {(r["state_dtype"], r["variant"]): r for r in result["rows"]}
  assert set(by) == {(d, v) for d in ("float32", "bfloat16", "8bit", "4bit") for v in ("plain", "centered+momentum")}
  want = {"float32": 4.0, "bfloat16": 2.0, "8bit": 1.016, "4bit": 0.531}
  for name, b in want.items():
    assert by[name, "plain"]["state_bytes_per_param"] == pytest.approx(b, abs=0.01)
  for r in result["rows"]:
    assert r["peak_bytes_per_param"] >= r["state_bytes_per_param"]
    assert r["x_optax"] > 0 and all(math.isfinite(v) for v in r["loss"].values())
  # The inject_hyperparams section: a ratio per state_dtype and injected hyperparameter (not timed here).
  inject = {r["state_dtype"]: r["traced_over_static"] for r in result["inject"]}
  assert set(inject) == {"float32", "bfloat16", "8bit", "4bit"}
  for ratios in inject.values():
    assert set(ratios) == {"eps", "decay", "momentum"} and all(v > 0 and math.isfinite(v) for v in ratios.values())
  assert "inject_hyperparams" in md
