"""General skills: did fine-tuning make the model forget what it knew, and self-replay to keep it.

A few dozen LoRA steps on one narrow task can make a small model answer everything in the
task's shape (after 30 steps on a ticket router that answers in JSON, SmolLM2-135M opened its
general answers with a JSON quote and answered "How many days are in a week?" with "Monday"). LLaMA-Factory and axolotl point users at MMLU / lm-eval for
this; those need hub data an offline user does not have. hilt ships its own small set
instead (``general/eval.jsonl``: facts, arithmetic, instructions and formats, each with a
reference answer and the patterns a correct answer matches), and ``hilt evaluate`` scores
both models on it beside the task metrics:

- ``general_loss``: mean token NLL of the reference answers (teacher-forced, as the task's
  held-out loss); it rises as soon as a model drifts, before answers visibly break;
- ``general_accuracy``: the share of greedy answers that match one of the item's ``accept``
  patterns (``re.search``, case-insensitive; a scoped ``(?-i:...)`` group is case-sensitive), or,
  for an item without patterns, whose ROUGE-L against the reference reaches 0.5.

``--general FILE`` replaces the set: JSON Lines of ``{"prompt": str or messages,
"reference": str, "accept"?: [regex], "category"?: str}``, or ``messages`` records whose last
assistant turn is the reference.

Self-replay (recipe ``data.self_replay``, SFT) keeps the general skills: the base model's own
greedy answers to general prompts that are *not* in the evaluation set (``general/replay.jsonl``)
are mixed into the training records, so the adapter is also trained to leave those answers as
they were. They are generated once per base model and cached (``$HILT_CACHE_DIR``, default
``~/.cache/hilt``), keyed by the base model's fingerprint, the prompts and the settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from hilt.core.errors import UserError

GENERAL_DIR = Path(__file__).resolve().parent / "general"
EVAL_SET = GENERAL_DIR / "eval.jsonl"
REPLAY_SET = GENERAL_DIR / "replay.jsonl"
GENERAL_METRICS = ("general_loss", "general_accuracy")
ROUGE_PASS = 0.5
REPLAY_MAX_NEW_TOKENS = 96
REPLAY_FILE = "self-replay.jsonl"  # in the job's output/data: the records that were mixed in
CACHE_ENV = "HILT_CACHE_DIR"


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as err:
        raise UserError(f"{where}: accept pattern {pattern!r} is not a valid regex ({err}); fix the pattern") from None


def _general_item(record: object, where: str) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with prompt and reference")
    if "messages" in record and "prompt" not in record:
        messages = record["messages"]
        if not (isinstance(messages, list) and messages and isinstance(messages[-1], dict)
                and messages[-1].get("role") == "assistant"):
            raise UserError(f"{where}: a messages record must end with the assistant's reference answer")
        prompt, reference = messages[:-1], messages[-1].get("content")
    else:
        prompt, reference = record.get("prompt"), record.get("reference")
        if isinstance(prompt, str):
            prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("content"), str)
                                                         for m in prompt)):
        raise UserError(f"{where}: 'prompt' must be a string or a list of messages with string content")
    if not isinstance(reference, str) or not reference.strip():
        raise UserError(f"{where}: 'reference' must be the non-empty reference answer")
    accept = record.get("accept") or []
    if not (isinstance(accept, list) and all(isinstance(a, str) for a in accept)):
        raise UserError(f"{where}: 'accept' must be a list of regex strings")
    return {"id": str(record.get("id", where)), "category": str(record.get("category", "general")),
            "prompt": prompt, "reference": reference, "accept": [_compile(a, where) for a in accept],
            "patterns": accept}


def read_jsonl_objects(path: Path, flag: str) -> list[tuple[object, str]]:
    """(record, "file:line") for each non-empty line, or one line naming the file or the bad line."""
    from hilt.training.data.records import iter_jsonl

    if not path.is_file():
        raise UserError(f"{flag} {path}: {'a folder' if path.is_dir() else 'no such file'}; pass a JSON Lines file")
    return list(iter_jsonl([path]))


def read_general_set(path: Path | None = None) -> tuple[list[dict], str]:
    """The general items (bundled set when ``path`` is None) and the set's sha256.

    Raises:
        UserError: a missing, empty or malformed file, naming the line.
    """
    source = Path(path) if path else EVAL_SET
    rows = read_jsonl_objects(source, "--general")
    items = [_general_item(record, where) for record, where in rows]
    if not items:
        raise UserError(f"--general {source}: no items; one JSON object per line with prompt and reference")
    digest = hashlib.sha256(json.dumps([[i["prompt"], i["reference"], i["patterns"]] for i in items]).encode())
    return items, digest.hexdigest()


def answer_passes(answer: str, item: dict) -> bool:
    """Whether a generated answer counts as correct for a general item."""
    if item["accept"]:
        return any(p.search(answer) for p in item["accept"])
    from hilt.training.evaluation.scoring import rouge_l

    return rouge_l(answer, item["reference"]) >= ROUGE_PASS


def score_general(model, tokenizer, items: list[dict], max_new_tokens: int,
                  label: str) -> tuple[dict, list[str], list[bool]]:
    """``general_loss`` and ``general_accuracy`` of a loaded model (plus per category).

    Returns:
        (scores, each item's answer, whether each answer passed).
    """
    from hilt.training.evaluation.scoring import heldout_loss
    from hilt.training.evaluation.generation import generate_answers

    loss = heldout_loss(model, tokenizer, items)
    answers = generate_answers(model, tokenizer, [i["prompt"] for i in items], max_new_tokens,
                               desc=f"{label}: general answers")
    passed = [answer_passes(a, i) for a, i in zip(answers, items)]
    categories: dict[str, list[bool]] = {}
    for ok, item in zip(passed, items):
        categories.setdefault(item["category"], []).append(ok)
    scores = {"general_loss": round(loss, 6), "general_accuracy": round(sum(passed) / len(items), 6),
              "by_category": {c: round(sum(v) / len(v), 6) for c, v in sorted(categories.items())}}
    return scores, answers, passed


# ---------------------------------------------------------------- self-replay


def replay_prompts() -> list[dict]:
    """The bundled replay prompts (none of them in the evaluation set)."""
    return [{"id": str(r["id"]), "prompt": r["prompt"]} for r, _ in read_jsonl_objects(REPLAY_SET, "replay set")]


def replay_count(fraction: float, train_records: int) -> int:
    """How many replay records ``fraction`` of the training records asks for, within the pool."""
    return min(len(replay_prompts()), max(1, round(fraction * train_records))) if fraction > 0 else 0


def _cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "hilt")


def self_replay_records(base_dir: str, count: int, max_new_tokens: int = REPLAY_MAX_NEW_TOKENS) -> tuple[list[dict], str]:
    """The base model's own greedy answers to the first ``count`` replay prompts, as SFT records.

    Cached per (base model fingerprint, prompts, settings); a cache entry that does not parse is
    generated again. Returns (records, where they came from: "cache PATH" or "generated").
    """
    from hilt.core.outputs import write_atomic
    from hilt.core.layout import model_fingerprint

    prompts = replay_prompts()[:count]
    key = hashlib.sha256(json.dumps([model_fingerprint(base_dir), prompts, max_new_tokens]).encode()).hexdigest()
    cache = _cache_dir() / "self-replay" / f"{key[:32]}.json"
    if cache.is_file():
        try:
            cached = json.loads(cache.read_text())
            if cached.get("key") == key and isinstance(cached.get("records"), list):
                return cached["records"], f"cache {cache}"
        except (ValueError, OSError, AttributeError):
            pass
    from hilt.training.evaluation.generation import generate_answers, load_model

    model, tokenizer = load_model(base_dir)
    conversations = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    answers = generate_answers(model, tokenizer, conversations, max_new_tokens, desc="self-replay: base answers")
    del model
    # An answer cut off by the token cap would teach the adapter to stop mid-sentence: left out.
    records = [{"messages": [*c, {"role": "assistant", "content": a}]} for c, a in zip(conversations, answers)
               if a.strip() and len(tokenizer(a).input_ids) < max_new_tokens - 2]
    try:
        write_atomic(cache, json.dumps({"key": key, "prompts": len(prompts), "records": records}, ensure_ascii=False))
    except UserError as err:  # an unwritable cache costs a regeneration next time, not the run
        print(f"[hilt] warning: self-replay cache not written ({err})", flush=True)
    return records, "generated"
