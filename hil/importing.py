"""Prompts (JSONL, CSV or a saved HF dataset) -> Label Studio tasks, with model drafts.

Drafts (from files, or written by local models) become Label Studio *predictions* for the
sft and chat templates: the annotator opens a task with the model's answer already in the
answer box and edits it instead of writing from zero; the model version is recorded on each
prediction and carried into the exported record's meta. For rate a draft is the answer to
grade; for rank every draft source adds one answer to rank beside the file's own.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

from hilt.labeling.templates import LabelingSpec, template
from hilt.core.errors import UserError
from hilt.core.outputs import read_text_file


def load_prompts(path: Path, kind: str) -> list[dict]:
    """The rows of a prompts file, each with what its template needs (``Template.columns``):
    ``prompt`` (and ``system``, ``id``); ``answer1``/``answer2`` for preference, ``answer`` for rate;
    chat: ``messages`` (or ShareGPT ``conversations``) ending with a user turn; rank: ``answers``
    (a list, or ``answer1``, ``answer2``... columns) as ``[{"text", "source"}]``.

    Raises:
        UserError: naming the file (and line) that is unreadable or lacks a required field.
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
        rows = list(csv.DictReader(io.StringIO(read_text_file(path, "--prompts"), newline="")))
        where = lambda i: f"{path}:{i + 2}"  # noqa: E731  (header is line 1)
    else:
        rows = [row for _, row in _jsonl(path, "--prompts")]
        where = lambda i: f"{path} record {i + 1}"  # noqa: E731
    spec = template(kind)  # refuses an unknown template
    rows = [spec.read_row(_as_is(row, where(i)), where(i)) for i, row in enumerate(rows)]
    for i, row in enumerate(rows):
        missing = [key for key in spec.columns if not str(row.get(key) or "").strip()]
        if missing:
            raise UserError(f"{where(i)}: missing {', '.join(missing)}; every row needs {', '.join(spec.columns)}")
    if not rows:
        raise UserError(f"--prompts {path}: no prompts in it")
    return rows


def _as_is(row: dict, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: a {type(row).__name__}, not an object; one JSON object per line")
    return row


def chat_row(row: dict, where: str) -> dict:
    """A chat row's conversation as ``messages`` (from ``messages`` or ShareGPT ``conversations``),
    checked: text turns of system/user/assistant, ending with the user turn to answer."""
    from hilt.training.data.formats import conversation

    messages = conversation(_as_is(row, where), where)
    if messages is None:
        raise UserError(f"{where}: no 'messages' (or ShareGPT 'conversations'); the chat template needs the "
                        "conversation so far")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str) \
                or not m["content"].strip():
            raise UserError(f"{where}: messages[{i}] must be {{\"role\": system|user|assistant, \"content\": "
                            "non-empty text}")
    if not messages or messages[-1]["role"] != "user":
        last = messages[-1]["role"] if messages else "empty"
        raise UserError(f"{where}: the conversation ends with a {last} turn; the annotator writes the assistant's "
                        "next turn, so end it with the user turn to answer")
    rest = {k: v for k, v in row.items() if k not in ("messages", "conversations")}
    return {**rest, "messages": [{"role": m["role"], "content": m["content"]} for m in messages]}


def rank_row(row: dict, where: str) -> dict:
    """A rank row's answers as ``[{"text", "source"}]``: from an ``answers`` list (strings, or objects
    with ``text``/``body`` and an optional ``source``) or from ``answer1``, ``answer2``... columns."""
    row = _as_is(row, where)
    numbered = sorted((int(k[6:]), k) for k in row if k.startswith("answer") and k[6:].isdigit())
    given = row.get("answers")
    if given is None:
        given = [row[k] for _, k in numbered if str(row[k] or "").strip()]
    if isinstance(given, str) or not isinstance(given, list):
        raise UserError(f"{where}: 'answers' must be a list of answers (strings or {{\"text\", \"source\"}})")
    answers = []
    for i, answer in enumerate(given):
        text, source = (answer, "file") if isinstance(answer, str) else (
            (answer.get("text") or answer.get("body"), str(answer.get("source") or "file"))
            if isinstance(answer, dict) else (None, None))
        if not isinstance(text, str):
            raise UserError(f"{where}: answers[{i}] is not text; give a string or {{\"text\": ..., \"source\": ...}}")
        if text.strip():
            answers.append({"text": text, "source": source})
    rest = {k: v for k, v in row.items() if k != "answers" and k not in dict(numbered).values()}
    return {**rest, "answers": answers}


def review_row(row: dict, where: str) -> dict:
    """A review row: the conversation (as for chat) and the deployed model's ``answer`` to it."""
    row = chat_row(row, where)
    if not isinstance(row.get("answer"), str):
        raise UserError(f"{where}: no 'answer' (the model's answer to review); give it as text")
    return row


CHAT_ROLES = ("system", "user", "assistant")


def _jsonl(path: Path, flag: str) -> list[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSONL file, or one line saying what is wrong."""
    rows = []
    for line_no, line in enumerate(read_text_file(path, flag).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((line_no, json.loads(line)))
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{line_no}: not valid JSON ({err.msg}); one JSON object per line") from None
    return rows


def load_drafts(path: Path) -> dict[str, str]:
    """Drafts from JSONL rows ``{"id" or "prompt": ..., "draft": ...}``, keyed by id or prompt."""
    drafts: dict[str, str] = {}
    for line_no, row in _jsonl(path, "--drafts"):
        key = (str(row["id"]) if "id" in row else row.get("prompt")) if isinstance(row, dict) else None
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


def conversation_of(row: dict) -> list[dict]:
    """The messages a model answers for a prompts row: the chat conversation, else system? + prompt."""
    if "messages" in row:
        return row["messages"]
    return ([{"role": "system", "content": row["system"]}] if row.get("system") else []) + [
        {"role": "user", "content": row["prompt"]}]


def drafts_from_model(model_dir: Path, rows: list[dict], max_new_tokens: int = 128) -> dict[str, str]:
    """Greedy drafts from a local model, keyed like ``load_drafts``."""
    from hilt.training.evaluation.generation import greedy_answers

    answers = greedy_answers(model_dir, [conversation_of(r) for r in rows], max_new_tokens=max_new_tokens)
    return {_key(r, i): a for i, (r, a) in enumerate(zip(rows, answers))}


def _key(row: dict, index: int) -> str:
    """How a draft finds its row: the id, else the prompt (chat: the last user turn)."""
    if row.get("id") is not None:
        return str(row["id"])
    return row["prompt"] if "prompt" in row else row["messages"][-1]["content"]


# Drafts: (version, {row key: text}) per source, a file (``file:NAME``) or a model (``NAME@sha``).
Drafts = list[tuple[str, dict[str, str]]]


def _rank_answers(row: dict, index: int, drafts: Drafts) -> tuple[list[dict], dict[str, str]]:
    """The List items of a rank task (shown in an order drawn from the row's key, so position says
    nothing of the source) and which source wrote each."""
    answers = [*row.get("answers", []),
               *({"text": d[_key(row, index)], "source": version} for version, d in drafts if _key(row, index) in d)]
    unique: dict[str, dict] = {}
    for answer in answers:
        if "\x00" in answer["text"]:  # a random model's bytes: the export would reject every ranking of it
            print(f"[hilt] prompt {index + 1} ({_key(row, index)}): the answer from {answer['source']} holds NUL "
                  "(\\x00) characters; left out", file=sys.stderr)
        elif answer["text"].strip():
            unique.setdefault(" ".join(answer["text"].split()).casefold(), answer)
    if len(unique) < 2:
        raise UserError(f"prompt {index + 1} ({_key(row, index)}): {len(unique)} distinct answer(s) to rank; give "
                        "2 or more (an 'answers' list, answer1/answer2... columns, --drafts or --drafts-from)")
    order = sorted(unique.values(), key=lambda a: hashlib.sha256(f"{_key(row, index)}\0{a['text']}".encode()).digest())
    items = [{"id": str(i + 1), "title": f"Answer {i + 1}", "body": a["text"]} for i, a in enumerate(order)]
    return items, {item["id"]: a["source"] for item, a in zip(items, order)}


def build_tasks(rows: list[dict], spec: LabelingSpec, drafts: Drafts = ()) -> list[dict]:
    """Label Studio tasks, one per row, each built by its template's ``task_builder``: drafts attached
    as predictions (sft, chat), as the answer to grade (rate), or as answers to rank beside the file's
    (rank)."""
    kind = template(spec.kind)
    return [kind.build_task(row, _key(row, index), index, spec, drafts) for index, row in enumerate(rows)]


def _first_draft(key: str, drafts: Drafts) -> tuple[str, str] | None:
    """(version, text) of the first draft source that has one for the row ``key``."""
    return next(((version, d[key]) for version, d in drafts if key in d), None)


def _task(row: dict, data: dict, prediction: dict | None = None) -> dict:
    """A task of ``data`` (plus the row's id as ``source_id``), with a draft as its prediction."""
    if row.get("id") is not None:
        data["source_id"] = str(row["id"])
    return {"data": data, "predictions": [prediction]} if prediction else {"data": data}


def _prompt_data(row: dict, spec: LabelingSpec) -> dict:
    """What every task shows: the prompt (and system), or (a conversation template) the messages."""
    if template(spec.kind).conversation:
        return {spec.prompt_key: row["messages"]}
    data = {"prompt": str(row["prompt"])}
    if row.get("system"):
        data["system"] = str(row["system"])
    return data


def _prediction(draft: tuple[str, str], control: str | None, target: str) -> dict:
    """A model draft as the text in the TextArea ``control`` (on ``target``) when the task opens."""
    return {"model_version": draft[0], "result": [{
        "from_name": control or "answer", "to_name": target, "type": "textarea", "value": {"text": [draft[1]]}}]}


def draft_task(row: dict, key: str, index: int, spec: LabelingSpec, drafts: Drafts) -> dict:
    """sft, chat: the prompt, and the first draft in the answer box to edit."""
    first = _first_draft(key, drafts)
    return _task(row, _prompt_data(row, spec), _prediction(first, spec.answer_control, spec.prompt_object)
                 if first else None)


def pair_task(row: dict, key: str, index: int, spec: LabelingSpec, drafts: Drafts) -> dict:
    """preference: the prompt and the two answers to choose between."""
    return _task(row, {**_prompt_data(row, spec), "answer1": str(row["answer1"]), "answer2": str(row["answer2"])})


def graded_task(row: dict, key: str, index: int, spec: LabelingSpec, drafts: Drafts) -> dict:
    """rate: the prompt and the answer to grade: from the file, else the model's draft."""
    first = _first_draft(key, drafts)
    answer = str(row.get("answer") or "").strip() or (first[1] if first else None)
    if not answer:
        raise UserError(f"prompt {index + 1} ({key}): no answer to grade; give the prompts file "
                        "an 'answer' column or pass --drafts/--drafts-from")
    return _task(row, {**_prompt_data(row, spec), "answer": answer})


def rank_task(row: dict, key: str, index: int, spec: LabelingSpec, drafts: Drafts) -> dict:
    """rank: the prompt and the answers to rank (the file's and every draft source's)."""
    data = _prompt_data(row, spec)
    data[spec.answers_key], data["answer_sources"] = _rank_answers(row, index, drafts)
    return _task(row, data)


def review_task(row: dict, key: str, index: int, spec: LabelingSpec, drafts: Drafts) -> dict:
    """review: the conversation, the deployed model's answer (where it came from travels with it), and
    the answer again in the correction box."""
    data = {**_prompt_data(row, spec), spec.answer_key: row["answer"],
            "flags": str(row.get("flags") or "picked at random")}
    data.update({k: str(row[k]) for k in ("event_id", "inference_time") if row.get(k)})
    draft = (str(row.get("model_version") or "captured"), row["answer"])
    return _task(row, data, _prediction(draft, spec.correction_control, spec.answer_object))
