"""Small learnable tasks and dataset writers for the training tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def uppercase_example(rng: random.Random) -> dict:
    word = "".join(rng.choice(LETTERS) for _ in range(4))
    return {
        "messages": [
            {"role": "user", "content": f"upper: {word}"},
            {"role": "assistant", "content": word.upper()},
        ],
        "meta": {"task_id": rng.randint(1, 10**6), "annotator": "test"},
    }


def write_channel(directory: Path, records: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "data.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return directory


def write_uppercase_dataset(root: Path, n_train: int = 256, n_validation: int = 32, seed: int = 0) -> Path:
    rng = random.Random(seed)
    write_channel(root / "train", [uppercase_example(rng) for _ in range(n_train)])
    write_channel(root / "validation", [uppercase_example(rng) for _ in range(n_validation)])
    return root


def preference_example(rng: random.Random) -> dict:
    word = "".join(rng.choice(LETTERS) for _ in range(4))
    return {
        "prompt": [{"role": "user", "content": f"upper: {word}"}],
        "chosen": [{"role": "assistant", "content": word.upper()}],
        "rejected": [{"role": "assistant", "content": word}],
        "meta": {"task_id": rng.randint(1, 10**6)},
    }


def write_preference_dataset(root: Path, n_train: int = 64, seed: int = 0) -> Path:
    rng = random.Random(seed)
    write_channel(root / "train", [preference_example(rng) for _ in range(n_train)])
    return root


def exact_match(model_dir: Path, records: list[dict]) -> float:
    from hilt.training.evaluation.generation import greedy_answers

    prompts = [r["messages"][:-1] for r in records]
    answers = greedy_answers(model_dir, prompts, max_new_tokens=8)
    return sum(a == r["messages"][-1]["content"] for a, r in zip(answers, records)) / len(records)
