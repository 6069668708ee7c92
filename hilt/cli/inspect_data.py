"""``hilt inspect-data``: tokenized samples, with the tokens that count toward the loss marked."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import add_recipe_flags, positive_int as _positive_int


def _cmd_inspect_data(args: argparse.Namespace) -> int:
    from hilt.training.data.inspect_data import inspect_data
    from hilt.training.base.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    inspect_data(recipe, Path(args.data), Path(args.model) if args.model else None, args.samples)
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "inspect-data",
        help="print tokenized samples with the tokens that count toward the loss marked",
    )
    add_recipe_flags(p)
    p.add_argument("--data", required=True, help="dataset dir (train/data.jsonl)")
    p.add_argument("--model", help="model dir whose tokenizer to use (else model.name_or_path)")
    p.add_argument("--samples", type=_positive_int, default=2, help="records to show (2)")
    p.set_defaults(func=_cmd_inspect_data)
