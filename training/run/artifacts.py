"""Finish /opt/ml/model after training: merged weights, hilt.json, model card, loss plot.

Runs once, in the launching process after every worker has exited (a fresh process
for the weights: after ZeRO-3, loading in the training process crashes in gloo).

Layout written (what the serving container and ``from_pretrained`` read):

    /opt/ml/model/
      config.json, model.safetensors, tokenizer files   merged weights at the root
      adapter/                                          the PEFT adapter (LoRA runs)
      hilt.json                                         recipe, dataset hash, metrics, versions
      README.md, loss_curve.png                         model card with the loss curve
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any
from hilt.core.layout import ADAPTER_DIR, CARD_FILE, LOG_HISTORY_FILE, LOSS_PLOT_FILE, MANIFEST_FILE, write_manifest

from hilt.training.data.records import dataset_fingerprint
from hilt.training.base import stopping
from hilt.training.base.job import Job
from hilt.core.opt_ml import BASE_DIR_ENV
from hilt.core.layout import model_fingerprint

MERGE_STAGING = ".merged.tmp"  # inside /opt/ml/model: the merge is written here, then moved in
_VERSIONED = ("hilt", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "deepspeed")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    return versions


def summarize_history(history: list[dict]) -> dict[str, Any]:
    """Loss at the start and end, eval loss, throughput: the numbers a reader wants."""
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    final = next((h for h in reversed(history) if "train_runtime" in h), {})
    metrics: dict[str, Any] = {}
    if train:
        metrics.update(
            train_loss_first=train[0][1], train_loss_last=train[-1][1], train_loss_min=min(v for _, v in train)
        )
    if evals:
        metrics["eval_loss"] = evals[-1][1]
    for key in ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss"):
        if key in final:
            metrics[key] = final[key]
    if "num_input_tokens_seen" in final and final.get("train_runtime"):
        metrics["train_tokens_per_second"] = final["num_input_tokens_seen"] / final["train_runtime"]
    metrics["global_step"] = max((h.get("step", 0) for h in history), default=0)
    return metrics


def plot_loss(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # Fixed metadata keeps the PNG byte-stable for the same history.
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def merge_adapter(job: Job) -> None:
    """Merge the LoRA adapter into a fresh copy of the base and save it at the root.

    The merged files are written to a hidden folder first and moved in when complete, so a
    merge cut off (SIGTERM, a full disk) never leaves half a ``model.safetensors``.
    """
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hilt.training.trainers.build import resolve_dtype

    adapter = job.opt_ml.model_dir / ADAPTER_DIR
    staging = job.opt_ml.model_dir / MERGE_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        dtype = torch.bfloat16 if job.recipe.peft.method == "qlora" else resolve_dtype(job)
        base = AutoModelForCausalLM.from_pretrained(job.model_path, dtype=dtype)
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(staging)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(staging)
        for path in sorted(staging.iterdir()):
            path.replace(job.opt_ml.model_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def merge_within(job: Job, seconds: float) -> bool:
    """Merge in a child process that is killed after ``seconds``; whether the merge finished.

    After SIGTERM the merge gets only what is left of SageMaker's 120 s: the adapter is
    already saved, so a merge that does not fit is given up, not risked.
    """
    import subprocess
    import sys

    if seconds < 5:
        return False
    env = {**os.environ, BASE_DIR_ENV: str(job.opt_ml.base)}
    try:
        done = subprocess.run([sys.executable, "-m", "hilt.training.run.artifacts", "merge"], env=env, timeout=seconds,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        import shutil

        shutil.rmtree(job.opt_ml.model_dir / MERGE_STAGING, ignore_errors=True)
        print(f"[hilt] merge did not fit in the {seconds:.0f} s left; the adapter alone is saved", flush=True)
        return False
    if done.returncode != 0:
        print(f"[hilt] merge failed ({done.stderr.strip().splitlines()[-1:] or done.returncode}); "
              "the adapter alone is saved", flush=True)
    return done.returncode == 0


def _evaluation_section(evaluation: dict | None) -> str:
    if not evaluation:
        return ""
    m = evaluation["metrics"]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in m.items())
    return (f"## Held-out evaluation\n\n{evaluation['records']} validation records, greedy answers; "
            f"task metric **{evaluation['task_metric']}** = {m[evaluation['task_metric']]:.4f}.\n\n"
            f"| metric | value |\n| --- | --- |\n{rows}\n\n")


def write_model_card(job: Job, manifest: dict, out: Path) -> None:
    r, m = job.recipe, manifest["metrics"]
    adapter = r.peft.method != "full"
    rows = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in m.items())
    data = manifest["dataset"]
    counts = ", ".join(f"{k}: {v['records']} records" for k, v in data.items())
    card = f"""---
library_name: transformers
base_model: {manifest['base_model']}
tags: [hilt, {r.method}, {r.peft.method}]
---

# {r.name}

{r.description or 'Fine-tuned with hilt.'}

Fine-tuned from `{manifest['base_model']}` with **{r.method.upper()}**
({'LoRA r=%d, alpha=%d' % (r.peft.r, r.peft.alpha) if adapter else 'all weights'}) on
human-labelled data collected in Label Studio and exported by `hilt export`.

## Data

{counts}. Dataset sha256 (train): `{data['train'].get('manifest_sha256') or data['train']['sha256']}`.

## Training

| setting | value |
| --- | --- |
| learning rate | {r.train.learning_rate} |
| schedule | {r.train.lr_scheduler}, warm-up {r.train.warmup_ratio} |
| batch | {r.train.per_device_batch_size} x {r.train.gradient_accumulation_steps} accumulation x {manifest['world_size']} processes |
| max length | {r.data.max_length} (packing: {r.data.packing}) |
| precision | {manifest['precision']} |
| seed | {r.train.seed} |

![loss curve]({LOSS_PLOT_FILE})

## Metrics

| metric | value |
| --- | --- |
{rows}

{_evaluation_section(manifest.get("evaluation"))}## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/this/dir")
tokenizer = AutoTokenizer.from_pretrained("path/to/this/dir")
```
{"The LoRA adapter alone is in `adapter/` (load it with `peft.PeftModel.from_pretrained`)." if adapter else ""}

Full provenance (resolved recipe, library versions) is in `{MANIFEST_FILE}`.
"""
    out.write_text(card)


def score_on_validation(job: Job) -> dict | None:
    """Held-out loss, perplexity and task metrics of the finished model (as ``hilt evaluate``)."""
    from hilt.training.trainers.callbacks import format_metrics
    from hilt.training.evaluation.evaluate import read_eval_records, score_model

    if "validation" not in job.channels or not job.recipe.eval.after_training:
        return None
    records, _ = read_eval_records(job.channels["validation"])
    records = records[: job.recipe.eval.max_samples]
    scores, _ = score_model(job.opt_ml.model_dir, records, job.recipe.eval.max_new_tokens,
                            max_length=job.recipe.data.max_length, label="validation")
    print(format_metrics(0, {f"eval_{k}": v for k, v in scores.items() if k != "loss"}), flush=True)
    return {"records": len(records), "task_metric": job.recipe.eval.metric, "metrics": scores}


def base_model_name(job: Job) -> str:
    """What hilt.json and the model card call the base model: a hub id, or a folder's name.

    Shipped files never carry the seller's local absolute paths: a local base model is
    named by its folder (its identity is the fingerprint beside it).
    """
    name = job.recipe.model.name_or_path if "model" not in job.channels else None
    if name and not Path(name).expanduser().exists():
        return name  # a hub id
    return Path(name or job.model_path).expanduser().resolve().name


def shipped_hyperparameters(hyperparameters: dict[str, str]) -> dict[str, str]:
    """The job's hyperparameters with a recipe file path reduced to the file's name."""
    shipped = dict(hyperparameters)
    recipe = shipped.get("recipe", "")
    if recipe.endswith((".yaml", ".yml")):
        shipped["recipe"] = Path(recipe).name
    return shipped


def _manifest(job: Job, history: list[dict]) -> dict:
    from hilt.training.trainers.build import resolve_precision

    dataset = {}
    for channel in ("train", "validation"):
        if channel in job.channels:
            # Training already validated every record; here they are only counted and hashed.
            dataset[channel] = dataset_fingerprint(job.channels[channel])
    from hilt.training.evaluation.general import REPLAY_FILE

    replay = job.opt_ml.output_data_dir / REPLAY_FILE
    if job.recipe.data.self_replay and replay.is_file():
        lines = replay.read_bytes()
        dataset["self_replay"] = {"records": lines.count(b"\n"), "sha256": hashlib.sha256(lines).hexdigest(),
                                  "what": "the base model's own answers to hilt's general replay prompts"}
    return {
        "recipe": job.recipe.model_dump(mode="json"),
        "hyperparameters": shipped_hyperparameters(job.hyperparameters),
        "base_model": base_model_name(job),
        "base_model_fingerprint": model_fingerprint(job.model_path),
        "dataset": dataset,
        "metrics": summarize_history(history),
        "seed": job.recipe.train.seed,
        "precision": resolve_precision(job),
        "world_size": job.world_size,
        "hosts": job.hosts.hosts,
        "versions": library_versions(),
    }


def _history(job: Job) -> list[dict]:
    history_file = job.opt_ml.output_data_dir / LOG_HISTORY_FILE
    try:
        return json.loads(history_file.read_text()) if history_file.is_file() else []
    except ValueError:
        return []


def _drop_training_args(model_dir: Path) -> None:
    """A pickle of the TrainingArguments does not belong in a shipped artifact."""
    for stray in model_dir.rglob("training_args.bin"):
        stray.unlink()


def finish_model_dir(job: Job) -> dict:
    """Write merged weights, hilt.json, model card and loss plot. Returns the manifest."""
    model_dir = job.opt_ml.model_dir
    if job.recipe.peft.method != "full":
        stopping.enter("merge")
        merge_adapter(job)
    _drop_training_args(model_dir)
    history = _history(job)
    manifest = _manifest(job, history)
    stopping.enter("score")
    evaluation = score_on_validation(job)
    if evaluation is not None:
        manifest["evaluation"] = evaluation
    with stopping.protected("write"):
        write_manifest(model_dir, manifest)
        plot_loss(history, model_dir / LOSS_PLOT_FILE)
        write_model_card(job, manifest, model_dir / CARD_FILE)
    return manifest


def has_weights(job: Job) -> bool:
    """Whether /opt/ml/model holds trained weights (the adapter, or full weights at the root)."""
    model_dir = job.opt_ml.model_dir
    if job.recipe.peft.method != "full":
        return any((model_dir / ADAPTER_DIR).glob("adapter_model.*"))
    return any(model_dir.glob("*.safetensors"))


def finish_partial_model_dir(job: Job, phase: str) -> dict:
    """After SIGTERM: leave the weights the job has, merged if that fits in the time left, and
    hilt.json marked ``partial`` (phase, step). Runs inside SageMaker's 120 s; never raises
    ``JobStopped``.
    """
    model_dir = job.opt_ml.model_dir
    adapter = job.recipe.peft.method != "full"
    with stopping.protected():
        _drop_training_args(model_dir)
        weights = has_weights(job)
        # Full weights are already the model; an adapter is merged if that fits, leaving 20 s
        # for hilt.json and the upload's start.
        merged = weights and (not adapter or merge_within(job, stopping.seconds_left() - 20))
        history = _history(job)
        manifest = _manifest(job, history)
        step = manifest["metrics"].get("global_step", 0)
        manifest["partial"] = {
            "reason": "SIGTERM (spot interruption, StopTrainingJob or MaxRuntimeInSeconds)",
            "stopped_in": phase, "global_step": step, "weights": weights, "merged": merged,
            "resume": "run the job again with the same checkpoint location to continue from the last checkpoint",
        }
        model_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(model_dir, manifest)
        if history:
            plot_loss(history, model_dir / LOSS_PLOT_FILE)
        left = ("adapter + merged weights" if merged else "adapter") if adapter else "weights"
        print(f"[hilt] partial model in {model_dir}: stopped in {phase} at step {step}; "
              f"{left if weights else 'no weights'}; hilt.json marks it partial", flush=True)
        return manifest


if __name__ == "__main__":  # pragma: no cover  (merge_within's child process)
    import sys

    from hilt.training.base.job import read_job
    from hilt.core.opt_ml import OptML

    if sys.argv[1:] == ["merge"]:
        merge_adapter(read_job(OptML.from_env()))
