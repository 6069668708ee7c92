"""``hilt package``: model.tar.gz, SageMaker's validation replayed, Marketplace and registry requests."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hilt.core.aws import (APPROVAL_STATUSES, clients, ensure_model_package_group, model_package_group_name,
                           operation_of, split_s3_uri, submit_request, validate_request)
from hilt.core.errors import UserError
from hilt.serving.contract import HARDWARE, METERING_UNITS
from hilt.serving.backend import BACKENDS
from hilt.serving.validate import BATCH_STRATEGIES, DEFAULT_START_SECONDS, validate_model_tar


def _cmd_build(args: argparse.Namespace) -> int:
    from hilt.serving.package import build_model_tar

    result = build_model_tar(Path(args.model_dir), Path(args.out))
    print(f"{result['archive']}: {len(result['files'])} files, sha256 {result['archive_sha256']}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    if args.algorithm:
        return _validate_algorithm(args)
    if args.train_image:
        raise UserError("--train-image runs an Algorithm's training job: use it with --algorithm")
    if not args.model_tar or not args.input:
        raise UserError("package validate needs --model-tar and --input (a Model Package), or --algorithm "
                        "REQUEST.json (an Algorithm)")

    report = validate_model_tar(Path(args.model_tar), Path(args.input), args.content_type, args.split_type,
                                args.assemble_with, Path(args.output) if args.output else None,
                                ping_timeout=args.start_timeout,
                                max_unpacked_bytes=int(args.max_unpacked_gb * 1024**3),
                                batch_strategy=args.batch_strategy, max_payload_mb=args.max_payload_mb,
                                max_concurrent_transforms=args.max_concurrent_transforms, image=args.image,
                                backend=args.backend)
    verdict = "PASSED" if report["passed"] else "FAILED"
    print(f"validation {verdict}: {report['records']} records, output {report.get('output_file')}, "
          f"latency {report.get('latency_ms')}, report {report['report_file']}")
    for failure in report["failures"]:
        print(f"  - {failure}")
    return 0 if report["passed"] else 1


def _validate_algorithm(args: argparse.Namespace) -> int:
    from hilt.serving.certify import parse_local_map, validate_algorithm

    if args.model_tar or args.input:
        raise UserError("--algorithm replays a whole Algorithm certification; drop --model-tar/--input "
                        "(the model comes from its training job, the input from its TransformJobDefinition)")
    report = validate_algorithm(Path(args.algorithm), parse_local_map(args.local),
                                Path(args.output or "algorithm-validation"), args.start_timeout,
                                int(args.max_unpacked_gb * 1024**3),
                                {"train": args.train_image, "serve": args.image})
    failed = report["failed_step"]
    print(f"algorithm validation {'PASSED' if report['passed'] else 'FAILED at ' + str(failed)}: "
          + ", ".join(f"{s['profile']}/{s['step']} {'ok' if s['passed'] else 'FAILED'} ({s['seconds']} s)"
                      for s in report["steps"]) + f"; report {report['report_file']}")
    return 0 if report["passed"] else 1


def _own_request_file(out: str, flag: str = "--out") -> None:
    """Refuse an --out that exists and is not a SageMaker request hilt wrote (a Model Package or an Algorithm)."""
    from hilt.core.outputs import check_output_file, json_with_keys

    check_output_file(Path(out), flag, json_with_keys("ModelPackageName", "InferenceSpecification"),
                      json_with_keys("ModelPackageGroupName", "InferenceSpecification"),
                      json_with_keys("AlgorithmName", "TrainingSpecification"),
                      what="a CreateModelPackage or CreateAlgorithm request hilt wrote")


def _cmd_request(args: argparse.Namespace) -> int:
    from hilt.serving.marketplace import algorithm_request, model_package_request

    _own_request_file(args.out)

    if args.kind == "model-package":
        request = model_package_request(args.name, args.image, args.model_data_url, args.role,
                                        args.validation_input, args.validation_output, args.hardware or "cpu",
                                        args.metering_unit, args.description or "",
                                        model_in_image=args.model_in_image)
    else:
        from hilt.training.base.recipe import hyperparameter_strings, load_recipe, parse_set_option

        for flag, value in (("--train-data", args.train_data), ("--model-data", args.model_data),
                            ("--training-output", args.training_output)):
            if not value:
                raise UserError(f"{flag} is missing: the Algorithm's validation training job needs it "
                                "(an s3:// URI); see `hilt package request algorithm --help`")
        overrides = dict(parse_set_option(item) for item in args.set)
        load_recipe(args.recipe, overrides)  # every recipe problem before a request is written
        request = algorithm_request(args.name, args.image, args.role, args.recipe, train_uri=args.train_data,
                                    model_uri=args.model_data, validation_uri=args.validation_data,
                                    validation_input=args.validation_input,
                                    validation_output=args.validation_output,
                                    training_output=args.training_output,
                                    hyperparameters=hyperparameter_strings(overrides), hardware=args.hardware,
                                    metering_unit=args.metering_unit, description=args.description or "")
    validate_request(operation_of(request), request)
    from hilt.core.outputs import write_atomic

    write_atomic(Path(args.out), json.dumps(request, indent=2) + "\n")
    print(f"{args.out}: {operation_of(request)} request, validated against botocore's SageMaker model")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    upload = (Path(args.upload[0]), args.upload[1]) if args.upload else None
    result = submit_request(Path(args.request), upload, endpoint_url=args.endpoint_url, region=args.region)
    print(json.dumps(result, indent=2))
    return 0


def _cmd_listing(args: argparse.Namespace) -> int:
    from hilt.serving.marketplace import write_listing_files

    report = json.loads(Path(args.validation_report).read_text()) if args.validation_report else None
    out, notebook = write_listing_files(Path(args.model_dir), Path(args.out), report, args.metering_unit)
    print(f"listing draft written to {out}; the buyer's sample notebook to {notebook}")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    """A trained model as a version of a model package group (written; with --submit, registered)."""
    from hilt.core.outputs import check_output_file, json_with_keys, write_atomic
    from hilt.serving.registry import register_request

    group = model_package_group_name(args.group)
    _own_request_file(args.out)
    quality_file = Path(args.out).with_name(Path(args.out).stem + ".model-quality.json")
    check_output_file(quality_file, "--out's quality file", json_with_keys("generated_by", "training"),
                      what="a model-quality document hilt wrote")
    request, quality = register_request(
        args.group, Path(args.model_dir), args.image, args.model_data_url, metrics_uri=args.metrics_uri,
        eval_dir=Path(args.eval_dir) if args.eval_dir else None, approval=args.approval,
        hardware=args.hardware, metering_unit=args.metering_unit, description=args.description or "")
    validate_request("CreateModelPackage", request)
    out = Path(args.out)
    metrics_file = out.with_name(out.stem + ".model-quality.json")
    write_atomic(metrics_file, json.dumps(quality, indent=2) + "\n")
    write_atomic(out, json.dumps(request, indent=2) + "\n")
    print(f"{out}: CreateModelPackage request (group {args.group}, {args.approval}), validated against botocore's "
          f"SageMaker model; model quality in {metrics_file}")
    if not args.submit:
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

    s3, sagemaker = clients(args.endpoint_url, args.region)
    try:
        if args.metrics_uri:
            bucket, key = split_s3_uri(args.metrics_uri)
            s3.put_object(Bucket=bucket, Key=key, Body=metrics_file.read_bytes(), ContentType="application/json")
        ensure_model_package_group(sagemaker, group, f"{group}: models fine-tuned with hilt")
        arn = sagemaker.create_model_package(**request)["ModelPackageArn"]
        described = sagemaker.describe_model_package(ModelPackageName=arn)
    except (BotoCoreError, ClientError) as err:
        raise UserError(f"registering in {args.group} failed: {err}") from None
    print(f"registered {args.group}/{described['ModelPackageVersion']} ({described['ModelApprovalStatus']}): {arn}")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    """An approved registry version as the Marketplace request (certified, unversioned)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from hilt.core.outputs import write_atomic
    from hilt.serving.registry import find_version, promote_request

    _own_request_file(args.out)
    _, sagemaker = clients(args.endpoint_url, args.region)
    try:
        described = find_version(sagemaker, args.version)
    except (BotoCoreError, ClientError) as err:
        raise UserError(f"cannot read {args.version} from the registry: {err}") from None
    request = promote_request(described, args.name, args.role, args.validation_input, args.validation_output,
                              args.description or "")
    validate_request("CreateModelPackage", request)
    write_atomic(Path(args.out), json.dumps(request, indent=2) + "\n")
    print(f"{args.out}: the Marketplace CreateModelPackage request (certified, unversioned) of {args.version}, "
          "validated against botocore's SageMaker model; send it with `hilt package submit`")
    return 0


def _add_build(package_sub) -> None:
    p = package_sub.add_parser("build", help="deterministic model.tar.gz (what SageMaker extracts to /opt/ml/model)")
    p.add_argument("--model-dir", required=True, help="model dir (a job's model/, or any save_pretrained dir)")
    p.add_argument("--out", required=True, help="archive to write, e.g. model.tar.gz")
    p.set_defaults(func=_cmd_build)


def _add_validate(package_sub) -> None:
    p = package_sub.add_parser("validate", help="replay SageMaker's validation locally: a Model Package's batch "
                               "transform (--model-tar), or an Algorithm's training job + transform (--algorithm)")
    p.add_argument("--model-tar", help="model.tar.gz to serve (Model Package)")
    p.add_argument("--input", help="validation input file (JSON Lines for SplitType Line)")
    p.add_argument("--algorithm", metavar="REQUEST.json",
                   help="a CreateAlgorithm request: replay each ValidationProfile (train, tar, transform) offline")
    p.add_argument("--local", action="append", default=[], metavar="S3URI=DIR",
                   help="with --algorithm: read an s3:// prefix from a local folder (repeatable; or a JSON file "
                   "of such pairs)")
    p.add_argument("--content-type", default="application/jsonlines", help="application/json or application/jsonlines")
    p.add_argument("--split-type", default="Line", choices=["Line", "None"])
    p.add_argument("--assemble-with", default="Line", choices=["Line", "None"])
    p.add_argument("--batch-strategy", default="SingleRecord", choices=list(BATCH_STRATEGIES),
                   help="one record per request, or lines packed up to --max-payload-mb (SingleRecord)")
    p.add_argument("--max-payload-mb", type=int, default=6, help="MaxPayloadInMB of the transform (6; at most 100)")
    p.add_argument("--max-concurrent-transforms", type=int, default=1,
                   help="requests in flight at once, as MaxConcurrentTransforms (1)")
    p.add_argument("--start-timeout", type=float, default=DEFAULT_START_SECONDS,
                   help="seconds the container has to answer /ping with 200 (240: SageMaker's 4 minutes)")
    p.add_argument("--output", help="where <input>.out and validation-report.json go (a temp dir); with "
                   "--algorithm the replay's folder (algorithm-validation)")
    p.add_argument("--max-unpacked-gb", type=float, default=256.0,
                   help="refuse an archive whose files add up to more than this, before extracting (256)")
    p.add_argument("--image", help="run `serve` inside this local image (e.g. hilt-serve, from scripts/build-images) "
                   "with the model mounted at /opt/ml, as SageMaker does, instead of from this environment")
    p.add_argument("--backend", choices=list(BACKENDS),
                   help="serve's generation backend (HILT_SERVE_BACKEND; default hf): vllm replays the validation "
                   "with vLLM generating")
    p.add_argument("--train-image", help="with --algorithm: run the training job inside this local image "
                   "(e.g. hilt-train) with its /opt/ml tree mounted")
    p.set_defaults(func=_cmd_validate)


def _add_request(package_sub) -> None:
    p = package_sub.add_parser("request", help="write a strictly validated CreateModelPackage/CreateAlgorithm request")
    p.add_argument("kind", choices=["model-package", "algorithm"])
    p.add_argument("--name", required=True)
    p.add_argument("--image", required=True, help="ECR image URI (serve image; train image for algorithm)")
    p.add_argument("--role", required=True, help="IAM role ARN SageMaker validates with")
    p.add_argument("--model-data-url", help="s3://…/model.tar.gz (model-package; required unless --model-in-image)")
    p.add_argument("--model-in-image", action="store_true",
                   help="the serve image already holds the model in /opt/ml/model (model-package)")
    p.add_argument("--recipe", default="llama3-8b-sft-lora", help="recipe whose keys become hyperparameters (algorithm)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="hyperparameter of the algorithm's validation training job, e.g. train.max_steps=100")
    p.add_argument("--train-data", help="s3:// train channel for the algorithm's validation training job")
    p.add_argument("--validation-data", help="s3:// validation channel for that job (optional)")
    p.add_argument("--model-data", help="s3:// base model weights (a save_pretrained folder): the model channel")
    p.add_argument("--training-output", help="s3:// output path of that training job")
    p.add_argument("--validation-input", required=True, help="s3:// JSON Lines input of the validation transform")
    p.add_argument("--validation-output", required=True, help="s3:// output path of the validation transform")
    p.add_argument("--hardware", choices=list(HARDWARE),
                   help="one package per family (model-package: cpu; algorithm: what the recipe needs)")
    p.add_argument("--metering-unit", choices=list(METERING_UNITS),
                   default="output_tokens")
    p.add_argument("--description")
    p.add_argument("--out", required=True, help="request JSON to write")
    p.set_defaults(func=_cmd_request)


def _add_submit(package_sub) -> None:
    p = package_sub.add_parser("submit", help="send a request with boto3 (after validating it again)")
    p.add_argument("request", help="request JSON from `hilt package request`")
    p.add_argument("--upload", nargs=2, metavar=("MODEL_TAR", "S3_URI"), help="upload the archive first")
    p.add_argument("--endpoint-url", help="AWS endpoint (e.g. a local moto server); default AWS")
    p.add_argument("--region")
    p.set_defaults(func=_cmd_submit)


def _add_register(package_sub) -> None:
    p = package_sub.add_parser(
        "register", help="a trained model as a new version of a SageMaker model package group (Model Registry)",
        description="Write (and with --submit create) a versioned CreateModelPackage request: the serve image and "
        "model.tar.gz, ModelApprovalStatus (PendingManualApproval), the model's quality as ModelMetrics (the job's "
        "evaluation, `hilt evaluate`'s result and the human side-by-side, written beside the request and uploaded "
        "to --metrics-uri), and recipe, method, base model and dataset hash as CustomerMetadataProperties.",
    )
    p.add_argument("--model-dir", required=True, help="the trained model (a job's model/, with hilt.json)")
    p.add_argument("--group", required=True, help="model package group name (created on --submit if missing)")
    p.add_argument("--image", required=True, help="serve image URI")
    p.add_argument("--model-data-url", required=True, help="s3:// URI of the uploaded model.tar.gz")
    p.add_argument("--metrics-uri", help="s3:// URI for the model-quality JSON (ModelMetrics)")
    p.add_argument("--eval-dir", help="the --out of `hilt evaluate` (eval.json)")
    p.add_argument("--approval", default="PendingManualApproval", choices=list(APPROVAL_STATUSES))
    p.add_argument("--hardware", choices=list(HARDWARE), default="cpu")
    p.add_argument("--metering-unit", default="output_tokens", choices=list(METERING_UNITS))
    p.add_argument("--description")
    p.add_argument("--out", default="register.json", help="request file (register.json)")
    p.add_argument("--submit", action="store_true", help="create the group if needed, upload the metrics, register")
    p.add_argument("--endpoint-url", help="AWS endpoint (e.g. a local moto server); default AWS")
    p.add_argument("--region")
    p.set_defaults(func=_cmd_register)


def _add_promote(package_sub) -> None:
    p = package_sub.add_parser(
        "promote", help="an approved registry version -> the Marketplace Model Package request",
        description="Read GROUP/VERSION from the Model Registry; when it is Approved, write the unversioned, "
        "certified CreateModelPackage request Marketplace lists, from its image, model data and instance types.",
    )
    p.add_argument("version", help="GROUP/VERSION (e.g. hilt-assistant/3) or a model package ARN")
    p.add_argument("--name", required=True, help="the Marketplace model package name")
    p.add_argument("--role", required=True, help="IAM role ARN for the validation transform job")
    p.add_argument("--validation-input", required=True, help="s3:// JSON Lines input of the validation job")
    p.add_argument("--validation-output", required=True, help="s3:// output path of the validation job")
    p.add_argument("--description")
    p.add_argument("--out", default="model-package.json")
    p.add_argument("--endpoint-url", help="AWS endpoint (e.g. a local moto server); default AWS")
    p.add_argument("--region")
    p.set_defaults(func=_cmd_promote)


def _add_listing(package_sub) -> None:
    p = package_sub.add_parser("listing", help="write LISTING.md, the Marketplace seller checklist")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--validation-report", help="validation-report.json from `hilt package validate`")
    p.add_argument("--metering-unit", default="output_tokens",
                   choices=list(METERING_UNITS))
    p.add_argument("--out", default="LISTING.md")
    p.set_defaults(func=_cmd_listing)


def register(sub) -> None:
    package = sub.add_parser("package", help="model.tar.gz, local SageMaker validation, Marketplace requests")
    package_sub = package.add_subparsers(dest="package_command", metavar="ACTION", required=True)
    for add in (_add_build, _add_validate, _add_request, _add_submit, _add_register, _add_promote, _add_listing):
        add(package_sub)
