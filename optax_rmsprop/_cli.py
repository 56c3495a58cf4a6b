"""The command line: ``python -m optax_rmsprop demo [--out PATH] [--steps N] [--optimizers LIST] [--seed S]``.

Parsing and validation only; the demo itself lives in :mod:`optax_rmsprop._demo`. A usage error
(unknown subcommand or option, bad value) is one line on stderr naming the problem, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from collections.abc import Sequence

from optax_rmsprop import _demo

__all__ = ["main"]

_MAX_SEED = 2**32 - 1


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line: ``prog: error: problem (usage: ...)``."""

  def error(self, message: str) -> None:  # type: ignore[override]
    usage = " ".join(self.format_usage().split())
    self.exit(2, f"{self.prog}: error: {message} ({usage})\n")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer in [0, {_MAX_SEED}], got {text!r}") from None
  if not 0 <= value <= _MAX_SEED:
    raise argparse.ArgumentTypeError(f"expected an integer in [0, {_MAX_SEED}], got {text!r}")
  return value


def _optimizer_list(text: str) -> tuple[str, ...]:
  names = [name.strip() for name in text.split(",")]
  allowed = ", ".join(_demo.OPTIMIZERS)
  if not all(names):
    raise argparse.ArgumentTypeError(f"expected comma-separated names from {allowed}, got {text!r}")
  unknown = [name for name in names if name not in _demo.OPTIMIZERS]
  if unknown:
    raise argparse.ArgumentTypeError(f"unknown optimizer {unknown[0]!r}; choose from {allowed}")
  return tuple(dict.fromkeys(names))  # drops repeats, keeps the order


def _check_out(path: pathlib.Path) -> str | None:
  """Why the PNG cannot be written at ``path``, or None. Creates the missing parent folders."""
  if path.suffix.lower() != ".png":
    return f"expected a path ending in .png, got {str(path)!r}"
  if path.is_dir():
    return f"{str(path)!r} is a folder, expected a .png file path"
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".optax_rmsprop-", suffix=".png.tmp"):
      pass
  except (FileExistsError, NotADirectoryError):
    blocker = next((p for p in (path.parent, *path.parent.parents) if p.exists() and not p.is_dir()), path.parent)
    return f"cannot write {str(path)!r}: {str(blocker)!r} is a file, not a folder"
  except OSError as e:
    return f"cannot write {str(path)!r}: {e.strerror or e}"
  return None


def _build_parser(prog: str) -> tuple[_Parser, _Parser]:
  parser = _Parser(
      prog=prog,
      description="optax_rmsprop: RMSProp for JAX as Optax gradient transformations.",
  )
  commands = parser.add_subparsers(dest="command", title="subcommands", metavar="{demo}")
  optimizers = "\n".join(f"  {spec.name:<8} {spec.call}" for spec in _demo.OPTIMIZERS.values())
  demo = commands.add_parser(
      "demo",
      help="train a small Flax NNX classifier on scikit-learn's digits with four optimizers",
      description=(
          "Train a small Flax NNX MLP on scikit-learn's bundled digits (no download) with each optimizer\n"
          "from the same initialisation, full batch under nnx.jit; print a table of the final train/test\n"
          "loss and accuracy and the ms per step; write a PNG of the loss curves."
      ),
      epilog=f"optimizers and their learning rates (tuned on a validation split, see optax_rmsprop/_demo.py):\n"
      f"{optimizers}",
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  demo.add_argument(
      "--out",
      metavar="PATH",
      type=pathlib.Path,
      default=_demo.DEFAULT_OUT,
      help=f"where to write the loss-curve PNG; folders are created (default: {_demo.DEFAULT_OUT})",
  )
  demo.add_argument(
      "--steps",
      metavar="N",
      type=_positive_int,
      default=_demo.DEFAULT_STEPS,
      help=f"full-batch training steps per optimizer (default: {_demo.DEFAULT_STEPS})",
  )
  demo.add_argument(
      "--optimizers",
      metavar="LIST",
      type=_optimizer_list,
      default=tuple(_demo.OPTIMIZERS),
      help=f"comma-separated, in the order to run (default: {','.join(_demo.OPTIMIZERS)})",
  )
  demo.add_argument(
      "--seed",
      metavar="S",
      type=_seed,
      default=_demo.DEFAULT_SEED,
      help=f"fixes the train/test split and the shared initialisation (default: {_demo.DEFAULT_SEED})",
  )
  demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  return parser, demo


def _prog() -> str:
  argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
  return "optax-rmsprop" if argv0 == "optax-rmsprop" else "python -m optax_rmsprop"


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
  parser, demo = _build_parser(_prog())
  try:
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported by the subcommand's parser, whose usage is the one that helps
      (demo if args.command == "demo" else parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
      parser.error("missing subcommand; choose from: demo")
    problem = _check_out(args.out)
    if problem:
      demo.error(f"argument --out: {problem}")
  except SystemExit as e:  # argparse's usage errors (2) and --help (0)
    return e.code if isinstance(e.code, int) else 2

  try:
    _demo.run(
        steps=args.steps,
        optimizers=args.optimizers,
        seed=args.seed,
        out=args.out,
        progress=not args.no_progress,
    )
  except _demo.DemoDependencyError as e:
    print(f"{demo.prog}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{demo.prog}: interrupted", file=sys.stderr)
    return 130
  return 0
