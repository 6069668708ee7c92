"""Prompts (JSONL, CSV or a saved HF dataset) -> Label Studio tasks, with model drafts.

Drafts become Label Studio *predictions*: the annotator opens a task with the model's
answer already in the answer box and edits it instead of writing from zero. The model
version is recorded on each prediction and carried into the exported record's meta.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from hil.templates import LabelingSpec
from hilt.errors import UserError


def load_prompts(path: Path, kind: str) -> list[dict]:
    """Rows with ``prompt`` (and ``system``, ``id``; ``answer1``/``answer2`` for preference).

    Raises:
        UserError: naming the file (and line) that lacks a required field.
    """
    if not path.exists():
        raise UserError(f"--prompts {path}: no such file or directory")
    if path.is_dir():
        try:
            from datasets import load_from_disk

            rows = [dict(r) for r in load_from_disk(str(path))]
        except (FileNotFoundError, ValueError) as err:
            raise UserError(f"--prompts {path}: not a saved Hugging Face dataset ({err})") from None
        where = lambda i: f"{path} row {i}"  # noqa: E731
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        where = lambda i: f"{path}:{i + 2}"  # noqa: E731  (header is line 1)
    else:
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); one JSON object per line") from None
        where = lambda i: f"{path} record {i + 1}"  # noqa: E731
    from hil.templates import REQUIRED_COLUMNS, template_xml

    template_xml(kind)  # refuses an unknown template
    required = REQUIRED_COLUMNS[kind]
    for i, row in enumerate(rows):
        missing = [key for key in required if not str(row.get(key) or "").strip()]
        if missing:
            raise UserError(f"{where(i)}: missing {', '.join(missing)}; every row needs {', '.join(required)}")
    if not rows:
        raise UserError(f"--prompts {path}: no prompts in it")
    return rows


def load_drafts(path: Path) -> dict[str, str]:
    """Drafts from JSONL rows ``{"id" or "prompt": ..., "draft": ...}``, keyed by id or prompt."""
    drafts: dict[str, str] = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        key = str(row["id"]) if "id" in row else row.get("prompt")
        if key is None or not isinstance(row.get("draft"), str):
            raise UserError(f"{path}:{line_no}: a draft row needs \"draft\" and \"id\" or \"prompt\"")
        drafts[key] = row["draft"]
    return drafts


def model_version(model_dir: Path) -> str:
    """``<dir name>@<weights sha256[:12]>``: which model wrote a draft."""
    weights = sorted(model_dir.glob("*.safetensors"))
    digest = hashlib.sha256()
    for path in weights:
        digest.update(path.read_bytes())
    return f"{model_dir.name}@{digest.hexdigest()[:12]}"


def drafts_from_model(model_dir: Path, rows: list[dict], max_new_tokens: int = 128) -> dict[str, str]:
    """Greedy drafts from a local model, keyed like ``load_drafts``."""
    from training.generation import greedy_answers

    conversations = [
        ([{"role": "system", "content": r["system"]}] if r.get("system") else [])
        + [{"role": "user", "content": r["prompt"]}]
        for r in rows
    ]
    answers = greedy_answers(model_dir, conversations, max_new_tokens=max_new_tokens)
    return {_key(r, i): a for i, (r, a) in enumerate(zip(rows, answers))}


def _key(row: dict, index: int) -> str:
    return str(row["id"]) if "id" in row and row["id"] is not None else row["prompt"]


def build_tasks(rows: list[dict], spec: LabelingSpec, drafts: dict[str, str] | None = None,
                version: str | None = None) -> list[dict]:
    """Label Studio tasks; drafts attached as predictions (sft) or as the answer to grade (rate)."""
    tasks = []
    for index, row in enumerate(rows):
        data = {"prompt": str(row["prompt"])}
        if row.get("system"):
            data["system"] = str(row["system"])
        if spec.kind == "preference":
            data["answer1"], data["answer2"] = str(row["answer1"]), str(row["answer2"])
        draft = (drafts or {}).get(_key(row, index))
        if spec.kind == "rate":  # the answer to grade: from the file, else the model's draft
            answer = str(row.get("answer") or "").strip() or draft
            if not answer:
                raise UserError(f"prompt {index + 1} ({_key(row, index)}): no answer to grade; give the prompts file "
                                "an 'answer' column or pass --drafts/--drafts-from")
            data["answer"] = answer
        if row.get("id") is not None:
            data["source_id"] = str(row["id"])
        task: dict = {"data": data}
        if draft is not None and spec.kind == "sft":
            task["predictions"] = [{
                "model_version": version or "drafts",
                "result": [{
                    "from_name": spec.answer_control or "answer",
                    "to_name": spec.prompt_object,
                    "type": "textarea",
                    "value": {"text": [draft]},
                }],
            }]
        tasks.append(task)
    return tasks
