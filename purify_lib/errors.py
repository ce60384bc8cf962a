"""One exception type for bad input, so scripts can print it as one line and exit non-zero."""


class PurifyError(ValueError):
    """Bad input: the message names the bad value and what is allowed."""


def choose(kind: str, name: str, allowed) -> str:
    """Return ``name`` if it is one of ``allowed``, else raise a one-line error listing them."""
    if name not in allowed:
        raise PurifyError(f"unknown {kind} {name!r}; allowed: {', '.join(sorted(allowed))}")
    return name
