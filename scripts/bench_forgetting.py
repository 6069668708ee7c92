#!/usr/bin/env python
"""Measure forgetting, and what self-replay does about it, on the real model.

For each task (the demo's internal-process assistant, and a support-ticket router whose answers
are JSON), LoRA SFT of SmolLM2-135M-Instruct with its recipe, once without and once with
``data.self_replay``; every tuned model and the base are scored by ``hilt evaluate``'s code on the
task's held-out records (exact match, ROUGE-L) and on hilt's general set (general_loss,
general_accuracy). The base is scored once per task.

    .venv/bin/python scripts/bench_forgetting.py [--model .cache/models/smollm2-135m-instruct] [--replay 0.25]

Results: bench_results/forgetting.json and forgetting.png (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TICKET_SYSTEM = "Route the support ticket. Answer only with JSON: the team and the priority."
TEAMS = {
    "IT": ["my laptop screen flickers", "the VPN drops every hour", "I cannot print to the second floor printer",
           "Outlook keeps asking for my password", "my docking station stopped charging"],
    "Facilities": ["the kitchen sink is leaking", "the lights in meeting room 4 are out",
                   "the heating on floor 3 is off", "a chair in the lobby is broken", "the lift is stuck on floor 2"],
    "HR": ["I need a copy of my contract", "how do I change my parental leave dates",
           "my payslip shows the wrong address", "I want to report a conflict with a colleague",
           "how many holiday days do I have left"],
    "Security": ["I clicked a link in a suspicious email", "my badge was stolen",
                 "someone tailgated me through the door", "a USB stick was left in the lobby",
                 "I shared my password by mistake"],
}
URGENCY = {"high": ["Urgent: ", "ASAP - ", "This is blocking my work: "], "normal": ["", "Hi, ", "Hello, "],
           "low": ["No rush, but ", "When you have time, ", "Low priority: "]}


def ticket_items(n: int, seed: int = 0) -> list[dict]:
    """``n`` distinct ticket-routing prompts with their JSON reference answers."""
    rng, seen, out = random.Random(seed), set(), []
    combos = [(t, p, u, w) for t, ps in TEAMS.items() for p in ps for u, ws in URGENCY.items() for w in ws]
    rng.shuffle(combos)
    for team, problem, urgency, lead in combos[:n]:
        prompt = f"{lead}{problem}." if lead else f"{problem[0].upper()}{problem[1:]}."
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append({"system": TICKET_SYSTEM, "prompt": prompt,
                    "reference": json.dumps({"team": team, "priority": urgency})})
    return out


def demo_items(n: int) -> list[dict]:
    from hilt.flows.scenario import scenario_prompts

    return scenario_prompts(n)


def write_dataset(items: list[dict], folder: Path, validation: int) -> Path:
    for split, chunk in (("train", items[validation:]), ("validation", items[:validation])):
        (folder / split).mkdir(parents=True, exist_ok=True)
        (folder / split / "data.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "system", "content": i["system"]}, {"role": "user", "content": i["prompt"]},
            {"role": "assistant", "content": i["reference"]}]}) + "\n" for i in chunk))
    return folder


def train(model: Path, data: Path, out: Path, replay: float, steps: int) -> float:
    started = time.perf_counter()
    command = [str(Path(sys.executable).parent / "hilt"), "train", "smollm2-135m-sft-lora", "--model", str(model),
               "--data", str(data), "--output", str(out), "--set", f"data.self_replay={replay}",
               "--set", f"train.max_steps={steps}", "--set", "eval.after_training=false"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"training failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.perf_counter() - started


def score(model: Path, data: Path, out: Path) -> dict:
    from hilt.training.evaluation.evaluate import evaluate

    result = evaluate(model, data, out, max_new_tokens=48)
    m, g = result["models"]["candidate"]["metrics"], result["general"]["models"]["candidate"]
    return {"exact_match": m["exact_match"], "rougeL": m["rougeL"], "loss": m["loss"],
            "general_loss": g["general_loss"], "general_accuracy": g["general_accuracy"],
            "general_by_category": g["by_category"]}


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=100)
    for ax, metric, title in zip(axes, ("exact_match", "general_loss", "general_accuracy"),
                                 ("task exact match (higher is better)", "general loss (lower is better)",
                                  "general accuracy (higher is better)")):
        for i, task in enumerate(tasks):
            runs = results["tasks"][task]
            values = [runs["base"][metric], runs["tuned"][metric], runs["tuned+replay"][metric]]
            ax.bar([i * 4 + j for j in range(3)], values, color=["#999999", "#d62728", "#2ca02c"])
        ax.set_xticks([i * 4 + 1 for i in range(len(tasks))], tasks)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in ("#999999", "#d62728", "#2ca02c")],
                   labels=["base", "tuned", "tuned + self-replay"], fontsize=8)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(ROOT / ".cache" / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--replay", type=float, default=0.25, help="data.self_replay of the replay runs (0.25, "
                        "as the demo)")
    parser.add_argument("--steps", type=int, default=24, help="LoRA steps per run (24, the recipe's)")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "forgetting.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model = Path(args.model)
    if not (model / "config.json").is_file():
        raise SystemExit(f"--model {model}: no model there; run ./scripts/setup (it imports SmolLM2) first")

    work = Path(tempfile.mkdtemp(prefix="bench-forgetting-"))
    results: dict = {"model": model.name, "replay": args.replay, "steps": args.steps, "recipe": "smollm2-135m-sft-lora",
                     "general_set": "hilt general set (bundled, 50 prompts)", "tasks": {}}
    for task, items in (("demo", demo_items(120)), ("tickets", ticket_items(60))):
        data = write_dataset(items, work / task / "data", validation=20)
        runs = {"base": score(model, data, work / task / "eval-base")}
        for label, replay in (("tuned", 0.0), ("tuned+replay", args.replay)):
            job = work / task / label
            seconds = train(model, data, job, replay, args.steps)
            manifest = json.loads((job / "model" / "hilt.json").read_text())
            runs[label] = {**score(job / "model", data, work / task / f"eval-{label}"),
                           "train_seconds": round(seconds, 1),
                           "replay_records": (manifest["dataset"].get("self_replay") or {}).get("records", 0),
                           "train_records": manifest["dataset"]["train"]["records"]}
            print(f"{task:8} {label:13} exact_match {runs[label]['exact_match']:.2f} general_loss "
                  f"{runs[label]['general_loss']:.3f} general_accuracy {runs[label]['general_accuracy']:.2f}", flush=True)
        for label in ("tuned", "tuned+replay"):
            runs[label]["deltas"] = {k: round(runs[label][k] - runs["base"][k], 6)
                                     for k in ("exact_match", "rougeL", "general_loss", "general_accuracy")}
        results["tasks"][task] = runs
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out.with_suffix(".png"))
    print(f"\n{'task':8} {'model':13} {'exact_match':>11} {'general_loss':>12} {'general_acc':>11}")
    for task, runs in results["tasks"].items():
        for label, r in runs.items():
            print(f"{task:8} {label:13} {r['exact_match']:>11.2f} {r['general_loss']:>12.3f} {r['general_accuracy']:>11.2f}")
    print(f"\n{out}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
