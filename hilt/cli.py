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
from hilt.layout import require_model_dir


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
    from training.recipe import hyperparameter_strings, load_recipe, parse_set_option

    overrides = dict(parse_set_option(item) for item in args.set)
    load_recipe(args.recipe, overrides)  # every recipe problem, before any file is written
    opt_ml = prepare_local_tree(
        Path(args.output), args.recipe, Path(args.data), Path(args.model) if args.model else None,
        hyperparameter_strings(overrides), fresh=args.fresh,
    )
    print(f"[hilt] /opt/ml tree: {opt_ml.base}")
    return run_job(opt_ml)


def _cmd_launch(args: argparse.Namespace) -> int:
    from training.launch import LaunchSpec, TuneSpec, launch
    from training.recipe import hyperparameter_strings, parse_set_option

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


def _cmd_studio(args: argparse.Namespace) -> int:
    from hil import studio

    if args.studio_command == "start":
        state = studio.start(port=args.port, data_dir=args.data_dir)
        how = "already running" if state["already_running"] else f"started in {state['seconds']}s"
        print(f"Label Studio {how}: {state['url']}")
        print(f"  user:     {state['user']}")
        print(f"  password: {state['password']}")
        print(f"  token:    {state['token']}")
        print(f"  data:     {state['data_dir']}  (log: {state['log']})")
        print(f"  export LABEL_STUDIO_URL={state['url']} LABEL_STUDIO_API_KEY={state['token']}")
        return 0
    if args.studio_command == "stop":
        print("stopped" if studio.stop(args.data_dir) else "not running")
        return 0
    info = studio.status(args.data_dir)
    print(json.dumps({k: v for k, v in info.items() if k != "password"}, indent=2))
    return 0 if info["running"] else 1


def _cmd_label_create(args: argparse.Namespace) -> int:
    from hil.client import connect
    from hil.importing import build_tasks, drafts_from_model, load_drafts, load_prompts, model_version
    from hil.templates import parse_label_config, template, template_xml

    sources = [*(args.drafts or []), *(args.drafts_from or [])]
    takes = template(args.template).drafts
    if takes == "none" and sources:
        raise UserError(f"--drafts/--drafts-from do not apply to the {args.template} template (its tasks bring "
                        "their answers); drop them")
    if takes == "one" and len(sources) > 1:
        raise UserError(f"the {args.template} template takes one draft per prompt; pass one --drafts or "
                        "--drafts-from (several are for --template rank)")
    for model_dir in args.drafts_from or []:
        require_model_dir(model_dir, "--drafts-from")
    config = template_xml(args.template)
    spec = parse_label_config(config, where=f"template {args.template}")
    rows = load_prompts(Path(args.prompts), args.template)
    drafts = [(f"file:{Path(f).name}", load_drafts(Path(f))) for f in args.drafts or []]
    drafts += [(model_version(Path(d)), drafts_from_model(Path(d), rows)) for d in args.drafts_from or []]
    tasks = build_tasks(rows, spec, drafts)
    client = connect()
    title = args.title or f"hilt {args.template}: {Path(args.prompts).stem}"
    project = client.create_project(title, config, description=f"created by hilt label create ({args.template})")
    ids = client.import_tasks(project, tasks, batch_size=args.batch_size)
    with_drafts = sum(1 for t in tasks if t.get("predictions"))
    print(f"project {project} ({title}): {len(ids)} tasks, {with_drafts} with drafts -> {client.url}/projects/{project}")
    print(project)
    return 0


def _cmd_label_compare(args: argparse.Namespace) -> int:
    from hil.client import connect
    from hil.importing import load_prompts
    from training.compare import create_compare_project

    models = {"baseline": Path(args.baseline), "candidate": Path(args.candidate)}
    for flag, directory in models.items():
        require_model_dir(directory, f"--{flag}")
    rows = load_prompts(Path(args.prompts), "sft")
    client = connect()  # fail on a bad server or token before generating anything
    project, mapping_file, mapping = create_compare_project(
        client, models["baseline"], models["candidate"], rows, Path(args.out), seed=args.seed,
        max_new_tokens=args.max_new_tokens, title=args.title, prompts_file=Path(args.prompts))
    shown = sum(1 for p in mapping["pairs"].values() if "candidate" in p)
    print(f"project {project}: {shown} blinded pairs, {len(rows) - shown} identical answers kept out (ties) "
          f"-> {client.url}/projects/{project}")
    print(f"mapping (keep it away from annotators): {mapping_file}")
    print(project)
    return 0


def _cmd_compare_report(args: argparse.Namespace) -> int:
    from hil.client import connect
    from training.compare import report_compare

    mapping_file = Path(args.mapping or Path(args.compare_dir) / f"project-{args.project}.json")
    report, section, written = report_compare(connect(), args.project, mapping_file,
                                              Path(args.eval_dir) if args.eval_dir else None,
                                              Path(args.listing) if args.listing else None)
    print(section)
    print("written: " + ", ".join(map(str, written)))
    return 0


def _read_export_source(args: argparse.Namespace):
    """(tasks, spec, source, where) from --from-file or --project."""
    from hil.dataset import read_export_source

    return read_export_source(args.project, Path(args.from_file) if args.from_file else None, args.template,
                              Path(args.label_config) if args.label_config else None)


def _export_options(args: argparse.Namespace):
    from hil.export import ExportOptions

    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    return ExportOptions(policy=args.policy, validation_fraction=args.validation_fraction,
                         max_chars=args.max_chars, scrub_pii=args.scrub_pii, rating_threshold=args.rating_threshold,
                         rank_policy=args.rank_policy)


def _cmd_export(args: argparse.Namespace) -> int:
    from hil.dataset import check_dataset_target, check_versions_root, export_to_dataset
    from hil.export import check_template_matches

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    if args.since_last and not args.project:
        raise UserError("--since-last needs --project (it tracks what a project already exported)")
    options = _export_options(args)
    # The output folder first: a folder that is not a dataset is refused before any work.
    (check_versions_root if args.since_last else check_dataset_target)(Path(args.out))
    tasks, spec, source, where = _read_export_source(args)
    check_template_matches(tasks, spec, where)
    out, manifest = export_to_dataset(tasks, spec, options, source, Path(args.out), since_last=args.since_last)
    if out is None:
        print(f"nothing new to export from {where} since the last version in {args.out}")
        return 0
    c = manifest["counts"]
    print(f"{out}: {c['records']['train']} train + {c['records']['validation']} validation records, "
          f"{c['rejects']['total']} rejects {c['rejects']['by_reason'] or ''} "
          f"from {c['annotations']} annotations on {c['tasks']} tasks; sha256 {manifest['dataset_sha256'][:16]}")
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from hil.export import check_template_matches, export_annotations

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    tasks, spec, _, where = _read_export_source(args)
    check_template_matches(tasks, spec, where)
    result = export_annotations(tasks, spec, _export_options(args))
    report = {"counts": result.counts, "quality": result.quality}
    if args.scrub_pii:
        report["pii"] = result.pii
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    action = args.package_command
    if action == "build":
        from container.package import build_model_tar

        result = build_model_tar(Path(args.model_dir), Path(args.out))
        print(f"{result['archive']}: {len(result['files'])} files, sha256 {result['archive_sha256']}")
        return 0
    if action == "validate" and args.algorithm:
        from container.certify import parse_local_map, validate_algorithm

        if args.model_tar or args.input:
            raise UserError("--algorithm replays a whole Algorithm certification; drop --model-tar/--input "
                            "(the model comes from its training job, the input from its TransformJobDefinition)")
        report = validate_algorithm(Path(args.algorithm), parse_local_map(args.local),
                                    Path(args.output or "algorithm-validation"), args.start_timeout,
                                    int(args.max_unpacked_gb * 1024**3))
        failed = report["failed_step"]
        print(f"algorithm validation {'PASSED' if report['passed'] else 'FAILED at ' + str(failed)}: "
              + ", ".join(f"{s['profile']}/{s['step']} {'ok' if s['passed'] else 'FAILED'} ({s['seconds']} s)"
                          for s in report["steps"]) + f"; report {report['report_file']}")
        return 0 if report["passed"] else 1
    if action == "validate":
        from container.validate import validate_model_tar

        if not args.model_tar or not args.input:
            raise UserError("package validate needs --model-tar and --input (a Model Package), or --algorithm "
                            "REQUEST.json (an Algorithm)")

        report = validate_model_tar(Path(args.model_tar), Path(args.input), args.content_type, args.split_type,
                                    args.assemble_with, Path(args.output) if args.output else None,
                                    ping_timeout=args.start_timeout,
                                    max_unpacked_bytes=int(args.max_unpacked_gb * 1024**3),
                                    batch_strategy=args.batch_strategy, max_payload_mb=args.max_payload_mb,
                                    max_concurrent_transforms=args.max_concurrent_transforms)
        verdict = "PASSED" if report["passed"] else "FAILED"
        print(f"validation {verdict}: {report['records']} records, output {report.get('output_file')}, "
              f"latency {report.get('latency_ms')}, report {report['report_file']}")
        for failure in report["failures"]:
            print(f"  - {failure}")
        return 0 if report["passed"] else 1
    if action == "request":
        from hilt.aws import operation_of, validate_request
        from container.marketplace import algorithm_request, model_package_request

        if args.kind == "model-package":
            request = model_package_request(args.name, args.image, args.model_data_url, args.role,
                                            args.validation_input, args.validation_output, args.hardware or "cpu",
                                            args.metering_unit, args.description or "",
                                            model_in_image=args.model_in_image)
        else:
            from training.recipe import hyperparameter_strings, load_recipe, parse_set_option

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
        from hilt.outputs import write_atomic

        write_atomic(Path(args.out), json.dumps(request, indent=2) + "\n")
        print(f"{args.out}: {operation_of(request)} request, validated against botocore's SageMaker model")
        return 0
    if action in ("register", "promote"):
        return _registry(args)
    if action == "submit":
        from hilt.aws import submit_request

        upload = (Path(args.upload[0]), args.upload[1]) if args.upload else None
        result = submit_request(Path(args.request), upload, endpoint_url=args.endpoint_url, region=args.region)
        print(json.dumps(result, indent=2))
        return 0
    from container.marketplace import write_listing

    report = json.loads(Path(args.validation_report).read_text()) if args.validation_report else None
    out = write_listing(Path(args.model_dir), Path(args.out), report, args.metering_unit)
    print(f"listing draft written to {out}")
    return 0


def _archived_model(path: Path, flag: str, scratch: Path) -> Path:
    """A model dir as given, or unpacked from a ``model.tar.gz`` (the file, or a folder holding only
    it: what a SageMaker processing job receives of a training job's ModelArtifacts)."""
    from container.package import extract_model_tar
    from hilt.layout import is_model_dir

    archive = path if path.is_file() else path / "model.tar.gz"
    if is_model_dir(path) or not archive.is_file() or not archive.name.endswith((".tar.gz", ".tgz")):
        return path
    print(f"[hilt] {flag}: unpacking {archive}", flush=True)
    target = scratch / flag.strip("-")
    extract_model_tar(archive, target, require_manifest=False)
    return target


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from training.evaluate import EVAL_FILE, METRICS, REPORT_FILE, evaluate

    with tempfile.TemporaryDirectory(prefix="hilt-evaluate-") as scratch:
        model = _archived_model(Path(args.model), "--model", Path(scratch))
        baseline = _archived_model(Path(args.baseline), "--baseline", Path(scratch)) if args.baseline else None
        result = evaluate(model, Path(args.data), Path(args.out), baseline_dir=baseline, gates=args.gate,
                          task_metric=args.metric, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples)
    models = result["models"]
    print(f"{'metric':<12}" + "".join(f"{name:>12}" for name in models) + ("      change" if "deltas" in result else ""))
    for metric in METRICS:
        mark = "*" if metric == result["task_metric"] else " "
        line = f"{metric + mark:<12}" + "".join(f"{m['metrics'][metric]:>12.4f}" for m in models.values())
        if "deltas" in result:
            line += f"{result['deltas'][metric]:>+12.4f}"
        print(line)
    for gate in result["gates"]:
        print(f"gate {gate['gate']}: {gate['value']:+.4f} -> {'pass' if gate['passed'] else 'FAIL'}")
    print(f"{Path(args.out) / EVAL_FILE}, {Path(args.out) / REPORT_FILE}")
    return 0 if result["passed"] else 1


def _since(text: str | None):
    """``--since`` as an aware UTC datetime (None when not given)."""
    import datetime as dt

    if not text:
        return None
    try:
        since = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"--since {text!r}: not a date or time; write e.g. 2026-11-24 or 2026-11-24T18:00Z") from None
    return since if since.tzinfo else since.replace(tzinfo=dt.timezone.utc)


def _registry(args: argparse.Namespace) -> int:
    """``hilt package register`` / ``promote``: a version of a model package group, and an approved
    version turned into the Marketplace request."""
    from container.registry import find_version, promote_request, register_request
    from hilt.aws import clients, split_s3_uri, validate_request
    from hilt.outputs import write_atomic

    if args.package_command == "register":
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
            groups = sagemaker.list_model_package_groups(NameContains=args.group)["ModelPackageGroupSummaryList"]
            if not any(g["ModelPackageGroupName"] == args.group for g in groups):
                sagemaker.create_model_package_group(ModelPackageGroupName=args.group,
                                                     ModelPackageGroupDescription=f"{args.group}: models fine-tuned "
                                                     "with hilt")
            arn = sagemaker.create_model_package(**request)["ModelPackageArn"]
            described = sagemaker.describe_model_package(ModelPackageName=arn)
        except (BotoCoreError, ClientError) as err:
            raise UserError(f"registering in {args.group} failed: {err}") from None
        print(f"registered {args.group}/{described['ModelPackageVersion']} ({described['ModelApprovalStatus']}): {arn}")
        return 0
    from botocore.exceptions import BotoCoreError, ClientError

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


def _cmd_monitor_review(args: argparse.Namespace) -> int:
    from hilt.monitor import create_review_project

    made = create_review_project(args.capture, args.project_title, args.per_day, args.max_tasks, args.seed,
                                 Path(args.baseline) if args.baseline else None, _since(args.since))
    print(f"project {made['project']} ({args.project_title}): {made['tasks']} of {made['exchanges']} captured "
          f"exchanges ({made['flagged']} flagged), PII scrubbed {made['pii_scrubbed'] or 'none found'} -> {made['url']}")
    print(f"then: hilt export --project {made['project']} --out DATA_DIR --since-last")
    print(made["project"])
    return 0


def _cmd_monitor_report(args: argparse.Namespace) -> int:
    from hilt.monitor import REPORT_JSON, REPORT_MD, monitor_report

    result = monitor_report(args.capture, Path(args.baseline), Path(args.out), gates=args.gate or None,
                            since=_since(args.since))
    c = result["counts"]
    print(f"{c['exchanges']} exchanges from {c['events']} captured invocations ({c['files']} files, "
          f"{c['unreadable_lines']} unreadable lines, {c['events_not_understood']} not understood) vs "
          f"{result['baseline']['records']} training records")
    for gate in result["gates"]:
        print(f"gate {gate['gate']}: {gate['value']:.4f} -> {'pass' if gate['passed'] else 'FAIL'}")
    print(f"{Path(args.out) / REPORT_JSON}, {Path(args.out) / REPORT_MD}, plots: {', '.join(result['plots'])}")
    return 0 if result["passed"] else 1


def _cmd_pipeline(args: argparse.Namespace) -> int:
    if args.pipeline_command == "run":
        from hilt.pipeline import run_pipeline

        return run_pipeline(Path(args.pipeline))
    if args.pipeline_command == "export":
        from hilt.sagemaker_pipeline import export

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
    from hilt.watch import watch

    return watch(Path(args.pipeline), args.secret, port=args.port, min_annotations=args.min_annotations,
                 max_runs=args.max_runs, poll_seconds=args.poll, register=not args.no_register,
                 ready_file=Path(args.ready_file) if args.ready_file else None)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hilt.demo import run_demo

    return run_demo(Path(args.workdir))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from container.contract import METERING_UNITS
    from container.validate import BATCH_STRATEGIES, DEFAULT_START_SECONDS
    from hil.templates import TEMPLATE_NAMES

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

    studio = sub.add_parser("studio", help="run a local Label Studio server (SQLite, 127.0.0.1)")
    studio_sub = studio.add_subparsers(dest="studio_command", metavar="ACTION", required=True)
    for action, text in (("start", "start it (or find it running); print URL, user and token"),
                         ("stop", "stop it"), ("status", "print its state; exit 1 if not running")):
        p = studio_sub.add_parser(action, help=text)
        p.add_argument("--data-dir", help="server data (SQLite, media); default .hilt/studio or $HILT_STUDIO_DIR")
        if action == "start":
            p.add_argument("--port", type=_positive_int, default=8080, help="port on 127.0.0.1 (8080)")
        p.set_defaults(func=_cmd_studio)

    label = sub.add_parser("label", help="set up Label Studio projects for annotators")
    label_sub = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    p = label_sub.add_parser(
        "create", help="create a project from a template and import prompts (with model drafts)",
        description="Create a Label Studio project from one of hilt's templates and import prompts from "
        "JSONL, CSV or a saved HF dataset in batches: sft (write the answer), chat (write the next assistant "
        "turn of a conversation), preference (pick the better of two), rank (order N answers), rate (grade "
        "one answer, critique it, correct it), review (rate and correct a deployed model's answer; `hilt monitor "
        "review` fills such projects from captured traffic). Drafts (from a file or generated by a local model) become "
        "predictions the annotator edits (sft, chat), the answer to grade (rate), or answers to rank (rank: "
        "repeat --drafts/--drafts-from, one answer each). Prints the project id last. The server is "
        "$LABEL_STUDIO_URL/$LABEL_STUDIO_API_KEY, else the one `hilt studio start` runs.",
    )
    p.add_argument("--template", choices=list(TEMPLATE_NAMES), required=True)
    p.add_argument("--prompts", required=True, help="JSONL / CSV / saved HF dataset: a prompt column (chat: "
                   "messages or ShareGPT conversations; rank: an answers list or answer1, answer2... columns)")
    p.add_argument("--title", help="project title")
    p.add_argument("--drafts", action="append", metavar="FILE", help="JSONL of {id|prompt, draft}")
    p.add_argument("--drafts-from", action="append", metavar="MODEL_DIR",
                   help="model dir that writes the drafts (greedy)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="tasks per import call (500)")
    p.set_defaults(func=_cmd_label_create)
    p = label_sub.add_parser(
        "compare", help="blinded side-by-side of two models' answers (a preference project)",
        description="Answer each prompt with --baseline and --candidate (greedy) and create a preference "
        "project showing the two answers in a random order that is the same on every rerun (--seed). Which "
        "answer is the candidate's is written to OUT/project-ID.json, never to the task data. Prints the "
        "project id last; then `hilt compare-report --project ID`.",
    )
    p.add_argument("--baseline", required=True, help="model dir of the baseline (e.g. the base model)")
    p.add_argument("--candidate", required=True, help="model dir of the candidate (e.g. a job's model/)")
    p.add_argument("--prompts", required=True, help="JSONL / CSV / saved HF dataset with a prompt column")
    p.add_argument("--seed", type=int, default=0, help="order of the answers per pair (0)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="cap on each answer (64)")
    p.add_argument("--title", help="project title")
    p.add_argument("--out", default="compare", help="folder for the blinding mapping (compare/)")
    p.set_defaults(func=_cmd_label_compare)

    from hil.export import RANK_POLICIES, SFT_POLICIES  # light: no Label Studio or torch import

    def add_source_flags(p):
        p.add_argument("--project", type=int, help="Label Studio project id (live server)")
        p.add_argument("--from-file", help="a Label Studio JSON export file instead of a live project")
        p.add_argument("--template", choices=list(TEMPLATE_NAMES),
                       help="the project's template (required with --from-file; checked with --project)")
        p.add_argument("--label-config", help="with --from-file: the project's labeling config XML, to "
                       "check every result's control against it")
        p.add_argument("--policy", choices=SFT_POLICIES, default="distinct",
                       help="SFT tasks with several answers: keep each distinct one (default), all, the latest, "
                       "or the ground-truth one first")
        p.add_argument("--validation-fraction", type=float, default=0.1, help="share of tasks held out (0.1)")
        p.add_argument("--max-chars", type=_positive_int, default=20000, help="longer answers are rejected (20000)")
        p.add_argument("--scrub-pii", action="store_true", help="replace emails and phone numbers; count them")
        p.add_argument("--rank-policy", choices=RANK_POLICIES, default="best-vs-rest",
                       help="rank template: which pairs a ranking gives: the best over each other answer (default), "
                       "every ordered pair, or each answer over the next")
        p.add_argument("--rating-threshold", type=float, default=4.0,
                       help="rate template: a mean rating at or above it makes a desirable KTO answer (4)")

    p = sub.add_parser(
        "export", help="Label Studio annotations -> versioned SFT / preference dataset",
        description="Export annotations to DIR/{train,validation}/data.jsonl, rejects.jsonl, manifest.json "
        "and README.md, atomically and deterministically. Every annotation lands in a record or in "
        "rejects.jsonl with its reason.",
    )
    add_source_flags(p)
    p.add_argument("--out", required=True, help="dataset dir (with --since-last: the folder of versions)")
    p.add_argument("--since-last", action="store_true",
                   help="only annotations not in an earlier version under --out; writes OUT/vNNNN")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "compare-report", help="win rate (Wilson 95%% CI), ties, agreement of a `label compare` project",
        description="Export a compare project, undo the blinding with its mapping, and report the "
        "candidate's win rate over decided pairs with a Wilson 95%% interval, ties and per-annotator "
        "agreement. Writes it into eval.json (--eval-dir), the candidate's hilt.json and model card, "
        "and --listing.",
    )
    p.add_argument("--project", type=int, required=True, help="the compare project's id")
    p.add_argument("--mapping", help="mapping file (default COMPARE_DIR/project-ID.json)")
    p.add_argument("--compare-dir", default="compare", help="where `label compare --out` wrote it (compare/)")
    p.add_argument("--eval-dir", help="folder whose eval.json gets the result (default: the mapping's folder)")
    p.add_argument("--listing", help="a LISTING.md draft to add the result to")
    p.set_defaults(func=_cmd_compare_report)

    p = sub.add_parser("quality", help="annotator counts, lead times, agreement, kappa, gold accuracy")
    add_source_flags(p)
    p.set_defaults(func=_cmd_quality)

    package = sub.add_parser("package", help="model.tar.gz, local SageMaker validation, Marketplace requests")
    package_sub = package.add_subparsers(dest="package_command", metavar="ACTION", required=True)
    p = package_sub.add_parser("build", help="deterministic model.tar.gz (what SageMaker extracts to /opt/ml/model)")
    p.add_argument("--model-dir", required=True, help="model dir (a job's model/, or any save_pretrained dir)")
    p.add_argument("--out", required=True, help="archive to write, e.g. model.tar.gz")
    p.set_defaults(func=_cmd_package)
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
    p.set_defaults(func=_cmd_package)
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
    p.add_argument("--hardware", choices=["cpu", "gpu"],
                   help="one package per family (model-package: cpu; algorithm: what the recipe needs)")
    p.add_argument("--metering-unit", choices=list(METERING_UNITS),
                   default="output_tokens")
    p.add_argument("--description")
    p.add_argument("--out", required=True, help="request JSON to write")
    p.set_defaults(func=_cmd_package)
    p = package_sub.add_parser("submit", help="send a request with boto3 (after validating it again)")
    p.add_argument("request", help="request JSON from `hilt package request`")
    p.add_argument("--upload", nargs=2, metavar=("MODEL_TAR", "S3_URI"), help="upload the archive first")
    p.add_argument("--endpoint-url", help="AWS endpoint (e.g. a local moto server); default AWS")
    p.add_argument("--region")
    p.set_defaults(func=_cmd_package)
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
    from hilt.aws import APPROVAL_STATUSES

    p.add_argument("--approval", default="PendingManualApproval", choices=list(APPROVAL_STATUSES))
    p.add_argument("--hardware", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--metering-unit", default="output_tokens", choices=list(METERING_UNITS))
    p.add_argument("--description")
    p.add_argument("--out", default="register.json", help="request file (register.json)")
    p.add_argument("--submit", action="store_true", help="create the group if needed, upload the metrics, register")
    p.add_argument("--endpoint-url", help="AWS endpoint (e.g. a local moto server); default AWS")
    p.add_argument("--region")
    p.set_defaults(func=_cmd_package)
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
    p.set_defaults(func=_cmd_package)
    p = package_sub.add_parser("listing", help="write LISTING.md, the Marketplace seller checklist")
    p.add_argument("--model-dir", required=True)
    p.add_argument("--validation-report", help="validation-report.json from `hilt package validate`")
    p.add_argument("--metering-unit", default="output_tokens",
                   choices=list(METERING_UNITS))
    p.add_argument("--out", default="LISTING.md")
    p.set_defaults(func=_cmd_package)

    def add_recipe_flags(p):
        p.add_argument("recipe", help="recipe name (see recipes/) or path to a recipe YAML")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.learning_rate=1e-4 (repeatable)")

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
        "samples.jsonl (answers side by side), metrics.png and report.md. Exit code 1 when a --gate fails.",
    )
    p.add_argument("--model", required=True, help="the candidate: a job's model/ dir, any save_pretrained dir, or "
                   "a model.tar.gz (or a folder holding one)")
    p.add_argument("--baseline", help="the model to compare against, e.g. the base model (a dir or model.tar.gz)")
    p.add_argument("--data", required=True, help="dataset dir (its validation/ split is used) or a JSONL file")
    p.add_argument("--out", required=True, help="folder for eval.json and the report")
    p.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="e.g. 'rougeL>=+0.05' (signed: change vs baseline) or 'exact_match>=0.6' (absolute); "
                   "repeatable")
    p.add_argument("--metric", choices=["exact_match", "rougeL"],
                   help="headline task metric (default: the model's recipe eval.metric, else exact_match)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="cap on each answer (64)")
    p.add_argument("--max-samples", type=_positive_int, help="score only the first N records")
    p.set_defaults(func=_cmd_evaluate)

    monitor = sub.add_parser("monitor", help="watch a deployed model: drift of its captured traffic")
    monitor_sub = monitor.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    from hilt.monitor import DEFAULT_GATES, METRICS as MONITOR_METRICS  # light: no torch import

    p = monitor_sub.add_parser(
        "report", help="training data vs live traffic: lengths, PSI, empty/refusal/truncated, unseen words",
        description="Read SageMaker Data Capture files (an endpoint's capture destination on S3, or the "
        "HILT_DATA_CAPTURE_DIR of `serve`) and compare the traffic with the dataset the model was trained on: "
        "prompt and answer length distributions with their population stability index, empty / refusal / "
        "truncated answer rates, the share of prompt words never seen in training, traffic per hour. Writes "
        "report.json, report.md and a PNG per feature. Exit 1 when a --gate fails.",
    )
    p.add_argument("--capture", required=True, help="capture folder or s3://bucket/prefix")
    p.add_argument("--baseline", required=True, help="the training dataset (an export's folder, or *.jsonl)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--since", help="only traffic at or after this UTC time (2026-11-24 or 2026-11-24T18:00Z)")
    p.add_argument("--gate", action="append", metavar="EXPR",
                   help=f"METRIC OP NUMBER, repeatable; metrics: {', '.join(MONITOR_METRICS)} "
                   f"(default: {' '.join(DEFAULT_GATES)})")
    p.set_defaults(func=_cmd_monitor_report)
    p = monitor_sub.add_parser(
        "review", help="captured answers -> a Label Studio review project (rate, mark, correct)",
        description="Sample captured exchanges into a Label Studio project of the review template: every "
        "flagged one (empty, refusal, cut at the token limit; drifting from --baseline) and up to --per-day "
        "others from each UTC day. Emails and phone numbers are scrubbed before anything reaches Label Studio. "
        "Reviewers rate the model's answer, mark it and correct it in a box that starts as the answer; "
        "`hilt export --project ID --since-last` turns the corrections into SFT records and (corrected over "
        "original) preference pairs, a dataset version `hilt pipeline run` merges. Prints the project id last.",
    )
    p.add_argument("--capture", required=True, help="capture folder or s3://bucket/prefix")
    p.add_argument("--project-title", required=True, help="title of the review project")
    p.add_argument("--baseline", help="the training dataset: also flag prompts that drift from it")
    p.add_argument("--per-day", type=_positive_int, default=20, help="unflagged exchanges per day (20)")
    p.add_argument("--max-tasks", type=_positive_int, default=200, help="cap on the project's tasks (200)")
    p.add_argument("--since", help="only traffic at or after this UTC time")
    p.add_argument("--seed", type=int, default=0, help="which unflagged exchanges are drawn (0)")
    p.set_defaults(func=_cmd_monitor_review)

    pipeline = sub.add_parser("pipeline", help="export -> train -> evaluate gate -> package -> validate -> request; "
                              "or the same on SageMaker Pipelines")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)
    p = pipeline_sub.add_parser(
        "run", help="run or resume a pipeline; finished steps (addressed by their inputs' hash) are reused",
        description="Export new annotations (since the last version), train on all versions, evaluate against "
        "the baseline with the gates, build model.tar.gz, replay SageMaker's validation, write the Model "
        "Package request and listing. Exit 1 when a gate or the validation refuses the model.",
    )
    p.add_argument("pipeline", help="PIPELINE.yaml (see pipelines/example.yaml)")
    p.set_defaults(func=_cmd_pipeline)
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
    p.set_defaults(func=_cmd_pipeline)
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
    p.set_defaults(func=_cmd_pipeline)

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
    except OSError as err:
        from hilt.outputs import as_user_error

        user_error = as_user_error(err, "a file")
        if user_error is None:
            raise
        print(f"hilt: error: {user_error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
