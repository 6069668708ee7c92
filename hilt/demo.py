"""``hilt demo``: the main job end to end on embedded defaults.

Stages run so far: base model (built locally) -> dataset -> training through the
SageMaker training contract -> base-vs-tuned check. The Label Studio, packaging and
validation stages join here as they land. Each step reuses what an earlier run
produced, so a second run is fast.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

BASE_WARMUP_STEPS = 300
SCENARIO_SIZE = 200
VALIDATION_EVERY = 7  # about 1 in 7 prompts is held out, chosen by a hash of its id


def _held_out(item: dict) -> bool:
    digest = hashlib.sha256(f"scenario-{item['id']}".encode()).digest()
    return digest[0] % VALIDATION_EVERY == 0


def _write_dataset(directory: Path) -> tuple[int, int]:
    from hilt.scenario import as_sft_record, scenario_prompts

    items = scenario_prompts(SCENARIO_SIZE)
    splits = {"train": [i for i in items if not _held_out(i)], "validation": [i for i in items if _held_out(i)]}
    for split, chosen in splits.items():
        (directory / split).mkdir(parents=True, exist_ok=True)
        (directory / split / "data.jsonl").write_text("".join(json.dumps(as_sft_record(i)) + "\n" for i in chosen))
    return len(splits["train"]), len(splits["validation"])


def _exact_match(model_dir: Path, records: list[dict]) -> float:
    from training.generation import greedy_answers

    answers = greedy_answers(model_dir, [r["messages"][:-1] for r in records], max_new_tokens=48)
    return sum(a == r["messages"][-1]["content"] for a, r in zip(answers, records)) / len(records)


def run_demo(workdir: Path) -> int:
    """Run every stage that exists so far and print a summary table.

    Args:
        workdir: folder for the demo's files; reused across runs.

    Returns:
        The process exit code (0 on success).
    """
    from training.entry import prepare_local_tree, run_job
    from training.tiny_model import build_tiny_model, warm_up

    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []
    started = time.perf_counter()

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

    # 2. Dataset: the scenario's reference answers in the export layout. (Until the
    #    Label Studio stage lands in the demo, they stand in for the annotators.)
    data_dir = workdir / "dataset"
    if not (data_dir / "train" / "data.jsonl").exists():
        _write_dataset(data_dir)
    n_train = sum(1 for _ in (data_dir / "train" / "data.jsonl").open())
    validation = [json.loads(l) for l in (data_dir / "validation" / "data.jsonl").read_text().splitlines()]
    rows.append(("dataset", f"{data_dir} ({n_train} train / {len(validation)} validation records)"))

    # 3. Train the quickstart recipe through the SageMaker training contract.
    job_dir = workdir / "train-job"
    manifest_file = job_dir / "model" / "hilt.json"
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

    # 4. Base vs tuned on the held-out prompts.
    base_em = _exact_match(model_dir, validation)
    tuned_em = _exact_match(job_dir / "model", validation)
    rows.append(("exact match", f"base {base_em:.2f} -> tuned {tuned_em:.2f} on {len(validation)} held-out prompts"))
    rows.append(("elapsed", f"{time.perf_counter() - started:.0f}s"))

    width = max(len(name) for name, _ in rows)
    print("\nhilt demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0
