"""Captured traffic for the monitor tests: a training set, traffic like it and traffic that drifts."""

from __future__ import annotations

import json
from pathlib import Path

from hilt.serving.capture import DataCapture
from hilt.flows.scenario import drifting_prompts, scenario_prompts



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
    out = []
    for i, item in enumerate(drifting_prompts(n)):
        answer = "I'm sorry, I cannot help with that." if i % 4 == 0 else "Regarding the memo, the first step is"
        out.append((item["prompt"], answer, "stop" if i % 4 == 0 else "length"))
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
