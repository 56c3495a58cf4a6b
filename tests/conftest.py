"""Shared test configuration: float64 available everywhere (tests pass explicit dtypes)."""

import jax

jax.config.update("jax_enable_x64", True)
