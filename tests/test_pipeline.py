"""`hilt pipeline run`: hash-addressed steps, reuse, gate refusal, resume after a kill; and
`hilt pipeline watch` started by real Label Studio webhooks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import run_hilt
from hilt.core.aws import validate_request

pytestmark = pytest.mark.slow

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def uppercase_export(n: int, seed: int = 0, first_id: int = 1) -> list[dict]:
    """A Label Studio JSON export of n SFT tasks, each answered once (the uppercase task)."""
    rng = random.Random(seed)
    tasks = []
    for i in range(n):
        word = "".join(rng.choice(LETTERS) for _ in range(4))
        tid = first_id + i
        tasks.append({"id": tid, "data": {"prompt": f"upper: {word}"}, "predictions": [], "annotations": [{
            "id": 1000 + tid, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
            "created_at": "2026-11-23T10:00:00Z", "updated_at": "2026-11-23T10:00:00Z", "lead_time": 4.0,
            "result": [{"from_name": "answer", "to_name": "prompt", "type": "textarea",
                        "value": {"text": [word.upper()]}}]}]})
    return tasks


def write_pipeline(path: Path, base_model: Path, source: dict, gates: list[str], workdir: str = "runs",
                   max_steps: int = 120, **extra) -> Path:
    spec = {
        "name": "upper",
        "workdir": workdir,
        "source": source,
        "export": {"validation_fraction": 0.2},
        "train": {"recipe": "quickstart-tiny-sft", "model": str(base_model),
                  "set": {"train.max_steps": max_steps, "train.checkpoint_steps": 20, "eval.max_new_tokens": 8}},
        "evaluate": {"gates": gates, "max_new_tokens": 8},
        "package": {"validation_records": 3, "max_new_tokens": 8},
        "request": {"name": "hilt-upper", "image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:1",
                    "role": "arn:aws:iam::123456789012:role/SageMakerExecution", "s3": "s3://hilt-bucket/packages"},
        **extra,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def statuses(workdir: Path) -> dict[str, str]:
    run = json.loads((workdir / "last-run.json").read_text())
    return {s["step"]: s["status"] for s in run["steps"]}


def test_run_reuse_refuse_and_resume(hilt_exe, warm_base_dir, tmp_path):
    export = tmp_path / "export.json"
    export.write_text(json.dumps(uppercase_export(120)))
    good = write_pipeline(tmp_path / "good.yaml", warm_base_dir, {"from_file": "export.json"},
                          ["exact_match>=+0.3", "loss<=-0.5"])

    # A kill in the middle of training: the rerun resumes from the checkpoint, in the same step folder.
    proc = subprocess.Popen([str(hilt_exe), "pipeline", "run", str(good)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not list(tmp_path.glob("runs/steps/train-*/job/checkpoints/checkpoint-40")):
        assert proc.poll() is None and time.monotonic() < deadline, "training never checkpointed"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(tmp_path.glob("runs/steps/train-*/step.json"))

    result = run_hilt(hilt_exe, "pipeline", "run", str(good))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "dataset: reused" in result.stdout
    assert "resumed at step=" in result.stdout
    workdir = tmp_path / "runs"
    assert statuses(workdir) == {"export": "nothing new", "dataset": "reused", "train": "ran", "evaluate": "ran",
                                 "package": "ran", "validate": "ran", "request": "ran"}
    run = json.loads((workdir / "last-run.json").read_text())
    request = json.loads(Path(run["request"]["request"]).read_text())
    validate_request("CreateModelPackage", request)
    assert Path(run["request"]["listing"]).is_file()
    assert json.loads(Path(run["request"]["notebook"]).read_text())["nbformat"] == 4  # the buyer's sample notebook
    assert run["evaluate"]["passed"] and run["validate"]["passed"]

    # Nothing new: every step reused, quickly.
    started = time.monotonic()
    again = run_hilt(hilt_exe, "pipeline", "run", str(good))
    assert again.returncode == 0
    assert set(statuses(workdir).values()) == {"nothing new", "reused"}
    assert time.monotonic() - started < 60

    # A bar the model does not clear: the same trained model, refused before packaging.
    strict = write_pipeline(tmp_path / "strict.yaml", warm_base_dir, {"from_file": "export.json"},
                            ["exact_match>=+1.5"])
    refused = run_hilt(hilt_exe, "pipeline", "run", str(strict))
    assert refused.returncode == 1
    assert "REFUSED: gate failed: exact_match>=+1.5" in refused.stdout
    assert statuses(workdir) == {"export": "nothing new", "dataset": "reused", "train": "reused", "evaluate": "ran"}

    # New annotations: a new version, a new dataset hash, a new training run on all of them.
    export.write_text(json.dumps(uppercase_export(120) + uppercase_export(20, seed=5, first_id=500)))
    grown = run_hilt(hilt_exe, "pipeline", "run", str(write_pipeline(
        tmp_path / "good.yaml", warm_base_dir, {"from_file": "export.json"}, ["loss<=-0.5"], max_steps=40)))
    assert grown.returncode == 0, grown.stdout[-3000:]
    assert sorted(p.name for p in (workdir / "datasets").iterdir()) == ["v0001", "v0002"]
    assert statuses(workdir)["dataset"] == "ran" and statuses(workdir)["train"] == "ran"
    datasets = sorted((workdir / "steps").glob("dataset-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    newest = json.loads(datasets[-1].read_text())
    assert newest["versions"] == ["v0001", "v0002"] and sum(newest["records"].values()) == 140

    # Reviewers' corrections of the deployed model's answers (a review project's export) are the next
    # version of the same folder: the next run trains on them with the rest.
    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions
    from hilt.labeling.templates import default_spec

    rating = {"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": 1}}
    reviewed = [{"id": 900, "data": {"messages": [{"role": "user", "content": "upper: qqqq"}], "answer": "qqqq"},
                 "annotations": [{"id": 9000, "completed_by": 1, "result": [rating, {
                     "from_name": "corrected", "to_name": "answer", "type": "textarea", "value": {"text": ["QQQQ"]}}]}]}]
    version, _ = export_to_dataset(reviewed, default_spec("review"), ExportOptions(), {"type": "file"},
                                   workdir / "datasets", since_last=True)
    assert version.name == "v0003"
    merged = run_hilt(hilt_exe, "pipeline", "run", str(tmp_path / "good.yaml"))
    assert merged.returncode == 0, merged.stdout[-3000:]
    assert statuses(workdir)["dataset"] == "ran" and statuses(workdir)["train"] == "ran"
    datasets = sorted((workdir / "steps").glob("dataset-*/manifest.json"), key=lambda p: p.stat().st_mtime)
    newest = json.loads(datasets[-1].read_text())
    assert newest["versions"] == ["v0001", "v0002", "v0003"] and sum(newest["records"].values()) == 141


def test_bad_pipeline_file_is_one_line(hilt_exe, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "source": {"project": 1}, "train": {"recipe": "quickstart-tiny-sft",
                                   "modle": "m"}, "request": {"name": "n", "image": "i", "role": "r", "s3": "s3://b"}}))
    result = run_hilt(hilt_exe, "pipeline", "run", str(bad))
    assert result.returncode == 2 and "train.modle: unknown key; did you mean 'train.model'?" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_boolean_where_a_number_belongs_is_refused(tmp_path):
    """pydantic's lax mode reads `true` as 1: `validation_records: true` would replay one prompt."""
    from hilt.core.errors import UserError
    from hilt.flows.pipeline import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "source": {"project": 1}, "train": {"recipe": "quickstart-tiny-sft"},
                                    "package": {"validation_records": True},
                                    "request": {"name": "n", "image": "i", "role": "r", "s3": "s3://b"}}))
    with pytest.raises(UserError, match="package.validation_records: .*expected a number, got a boolean"):
        load_pipeline(path)


@pytest.mark.studio
def test_watch_runs_after_n_webhooks_from_label_studio(hilt_exe, studio, warm_base_dir, tmp_path):
    from hilt.labeling.client import StudioClient
    from hilt.labeling.templates import template_xml

    client = StudioClient(studio["url"], studio["token"])
    project = client.create_project("hilt watch test", template_xml("sft"))
    tasks = uppercase_export(40, seed=3)
    client.import_tasks(project, [{"data": t["data"]} for t in tasks])
    exported = client.export_tasks(project)
    pipeline = write_pipeline(tmp_path / "watch.yaml", warm_base_dir, {"project": project}, ["loss<=-0.1"],
                              max_steps=30, min_annotations=25)
    ready = tmp_path / "ready.json"
    secret = "s3cret-for-test"
    proc = subprocess.Popen([str(hilt_exe), "pipeline", "watch", str(pipeline), "--secret", secret, "--max-runs",
                             "1", "--poll", "600", "--ready-file", str(ready)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **studio["env"]})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "slow"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        hooks = client.sdk.webhooks.list(project=project)
        assert any(h.id == info["webhook"] and h.url == info["url"] for h in hooks)

        # Without the secret: refused, counts for nothing.
        forged = urllib.request.Request(info["url"], data=json.dumps({
            "action": "ANNOTATION_CREATED", "project": {"id": project}, "annotation": {"id": 99999}}).encode(),
            headers={"Content-Type": "application/json", "X-Hilt-Secret": "wrong"}, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 403

        # Label Studio fires ANNOTATION_CREATED for each submission; the 25th starts the run.
        for task in exported[:25]:
            word = task["data"]["prompt"].split(": ")[1]
            client.create_annotation(task["id"], [{"from_name": "answer", "to_name": "prompt", "type": "textarea",
                                                   "value": {"text": [word.upper()]}}])
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "24/25 new annotation(s)" in output
    assert "run 1: 25 new annotation(s) from webhooks (25 via webhook)" in output
    assert "1 refused" in output
    workdir = tmp_path / "runs"
    manifest = json.loads((workdir / "datasets" / "v0001" / "manifest.json").read_text())
    assert manifest["counts"]["annotations"] == 25
    assert json.loads((workdir / "last-run.json").read_text())["exit_code"] == 0
    assert statuses(workdir)["request"] == "ran"
    assert not [h for h in client.sdk.webhooks.list(project=project) if h.id == info["webhook"]]

    # Annotations made while no watcher listened: no webhook will ever bring them (Label Studio
    # does not retry), so a watcher started later finds them by polling.
    for task in exported[25:28]:
        word = task["data"]["prompt"].split(": ")[1]
        client.create_annotation(task["id"], [{"from_name": "answer", "to_name": "prompt", "type": "textarea",
                                               "value": {"text": [word.upper()]}}])
    later = subprocess.run([str(hilt_exe), "pipeline", "watch", str(pipeline), "--secret", secret, "--no-register",
                            "--min-annotations", "3", "--max-runs", "1", "--poll", "1"],
                           capture_output=True, text=True, timeout=900, env={**os.environ, **studio["env"]})
    assert later.returncode == 0, later.stdout[-4000:] + later.stderr[-2000:]
    assert "run 1: 3 annotation(s) not exported yet (reconciled by polling)" in later.stdout
    assert json.loads((workdir / "datasets" / "v0002" / "manifest.json").read_text())["counts"]["annotations"] == 3
    assert statuses(workdir)["train"] == "ran"  # a new dataset hash: trained again on all 28


def test_sagemaker_target_submits_once_and_resumes_when_artifacts_land(hilt_exe, moto_server, lora_run,
                                                                       warm_base_dir, tmp_path):
    import boto3

    from hilt.serving.package import build_model_tar

    aws = dict(endpoint_url=moto_server["url"], region_name="us-east-1", aws_access_key_id="testing",
               aws_secret_access_key="testing")
    s3, sagemaker = boto3.client("s3", **aws), boto3.client("sagemaker", **aws)
    s3.create_bucket(Bucket="hilt-pipe")
    (tmp_path / "export.json").write_text(json.dumps(uppercase_export(60)))
    pipeline = write_pipeline(
        tmp_path / "sm.yaml", warm_base_dir, {"from_file": "export.json"}, ["exact_match>=+0.3"],
        train={"recipe": "quickstart-tiny-sft", "model": str(warm_base_dir), "target": "sagemaker",
               "sagemaker": {"image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-train:1",
                             "role": "arn:aws:iam::123456789012:role/SageMakerExecution",
                             "instance_type": "ml.g5.2xlarge", "s3": "s3://hilt-pipe/hilt", "spot": True,
                             "max_wait": 90000, "poll_seconds": 1}})

    # moto marks the job Completed at once, but nothing has uploaded its model yet: the step fails, resumable.
    first = run_hilt(hilt_exe, "pipeline", "run", str(pipeline), env=moto_server["env"])
    assert first.returncode == 1, first.stdout[-3000:] + first.stderr[-3000:]
    assert "model artifacts are not at s3://hilt-pipe/hilt/jobs/" in first.stdout
    jobs = [j["TrainingJobName"] for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]
            if j["TrainingJobName"].startswith("hilt-upper-")]
    assert len(jobs) == 1
    job = sagemaker.describe_training_job(TrainingJobName=jobs[0])
    assert job["EnableManagedSpotTraining"] and job["HyperParameters"]["recipe"] == "quickstart-tiny-sft"

    # What SageMaker does at the end of a job: the container's /opt/ml/model lands as model.tar.gz.
    archive = tmp_path / "model.tar.gz"
    build_model_tar(lora_run[0] / "model", archive)
    bucket, key = job["ModelArtifacts"]["S3ModelArtifacts"][5:].split("/", 1)
    s3.upload_file(str(archive), bucket, key)

    second = run_hilt(hilt_exe, "pipeline", "run", str(pipeline), env=moto_server["env"])
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "exists (Completed), not submitted again" in second.stdout
    assert len([j for j in sagemaker.list_training_jobs()["TrainingJobSummaries"]
                if j["TrainingJobName"].startswith("hilt-upper-")]) == 1
    assert statuses(tmp_path / "runs")["request"] == "ran"
