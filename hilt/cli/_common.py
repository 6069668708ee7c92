"""Flag types and flag sets more than one command group uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.core.errors import UserError
from hilt.labeling.export import RANK_POLICIES, SFT_POLICIES, ExportOptions  # light: no Label Studio or torch
from hilt.labeling.templates import TEMPLATES


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


def add_export_source_flags(p: argparse.ArgumentParser) -> None:
    """Where the annotations come from and how they become records: ``hilt export`` and ``hilt quality``."""
    defaults = ExportOptions()  # one source: the same defaults as the pipeline's export section
    p.add_argument("--project", type=int, help="Label Studio project id (live server)")
    p.add_argument("--from-file", help="a Label Studio JSON export file instead of a live project")
    p.add_argument("--template", choices=list(TEMPLATES),
                   help="the project's template (required with --from-file; checked with --project)")
    p.add_argument("--label-config", help="with --from-file: the project's labeling config XML, to "
                   "check every result's control against it")
    p.add_argument("--policy", choices=SFT_POLICIES, default=defaults.policy,
                   help="SFT tasks with several answers: keep each distinct one (default), all, the latest, "
                   "or the ground-truth one first")
    p.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction,
                   help=f"share of tasks held out ({defaults.validation_fraction})")
    p.add_argument("--max-chars", type=positive_int, default=defaults.max_chars,
                   help=f"longer answers are rejected ({defaults.max_chars})")
    p.add_argument("--scrub-pii", action="store_true", help="replace emails and phone numbers; count them")
    p.add_argument("--rank-policy", choices=RANK_POLICIES, default=defaults.rank_policy,
                   help="rank template: which pairs a ranking gives: the best over each other answer (default), "
                   "every ordered pair, or each answer over the next")
    p.add_argument("--rating-threshold", type=float, default=defaults.rating_threshold,
                   help=f"rate template: a mean rating at or above it makes a desirable KTO answer "
                   f"({defaults.rating_threshold:g})")


def export_source(args: argparse.Namespace):
    """(tasks, spec, source, where) from --from-file or --project."""
    from hilt.labeling.dataset import read_export_source

    return read_export_source(args.project, Path(args.from_file) if args.from_file else None, args.template,
                              Path(args.label_config) if args.label_config else None)


def export_options(args: argparse.Namespace) -> ExportOptions:
    """The ``ExportOptions`` the flags of ``add_export_source_flags`` ask for."""
    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    return ExportOptions(policy=args.policy, validation_fraction=args.validation_fraction,
                         max_chars=args.max_chars, scrub_pii=args.scrub_pii, rating_threshold=args.rating_threshold,
                         rank_policy=args.rank_policy)
