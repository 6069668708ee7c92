"""``hilt launch``: a recipe as a SageMaker training job, or a tuning job over its ranges (boto3)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import add_recipe_flags, positive_int as _positive_int
from hilt.training.launch import TUNING_STRATEGIES, LaunchSpec, TuneSpec, launch


def _cmd_launch(args: argparse.Namespace) -> int:
    from hilt.training.base.recipe import hyperparameter_strings, parse_set_option

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


def _add_tune_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tune", action="store_true",
                   help="a hyperparameter tuning job over the recipe's tunable ranges instead of one training job")
    p.add_argument("--objective", help="with --tune: eval_loss or train_loss, the metric to minimise (eval_loss when --data has validation/, else train_loss)")
    p.add_argument("--tune-keys", metavar="KEY,KEY", help="with --tune: recipe keys to search (default: learning "
                   "rate, warm-up, and LoRA r/dropout or DPO beta as the recipe uses them)")
    p.add_argument("--max-jobs", type=_positive_int, default=8, help="with --tune: training jobs in all (8)")
    p.add_argument("--max-parallel", type=_positive_int, default=2, help="with --tune: jobs at once (2)")
    p.add_argument("--strategy", default="Bayesian", choices=list(TUNING_STRATEGIES),
                   help="with --tune: search strategy (Bayesian)")


def register(sub) -> None:
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
    _add_tune_flags(p)
    p.set_defaults(func=_cmd_launch)
