"""What every command-line entry point shares: bad input becomes one line on stderr and exit 2."""
from __future__ import annotations

import sys

from .errors import PurifyError


def invoke(main, argv=None) -> None:
    try:
        code = main(argv)
    except PurifyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def parse_specs(specs: list[str]) -> list[tuple[str, float]]:
    """``["badnets:0.1", "blended:0.01"]`` -> ``[("badnets", 0.1), ("blended", 0.01)]``."""
    out = []
    for spec in specs:
        name, _, rate = spec.partition(":")
        try:
            out.append((name, float(rate)))
        except ValueError:
            raise PurifyError(f"victim {spec!r} must be ATTACK:RATE, e.g. badnets:0.1") from None
    return out
