"""``hilt pipeline``: the whole loop, locally (``run``, ``watch``) or as a SageMaker Pipeline (``export``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import positive_int as _positive_int


def _cmd_run(args: argparse.Namespace) -> int:
    from hilt.flows.pipeline import run_pipeline

    return run_pipeline(Path(args.pipeline))


def _cmd_export(args: argparse.Namespace) -> int:
    from hilt.flows.sagemaker_pipeline import export

    result = export(Path(args.pipeline), Path(args.sagemaker), dataset=args.dataset, base_model=args.base_model,
                    region=args.region, role=args.role, do_upsert=args.upsert, do_start=args.start,
                    params=args.param, endpoint_url=args.endpoint_url)
    print(f"SageMaker Pipeline {result['pipeline']}: {' -> '.join(result['steps'])}")
    print(f"parameters: {', '.join(result['parameters'])}")
    print(f"definition written to {result['definition']}")
    if "arn" in result:
        print(f"{result['action']} {result['arn']} (model package group {result['group']})")
    if "execution" in result:
        print(f"started {result['execution']}")
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from hilt.flows.watch import watch

    return watch(Path(args.pipeline), args.secret, port=args.port, min_annotations=args.min_annotations,
                 max_runs=args.max_runs, poll_seconds=args.poll, register=not args.no_register,
                 ready_file=Path(args.ready_file) if args.ready_file else None)


def _add_run(pipeline_sub) -> None:
    p = pipeline_sub.add_parser(
        "run", help="run or resume a pipeline; finished steps (addressed by their inputs' hash) are reused",
        description="Export new annotations (since the last version), train on all versions, evaluate against "
        "the baseline with the gates, build model.tar.gz, replay SageMaker's validation, write the Model "
        "Package request and listing. Exit 1 when a gate or the validation refuses the model.",
    )
    p.add_argument("pipeline", help="PIPELINE.yaml (see pipelines/example.yaml)")
    p.set_defaults(func=_cmd_run)


def _add_export(pipeline_sub) -> None:
    p = pipeline_sub.add_parser(
        "export", help="the same pipeline as a SageMaker Pipeline (train -> evaluate -> gates -> register)",
        description="Build the pipeline's SageMaker Pipelines definition with the SageMaker SDK: Train "
        "(TrainingStep on train.sagemaker.image), Evaluate (ProcessingStep running `hilt evaluate`), CheckGates "
        "(ConditionStep on evaluate.gates, read from eval.json), Register (RegisterModel into the model package "
        "group, PendingManualApproval) or GateFailed. The export runs before: the pipeline reads --dataset.",
    )
    p.add_argument("pipeline", help="PIPELINE.yaml with a train.sagemaker section")
    p.add_argument("--sagemaker", required=True, metavar="OUT.json", help="where to write the definition")
    p.add_argument("--dataset", metavar="S3_URI", help="default of the DatasetS3Uri parameter: a prefix with train/ "
                   "and validation/ as `hilt export` writes them (train.sagemaker.s3/datasets/latest)")
    p.add_argument("--base-model", metavar="S3_URI", help="default of BaseModelS3Uri (else train.model, which must "
                   "then be s3://)")
    p.add_argument("--role", help="the pipeline's execution role (train.sagemaker.role)")
    p.add_argument("--region", help="AWS region (train.sagemaker.region, else $AWS_DEFAULT_REGION)")
    p.add_argument("--upsert", action="store_true", help="create or update the pipeline (and its model package "
                   "group) in SageMaker")
    p.add_argument("--start", action="store_true", help="start an execution")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="an execution's parameter value, with --start; repeatable")
    p.add_argument("--endpoint-url", help="SageMaker/S3 endpoint (e.g. a moto server)")
    p.set_defaults(func=_cmd_export)


def _add_watch(pipeline_sub) -> None:
    p = pipeline_sub.add_parser(
        "watch", help="listen for Label Studio webhooks on 127.0.0.1; run the pipeline after N new annotations",
    )
    p.add_argument("pipeline", help="PIPELINE.yaml (its source.project is watched)")
    p.add_argument("--secret", help="shared secret Label Studio sends in X-Hilt-Secret (or $HILT_WEBHOOK_SECRET)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0 = any free port)")
    p.add_argument("--min-annotations", type=_positive_int, help="new annotations that start a run "
                   "(default: the pipeline's min_annotations)")
    p.add_argument("--max-runs", type=_positive_int, help="exit after this many runs (default: run until stopped)")
    p.add_argument("--poll", type=float, default=60.0, help="seconds between reconciling polls (60)")
    p.add_argument("--no-register", action="store_true", help="do not register the webhook in Label Studio")
    p.add_argument("--ready-file", help="write {url, webhook} here once listening")
    p.set_defaults(func=_cmd_watch)


def register(sub) -> None:
    pipeline = sub.add_parser("pipeline", help="export -> train -> evaluate gate -> package -> validate -> request; "
                              "or the same on SageMaker Pipelines")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    _add_run(pipeline_sub)
    _add_export(pipeline_sub)
    _add_watch(pipeline_sub)
