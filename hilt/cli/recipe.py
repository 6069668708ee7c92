"""``hilt recipe``: the recipe schema, and a recipe (with overrides) validated and resolved."""

from __future__ import annotations

import argparse
import json

from hilt.cli._common import add_recipe_flags


def _cmd_schema(args: argparse.Namespace) -> int:
    from hilt.training.base.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from hilt.training.base.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    print(json.dumps(recipe.model_dump(mode="json"), indent=2))
    return 0


def register(sub) -> None:
    recipe = sub.add_parser("recipe", help="recipe schema and validation")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    p = recipe_sub.add_parser("schema", help="print the recipe JSON schema")
    p.set_defaults(func=_cmd_schema)
    p = recipe_sub.add_parser("check", help="validate a recipe (+ overrides), print it resolved")
    add_recipe_flags(p)
    p.set_defaults(func=_cmd_check)
