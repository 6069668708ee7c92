"""Numbers read from environment variables, checked in one place.

A container is configured through its environment (SageMaker's ``SAGEMAKER_*`` variables and
hilt's ``HILT_*`` ones); a value that is not a number, or out of range, is one line naming the
variable, what it holds and what it takes, never a ValueError traceback.
"""

from __future__ import annotations

import math
import os

from hilt.core.errors import UserError


def env_number(name: str, default, *, kind: type = float, low: float = 0, high: float | None = None,
               allow_low: bool = False, wanted: str | None = None, hint: str | None = None):
    """``name``'s value as ``kind`` (``default`` when unset or empty).

    Args:
        low, high: the range; ``low`` itself is allowed only with ``allow_low``.
        wanted: what the value should be, for the message (default "a [whole] number above LOW").
        hint: how to fix it (default "set e.g. DEFAULT").

    Raises:
        UserError: ``NAME='raw': not WANTED; HINT``.
    """
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = None
    ok = value is not None and math.isfinite(value) and (value >= low if allow_low else value > low) \
        and (high is None or value <= high)
    if not ok:
        if wanted is None:
            span = f"from {low:g}" + (f" to {high:g}" if high is not None else "") if allow_low else \
                f"above {low:g}" + (f" and at most {high:g}" if high is not None else "")
            wanted = f"a {'whole ' if kind is int else ''}number {span}"
        raise UserError(f"{name}={raw!r}: not {wanted}; {hint or f'set e.g. {default}'}")
    return value
