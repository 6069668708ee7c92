"""The dataset formats buyers bring, detected per file and read into hilt's record kinds (SFT, preference, KTO).

A channel may hold any of these, one format per file (``*.jsonl``, or ``*.json`` holding
an array of records):

========================  ===============================================================
format                    what a record looks like
========================  ===============================================================
messages                  TRL / OpenAI chat: ``{"messages": [{"role", "content"}...]}``;
                          extra keys (``meta``, ``weight``...) are allowed; an assistant
                          message with ``"weight": 0`` is context, not trained on
bedrock-conversation      Bedrock: ``{"schemaVersion": "bedrock-conversation-2024",
                          "system": [{"text"}], "messages": [{"role", "content": [{"text"}]}]}``
sharegpt                  ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}]}``
alpaca                    ``{"instruction", "input", "output"}`` (``input`` may be empty)
jumpstart                 ``{"instruction", "context", "response"}``; with a
                          ``template.json`` (``{"prompt": "...{instruction}...",
                          "completion": "{response}"}``) in the channel, any keys it names
prompt-completion         Bedrock / OpenAI legacy: ``{"prompt": "...", "completion": "..."}``
preference                ``{"prompt", "chosen", "rejected"}``: strings or message lists,
                          or ``chosen``/``rejected`` whole conversations (implicit prompt)
unpaired                  KTO: ``{"prompt", "completion", "label": true|false}``, strings or
                          message lists
========================  ===============================================================

Every format but ``preference`` and ``unpaired`` becomes an SFT record ``{"messages": [...]}``;
preference records become ``{"prompt": [...], "chosen": [...], "rejected": [...]}``, unpaired
ones ``{"prompt": [...], "completion": [...], "label": bool}``. A line that fits
none, or a file that mixes formats, is a user error naming file and line and listing the
formats accepted.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hilt.core.errors import UserError

TEMPLATE_FILE = "template.json"
# Roles other tools write, as the three roles chat templates know.
_ROLE_ALIASES = {"system": "system", "developer": "system", "user": "user", "human": "user",
                 "assistant": "assistant", "gpt": "assistant", "model": "assistant", "chatgpt": "assistant",
                 "bot": "assistant"}


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _text_of(content: Any, where: str, field: str) -> Any:
    """Message content as one string: OpenAI parts (``{"type": "text", "text"}``) and Bedrock
    blocks (``{"text"}``) are joined; anything else is left for the record check to refuse."""
    if isinstance(content, list) and content and all(isinstance(p, dict) and _is_text(p.get("text")) for p in content):
        if any(p.get("type", "text") != "text" for p in content):
            raise UserError(f"{where}: {field} has non-text parts ({sorted({p.get('type') for p in content})}); "
                            "hilt trains on text: keep only the text parts")
        return "".join(p["text"] for p in content)
    return content


def _message(message: Any, where: str, field: str) -> Any:
    if not isinstance(message, dict):
        return message
    out = {"role": _ROLE_ALIASES.get(message.get("role"), message.get("role")),
           "content": _text_of(message.get("content"), where, f"{field}.content")}
    if "content" not in message:
        out.pop("content")
    if message.get("weight") in (0, 0.0) and out["role"] == "assistant":
        out["weight"] = 0  # OpenAI's per-message weight: context only, no loss
    return out


def _messages(value: Any, where: str, field: str) -> Any:
    if not isinstance(value, list):
        return value
    return [_message(m, where, f"{field}[{i}]") for i, m in enumerate(value)]


def _turns(user: str, answer: str, system: Any = None) -> dict:
    messages = [{"role": "system", "content": system}] if _is_text(system) and system.strip() else []
    return {"messages": [*messages, {"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


# ------------------------------------------------------------------ one function pair per format


def _is_messages(r: dict) -> bool:
    return isinstance(r.get("messages"), list) and "schemaVersion" not in r and not _bedrock_blocks(r)


def _from_messages(r: dict, where: str, ctx: dict) -> dict:
    return {"messages": _messages(r["messages"], where, "messages")}


def _bedrock_blocks(r: dict) -> bool:
    messages = r.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and isinstance(m.get("content"), list) and m["content"]
        and all(isinstance(b, dict) and set(b) == {"text"} for b in m["content"]) for m in messages)


def _is_bedrock_conversation(r: dict) -> bool:
    return isinstance(r.get("messages"), list) and (
        str(r.get("schemaVersion", "")).startswith("bedrock-conversation") or _bedrock_blocks(r))


def _from_bedrock_conversation(r: dict, where: str, ctx: dict) -> dict:
    system = r.get("system")
    if isinstance(system, list):
        system = _text_of(system, where, "system") if system else None
    head = [{"role": "system", "content": system}] if system is not None else []
    return {"messages": head + _messages(r["messages"], where, "messages")}


def _is_sharegpt(r: dict) -> bool:
    return isinstance(r.get("conversations"), list)


def _from_sharegpt(r: dict, where: str, ctx: dict) -> dict:
    messages = []
    for i, turn in enumerate(r["conversations"]):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise UserError(f"{where}: conversations[{i}] must be {{\"from\": ..., \"value\": ...}}")
        role = _ROLE_ALIASES.get(turn["from"])
        if role is None:
            raise UserError(f"{where}: conversations[{i}].from is {turn['from']!r}; use one of "
                            f"{', '.join(sorted(_ROLE_ALIASES))}")
        messages.append({"role": role, "content": turn["value"]})
    return {"messages": messages}


def conversation(row: dict, where: str) -> list | None:
    """A row's conversation as ``[{"role", "content"}]``: from OpenAI/Bedrock ``messages`` or ShareGPT
    ``conversations``, roles and content parts read as training reads them; None when it has neither.
    The caller checks the turns (roles, text, which comes last)."""
    if _is_sharegpt(row):
        return _from_sharegpt(row, where, {})["messages"]
    if _is_bedrock_conversation(row):
        return _from_bedrock_conversation(row, where, {})["messages"]
    if isinstance(row.get("messages"), list):
        return _from_messages(row, where, {})["messages"]
    return None


def _is_alpaca(r: dict) -> bool:
    return "instruction" in r and "output" in r


def _instruction(r: dict, where: str, extra_key: str, answer_key: str) -> dict:
    """Alpaca and JumpStart without a template: the instruction, a blank line and the optional
    extra text (``input`` / ``context``) as the user turn; the answer as the assistant turn."""
    for key in ("instruction", answer_key):
        if not _is_text(r[key]):
            raise UserError(f"{where}: '{key}' must be a string")
    extra = r.get(extra_key) or ""
    if not _is_text(extra):
        raise UserError(f"{where}: '{extra_key}' must be a string")
    return _turns(r["instruction"] + (f"\n\n{extra}" if extra.strip() else ""), r[answer_key], r.get("system"))


def _from_alpaca(r: dict, where: str, ctx: dict) -> dict:
    return _instruction(r, where, "input", "output")


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _is_jumpstart(r: dict, ctx: dict) -> bool:
    template = ctx.get("template")
    if template is not None:
        return _placeholders(template["prompt"] + template["completion"]) <= set(r)
    return "instruction" in r and "response" in r


def _from_jumpstart(r: dict, where: str, ctx: dict) -> dict:
    template = ctx.get("template")
    if template is None:
        return _instruction(r, where, "context", "response")
    values = {k: ("" if v is None else v) for k, v in r.items()}
    try:
        return _turns(template["prompt"].format(**values), template["completion"].format(**values))
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"{where}: {ctx['template_file']} cannot be filled from this record ({err}); "
                        "every {placeholder} must be a key of the record") from None


def _is_prompt_completion(r: dict) -> bool:
    return "prompt" in r and "completion" in r and "chosen" not in r and "label" not in r


def _from_prompt_completion(r: dict, where: str, ctx: dict) -> dict:
    prompt, completion = r["prompt"], r["completion"]
    if isinstance(prompt, list) and isinstance(completion, list):  # TRL's conversational prompt-completion
        return {"messages": _messages(prompt, where, "prompt") + _messages(completion, where, "completion")}
    for key, value in (("prompt", prompt), ("completion", completion)):
        if not _is_text(value):
            raise UserError(f"{where}: '{key}' must be a string (or both prompt and completion message lists)")
    return _turns(prompt, completion.removeprefix(" ") if prompt.endswith((" ", "\n")) else completion)


def _is_unpaired(r: dict) -> bool:
    return "prompt" in r and "completion" in r and "label" in r


def _as_messages(value: Any, role: str, where: str, field: str) -> Any:
    """A string as one message of ``role``; a list of messages read as messages."""
    return [{"role": role, "content": value}] if _is_text(value) else _messages(value, where, field)


def _from_unpaired(r: dict, where: str, ctx: dict) -> dict:
    return {"prompt": _as_messages(r["prompt"], "user", where, "prompt"),
            "completion": _as_messages(r["completion"], "assistant", where, "completion"), "label": r["label"]}


def _is_preference(r: dict) -> bool:
    return "chosen" in r and "rejected" in r


def _common_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) - 1 and a[n] == b[n]:
        n += 1
    return n


def _from_preference(r: dict, where: str, ctx: dict) -> dict:
    chosen, rejected, prompt = r["chosen"], r["rejected"], r.get("prompt")
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
        chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        cut = _common_prefix(chosen, rejected)  # implicit prompt: the turns both conversations share
        return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}
    return {"prompt": _as_messages(prompt, "user", where, "prompt"),
            "chosen": _as_messages(chosen, "assistant", where, "chosen"),
            "rejected": _as_messages(rejected, "assistant", where, "rejected")}


@dataclass(frozen=True)
class RecordFormat:
    """A dataset format: which kind of record it holds, how to spot it, how to read it."""

    name: str
    kind: str  # "sft", "preference" or "unpaired": a key of hilt.training.data.records.RECORD_CHECKS
    looks_like: str  # for error messages and the Algorithm's channel descriptions
    matches: Callable[[dict, dict], bool]
    convert: Callable[[dict, str, dict], dict]


# Most specific first: the first format a record matches is the file's format.
FORMATS: tuple[RecordFormat, ...] = (
    RecordFormat("preference", "preference", "prompt/chosen/rejected", lambda r, c: _is_preference(r),
                 _from_preference),
    RecordFormat("unpaired", "unpaired", "prompt/completion/label", lambda r, c: _is_unpaired(r), _from_unpaired),
    RecordFormat("bedrock-conversation", "sft", "schemaVersion/system/messages[content:[{text}]]",
                 lambda r, c: _is_bedrock_conversation(r), _from_bedrock_conversation),
    RecordFormat("messages", "sft", "messages[{role, content}]", lambda r, c: _is_messages(r), _from_messages),
    RecordFormat("sharegpt", "sft", "conversations[{from, value}]", lambda r, c: _is_sharegpt(r), _from_sharegpt),
    RecordFormat("jumpstart", "sft", "instruction/context/response (+ template.json)", _is_jumpstart,
                 _from_jumpstart),
    RecordFormat("alpaca", "sft", "instruction/input/output", lambda r, c: _is_alpaca(r), _from_alpaca),
    RecordFormat("prompt-completion", "sft", "prompt/completion", lambda r, c: _is_prompt_completion(r),
                 _from_prompt_completion),
)


def accepted_formats(kind: str | None = None) -> str:
    """``name (keys), ...`` of the formats of a record kind (all when ``kind`` is None)."""
    return ", ".join(f"{f.name} ({f.looks_like})" for f in FORMATS if kind in (None, f.kind))


def read_template(channel: Path) -> dict:
    """The channel's JumpStart ``template.json`` as format context (empty without one).

    Raises:
        UserError: when the file is not an object of string ``prompt`` and ``completion``.
    """
    path = channel / TEMPLATE_FILE
    if not path.is_file():
        return {}
    try:
        template = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not UTF-8 JSON ({err}); write {{\"prompt\": \"...\", \"completion\": \"...\"}}"
                        ) from None
    if not (isinstance(template, dict) and _is_text(template.get("prompt")) and _is_text(template.get("completion"))):
        raise UserError(f"{path}: needs string 'prompt' and 'completion' templates, e.g. "
                        '{"prompt": "{instruction}\\n\\n{context}", "completion": "{response}"}')
    return {"template": template, "template_file": str(path)}


def detect_format(record: Any, where: str, ctx: dict) -> RecordFormat:
    """The format ``record`` is in.

    Raises:
        UserError: naming the line, its keys and the formats accepted.
    """
    if not isinstance(record, dict):
        raise UserError(f"{where}: each record must be a JSON object; accepted formats: {accepted_formats()}")
    for fmt in FORMATS:
        if fmt.matches(record, ctx):
            return fmt
    keys = ", ".join(sorted(record)[:8]) or "none"
    raise UserError(f"{where}: not a dataset format hilt reads (keys: {keys}); accepted formats: {accepted_formats()}")


class FileFormat:
    """Reads one file's records: the first record fixes the format, every later one must share it."""

    def __init__(self, path: Path, ctx: dict) -> None:
        self.path, self.ctx = path, ctx
        self.format: RecordFormat | None = None
        self.first_where = ""
        self.records = 0

    def convert(self, record: Any, where: str) -> tuple[RecordFormat, dict]:
        if self.format is None:
            self.format, self.first_where = detect_format(record, where, self.ctx), where
        elif not (isinstance(record, dict) and self.format.matches(record, self.ctx)):
            other = detect_format(record, where, self.ctx)  # raises when it is no format at all
            raise UserError(f"{where}: a {other.name} record in a file of {self.format.name} records (from "
                            f"{self.first_where}); keep one format per file: {accepted_formats()}")
        self.records += 1
        return self.format, self.format.convert(record, where, self.ctx)
