"""``hilt pipeline run PIPELINE.yaml``: export -> train -> evaluate gate -> package -> validate -> request.

Every step after the export is addressed by the hash of its inputs (the dataset hash, the
resolved recipe, the base model, the gates, ...): its output lives in
``WORKDIR/steps/<step>-<hash>/`` and is finished when ``step.json`` is written there,
last. A rerun with nothing new skips every finished step; a step that failed or was
killed has no ``step.json`` and runs again in the same folder, so training resumes from
its newest checkpoint (and a SageMaker job that already exists is not submitted twice).

The export is the one step that always runs: it asks Label Studio for annotations not in
an earlier version (``hilt export --since-last`` into ``WORKDIR/datasets/vNNNN``). The
model trains on all versions together (``steps/dataset-<hash>``), so each run continues
the customization with everything annotated so far.

A failed gate or validation ends the run with exit code 1 and no package request: the
pipeline refuses to ship a model that did not improve.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from hilt.serving.backend import BACKEND_NAMES
from hilt.labeling.export import RANK_POLICIES, SFT_POLICIES, ExportOptions
from hilt.labeling.templates import TEMPLATE_NAMES
from hilt.core.aws import APPROVAL_STATUSES
from hilt.core.errors import UserError
from hilt.core.config import StrictSection, describe_error, read_yaml_mapping
from hilt.core.outputs import claim_output_dir, json_with_keys
from hilt.serving.contract import HARDWARE, METERING_UNITS
from hilt.training.base.recipe import TASK_METRICS
from hilt.core.layout import model_fingerprint

STEP_FILE = "step.json"
RUN_FILE = "last-run.json"


_Section = StrictSection


class SourceSection(_Section):
    project: int | None = Field(None, description="Label Studio project id (server from $LABEL_STUDIO_URL/"
                                "$LABEL_STUDIO_API_KEY or `hilt studio start`).")
    from_file: str | None = Field(None, description="A Label Studio JSON export file instead of a live project.")
    template: Literal[TEMPLATE_NAMES] = Field("sft", description="The project's template (its records must be "
                                              "the kind the recipe's method trains on).")


_EXPORT = ExportOptions()  # one source: the same defaults as `hilt label export`


class ExportSection(_Section):
    validation_fraction: float = Field(_EXPORT.validation_fraction, ge=0.0, lt=1.0)
    policy: Literal[SFT_POLICIES] = _EXPORT.policy
    max_chars: int = Field(_EXPORT.max_chars, ge=1)
    scrub_pii: bool = _EXPORT.scrub_pii
    rank_policy: Literal[RANK_POLICIES] = Field(_EXPORT.rank_policy, description="rank template: which pairs a "
                                                "ranking gives (best-vs-rest, all-pairs, adjacent).")
    rating_threshold: float = Field(_EXPORT.rating_threshold, description="rate template: the mean rating that "
                                    "makes an answer desirable (KTO).")


class SageMakerSection(_Section):
    image: str = Field(description="Training image URI.")
    role: str = Field(description="IAM role ARN for the job.")
    instance_type: str
    instance_count: int = Field(1, ge=1)
    s3: str | None = Field(None, description="s3://bucket/prefix for data, checkpoints, outputs.")
    spot: bool = False
    max_wait: int | None = None
    max_run: int = Field(24 * 3600, ge=1)
    volume_gb: int = Field(100, ge=1, description="Storage per instance (checkpoints, the base model).")
    region: str | None = None
    poll_seconds: float = Field(30.0, gt=0)
    timeout_seconds: float = Field(7 * 24 * 3600, gt=0, description="Give up waiting for the job after this.")


class TrainSection(_Section):
    recipe: str = Field(description="Recipe name or YAML path.")
    model: str | None = Field(None, description="Base model dir (the `model` channel); with sagemaker also s3://.")
    set: dict[str, Any] = Field(default_factory=dict, description="Recipe overrides, as `hilt train --set`.")
    target: Literal["local", "sagemaker"] = "local"
    sagemaker: SageMakerSection | None = None


class EvaluateSection(_Section):
    baseline: str | None = Field(None, description="Model to beat; default the base model (train.model).")
    gates: list[str] = Field(default_factory=list, description="e.g. ['exact_match>=+0.2', 'general_loss<=+0.15'].")
    metric: Literal[TASK_METRICS] | None = None
    general: bool | str = Field(True, description="Also score both models on a general set (did it forget?): true = "
                                "hilt's own, a JSONL path (relative to the YAML file), or false.")
    max_new_tokens: int = Field(64, ge=1)
    max_samples: int | None = Field(None, ge=1)


class PackageSection(_Section):
    validation_records: int = Field(10, ge=1, description="Held-out prompts replayed through `serve`.")
    max_new_tokens: int = Field(48, ge=1)
    backend: Literal[BACKEND_NAMES] | None = Field(
        None, description="`serve`'s generation backend in the replay (HILT_SERVE_BACKEND; default: the "
        "environment's, else hf).")


class RequestSection(_Section):
    name: str = Field(description="ModelPackageName.")
    image: str = Field(description="Serve image URI.")
    role: str = Field(description="Role SageMaker validates the package with.")
    s3: str = Field(description="s3://bucket/prefix where model.tar.gz and the validation input will live.")
    hardware: Literal[HARDWARE] = "cpu"
    metering_unit: Literal[METERING_UNITS] = "output_tokens"


class RegisterSection(_Section):
    group: str | None = Field(None, description="Model package group (`hilt pipeline export --sagemaker`); "
                              "default hilt-<name>.")
    approval: Literal[APPROVAL_STATUSES] = Field("PendingManualApproval", description="ModelApprovalStatus of "
                                                 "a registered version.")


class Pipeline(_Section):
    name: str
    workdir: str = Field("pipeline-runs", description="Step outputs, relative to the YAML file.")
    min_annotations: int = Field(1, ge=1, description="`pipeline watch`: new annotations that start a run.")
    source: SourceSection
    export: ExportSection = Field(default_factory=ExportSection)
    train: TrainSection
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    package: PackageSection = Field(default_factory=PackageSection)
    request: RequestSection
    registry: RegisterSection = Field(default_factory=RegisterSection)


def load_pipeline(path: Path) -> tuple[Pipeline, Path]:
    """The validated pipeline and the folder its relative paths are relative to.

    Raises:
        UserError: every problem, each naming its key.
    """
    data = read_yaml_mapping(path, "pipeline")
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as err:
        problems = [describe_error(e, Pipeline, "pipeline") for e in err.errors()]
        raise UserError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems)) from None
    problems = []
    if (pipeline.source.project is None) == (pipeline.source.from_file is None):
        problems.append("source: give exactly one of project or from_file")
    if pipeline.train.target == "sagemaker" and pipeline.train.sagemaker is None:
        problems.append("train.sagemaker: required when train.target is sagemaker (image, role, instance_type)")
    if problems:
        raise UserError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    return pipeline, path.resolve().parent


def _hash(inputs: Any) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StepFailed(Exception):
    """A step did not finish; the run stops (exit 1) and a rerun resumes it."""


class Runner:
    """Runs steps in hash-addressed folders and records what ran and what was reused."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.steps_dir = workdir / "steps"
        self.log: list[dict] = []

    def step(self, name: str, inputs: dict, body) -> tuple[Path, dict]:
        key = _hash(inputs)
        folder = self.steps_dir / f"{name}-{key}"
        done = folder / STEP_FILE
        if done.is_file():
            record = json.loads(done.read_text())
            self.log.append({"step": name, "hash": key, "status": "reused", "dir": str(folder)})
            print(f"[pipeline] {name}: reused {folder.name}", flush=True)
            return folder, record["outputs"]
        folder.mkdir(parents=True, exist_ok=True)
        print(f"[pipeline] {name}: running in {folder}", flush=True)
        started = time.perf_counter()
        outputs = body(folder)
        seconds = round(time.perf_counter() - started, 2)
        record = {"step": name, "hash": key, "inputs": inputs, "outputs": outputs, "seconds": seconds,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        tmp = folder / f".{STEP_FILE}.tmp"
        tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
        os.replace(tmp, done)
        self.log.append({"step": name, "hash": key, "status": "ran", "seconds": seconds, "dir": str(folder)})
        return folder, outputs


# ---------------------------------------------------------------- steps


def _export(p: Pipeline, base: Path, datasets: Path) -> dict:
    from hilt.labeling.dataset import export_to_dataset, read_export_source
    from hilt.labeling.export_files import check_template_matches

    options = ExportOptions(policy=p.export.policy, validation_fraction=p.export.validation_fraction,
                            max_chars=p.export.max_chars, scrub_pii=p.export.scrub_pii,
                            rank_policy=p.export.rank_policy, rating_threshold=p.export.rating_threshold)
    from_file = (base / p.source.from_file).resolve() if p.source.from_file else None
    tasks, spec, source, where = read_export_source(p.source.project, from_file,
                                                    p.source.template if from_file else None)
    check_template_matches(tasks, spec, where)
    out, manifest = export_to_dataset(tasks, spec, options, source, datasets, since_last=True)
    versions = sorted(p.name for p in datasets.glob("v[0-9][0-9][0-9][0-9]") if (p / "manifest.json").is_file())
    new = None if out is None else {"version": out.name, "annotations": manifest["counts"]["annotations"],
                                    "records": manifest["counts"]["records"]}
    return {"new": new, "versions": versions}


def _record_annotation_ids(line: bytes) -> set[int]:
    meta = json.loads(line).get("meta") or {}
    ids = meta.get("annotation_ids") or [meta.get("annotation_id")]
    return {i for i in ids if i is not None}


def _merge_versions(datasets: Path, versions: list[str], folder: Path) -> dict:
    """All versions' records in one dataset dir, each annotation once: its latest export.

    An annotation edited in Label Studio after its export is exported again by a later
    version; the earlier record made from it is superseded (dropped here and listed in the
    manifest), so the merged data holds the edited text, and nothing twice.
    """
    # Annotations every later version of the same source covers, per version (newest first, so each set
    # is built once).
    from hilt.labeling.dataset import source_identity

    later: dict[str, set[int]] = {}
    seen: dict[str, set[int]] = {}
    for version in reversed(versions):
        manifest = json.loads((datasets / version / "manifest.json").read_text())
        source = source_identity(manifest.get("source"))  # ids are a source's own
        later[version] = set(seen.get(source, set()))
        seen.setdefault(source, set()).update(manifest.get("annotation_ids", []))
    counts, superseded = {}, []
    digest = hashlib.sha256()
    for split in ("train", "validation"):
        kept: list[bytes] = []
        for version in versions:
            source = datasets / version / split / "data.jsonl"
            if not source.is_file():
                continue
            for line in source.read_bytes().splitlines(keepends=True):
                if not line.strip():
                    continue
                ids = _record_annotation_ids(line)
                if ids & later[version]:
                    superseded.append({"version": version, "split": split, "annotation_ids": sorted(ids)})
                    continue
                kept.append(line)
        data = b"".join(kept)
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / split / "data.jsonl").write_bytes(data)
        counts[split] = len(kept)
        digest.update(hashlib.sha256(data).digest())
    manifest = {"dataset_sha256": digest.hexdigest(), "versions": versions, "records": counts,
                "superseded": superseded}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if superseded:
        print(f"[pipeline] dataset: {len(superseded)} record(s) superseded by later edits of their annotations",
              flush=True)
    if counts["train"] == 0:
        raise StepFailed("the exported versions hold no training records yet (all annotations were rejected?); "
                         f"see rejects.jsonl under {datasets}")
    return manifest


def _train_local(p: Pipeline, base: Path, dataset: Path, folder: Path) -> dict:
    from hilt.training.run.entry import prepare_local_tree, run_job
    from hilt.training.base.recipe import hyperparameter_strings

    model = Path(base / p.train.model).resolve() if p.train.model else None
    opt_ml = prepare_local_tree(folder / "job", p.train.recipe, dataset, model, hyperparameter_strings(p.train.set))
    rc = run_job(opt_ml)
    if rc != 0:
        reason = opt_ml.failure_file.read_text().strip() if opt_ml.failure_file.is_file() else f"exit code {rc}"
        raise StepFailed(f"training failed: {reason} (rerun the pipeline to resume from the last checkpoint)")
    return {"model_dir": str(opt_ml.model_dir)}


def _train_sagemaker(p: Pipeline, base: Path, dataset: Path, folder: Path, key: str) -> dict:
    """Submit once (the job name is the step hash), wait, download and unpack the artifacts."""
    from botocore.exceptions import ClientError

    from hilt.serving.package import extract_model_tar
    from hilt.core.aws import clients, split_s3_uri
    from hilt.training.launch import LaunchSpec, launch
    from hilt.training.base.recipe import hyperparameter_strings

    sm = p.train.sagemaker
    name = f"hilt-{p.name}"[:46].rstrip("-") + f"-{key}"
    _, sagemaker = clients(region=sm.region)
    try:
        job = sagemaker.describe_training_job(TrainingJobName=name)
        print(f"[pipeline] train: SageMaker job {name} exists ({job['TrainingJobStatus']}), not submitted again")
    except ClientError as err:
        if "ValidationException" not in str(err) and "ResourceNotFound" not in str(err):
            raise
        model = p.train.model
        if model and not model.startswith("s3://"):
            model = str((base / model).resolve())
        launch(LaunchSpec(recipe=p.train.recipe, image=sm.image, role=sm.role, data=str(dataset),
                          instance_type=sm.instance_type, instance_count=sm.instance_count, s3=sm.s3, model=model,
                          overrides=hyperparameter_strings(p.train.set),
                          spot=sm.spot, max_wait=sm.max_wait, max_run=sm.max_run, job_name=name),
               dry_run=False, out=folder / "create-training-job.json", region=sm.region)
    deadline = time.monotonic() + sm.timeout_seconds
    while True:
        job = sagemaker.describe_training_job(TrainingJobName=name)
        status = job["TrainingJobStatus"]
        if status in ("Completed", "Failed", "Stopped"):
            break
        if time.monotonic() > deadline:
            raise StepFailed(f"SageMaker job {name} still {status} after {sm.timeout_seconds}s; rerun to keep waiting")
        time.sleep(sm.poll_seconds)
    if status != "Completed":
        raise StepFailed(f"SageMaker job {name} {status}: {job.get('FailureReason', 'no reason given')}")
    uri = job["ModelArtifacts"]["S3ModelArtifacts"]
    bucket, key_ = split_s3_uri(uri)
    s3, _ = clients(region=sm.region)
    archive = folder / "model.tar.gz"
    try:
        s3.download_file(bucket, key_, str(archive))
    except ClientError as err:
        raise StepFailed(f"SageMaker job {name} completed but its model artifacts are not at {uri} ({err}); "
                         "rerun once they are there") from None
    extract_model_tar(archive, folder / "model", require_manifest=False)  # SageMaker tars /opt/ml/model itself
    return {"model_dir": str(folder / "model"), "training_job": name, "model_artifacts": uri}


# ---------------------------------------------------------------- the steps, as a list the runner walks


@dataclass
class Run:
    """What one run's steps share: the pipeline, the folder its relative paths start from, the
    workdir, the export, and each finished step's folder and outputs (by step name)."""

    p: Pipeline
    base: Path
    workdir: Path
    exported: dict = field(default_factory=dict)
    folders: dict[str, Path] = field(default_factory=dict)
    outputs: dict[str, dict] = field(default_factory=dict)

    @property
    def datasets(self) -> Path:
        return self.workdir / "datasets"

    @property
    def data_dir(self) -> Path:
        return self.folders["dataset"]

    @property
    def model_dir(self) -> Path:
        return Path(self.outputs["train"]["model_dir"])

    @property
    def baseline_dir(self) -> Path | None:
        """What the candidate is compared with: evaluate.baseline, else the base model."""
        return self.path(self.p.evaluate.baseline or self.p.train.model)

    def path(self, value: str | None) -> Path | None:
        """A path from the YAML, relative to its folder (None stays None)."""
        return (self.base / value).resolve() if value else None


@dataclass(frozen=True)
class Step:
    """One hash-addressed step: what its output depends on, what it does, and when it stops the run.

    ``on_sagemaker`` says what the step becomes in ``hilt pipeline export --sagemaker``, so a step
    added here is a step the exporter has to account for (tests/test_pipeline_sagemaker.py).
    """

    name: str
    inputs: Callable[[Run], dict]
    body: Callable[[Run, Path], dict]
    refuses: Callable[[dict], str | None] = lambda outputs: None
    on_sagemaker: str = ""


def _dataset_inputs(run: Run) -> dict:
    versions = run.exported["versions"]
    return {"versions": [(v, json.loads((run.datasets / v / "manifest.json").read_text())["dataset_sha256"])
                         for v in versions]}


def _dataset(run: Run, folder: Path) -> dict:
    return _merge_versions(run.datasets, run.exported["versions"], folder)


def _train_inputs(run: Run) -> dict:
    from hilt.training.base.recipe import load_recipe

    p = run.p
    model = p.train.model
    return {"dataset": run.outputs["dataset"]["dataset_sha256"],
            "recipe": load_recipe(p.train.recipe, p.train.set).model_dump(mode="json"), "target": p.train.target,
            "model": model_fingerprint(str(run.base / model) if model and not model.startswith("s3://") else model),
            "sagemaker": p.train.sagemaker.model_dump() if p.train.sagemaker else None}


def _train(run: Run, folder: Path) -> dict:
    if run.p.train.target == "local":
        return _train_local(run.p, run.base, run.data_dir, folder)
    return _train_sagemaker(run.p, run.base, run.data_dir, folder, key=folder.name.rsplit("-", 1)[1])


def _evaluate_inputs(run: Run) -> dict:
    baseline = run.baseline_dir
    general = run.p.evaluate.general
    general_file = run.path(general) if isinstance(general, str) else None
    return {"train": run.folders["train"].name, "dataset": run.outputs["dataset"]["dataset_sha256"],
            "baseline": model_fingerprint(str(baseline)) if baseline else None, **run.p.evaluate.model_dump(),
            # The set's content, not only its name: an edited set is a new evaluation.
            "general_sha256": hashlib.sha256(general_file.read_bytes()).hexdigest()
            if general_file and general_file.is_file() else None}


def _evaluate(run: Run, folder: Path) -> dict:
    from hilt.training.evaluation.evaluate import evaluate

    e = run.p.evaluate
    general = "bundled" if e.general is True else (run.path(e.general) if e.general else None)
    result = evaluate(run.model_dir, run.data_dir, folder, run.baseline_dir, e.gates, e.metric, e.max_new_tokens,
                      e.max_samples, general=general)
    return {"passed": result["passed"], "gates": result["gates"], "deltas": result.get("deltas"),
            "eval_json": str(folder / "eval.json")}


def _gate_refusal(outputs: dict) -> str | None:
    if outputs["passed"]:
        return None
    failed = [g["gate"] + f" (got {g['value']:+.4f})" for g in outputs["gates"] if not g["passed"]]
    return f"REFUSED: gate failed: {', '.join(failed)}; nothing packaged"


def _package(run: Run, folder: Path) -> dict:
    from hilt.serving.package import build_model_tar

    built = build_model_tar(run.model_dir, folder / "model.tar.gz")
    return {"model_tar": str(folder / "model.tar.gz"), "sha256": built["archive_sha256"]}


def _validate(run: Run, folder: Path) -> dict:
    from hilt.serving.validate import validate_model_tar, write_validation_input
    from hilt.training.evaluation.evaluate import read_eval_records

    records, _ = read_eval_records(run.data_dir)
    source = write_validation_input([r["prompt"] for r in records[: run.p.package.validation_records]],
                                    folder / "validation-input.jsonl", run.p.package.max_new_tokens)
    report = validate_model_tar(Path(run.outputs["package"]["model_tar"]), source, "application/jsonlines", "Line",
                                "Line", folder / "report", backend=run.p.package.backend)
    return {"passed": report["passed"], "failures": report["failures"], "input": str(source),
            "report": str(folder / "report" / "validation-report.json")}


def _validation_refusal(outputs: dict) -> str | None:
    if outputs["passed"]:
        return None
    return f"REFUSED: SageMaker validation replay failed: {'; '.join(outputs['failures'])}"


def _request(run: Run, folder: Path) -> dict:
    from hilt.core.aws import validate_request
    from hilt.serving.marketplace import model_package_request, write_listing_files

    r, packaged, validated = run.p.request, run.outputs["package"], run.outputs["validate"]
    prefix = f"{r.s3.rstrip('/')}/{packaged['sha256'][:16]}"
    request = model_package_request(r.name, r.image, f"{prefix}/model.tar.gz", r.role,
                                    f"{prefix}/validation-input.jsonl", f"{prefix}/validation-output",
                                    r.hardware, r.metering_unit)
    validate_request("CreateModelPackage", request)
    (folder / "model-package.json").write_text(json.dumps(request, indent=2) + "\n")
    report = json.loads(Path(validated["report"]).read_text())
    _, notebook = write_listing_files(run.model_dir, folder / "LISTING.md", report, r.metering_unit)
    return {"request": str(folder / "model-package.json"), "listing": str(folder / "LISTING.md"),
            "notebook": str(notebook),
            "uploads": {packaged["model_tar"]: f"{prefix}/model.tar.gz",
                        validated["input"]: f"{prefix}/validation-input.jsonl"}}


STEPS: tuple[Step, ...] = (
    Step("dataset", _dataset_inputs, _dataset, on_sagemaker="before the pipeline: the DatasetS3Uri parameter"),
    Step("train", _train_inputs, _train, on_sagemaker="Train"),
    Step("evaluate", _evaluate_inputs, _evaluate, _gate_refusal, on_sagemaker="Evaluate, CheckGates"),
    Step("package", lambda run: {"train": run.folders["train"].name}, _package,
         on_sagemaker="Train (SageMaker tars /opt/ml/model into model.tar.gz)"),
    Step("validate", lambda run: {"package": run.outputs["package"]["sha256"], **run.p.package.model_dump()},
         _validate, _validation_refusal, on_sagemaker="at `hilt package promote` (Marketplace validates the package)"),
    Step("request", lambda run: {"package": run.outputs["package"]["sha256"], **run.p.request.model_dump()},
         _request, on_sagemaker="Register"),
)


def with_step(steps: tuple[Step, ...], step: Step, after: str) -> tuple[Step, ...]:
    """``steps`` with ``step`` inserted after the one named ``after`` (the demo adds its own)."""
    names = [s.name for s in steps]
    if after not in names:
        raise ValueError(f"no step {after!r} in {names}")
    at = names.index(after) + 1
    return (*steps[:at], step, *steps[at:])


def run_pipeline(path: Path) -> int:
    """Run (or resume) the pipeline in a YAML file. Returns the exit code: 0 done or nothing new,
    1 refused or failed."""
    pipeline, base = load_pipeline(path)
    return run_steps(pipeline, base, STEPS, where=str(path))


def is_pipeline_workdir(folder: Path) -> bool:
    """An earlier run's workdir, known by its run record, not by any folder that has a steps/ (the
    marker covers a first run stopped before it wrote last-run.json)."""
    run_file = folder / RUN_FILE
    return run_file.is_file() and json_with_keys("pipeline", "steps")(run_file.read_bytes())


def run_steps(p: Pipeline, base: Path, steps: tuple[Step, ...] = STEPS, where: str = "pipeline") -> int:
    """Export, then walk ``steps``: each is reused when its inputs' hash has a finished folder,
    else run; a step that refuses ends the run with exit code 1."""
    workdir = (base / p.workdir).resolve()
    claim_output_dir(workdir, "pipeline", f"{where}: workdir", hint="the workdir of an earlier `hilt pipeline run`",
                     recognise=is_pipeline_workdir)
    run = Run(p, base, workdir)
    runner = Runner(workdir)
    started = time.perf_counter()
    summary: dict[str, Any] = {"pipeline": p.name, "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def finish(code: int, outcome: str) -> int:
        summary.update(outcome=outcome, exit_code=code, steps=runner.log,
                       seconds=round(time.perf_counter() - started, 1))
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / RUN_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        print(f"\npipeline {p.name}: {outcome}")
        for entry in runner.log:
            print(f"  {entry['step']:<12} {entry['status']:<7} {Path(entry['dir']).name}")
        return code

    run.exported = _export(p, base, run.datasets)
    new = run.exported["new"]
    runner.log.append({"step": "export", "hash": "-", "status": "ran" if new else "nothing new",
                       "dir": str(run.datasets / (new["version"] if new else ""))})
    summary["export"] = run.exported
    if not run.exported["versions"]:
        return finish(0, "no annotations exported yet; nothing to train on")
    try:
        for step in steps:
            folder, outputs = runner.step(step.name, step.inputs(run), lambda f, s=step: s.body(run, f))
            run.folders[step.name], run.outputs[step.name] = folder, outputs
            summary[step.name] = outputs
            if step.name == "train":
                summary["model_dir"] = outputs["model_dir"]
            refusal = step.refuses(outputs)
            if refusal:
                return finish(1, refusal)
    except StepFailed as err:
        return finish(1, f"FAILED: {err}")
    last = run.outputs.get("request", {}).get("request") or run.folders[steps[-1].name]
    return finish(0, f"done: {last}")
