"""Shared test configuration: float64 available everywhere (tests pass explicit dtypes)."""

import jax
from hypothesis import HealthCheck, settings

jax.config.update("jax_enable_x64", True)

# Hypothesis profiles. "default" (and its alias "ci") keeps the property tests CI-friendly: few
# examples (each new tree structure or dtype means a fresh XLA compilation), no deadline
# (compilation times vary), derandomized so a run is reproducible. "long" explores more:
#   pytest tests/test_properties.py --hypothesis-profile=long
_quick = dict(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("default", **_quick)
settings.register_profile("ci", **_quick)
settings.register_profile(
    "long",
    max_examples=150,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("default")


def pytest_terminal_summary(terminalreporter):
  """The drop-in figures (tests/tally.py): how many structures and trajectories equal optax's."""
  from tests import tally

  if tally.COUNTS:
    terminalreporter.section("optax drop-in")
    for line in tally.lines():
      terminalreporter.write_line(line)
