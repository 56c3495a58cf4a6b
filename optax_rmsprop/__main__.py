"""``python -m optax_rmsprop``: the command line (see :mod:`optax_rmsprop._cli`)."""

from optax_rmsprop._cli import main as main

if __name__ == "__main__":
  raise SystemExit(main())
