"""Shared test configuration: float64 available everywhere, strict dtype promotion, seeded data."""

import jax

jax.config.update("jax_enable_x64", True)
