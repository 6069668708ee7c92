"""SFT through `hilt train` on the tiny model: learning, artifacts, provenance.

One LoRA run per session (on a warmed-up tiny base) is shared by the tests below.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_hilt
from tasks import exact_match, uppercase_example
from hilt.training.trainers.callbacks import METRIC_DEFINITIONS

pytestmark = pytest.mark.slow

LORA_ROOT_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
    "tokenizer_config.json", "chat_template.jinja", "hilt.json", "README.md", "loss_curve.png", "adapter",
}
ADAPTER_FILES = {
    "adapter_config.json", "adapter_model.safetensors", "README.md", "tokenizer.json",
    "tokenizer_config.json", "chat_template.jinja",
}


@pytest.fixture(scope="session")
def held_out() -> list[dict]:
    rng = random.Random(12345)
    return [uppercase_example(rng) for _ in range(40)]


def metric_values(log: str, name: str) -> list[float]:
    regex = next(d["Regex"] for d in METRIC_DEFINITIONS if d["Name"] == name)
    return [float(v) for v in re.findall(regex, log)]


def test_exact_artifact_file_set(lora_run):
    out, _ = lora_run
    model_dir = out / "model"
    assert {p.name for p in model_dir.iterdir()} == LORA_ROOT_FILES
    assert {p.name for p in (model_dir / "adapter").iterdir()} == ADAPTER_FILES
    assert not (out / "output" / "failure").exists()


def test_loss_falls_and_metric_lines_parse(lora_run):
    out, log = lora_run
    losses = metric_values(log, "train_loss")
    assert len(losses) >= 5 and all(map(lambda x: x == x, losses))  # finite, logged every 10 steps
    assert losses[-1] < losses[0] / 3
    assert metric_values(log, "eval_loss") and metric_values(log, "learning_rate")
    assert all(v > 0 for v in metric_values(log, "tokens_per_second"))
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert manifest["metrics"]["train_loss_last"] < manifest["metrics"]["train_loss_first"]
    assert manifest["metrics"]["global_step"] == 150


def test_lora_weights_change_and_base_stays_frozen(lora_run, warm_base_dir):
    out, _ = lora_run
    adapter = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero
    assert not any("lora" not in k for k in adapter)  # only adapter weights were trained

    base = load_file(warm_base_dir / "model.safetensors")
    merged = load_file(out / "model" / "model.safetensors")
    assert set(base) == set(merged)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    # Adapters sit on the linear layers; embeddings, norms and the head are untouched.
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert not any("norm" in k or "embed_tokens" in k or "lm_head" in k for k in changed)


def test_tuned_model_beats_base_on_held_out_exact_match(lora_run, warm_base_dir, held_out):
    out, _ = lora_run
    base_em = exact_match(warm_base_dir, held_out)
    tuned_em = exact_match(out / "model", held_out)
    assert base_em <= 0.1
    assert tuned_em >= 0.6, f"tuned exact match {tuned_em}"
    # The adapter alone, on the base, matches the merged weights.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(warm_base_dir)
    with_adapter = PeftModel.from_pretrained(base, out / "model" / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    ids = torch.tensor([[1, 5, 9, 17, 33]])
    torch.testing.assert_close(with_adapter(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_manifest_and_model_card(lora_run, dataset_dir):
    out, _ = lora_run
    model_dir = out / "model"
    manifest = json.loads((model_dir / "hilt.json").read_text())
    assert manifest["recipe"]["name"] == "quickstart-tiny-sft"
    assert manifest["dataset"]["train"]["records"] == 256
    data_sha = hashlib.sha256(b"data.jsonl" + hashlib.sha256((dataset_dir / "train" / "data.jsonl").read_bytes()).digest())
    assert manifest["dataset"]["train"]["sha256"] == data_sha.hexdigest()
    assert {"torch", "transformers", "trl", "peft", "hilt"} <= set(manifest["versions"])
    assert manifest["seed"] == 42
    card = (model_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "![loss curve](loss_curve.png)" in card and "eval_loss" in card
    assert (model_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_data_marks_loss_tokens(hilt_exe, warm_base_dir, dataset_dir):
    result = run_hilt(hilt_exe, "inspect-data", "quickstart-tiny-sft", "--data", str(dataset_dir),
                      "--model", str(warm_base_dir), "--samples", "1")
    assert result.returncode == 0, result.stderr
    first = json.loads((dataset_dir / "train" / "data.jsonl").read_text().splitlines()[0])
    answer = first["messages"][-1]["content"]
    marked = "".join(re.findall(r"\[\[(.*?)\]\]", result.stdout))
    assert marked == answer + "<|im_end|>"
    assert "count toward the loss" in result.stdout


def test_full_fine_tuning_trains_all_weights(hilt_exe, warm_base_dir, dataset_dir, tmp_path):
    out = tmp_path / "full"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir),
                      "--data", str(dataset_dir), "--output", str(out),
                      "--set", "peft.method=full", "--set", "train.max_steps=30",
                      "--set", "train.learning_rate=1e-3")
    assert result.returncode == 0, result.stderr[-3000:]
    files = {p.name for p in (out / "model").iterdir()}
    assert files == LORA_ROOT_FILES - {"adapter"}
    base = load_file(warm_base_dir / "model.safetensors")
    tuned = load_file(out / "model" / "model.safetensors")
    assert all(not torch.equal(base[k], tuned[k]) for k in base if "embed" in k or "lm_head" in k)
    losses = metric_values(result.stdout, "train_loss")
    assert losses[-1] < losses[0]


def test_gradient_checkpointing_runs(hilt_exe, warm_base_dir, dataset_dir, tmp_path):
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir),
                      "--data", str(dataset_dir), "--output", str(tmp_path / "gc"),
                      "--set", "model.gradient_checkpointing=true", "--set", "train.max_steps=10",
                      "--set", "train.logging_steps=5")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "gradient_checkpointing=on" in result.stdout
    losses = metric_values(result.stdout, "train_loss")
    assert losses[-1] < losses[0]


def test_tracking_tensorboard_events_and_an_mlflow_run(hilt_exe, warm_base_dir, dataset_dir, tmp_path):
    """TensorBoard events where SageMaker collects them, and an MLflow run (a local file store) holding
    the recipe, the dataset hash, the per-step loss, the held-out evaluation and the model's files."""
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    store = f"file://{tmp_path / 'mlruns'}"
    out = tmp_path / "tracked"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                      str(dataset_dir), "--output", str(out), "--set", "train.max_steps=10",
                      "--set", "train.logging_steps=2",
                      env={"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert result.returncode == 0, result.stderr[-3000:]
    (events,) = (out / "output" / "tensorboard").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events.parent))
    board.Reload()
    assert len(board.Scalars("train/loss")) >= 4

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 keeps the local file store in maintenance mode
    client = MlflowClient(tracking_uri=store)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    params = run.data.params
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert params["recipe.name"] == "quickstart-tiny-sft" and params["recipe.peft.method"] == "lora"
    train = manifest["dataset"]["train"]
    assert params["dataset.sha256"] == str(train.get("manifest_sha256") or train["sha256"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 4
    assert run.data.metrics["heldout_exact_match"] == manifest["evaluation"]["metrics"]["exact_match"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"README.md", "loss_curve.png", "hilt.json"} <= artifacts

    refused = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                       str(dataset_dir), "--output", str(tmp_path / "no-uri"), "--set", "train.report_to=mlflow",
                       env={"MLFLOW_TRACKING_URI": ""})
    assert refused.returncode == 2 and "needs MLFLOW_TRACKING_URI" in refused.stderr
    unopened = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                        str(dataset_dir), "--output", str(tmp_path / "file-store"),
                        env={"MLFLOW_TRACKING_URI": store, "MLFLOW_ALLOW_FILE_STORE": "false"})
    assert unopened.returncode == 2 and "MLFLOW_ALLOW_FILE_STORE=true" in unopened.stderr
    assert unopened.stderr.count("\n") == 1
