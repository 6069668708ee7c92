"""``hilt train``, ``launch``, ``recipe``, ``inspect-data``, ``evaluate``: recipes, jobs and their evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hilt.cli._common import add_recipe_flags, positive_int as _positive_int


def _cmd_train(args: argparse.Namespace) -> int:
    from hilt.training.entry import prepare_local_tree, run_job
    from hilt.training.recipe import hyperparameter_strings, load_recipe, parse_set_option

    overrides = dict(parse_set_option(item) for item in args.set)
    load_recipe(args.recipe, overrides)  # every recipe problem, before any file is written
    opt_ml = prepare_local_tree(
        Path(args.output), args.recipe, Path(args.data), Path(args.model) if args.model else None,
        hyperparameter_strings(overrides), fresh=args.fresh,
    )
    print(f"[hilt] /opt/ml tree: {opt_ml.base}")
    return run_job(opt_ml)


def _cmd_launch(args: argparse.Namespace) -> int:
    from hilt.training.launch import LaunchSpec, TuneSpec, launch
    from hilt.training.recipe import hyperparameter_strings, parse_set_option

    spec = LaunchSpec(
        recipe=args.recipe, image=args.image, role=args.role, data=args.data, instance_type=args.instance_type,
        instance_count=args.instance_count, s3=args.s3, model=args.model,
        overrides=hyperparameter_strings(dict(map(parse_set_option, args.set))),
        spot=args.spot, max_wait=args.max_wait, max_run=args.max_run, checkpoint_s3=args.checkpoint_s3,
        volume_gb=args.volume_gb, job_name=args.job_name,
        tune=TuneSpec(objective=args.objective, keys=args.tune_keys.split(",") if args.tune_keys else None,
                      max_jobs=args.max_jobs, max_parallel=args.max_parallel, strategy=args.strategy)
        if args.tune else None,
    )
    default_out = "tuning-request.json" if args.tune else "launch-request.json"
    out = Path(args.out) if args.out else (Path(default_out) if args.dry_run else None)
    result = launch(spec, args.dry_run, out, region=args.region)
    request = result["request"]
    if args.tune:
        config = request["HyperParameterTuningJobConfig"]
        definition = request["TrainingJobDefinition"]
        tuned = ", ".join(r["Name"] for kind in config["ParameterRanges"].values() for r in kind)
        print(f"CreateHyperParameterTuningJob {request['HyperParameterTuningJobName']}: validated against botocore's "
              f"SageMaker model; {config['Strategy']} over {tuned}, "
              f"{config['HyperParameterTuningJobObjective']['Type'].lower()} "
              f"{config['HyperParameterTuningJobObjective']['MetricName']}, "
              f"{config['ResourceLimits']['MaxNumberOfTrainingJobs']} jobs "
              f"({config['ResourceLimits']['MaxParallelTrainingJobs']} at once)")
    channels = ", ".join(f"{c['ChannelName']}={c['DataSource']['S3DataSource']['S3Uri']}"
                         for c in (definition if args.tune else request)["InputDataConfig"])
    if not args.tune:
        print(f"CreateTrainingJob {request['TrainingJobName']}: validated against botocore's SageMaker model; "
              f"channels {channels}")
    else:
        print(f"channels {channels}")
    if out is not None:
        print(f"request written to {out}")
    if args.dry_run:
        print("dry run: nothing uploaded, nothing submitted")
        return 0
    print(f"submitted {result['arn']} (status {result['status']}); uploaded: {', '.join(result['uploaded']) or 'nothing new'}")
    return 0


def _cmd_recipe_schema(args: argparse.Namespace) -> int:
    from hilt.training.recipe import recipe_json_schema

    print(json.dumps(recipe_json_schema(), indent=2))
    return 0


def _cmd_recipe_check(args: argparse.Namespace) -> int:
    from hilt.training.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    print(json.dumps(recipe.model_dump(mode="json"), indent=2))
    return 0


def _cmd_inspect_data(args: argparse.Namespace) -> int:
    from hilt.training.inspect_data import inspect_data
    from hilt.training.recipe import load_recipe, parse_set_option

    recipe = load_recipe(args.recipe, dict(parse_set_option(item) for item in args.set))
    inspect_data(recipe, Path(args.data), Path(args.model) if args.model else None, args.samples)
    return 0


def _archived_model(path: Path, flag: str, scratch: Path) -> Path:
    """A model dir as given, or unpacked from a ``model.tar.gz`` (the file, or a folder holding only
    it: what a SageMaker processing job receives of a training job's ModelArtifacts)."""
    from hilt.serving.package import extract_model_tar
    from hilt.core.layout import is_model_dir

    archive = path if path.is_file() else path / "model.tar.gz"
    if is_model_dir(path) or not archive.is_file() or not archive.name.endswith((".tar.gz", ".tgz")):
        return path
    print(f"[hilt] {flag}: unpacking {archive}", flush=True)
    target = scratch / flag.strip("-")
    extract_model_tar(archive, target, require_manifest=False)
    return target


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from hilt.training.evaluate import EVAL_FILE, METRICS, REPORT_FILE, evaluate
    from hilt.training.general import GENERAL_METRICS

    with tempfile.TemporaryDirectory(prefix="hilt-evaluate-") as scratch:
        model = _archived_model(Path(args.model), "--model", Path(scratch))
        baseline = _archived_model(Path(args.baseline), "--baseline", Path(scratch)) if args.baseline else None
        general = None if args.no_general else (args.general or "bundled")
        result = evaluate(model, Path(args.data), Path(args.out), baseline_dir=baseline, gates=args.gate,
                          task_metric=args.metric, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
                          general=general)
    models = result["models"]
    print(f"{'metric':<12}" + "".join(f"{name:>12}" for name in models) + ("      change" if "deltas" in result else ""))
    for metric in METRICS:
        mark = "*" if metric == result["task_metric"] else " "
        line = f"{metric + mark:<12}" + "".join(f"{m['metrics'][metric]:>12.4f}" for m in models.values())
        if "deltas" in result:
            line += f"{result['deltas'][metric]:>+12.4f}"
        print(line)
    if "general" in result:
        general = result["general"]
        print(f"general ({general['records']} prompts outside the task: did it forget?)")
        for metric in GENERAL_METRICS:
            line = f"  {metric:<18}" + "".join(f"{general['models'][n][metric]:>12.4f}" for n in models)
            if "deltas" in general:
                line += f"{general['deltas'][metric]:>+12.4f}"
            print(line)
    for gate in result["gates"]:
        print(f"gate {gate['gate']}: {gate['value']:+.4f} -> {'pass' if gate['passed'] else 'FAIL'}")
    print(f"{Path(args.out) / EVAL_FILE}, {Path(args.out) / REPORT_FILE}")
    return 0 if result["passed"] else 1


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

    p = sub.add_parser(
        "launch", help="run a recipe as a SageMaker training job (CreateTrainingJob with boto3)",
        description="Upload the dataset to S3 under its hash (once), build the CreateTrainingJob request "
        "(image, MetricDefinitions, hyperparameters as strings, channels, output, resources, checkpoints, "
        "managed spot, stopping condition), validate it strictly against botocore's SageMaker model and "
        "submit it. --dry-run writes the request and sends nothing. AWS_ENDPOINT_URL is honoured.",
    )
    add_recipe_flags(p)
    p.add_argument("--image", required=True, help="training image URI (ECR) whose entry point is `train`")
    p.add_argument("--role", required=True, help="IAM role ARN the job runs as")
    p.add_argument("--data", required=True, help="dataset dir from `hilt export`, or an s3:// prefix with train/")
    p.add_argument("--instance-type", required=True, help="e.g. ml.g5.2xlarge")
    p.add_argument("--instance-count", type=_positive_int, default=1, help="hosts (1)")
    p.add_argument("--model", help="base model: a save_pretrained dir (uploaded once) or s3:// prefix; "
                   "becomes the `model` channel")
    p.add_argument("--s3", help="s3://bucket/prefix for datasets, checkpoints and outputs "
                   "(default: the SageMaker default bucket, s3://sagemaker-REGION-ACCOUNT/hilt)")
    p.add_argument("--spot", action="store_true", help="managed spot training (resumes from checkpoints)")
    p.add_argument("--max-wait", type=_positive_int, help="with --spot: seconds to wait for spot capacity + run")
    p.add_argument("--max-run", type=_positive_int, default=24 * 3600, help="MaxRuntimeInSeconds (86400)")
    p.add_argument("--checkpoint-s3", help="s3:// checkpoint location (default S3/checkpoints/JOB)")
    p.add_argument("--volume-gb", type=_positive_int, default=100, help="EBS volume per host (100)")
    p.add_argument("--job-name", help="TrainingJobName (default hilt-RECIPE-TIMESTAMP)")
    p.add_argument("--region", help="AWS region (default $AWS_DEFAULT_REGION or us-east-1)")
    p.add_argument("--dry-run", action="store_true", help="write the validated request; upload and submit nothing")
    p.add_argument("--out", help="where to write the request JSON (default launch-request.json, or "
                   "tuning-request.json with --tune, with --dry-run)")
    p.add_argument("--tune", action="store_true",
                   help="a hyperparameter tuning job over the recipe's tunable ranges instead of one training job")
    p.add_argument("--objective", help="with --tune: eval_loss or train_loss, the metric to minimise (eval_loss when --data has validation/, else train_loss)")
    p.add_argument("--tune-keys", metavar="KEY,KEY", help="with --tune: recipe keys to search (default: learning "
                   "rate, warm-up, and LoRA r/dropout or DPO beta as the recipe uses them)")
    p.add_argument("--max-jobs", type=_positive_int, default=8, help="with --tune: training jobs in all (8)")
    p.add_argument("--max-parallel", type=_positive_int, default=2, help="with --tune: jobs at once (2)")
    p.add_argument("--strategy", default="Bayesian", choices=["Bayesian", "Random", "Hyperband", "Grid"],
                   help="with --tune: search strategy (Bayesian)")
    p.set_defaults(func=_cmd_launch)

    recipe = sub.add_parser("recipe", help="recipe schema and validation")
    recipe_sub = recipe.add_subparsers(dest="recipe_command", metavar="ACTION", required=True)
    p = recipe_sub.add_parser("schema", help="print the recipe JSON schema")
    p.set_defaults(func=_cmd_recipe_schema)
    p = recipe_sub.add_parser("check", help="validate a recipe (+ overrides), print it resolved")
    add_recipe_flags(p)
    p.set_defaults(func=_cmd_recipe_check)

    p = sub.add_parser(
        "inspect-data",
        help="print tokenized samples with the tokens that count toward the loss marked",
    )
    add_recipe_flags(p)
    p.add_argument("--data", required=True, help="dataset dir (train/data.jsonl)")
    p.add_argument("--model", help="model dir whose tokenizer to use (else model.name_or_path)")
    p.add_argument("--samples", type=_positive_int, default=2, help="records to show (2)")
    p.set_defaults(func=_cmd_inspect_data)

    p = sub.add_parser(
        "evaluate", help="held-out loss, perplexity, exact match / ROUGE-L: a model vs its baseline, with gates",
        description="Score --model (and --baseline) on the held-out records of --data: loss and perplexity of "
        "the reference answers, greedy answers scored by exact match and ROUGE-L. Writes OUT/eval.json, "
        "samples.jsonl (answers side by side), metrics.png and report.md. Both models are also scored on a "
        "general set outside the task (general_loss, general_accuracy: did fine-tuning make it forget?), "
        "reported beside the task metrics and in the model card. Exit code 1 when a --gate fails.",
    )
    p.add_argument("--model", required=True, help="the candidate: a job's model/ dir, any save_pretrained dir, or "
                   "a model.tar.gz (or a folder holding one)")
    p.add_argument("--baseline", help="the model to compare against, e.g. the base model (a dir or model.tar.gz)")
    p.add_argument("--data", required=True, help="dataset dir (its validation/ split is used) or a JSONL file")
    p.add_argument("--out", required=True, help="folder for eval.json and the report")
    p.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="e.g. 'rougeL>=+0.05' (signed: change vs baseline) or 'exact_match>=0.6' (absolute), "
                   "'general_loss<=+0.15' (forgetting); repeatable")
    from hilt.training.recipe import TASK_METRICS

    p.add_argument("--metric", choices=list(TASK_METRICS),
                   help="headline task metric (default: the model's recipe eval.metric, else exact_match)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="cap on each answer (64)")
    p.add_argument("--max-samples", type=_positive_int, help="score only the first N records")
    general = p.add_mutually_exclusive_group()
    general.add_argument("--general", metavar="FILE", help="your own general set instead of hilt's: JSONL of "
                         "{prompt, reference, accept?: [regex], category?} or messages records")
    general.add_argument("--no-general", action="store_true", help="skip the general set (task metrics only)")
    p.set_defaults(func=_cmd_evaluate)
