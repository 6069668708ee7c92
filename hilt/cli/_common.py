"""Flag types and flag sets more than one command group uses."""

from __future__ import annotations

import argparse

from hilt.core.errors import UserError


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def since(text: str | None):
    """``--since`` as an aware UTC datetime (None when not given)."""
    import datetime as dt

    if not text:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since {text!r}: not a date or time; write e.g. 2026-11-24 or 2026-11-24T18:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def add_recipe_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe name (see recipes/) or path to a recipe YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.learning_rate=1e-4 (repeatable)")
