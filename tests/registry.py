"""The registry of public constructors x representative flags that every contract check runs over.

A new public constructor joins here; it does not get hand-written copies of the checks. Ports in
``optax_rmsprop.compat`` join automatically once that module exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax

import optax_rmsprop


@dataclasses.dataclass(frozen=True)
class Case:
  """One constructor called with one set of arguments."""

  id: str
  make: Callable[..., optax.GradientTransformation]
  kwargs: dict[str, Any]
  # Numeric hyperparameters that may arrive traced under optax.inject_hyperparams.
  numeric: tuple[str, ...] = ()
  # Whether complex parameters are supported.
  complex_ok: bool = True
  # Whether the transformation reads params in update (weight decay).
  needs_params: bool = False

  def build(self, **override) -> optax.GradientTransformation:
    return self.make(**{**self.kwargs, **override})


_orp = optax_rmsprop
CORE: list[Case] = [
    Case("rmsprop", _orp.rmsprop, dict(learning_rate=0.01), ("learning_rate", "decay", "eps")),
    Case("rmsprop-centered", _orp.rmsprop, dict(learning_rate=0.01, centered=True), ("learning_rate", "decay", "eps")),
    Case("rmsprop-momentum", _orp.rmsprop, dict(learning_rate=0.01, momentum=0.9), ("learning_rate", "momentum")),
    Case("rmsprop-nesterov", _orp.rmsprop, dict(learning_rate=0.01, momentum=0.9, nesterov=True), ("momentum",)),
    Case("rmsprop-bias-correction", _orp.rmsprop, dict(learning_rate=0.01, bias_correction=True), ("decay",)),
    Case("rmsprop-eps-outside", _orp.rmsprop, dict(learning_rate=0.01, eps_in_sqrt=False, eps=1e-6), ("eps",)),
    Case("rmsprop-initial-scale", _orp.rmsprop, dict(learning_rate=0.01, initial_scale=1.0), ("initial_scale",)),
    Case(
        "rmsprop-weight-decay",
        _orp.rmsprop,
        dict(learning_rate=0.01, weight_decay=1e-2),
        ("learning_rate", "weight_decay"),
        needs_params=True,
    ),
    Case("rmsprop-maximize", _orp.rmsprop, dict(learning_rate=0.01, maximize=True)),
    Case("rmsprop-state-f32", _orp.rmsprop, dict(learning_rate=0.01, momentum=0.9, state_dtype=jnp.float32)),
    Case(
        "rmsprop-all-flags",
        _orp.rmsprop,
        dict(
            learning_rate=optax.cosine_decay_schedule(0.01, 100),
            centered=True,
            momentum=0.9,
            nesterov=True,
            bias_correction=True,
            weight_decay=1e-3,
        ),
        ("decay", "eps", "momentum", "weight_decay"),
        needs_params=True,
    ),
    Case("adagrad", _orp.adagrad, dict(learning_rate=0.1), ("learning_rate", "initial_accumulator_value", "eps")),
    Case("scale_by_rms", _orp.scale_by_rms, dict(), ("decay", "eps", "initial_scale")),
    Case("scale_by_rms-centered", _orp.scale_by_rms, dict(centered=True, bias_correction=True), ("decay", "eps")),
    Case("scale_by_stddev", _orp.scale_by_stddev, dict(), ("decay", "eps", "initial_scale")),
    Case("scale_by_rss", _orp.scale_by_rss, dict(), ("initial_accumulator_value", "eps")),
]


def _compat_cases() -> list[Case]:
  try:
    from optax_rmsprop import compat
  except ImportError:
    return []
  c = compat
  return [
      Case("torch_rmsprop", c.torch_rmsprop, dict(), ("lr", "alpha", "eps")),
      Case(
          "torch_rmsprop-all",
          c.torch_rmsprop,
          dict(lr=0.01, momentum=0.9, centered=True, weight_decay=1e-2, maximize=True),
          ("lr", "momentum", "weight_decay"),
          needs_params=True,
      ),
      Case("torch_adagrad", c.torch_adagrad, dict(lr_decay=1e-3, weight_decay=1e-2), ("lr",), needs_params=True),
      Case("keras_rmsprop", c.keras_rmsprop, dict(), ("learning_rate", "rho", "epsilon")),
      Case(
          "keras_rmsprop-all",
          c.keras_rmsprop,
          dict(centered=True, momentum=0.9, weight_decay=1e-2, clipnorm=1.0),
          ("learning_rate", "momentum"),
          needs_params=True,
      ),
      Case("keras_adagrad", c.keras_adagrad, dict(), ("learning_rate",)),
      Case("tf1_rmsprop", c.tf1_rmsprop, dict(learning_rate=0.01, momentum=0.9, centered=True), ("learning_rate",)),
      Case("graves_rmsprop", c.graves_rmsprop, dict(), ("learning_rate",)),
      Case("dqn_rmsprop", c.dqn_rmsprop, dict(), ("learning_rate",)),
  ]


ALL: list[Case] = CORE + _compat_cases()
IDS = [c.id for c in ALL]
