"""``hilt demo``: the main job end to end on embedded defaults.

Base model (built locally) -> Label Studio project with model drafts -> stand-in
annotators answer through the API -> export -> training through the SageMaker training
contract -> base-vs-tuned check -> model.tar.gz -> SageMaker's validation replayed with
``serve`` -> Model Package request and listing draft -> the model served with data capture,
traffic that drifts, the drift report, and stand-in reviewers correcting the flagged answers
into the next dataset version. Each step reuses what an earlier run produced, so a second
run is fast.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.layout import MANIFEST_FILE

BASE_WARMUP_STEPS = 300
SCENARIO_SIZE = 200
VALIDATION_FRACTION = 0.15
DOUBLE_ANNOTATED_EVERY = 5  # every 5th task also gets the second annotator's answer
DEMO_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:0.1.0"  # placeholder: your ECR image
DEMO_TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-train:0.1.0"  # placeholder
DEMO_ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"  # placeholder: your SageMaker role
DEMO_BUCKET = "s3://your-bucket/hilt-demo"  # placeholder
DEMO_GATES = ("exact_match>=+0.3",)  # the tuned model must beat its base by 30 points to be packaged


def _port(preferred: int = 8080) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def _collect_annotations(workdir: Path, model_dir: Path, state: dict) -> tuple[int, int]:
    """Create the SFT project (drafts from the base model) and have stand-in annotators answer.

    Returns:
        (project id, annotations posted).
    """
    from hilt.labeling.client import StudioClient
    from hilt.labeling.importing import build_tasks, drafts_from_model, model_version
    from hilt.labeling.templates import parse_label_config, template_xml
    from hilt.flows.scenario import scenario_prompts

    client = StudioClient(state["url"], state["token"])
    items = scenario_prompts(SCENARIO_SIZE)
    rows = [{"id": i["id"], "prompt": i["prompt"], "system": i["system"]} for i in items]
    config = template_xml("sft")
    print(f"[demo] drafting {len(rows)} answers with the base model (annotators edit drafts, not blank boxes)")
    tasks = build_tasks(rows, parse_label_config(config),
                        [(model_version(model_dir), drafts_from_model(model_dir, rows, max_new_tokens=48))])
    project = client.create_project("hilt demo: internal-process assistant", config,
                                    description="Write the polite, accurate answer; edit the model's draft.")
    client.import_tasks(project, tasks)
    reference = {str(i["id"]): i["reference"] for i in items}
    second = client.create_user("annotator-2", f"annotator-2-{project}@hilt.local")
    print(f"[demo] stand-in annotators (the admin and annotator-2) submit answers through the API; "
          f"to annotate yourself open {state['url']}/projects/{project} (user {state['user']}, password in "
          f"{workdir / 'studio' / 'hilt-studio.json'})")
    from tqdm.auto import tqdm

    posted = 0
    exported = client.export_tasks(project)
    for task in tqdm(exported, desc="stand-in annotators", unit="task"):
        answer = reference[task["data"]["source_id"]]
        result = [{"from_name": "answer", "to_name": "prompt", "type": "textarea", "value": {"text": [answer]}}]
        draft = task["predictions"][0] if task.get("predictions") else None
        client.create_annotation(task["id"], result, lead_time=20.0, parent_prediction=draft)
        posted += 1
        if task["id"] % DOUBLE_ANNOTATED_EVERY == 0:  # a second opinion: same answer -> a duplicate reject
            client.create_annotation(task["id"], result, completed_by=second, lead_time=25.0)
            posted += 1
    return project, posted


def _side_by_side(workdir: Path, base: Path, tuned: Path, validation: list[dict], state: dict) -> int:
    """Blinded base-vs-tuned project; two stand-in judges pick the answer closer to the reference."""
    from hilt.labeling.client import StudioClient
    from hilt.labeling.compare import create_compare_project, report_compare
    from hilt.training.evaluate import rouge_l

    client = StudioClient(state["url"], state["token"])
    rows = [{"id": i, "system": r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None,
             "prompt": r["messages"][-2]["content"]} for i, r in enumerate(validation)]
    reference = {row["prompt"]: r["messages"][-1]["content"] for row, r in zip(rows, validation)}
    project, mapping_file, _ = create_compare_project(client, base, tuned, rows, workdir / "compare", seed=0,
                                                      max_new_tokens=48, title="hilt demo: which answer is better?")
    judge = client.create_user("judge-2", f"judge-2-{project}@hilt.local")
    print(f"[demo] stand-in judges (the admin and judge-2) compare blinded answers: {state['url']}/projects/{project}")
    for task in client.export_tasks(project):
        d = task["data"]
        ref = reference[d["prompt"]]
        side = "left" if rouge_l(d["answer1"], ref) >= rouge_l(d["answer2"], ref) else "right"
        result = [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise", "value": {"selected": side}}]
        for who in (None, judge):
            client.create_annotation(task["id"], result, completed_by=who, lead_time=12.0)
    report_compare(client, project, mapping_file, eval_dir=workdir / "eval")
    return project


def run_demo(workdir: Path) -> int:
    """Run the main job end to end and print a summary table.

    Args:
        workdir: folder for the demo's files; reused across runs.

    Returns:
        The process exit code (0 on success).
    """
    from hilt.core.aws import validate_request
    from hilt.serving.marketplace import algorithm_request, model_package_request, write_listing
    from hilt.serving.package import build_model_tar
    from hilt.serving.validate import validate_model_tar, write_validation_input
    from hilt.labeling import studio
    from hilt.training.entry import prepare_local_tree, run_job
    from hilt.training.tiny_model import build_tiny_model, warm_up

    from hilt.core.outputs import claim_output_dir, write_atomic

    workdir = claim_output_dir(workdir, "demo", "--workdir", recognise=lambda d: (d / "demo-state.json").is_file(),
                               hint="the --workdir of an earlier `hilt demo`")
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    progress_file = workdir / "demo-state.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}

    def save_progress() -> None:
        progress_file.write_text(json.dumps(progress, indent=2))

    # 1. Base model: built locally (nothing is downloaded), with a short full fine-tune
    #    so that LoRA has a "pretrained" base to adapt.
    model_dir = workdir / "base-model"
    if (model_dir / "hilt-warmup.json").exists():
        rows.append(("base model", f"{model_dir} (reused)"))
    else:
        print(f"[demo] building the tiny base model in {model_dir}")
        build_tiny_model(model_dir)
        loss = warm_up(model_dir, steps=BASE_WARMUP_STEPS)
        (model_dir / "hilt-warmup.json").write_text(json.dumps({"steps": BASE_WARMUP_STEPS, "loss": loss}))
        rows.append(("base model", f"{model_dir} (built, warm-up loss {loss:.3f})"))

    # 2. Label Studio, local: a project of the scenario's prompts with drafts, answered by
    #    stand-in annotators through the API (a person can annotate in the UI too).
    state = studio.start(port=_port(), data_dir=workdir / "studio")
    rows.append(("label studio", f"{state['url']} (token in {workdir / 'studio' / 'hilt-studio.json'})"))
    if "project" not in progress:
        progress["project"], progress["annotations_posted"] = _collect_annotations(workdir, model_dir, state)
        save_progress()
    else:
        rows.append(("annotation", f"project {progress['project']} (reused)"))

    # 3. Export: annotations -> versioned dataset, every annotation accounted for.
    data_dir = workdir / "dataset"
    if not (data_dir / "manifest.json").exists():
        from hilt.labeling.client import StudioClient
        from hilt.labeling.dataset import export_to_dataset
        from hilt.labeling.export import ExportOptions
        from hilt.labeling.templates import parse_label_config

        client = StudioClient(state["url"], state["token"])
        spec = parse_label_config(client.label_config(progress["project"]))
        export_to_dataset(client.export_tasks(progress["project"]), spec,
                          ExportOptions(validation_fraction=VALIDATION_FRACTION),
                          {"type": "project", "project_id": progress["project"], "url": state["url"]}, data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    c = manifest["counts"]
    rows.append(("dataset", f"{data_dir}: {c['records']['train']} train / {c['records']['validation']} validation "
                            f"records, {c['rejects']['total']} rejects {c['rejects']['by_reason']} "
                            f"of {c['annotations']} annotations"))
    rows.append(("dataset sha256", manifest["dataset_sha256"]))
    validation = [json.loads(l) for l in (data_dir / "validation" / "data.jsonl").read_text().splitlines()]

    # 4. Train the quickstart recipe through the SageMaker training contract.
    job_dir = workdir / "train-job"
    manifest_file = job_dir / "model" / MANIFEST_FILE
    if manifest_file.exists():
        rows.append(("training", f"{job_dir / 'model'} (reused)"))
    else:
        print(f"[demo] training quickstart-tiny-sft over the /opt/ml tree {job_dir}")
        opt_ml = prepare_local_tree(job_dir, "quickstart-tiny-sft", data_dir, model_dir, {})
        rc = run_job(opt_ml)
        if rc != 0:
            print(f"[demo] training failed with exit code {rc}; see {opt_ml.failure_file}")
            return rc
        rows.append(("training", f"{job_dir / 'model'}"))
    metrics = json.loads(manifest_file.read_text())["metrics"]
    rows.append(("train loss", f"{metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}"))
    if "eval_loss" in metrics:
        rows.append(("eval loss", f"{metrics['eval_loss']:.3f}"))

    # 5. Base vs tuned on the held-out prompts: loss, perplexity, exact match, ROUGE-L, a gate.
    eval_dir = workdir / "eval"
    if not (eval_dir / "eval.json").exists() or json.loads((eval_dir / "eval.json").read_text()).get(
            "models", {}).get("candidate", {}).get("path") != str((job_dir / "model").resolve()):
        from hilt.training.evaluate import evaluate

        evaluate(job_dir / "model", data_dir, eval_dir, baseline_dir=model_dir, gates=list(DEMO_GATES),
                 max_new_tokens=48)
    result = json.loads((eval_dir / "eval.json").read_text())
    base_m, tuned_m = result["models"]["baseline"]["metrics"], result["models"]["candidate"]["metrics"]
    rows.append(("held-out loss", f"base {base_m['loss']:.3f} -> tuned {tuned_m['loss']:.3f} "
                                  f"(perplexity {base_m['perplexity']:.1f} -> {tuned_m['perplexity']:.2f})"))
    for metric in ("exact_match", "rougeL"):
        rows.append((metric, f"base {base_m[metric]:.2f} -> tuned {tuned_m[metric]:.2f} "
                             f"({result['deltas'][metric]:+.2f}) on {result['data']['records']} held-out prompts"))
    rows.append(("gate", ", ".join(f"{g['gate']} {'pass' if g['passed'] else 'FAIL'}" for g in result["gates"])
                 + f"; report {eval_dir / 'report.md'}"))
    if not result["passed"]:
        print("[demo] the tuned model did not clear the gate; not packaging it")
        _print_summary(rows, started, state, workdir)
        return 1

    # 5b. Humans in the loop: a blinded side-by-side of base vs tuned on the held-out prompts,
    #     judged by stand-in annotators, reported with a Wilson interval.
    if "compare_project" not in progress:
        progress["compare_project"] = _side_by_side(workdir, model_dir, job_dir / "model", validation, state)
        save_progress()
    else:
        rows.append(("side-by-side", f"project {progress['compare_project']} (reused)"))
    sbs = json.loads((eval_dir / "eval.json").read_text())["human_side_by_side"]
    ci = sbs["win_rate_ci95"]
    rows.append(("human win rate", f"tuned wins {sbs['wins']} of {sbs['wins'] + sbs['losses']} decided pairs: "
                                   f"{sbs['win_rate']:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}), ties {sbs['ties']['total']}, "
                                   f"judges agree {sbs['percent_agreement']:.0%}"))

    # 6. Package, and replay SageMaker's validation with `serve`.
    package_dir = workdir / "package"
    package_dir.mkdir(exist_ok=True)
    tar = package_dir / "model.tar.gz"
    report_file = package_dir / "validation" / "validation-report.json"
    if not report_file.exists():
        built = build_model_tar(job_dir / "model", tar)
        progress["model_tar_sha256"] = built["archive_sha256"]
        validation_input = write_validation_input([r["messages"][:-1] for r in validation[:10]],
                                                  package_dir / "validation-input.jsonl", max_new_tokens=48)
        validate_model_tar(tar, validation_input, "application/jsonlines", "Line", "Line", package_dir / "validation")
        save_progress()
    report = json.loads(report_file.read_text())
    rows.append(("model.tar.gz", f"{tar} (sha256 {progress['model_tar_sha256'][:16]}…)"))
    rows.append(("validation", f"{'PASSED' if report['passed'] else 'FAILED'} on {report['records']} records, "
                               f"p50 {report['latency_ms']['p50']} ms" if report.get("latency_ms") else "FAILED"))

    # 7. The Model Package and Algorithm requests (validated against botocore) and the listing draft.
    #    Their S3 keys mirror the workdir (DEMO_BUCKET/dataset/train/ is workdir/dataset/train/), so
    #    `package validate --algorithm` reads them from here through s3-local.json.
    request = model_package_request("hilt-demo-assistant", DEMO_IMAGE, f"{DEMO_BUCKET}/package/model.tar.gz",
                                    DEMO_ROLE, f"{DEMO_BUCKET}/package/validation-input.jsonl",
                                    f"{DEMO_BUCKET}/validation-output")
    validate_request("CreateModelPackage", request)
    write_atomic(package_dir / "model-package.json", json.dumps(request, indent=2) + "\n")
    algorithm = algorithm_request(
        "hilt-demo-sft", DEMO_TRAIN_IMAGE, DEMO_ROLE, "quickstart-tiny-sft", train_uri=f"{DEMO_BUCKET}/dataset/train/",
        validation_uri=f"{DEMO_BUCKET}/dataset/validation/", model_uri=f"{DEMO_BUCKET}/base-model/",
        validation_input=f"{DEMO_BUCKET}/package/validation-input.jsonl",
        validation_output=f"{DEMO_BUCKET}/algorithm-validation-output", training_output=f"{DEMO_BUCKET}/training")
    validate_request("CreateAlgorithm", algorithm)
    write_atomic(package_dir / "algorithm.json", json.dumps(algorithm, indent=2) + "\n")
    write_atomic(package_dir / "s3-local.json", json.dumps({DEMO_BUCKET: ".."}, indent=2) + "\n")
    write_listing(job_dir / "model", package_dir / "LISTING.md", report, "output_tokens")
    rows.append(("requests", f"{package_dir / 'model-package.json'}, {package_dir / 'algorithm.json'} (image, role, "
                             f"bucket are placeholders), {package_dir / 'LISTING.md'}"))
    rows.append(("certify algorithm", f"hilt package validate --algorithm {package_dir / 'algorithm.json'} "
                                      f"--local {package_dir / 's3-local.json'} "
                                      f"--output {workdir / 'algorithm-validation'}"))
    # 8. Watch the deployment: serve with data capture, traffic that drifts, the drift report, and
    #    stand-in reviewers correcting the flagged answers into the next dataset version.
    if report.get("passed"):
        if "monitor_rows" not in progress:
            progress["monitor_rows"] = _watch_deployment(workdir, job_dir / "model", data_dir, state)
            save_progress()
        rows += [tuple(row) for row in progress["monitor_rows"]]
    _print_summary(rows, started, state, workdir)
    return 0 if report.get("passed") else 1


def _watch_deployment(workdir: Path, model_dir: Path, data_dir: Path, state: dict) -> list[tuple[str, str]]:
    """Serve the tuned model with capture on, send traffic that drifts, report the drift, and have
    stand-in reviewers correct the flagged answers; the corrections become a dataset version.

    Returns:
        The summary rows.
    """
    import urllib.request

    from hilt.serving.process import start_serve, wait_ready
    from hilt.labeling.client import StudioClient
    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions
    from hilt.labeling.templates import default_spec
    from hilt.flows.monitor import create_review_project, monitor_report
    from hilt.flows.scenario import drifting_prompts, scenario_prompts

    import shutil

    capture_dir, base = workdir / "capture", workdir / "serve-opt-ml"
    shutil.rmtree(capture_dir, ignore_errors=True)  # the demo's own, from a run stopped in this step
    base.mkdir(exist_ok=True)
    if not (base / "model").exists():
        (base / "model").symlink_to(model_dir.resolve(), target_is_directory=True)
    server, url = start_serve(base, _port(8090), {"HILT_DATA_CAPTURE_DIR": str(capture_dir),
                                                   "HILT_ENDPOINT_NAME": "hilt-demo-assistant"})
    traffic = scenario_prompts(24, seed=11) + drifting_prompts(12)
    print(f"[demo] serving the tuned model with data capture on ({capture_dir}); sending {len(traffic)} requests, "
          "the last ones on topics it was not trained for")
    try:
        if not wait_ready(url, server):
            raise UserError(f"serve did not start on {url} for the monitoring step; run `serve` over {base} to see why")
        for item in traffic:
            body = json.dumps({"messages": [{"role": "system", "content": item["system"]},
                                            {"role": "user", "content": item["prompt"]}], "max_tokens": 96}).encode()
            request = urllib.request.Request(f"{url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
    finally:
        server.terminate()  # SIGTERM: the open capture file is published
        server.wait(timeout=60)
    report = monitor_report(str(capture_dir), data_dir, workdir / "monitor")
    failed = [f"{g['metric']} {g['value']:g}" for g in report["gates"] if not g["passed"]]
    print(f"[demo] drift report: {'FAILED: ' + ', '.join(failed) if failed else 'passed'} "
          f"({workdir / 'monitor' / 'report.md'})")

    client = StudioClient(state["url"], state["token"])
    made = create_review_project(str(capture_dir), "hilt demo: review of live answers", per_day=4, max_tasks=24,
                                 baseline_dir=data_dir, client=client)
    reference = {item["prompt"]: item["reference"] for item in traffic}
    corrected = 0
    for task in client.export_tasks(made["project"]):
        data = task["data"]
        fix = reference.get(data["messages"][-1]["content"], data["answer"])
        flagged = data["flags"].startswith("flagged")
        text = fix if flagged else data["answer"]
        corrected += flagged and " ".join(fix.split()) != " ".join(data["answer"].split())
        result = [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": 2 if flagged else 4}},
                  {"from_name": "verdict", "to_name": "answer", "type": "choices",
                   "value": {"choices": ["Needs correction" if flagged else "Fine as is"]}},
                  {"from_name": "corrected", "to_name": "answer", "type": "textarea", "value": {"text": [text]}}]
        client.create_annotation(task["id"], result, lead_time=30.0)
    source = {"type": "project", "project_id": made["project"], "url": client.url}
    version, manifest = export_to_dataset(client.export_tasks(made["project"]), default_spec("review"),
                                          ExportOptions(), source, workdir / "review-data", since_last=True)
    records = sum(manifest["counts"]["records"].values()) if manifest else 0
    headline = "drift gates " + ("FAIL: " + ", ".join(failed) if failed else "pass")
    return [("monitor", f"{report['counts']['exchanges']} exchanges captured in {capture_dir}; {headline} "
                        f"({workdir / 'monitor' / 'report.md'})"),
            ("review", f"project {made['project']}: {made['flagged']} flagged + {made['tasks'] - made['flagged']} "
                       f"sampled answers; {corrected} corrected -> {version}: {records} SFT records and "
                       f"(corrected over original) pairs, the next dataset version")]


def _print_summary(rows: list[tuple[str, str]], started: float, state: dict, workdir: Path) -> None:
    rows = [*rows, ("elapsed", f"{time.perf_counter() - started:.0f}s")]
    width = max(len(name) for name, _ in rows)
    print("\nhilt demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\nLabel Studio keeps running at {state['url']}; stop it with: hilt studio stop --data-dir {workdir / 'studio'}")
