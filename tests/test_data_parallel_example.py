"""examples/data_parallel.py runs as documented: the loss falls, the state is sharded like the
parameters, and the optimizer update compiles without collectives (8 virtual devices, in a
subprocess because the device count is fixed when JAX starts)."""

import re

import pytest

from tests.devices import ROOT, run_on_8_devices

EXAMPLE = ROOT / "examples" / "data_parallel.py"


@pytest.mark.slow
def test_data_parallel_example_trains_on_an_8_device_mesh():
  proc = run_on_8_devices(EXAMPLE, "--steps", "60", "--print-every", "20", timeout=600)
  out = proc.stdout
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "8 devices, mesh {'data': 2, 'model': 4}" in out
  losses = [float(v) for v in re.findall(r"^step\s+\d+\s+loss (\S+)$", out, re.M)]
  assert len(losses) == 4, out
  assert losses[-1] < 0.3 * losses[0], losses
  # Column-parallel w1 / row-parallel w2: their buffers carry the same split.
  assert re.search(r"\[0\]\.nu\['w1'\]\s+\(64, 256\)\s+P\(None, 'model'\)", out), out
  assert re.search(r"\[2\]\.trace\['w2'\]\s+\(256, 10\)\s+P\('model',\)", out), out
  assert "collectives in the compiled optimizer update: none" in out
  # The model's own step does communicate (gradient all-reduce): the probe above is not blind.
  assert re.search(r"collectives in the whole training step \(model\): \[.*'all-reduce'", out), out
  accuracy = float(re.search(r"held-out accuracy (\S+)", out).group(1))
  assert accuracy > 0.8


@pytest.mark.slow
def test_data_parallel_example_with_zero1_halves_the_state_per_device_at_equal_losses():
  proc = run_on_8_devices(EXAMPLE, "--steps", "40", "--print-every", "20", "--zero1", timeout=600)
  out = proc.stdout
  assert proc.returncode == 0, proc.stderr[-4000:]
  plain, zero1 = out.split("ZeRO-1: the same training")
  losses = [re.findall(r"^step\s+\d+\s+loss (\S+)$", part, re.M) for part in (plain, zero1)]
  assert len(losses[0]) == 3 and losses[0] == losses[1], losses
  # Over the 2-device data axis each buffer is split once more: half the bytes per device.
  both = re.search(r"optimizer state bytes per device: (\d+) as the parameters, (\d+) with ZeRO-1", out)
  assert both and int(both.group(1)) == 2 * int(both.group(2)), out
  assert re.search(r"\[0\]\.nu\['w1'\]\s+\(64, 256\)\s+P\('data', 'model'\)", zero1), zero1
  assert "losses equal (to float rounding) at every printed step: True" in out
  # The parameter update is all-gathered over data: the partitioner did the communication.
  assert re.search(r"collectives in the whole training step \(model\): \[.*'all-gather'", zero1), zero1
