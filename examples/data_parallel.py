"""Data- and model-parallel training with optax_rmsprop on a 2 x 4 mesh of 8 (virtual) devices.

    python examples/data_parallel.py [--steps 300] [--zero1]

An MLP classifies scikit-learn's digits. The batch is split over the mesh's ``data`` axis; the
hidden layer is split over its ``model`` axis (the first weight by columns, the second by rows,
as Megatron-LM does). The optimizer state is created by ``jax.jit(tx.init)`` and takes each
parameter's sharding, so the update needs no communication; the only collectives in a step are
the ones the model itself needs (gradient all-reduce over ``data``, activations over ``model``).

With ``--zero1`` the same training runs twice: as above, then with the optimizer state also
partitioned over ``data`` (``optax_rmsprop.shard_over``, ZeRO-1): each device then holds 1/8 of
each buffer instead of 1/4, XLA's SPMD partitioner updates each device's slice and all-gathers the
parameter update. It prints the optimizer bytes per device of both runs and their (equal) losses.

On a CPU-only machine the 8 devices are virtual (``--xla_force_host_platform_device_count=8``,
set below before JAX starts). On several hosts, call ``jax.distributed.initialize()`` before
anything else and build the mesh over ``jax.devices()``: nothing else changes.
"""

from __future__ import annotations

import os

# Before JAX starts: 8 virtual CPU devices (the flag only affects the CPU platform).
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
from functools import partial  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import optax_rmsprop  # noqa: E402

# jax.set_mesh (jax 0.7 and later); jax 0.6's context manager is jax.sharding.use_mesh (its
# jax.sharding.set_mesh sets the mesh for good).
_set_mesh = getattr(jax, "set_mesh", None) or jax.sharding.use_mesh


def _spec(x) -> str:
  return str(x.sharding.spec).replace("PartitionSpec(", "P(")  # jax 0.6 spells it out

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")

# Where each parameter lives on the (data, model) mesh.
PARAM_SPECS = {"w1": P(None, "model"), "b1": P("model"), "w2": P("model", None), "b2": P()}


def init_params(key, hidden: int):
  k1, k2 = jax.random.split(key)
  return {
      "w1": jax.random.normal(k1, (64, hidden), jnp.float32) * (2 / 64) ** 0.5,
      "b1": jnp.zeros((hidden,), jnp.float32),
      "w2": jax.random.normal(k2, (hidden, 10), jnp.float32) * (1 / hidden) ** 0.5,
      "b2": jnp.zeros((10,), jnp.float32),
  }


def loss_fn(params, x, y):
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


def collectives(compiled) -> list[str]:
  text = compiled.as_text()
  return sorted({c for c in COLLECTIVES if c in text})


def bytes_per_device(tree) -> int:
  """The optimizer state's bytes on the first device."""
  device = jax.devices()[0]
  return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards if s.device == device)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=128, help="global batch size (a multiple of the data axis)")
  parser.add_argument("--hidden", type=int, default=256, help="hidden width (a multiple of the model axis)")
  parser.add_argument("--print-every", type=int, default=50)
  parser.add_argument("--zero1", action="store_true", help="also train with the state partitioned over the data axis, and compare")
  args = parser.parse_args()

  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
  print(f"{jax.device_count()} devices, mesh {dict(mesh.shape)}")
  losses, state = train(args, mesh, zero1=False)
  if args.zero1:
    print("\nZeRO-1: the same training, the optimizer state also partitioned over 'data'")
    zero1_losses, zero1_state = train(args, mesh, zero1=True)
    print(f"optimizer state bytes per device: {bytes_per_device(state)} as the parameters, {bytes_per_device(zero1_state)} with ZeRO-1")
    same = all(abs(a - b) <= 1e-5 * abs(a) for a, b in zip(losses, zero1_losses, strict=True))
    print(f"losses equal (to float rounding) at every printed step: {same}")


def train(args, mesh, *, zero1: bool):

  x_all, y_all = load_digits(return_X_y=True)
  x_all = (x_all / 16.0).astype(np.float32)
  y_all = y_all.astype(np.int32)
  order = np.random.default_rng(0).permutation(len(x_all))
  train, test = order[:1500], order[1500:]

  batch_sharding = NamedSharding(mesh, P("data"))
  param_shardings = {k: NamedSharding(mesh, spec) for k, spec in PARAM_SPECS.items()}
  params = jax.device_put(init_params(jax.random.key(0), args.hidden), param_shardings)

  tx = optax_rmsprop.rmsprop(1e-3, centered=True, momentum=0.9, weight_decay=1e-4)
  with _set_mesh(mesh):
    # ZeRO-1: every buffer keeps its parameter's sharding and is split over 'data' as well; the
    # same shardings are the step's, so the state stays partitioned.
    state_shardings = optax_rmsprop.shard_over(jax.eval_shape(tx.init, params), mesh, "data", params=params) if zero1 else None
    # (No out_shardings argument without ZeRO-1: jax 0.6 reads out_shardings=None under a mesh as
    # "replicated"; later releases as "unspecified".)
    init = jax.jit(tx.init, out_shardings=state_shardings) if zero1 else jax.jit(tx.init)
    opt_state = init(params)

    print("optimizer state shardings" + (" (ZeRO-1):" if zero1 else " (each buffer as its parameter):"))
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
      print(f"  {jax.tree_util.keystr(path):<22} {str(leaf.shape):<10} {_spec(leaf)}")

    @partial(jax.jit, **({"out_shardings": (param_shardings, state_shardings, None)} if zero1 else {}))
    def train_step(params, opt_state, x, y):
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    x0 = jax.device_put(x_all[train[: args.batch]], batch_sharding)
    y0 = jax.device_put(y_all[train[: args.batch]], batch_sharding)
    update_only = jax.jit(tx.update).lower(params, opt_state, params).compile()
    step_compiled = train_step.lower(params, opt_state, x0, y0).compile()
    if not zero1:
      print(f"collectives in the compiled optimizer update: {collectives(update_only) or 'none'}")
    print(f"collectives in the whole training step (model): {collectives(step_compiled) or 'none'}")

    rng = np.random.default_rng(1)
    losses = []
    for step in range(args.steps + 1):
      idx = rng.choice(train, args.batch, replace=False)
      x = jax.device_put(x_all[idx], batch_sharding)
      y = jax.device_put(y_all[idx], batch_sharding)
      params, opt_state, loss = train_step(params, opt_state, x, y)
      if step % args.print_every == 0 or step == args.steps:
        losses.append(float(loss))
        print(f"step {step:5d}  loss {float(loss):.4f}")

    n = len(test) // 2 * 2  # a multiple of the data axis
    xt = jax.device_put(x_all[test[:n]], batch_sharding)
    _, logits = jax.jit(loss_fn)(params, xt, jax.device_put(y_all[test[:n]], batch_sharding))
    accuracy = float(np.mean(np.argmax(np.asarray(logits), axis=-1) == y_all[test[:n]]))
    print(f"held-out accuracy {accuracy:.3f}")
    w1_nu = opt_state[0].nu["w1"]
    print(f"after training, nu['w1'] is still {_spec(w1_nu)} on {len(w1_nu.sharding.device_set)} devices")
  return losses, opt_state


if __name__ == "__main__":
  main()
