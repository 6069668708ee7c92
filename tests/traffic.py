"""Captured traffic for the monitor tests: a training set, traffic like it and traffic that drifts."""

from __future__ import annotations

import json
import random
from pathlib import Path

from container.capture import DataCapture
from hilt.scenario import scenario_prompts

NEW_TOPICS = ["municipal bond taxation", "derivatives margin rules", "cross-border pension transfers",
              "quantum-safe encryption", "merger arbitrage"]


def write_baseline(directory: Path) -> Path:
    records = [{"messages": [{"role": "system", "content": p["system"]}, {"role": "user", "content": p["prompt"]},
                             {"role": "assistant", "content": p["reference"]}]} for p in scenario_prompts(120)]
    (directory / "train").mkdir(parents=True)
    (directory / "train" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return directory


def steady_traffic(n: int) -> list[tuple[str, str, str]]:
    """(prompt, answer, finish_reason) like the training data."""
    return [(p["prompt"], p["reference"], "stop") for p in scenario_prompts(n, seed=7)]


def drifted_traffic(n: int) -> list[tuple[str, str, str]]:
    """New topics, prompts four times longer, answers cut at the token limit or refused."""
    rng = random.Random(3)
    out = []
    for i in range(n):
        topic = rng.choice(NEW_TOPICS)
        prompt = (f"Write a detailed memo on {topic} for a client with holdings in three countries, covering "
                  f"the rules that changed this year, the deadlines, the penalties, the forms to file and who "
                  f"signs them, and compare the options side by side with their costs (case {i}).")
        answer = "I'm sorry, I cannot help with that." if i % 4 == 0 else f"Regarding {topic}, the first step is"
        out.append((prompt, answer, "stop" if i % 4 == 0 else "length"))
    return out


def capture(directory: Path, traffic: list[tuple[str, str, str]]) -> Path:
    """Traffic written by the same writer `serve` uses, in hilt's request and answer shapes."""
    writer = DataCapture(directory, endpoint="ep", variant="AllTraffic")
    for prompt, answer, reason in traffic:
        request = json.dumps({"inputs": prompt, "parameters": {"max_new_tokens": 64}}).encode()
        response = json.dumps({"generated_text": answer, "finish_reason": reason}).encode()
        writer.record(request, "application/json", response, "application/json")
    writer.close()
    return directory
