"""Running a script on 8 virtual CPU devices, in a subprocess: the device count is fixed when JAX
starts, and the pytest process has already started it with one."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_on_8_devices(script: pathlib.Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
  """Runs ``script`` with ``args`` on 8 virtual CPU devices with this checkout's package."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_ENABLE_X64", None)
  # The worktree's package, not an installed copy.
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
  return subprocess.run([sys.executable, str(script), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
