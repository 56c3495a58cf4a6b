"""Counts the drop-in checks of ``test_optax_state.py`` record, printed at the end of the run.

``conftest.py`` prints one line per kind ("state structure identical to optax's: k/n", ...), so the
figures a closing note quotes come from the test run itself.
"""

from __future__ import annotations

import collections

COUNTS: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])


def record(kind: str, ok: bool) -> None:
  """Counts one check of ``kind``; the test asserts ``ok`` itself."""
  COUNTS[kind][0] += bool(ok)
  COUNTS[kind][1] += 1


def lines() -> list[str]:
  return [f"{kind}: {k}/{n}" for kind, (k, n) in sorted(COUNTS.items())]
