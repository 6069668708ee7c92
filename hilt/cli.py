"""The ``hilt`` command.

Thin glue: each subcommand parses its flags and calls one function of a stage package.
Heavy libraries (torch, transformers, trl) are imported inside the handlers, so
``hilt --help`` answers in well under a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from hilt import __version__
from hilt.errors import EXIT_USER_ERROR, UserError


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"hilt {__version__}")
    return 0


def _cmd_model_tiny(args: argparse.Namespace) -> int:
    from training.tiny_model import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads or args.heads,
        intermediate=args.intermediate or 2 * args.hidden,
        vocab_size=args.vocab_size,
        max_positions=args.max_positions,
        seed=args.seed,
    )
    if spec.hidden % spec.heads:
        raise UserError(
            f"--hidden {spec.hidden} is not divisible by --heads {spec.heads}; "
            "pick a hidden size that is a multiple of the head count."
        )
    if spec.heads % spec.kv_heads:
        raise UserError(
            f"--heads {spec.heads} is not divisible by --kv-heads {spec.kv_heads}; "
            "pick a kv-head count that divides the head count."
        )
    out = build_tiny_model(args.out, spec)
    if args.warmup_steps:
        from training.tiny_model import warm_up

        loss = warm_up(out, steps=args.warmup_steps, seed=args.seed)
        print(f"warm-up: {args.warmup_steps} full fine-tuning steps on a copy task, final loss {loss:.4f}")
    print(f"tiny model written to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from training.entry import prepare_local_tree, run_job
    from training.recipe import load_recipe, parse_set_option

    overrides = dict(parse_set_option(item) for item in args.set)
    load_recipe(args.recipe, overrides)  # every recipe problem, before any file is written
    opt_ml = prepare_local_tree(
        Path(args.output), args.recipe, Path(args.data), Path(args.model) if args.model else None,
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()},
    )
    print(f"[hilt] /opt/ml tree: {opt_ml.base}")
    return run_job(opt_ml)


def _cmd_recipe_schema(args: argparse.Namespace) -> int:
    from training.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _cmd_recipe_check(args: argparse.Namespace) -> int:
    from training.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    print(json.dumps(recipe.model_dump(mode="json"), indent=2))
    return 0


def _cmd_inspect_data(args: argparse.Namespace) -> int:
    from training.inspect_data import inspect_data
    from training.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    inspect_data(recipe, Path(args.data), Path(args.model) if args.model else None, args.samples)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hilt.demo import run_demo

    return run_demo(Path(args.workdir))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hilt",
        description="Human-in-the-loop data and fine-tuning: Label Studio -> TRL -> SageMaker.",
    )
    parser.add_argument("--version", action="version", version=f"hilt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("version", help="print hilt's version")
    p.set_defaults(func=_cmd_version)

    model = sub.add_parser("model", help="build local models (no hub downloads)")
    model_sub = model.add_subparsers(dest="model_command", metavar="KIND", required=True)
    p = model_sub.add_parser(
        "tiny",
        help="build a tiny Llama-shaped model and a locally trained tokenizer",
        description="Build a tiny Llama causal LM with a byte-level BPE tokenizer and a "
        "ChatML chat template (assistant turns in {% generation %} markers), and "
        "save_pretrained both to --out. Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=_positive_int, default=2, help="decoder layers (2)")
    p.add_argument("--hidden", type=_positive_int, default=64, help="hidden size (64)")
    p.add_argument("--heads", type=_positive_int, default=4, help="attention heads (4)")
    p.add_argument("--kv-heads", type=_positive_int, default=None, help="KV heads (= heads)")
    p.add_argument(
        "--intermediate", type=_positive_int, default=None, help="MLP size (2 x hidden)"
    )
    p.add_argument("--vocab-size", type=_positive_int, default=512, help="BPE vocab (512)")
    p.add_argument(
        "--max-positions", type=_positive_int, default=512, help="context length (512)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and corpus (0)")
    p.add_argument(
        "--warmup-steps", type=int, default=0,
        help="full fine-tuning steps on a copy task so LoRA can learn on top (0 = random init)",
    )
    p.set_defaults(func=_cmd_model_tiny)

    set_help = "override a recipe key, e.g. --set train.learning_rate=1e-4 (repeatable)"
    p = sub.add_parser(
        "train",
        help="run a recipe as a SageMaker training job over a local /opt/ml tree",
        description="Lay out --output as the /opt/ml tree SageMaker gives a training job "
        "(hyperparameters, channels) and run the training container's own entry point on it. "
        "The model ends up in OUTPUT/model; rerunning with the same flags resumes from the "
        "newest checkpoint in OUTPUT/checkpoints.",
    )
    p.add_argument("recipe", help="recipe name (see recipes/) or path to a recipe YAML")
    p.add_argument("--data", required=True, help="dataset dir from `hilt export` (train/, validation/)")
    p.add_argument("--output", required=True, help="job dir: becomes the /opt/ml tree")
    p.add_argument("--model", help="base model dir, mounted as the `model` channel")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=_cmd_train)

    recipe = sub.add_parser("recipe", help="recipe schema and validation")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    p = recipe_sub.add_parser("schema", help="print the recipe JSON schema")
    p.set_defaults(func=_cmd_recipe_schema)
    p = recipe_sub.add_parser("check", help="validate a recipe (+ overrides), print it resolved")
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=_cmd_recipe_check)

    p = sub.add_parser(
        "inspect-data",
        help="print tokenized samples with the tokens that count toward the loss marked",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("--data", required=True, help="dataset dir (train/data.jsonl)")
    p.add_argument("--model", help="model dir whose tokenizer to use (else model.name_or_path)")
    p.add_argument("--samples", type=_positive_int, default=2, help="records to show (2)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.set_defaults(func=_cmd_inspect_data)

    p = sub.add_parser(
        "demo",
        help="run the main job end to end on embedded defaults (no cloud, no GPU)",
    )
    p.add_argument(
        "--workdir", default=".hilt-demo", help="where the demo keeps its files (.hilt-demo)"
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"hilt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
