"""``hilt train``: a recipe as a SageMaker training job over a local /opt/ml tree."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import add_recipe_flags


def _cmd_train(args: argparse.Namespace) -> int:
    from hilt.training.run.entry import prepare_local_tree, run_job
    from hilt.training.base.recipe import hyperparameter_strings, load_recipe, parse_set_option

    overrides = dict(parse_set_option(item) for item in args.set)
    load_recipe(args.recipe, overrides)  # every recipe problem, before any file is written
    opt_ml = prepare_local_tree(
        Path(args.output), args.recipe, Path(args.data), Path(args.model) if args.model else None,
        hyperparameter_strings(overrides), fresh=args.fresh,
    )
    print(f"[hilt] /opt/ml tree: {opt_ml.base}")
    return run_job(opt_ml)


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="run a recipe as a SageMaker training job over a local /opt/ml tree",
        description="Lay out --output as the /opt/ml tree SageMaker gives a training job "
        "(hyperparameters, channels) and run the training container's own entry point on it. "
        "The model ends up in OUTPUT/model; rerunning with the same flags resumes from the "
        "newest checkpoint in OUTPUT/checkpoints.",
    )
    add_recipe_flags(p)
    p.add_argument("--data", required=True, help="dataset dir from `hilt export` (train/, validation/)")
    p.add_argument("--output", required=True, help="job dir: becomes the /opt/ml tree")
    p.add_argument("--model", help="base model dir, mounted as the `model` channel")
    p.add_argument("--fresh", action="store_true",
                   help="discard OUTPUT's checkpoints and model and train from the start (a rerun otherwise "
                   "resumes, and refuses checkpoints made from other data, recipe or model)")
    p.set_defaults(func=_cmd_train)
