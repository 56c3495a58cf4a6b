"""RMSProp for JAX as Optax gradient transformations."""

# Registers state_dtype="8bit" with _storage (the core does not import the quantized codec).
from optax_rmsprop import _quant as _quant  # noqa: F401
from optax_rmsprop import compat as compat
from optax_rmsprop._convert import convert_state as convert_state
from optax_rmsprop._rmsprop import DecoupledWeightDecayState as DecoupledWeightDecayState
from optax_rmsprop._rmsprop import adagrad as adagrad
from optax_rmsprop._rmsprop import decoupled_weight_decay as decoupled_weight_decay
from optax_rmsprop._rmsprop import rmsprop as rmsprop
from optax_rmsprop._rmsprop import scale_by_learning_rate as scale_by_learning_rate
from optax_rmsprop._rmsprop import scale_by_rms as scale_by_rms
from optax_rmsprop._rmsprop import scale_by_rss as scale_by_rss
from optax_rmsprop._rmsprop import scale_by_stddev as scale_by_stddev
from optax_rmsprop._rmsprop import trace as trace
from optax_rmsprop._sharding import shard_over as shard_over

__version__ = "0.1.0"

__all__ = [
    "compat",
    "convert_state",
    "DecoupledWeightDecayState",
    "adagrad",
    "decoupled_weight_decay",
    "rmsprop",
    "scale_by_learning_rate",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_stddev",
    "shard_over",
    "trace",
]
