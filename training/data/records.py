"""Records on disk -> checked in-memory datasets for TRL.

A channel directory holds record files: ``data.jsonl`` from ``hilt export``, or the files a
buyer brings (``*.jsonl``, or ``*.json`` arrays) in any format of ``hilt.training.data.formats``
(messages, Bedrock, ShareGPT, Alpaca, JumpStart, prompt/completion, preference), detected
per file. Every record becomes one of three kinds (``RECORD_CHECKS``; a method names the one it
trains on):

- sft: ``{"messages": [{"role": ..., "content": ...}, ...]}``
- preference: ``{"prompt": [messages], "chosen": [assistant msg], "rejected": [...]}``
- unpaired: ``{"prompt": [messages], "completion": [assistant msg], "label": bool}`` (KTO)

Each record is checked, and a bad one is a user error naming file and line. ``meta``
(Label Studio ids, annotators) stays on disk: it is provenance, not model input.
Tokenization happens later, in the trainer, with the model's chat template.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from hilt.core.errors import UserError
from hilt.training.base.methods import METHODS, methods_reading

ROLES = ("system", "user", "assistant")


def shown(path: Path) -> Path:
    """A path as the user named it: ``hilt train`` links the job's channels to ``--data``, and an error
    about a record names the user's file, not the job's link to it (in a container, the same path)."""
    return Path(os.path.realpath(path))


def channel_files(channel: Path) -> list[Path]:
    """The record files of a channel (``*.jsonl``, ``*.json`` but the JumpStart template), in a stable order."""
    from hilt.training.data.formats import TEMPLATE_FILE

    files = sorted(p for p in channel.rglob("*") if p.is_file() and (
        p.suffix == ".jsonl" or (p.suffix == ".json" and p.name != TEMPLATE_FILE)) and not p.name.startswith("."))
    if not files:
        raise UserError(f"{shown(channel)}: no *.jsonl or *.json record files; a dataset channel holds data.jsonl "
                        "from `hilt export` or records in a format `hilt inspect-data` lists")
    return files


def _check_messages(messages, where: str, field: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: '{field}' must be a non-empty list of {{role, content}} messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) - {"role", "content", "weight"} or "content" not in message:
            raise UserError(f"{where}: {field}[{i}] must be {{\"role\": ..., \"content\": ...}}")
        if message.get("role") not in ROLES:
            raise UserError(f"{where}: {field}[{i}].role is {message.get('role')!r}; use one of {', '.join(ROLES)}")
        if not isinstance(message["content"], str):
            raise UserError(f"{where}: {field}[{i}].content must be a string")


def _check_sft(record: dict, where: str) -> dict:
    if "messages" not in record:
        hint = " (this looks like a preference record: use a dpo recipe)" if "chosen" in record else ""
        raise UserError(f"{where}: SFT record has no 'messages'{hint}")
    _check_messages(record["messages"], where, "messages")
    if not any(m["role"] == "assistant" for m in record["messages"]):
        raise UserError(f"{where}: SFT record has no assistant message to learn from")
    if all(m.get("weight") == 0 for m in record["messages"] if m["role"] == "assistant"):
        raise UserError(f"{where}: every assistant message has weight 0, so there is nothing to learn; "
                        "give the answer to learn weight 1 or drop the record")
    return {"messages": record["messages"]}


def _check_preference(record: dict, where: str) -> dict:
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            hint = " (this looks like an SFT record: use an sft recipe)" if "messages" in record else ""
            raise UserError(f"{where}: preference record has no '{key}'{hint}")
        _check_messages(record[key], where, key)
    if record["chosen"] == record["rejected"]:  # DPO's loss is log 2 with zero gradient: nothing to learn
        raise UserError(f"{where}: 'chosen' and 'rejected' are the same answer, so the pair teaches nothing; "
                        "drop the record or give it the answer that lost")
    return {k: record[k] for k in ("prompt", "chosen", "rejected")}


def _check_unpaired(record: dict, where: str) -> dict:
    for key in ("prompt", "completion"):
        if key not in record:
            raise UserError(f"{where}: unpaired record has no '{key}'")
        _check_messages(record[key], where, key)
    if not isinstance(record.get("label"), bool):
        raise UserError(f"{where}: unpaired record needs 'label': true (desirable answer) or false (undesirable)")
    if record["completion"][-1]["role"] != "assistant":
        raise UserError(f"{where}: the completion must end with an assistant message")
    return {k: record[k] for k in ("prompt", "completion", "label")}


# Record kinds a dataset line can be, each with its check (hilt.training.base.methods names one per method).
RECORD_CHECKS = {"sft": _check_sft, "preference": _check_preference, "unpaired": _check_unpaired}


def record_kind_of(method_or_kind: str) -> str:
    """The record kind a method trains on (a kind passes through)."""
    if method_or_kind in RECORD_CHECKS:
        return method_or_kind
    if method_or_kind in METHODS:
        return METHODS[method_or_kind].record_kind
    raise UserError(f"'{method_or_kind}' is neither a record kind ({', '.join(RECORD_CHECKS)}) "
                    f"nor a method ({', '.join(METHODS)})")


def check_record(record: dict, kind: str, where: str) -> dict:
    """Validate one record of ``kind`` (a record kind or a method name); return it without ``meta``."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: each line must be a JSON object")
    return RECORD_CHECKS[record_kind_of(kind)](record, where)


def iter_jsonl(files: list[Path]):
    """``(object, "file:line")`` for every non-blank line of JSON Lines files (``*.json``: each array item).

    Raises:
        UserError: on a line that is not JSON, naming file and line number.
    """
    for path in files:
        if path.suffix == ".json":
            yield from _iter_json_array(path)
            continue
        with path.open("rb") as handle:
            for line_no, raw in enumerate(handle, 1):
                if not raw.strip():
                    continue
                where = f"{shown(path)}:{line_no}"
                try:
                    yield json.loads(raw.decode("utf-8")), where
                except UnicodeDecodeError as err:
                    raise UserError(f"{where}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                                    "re-save the file as UTF-8") from None
                except json.JSONDecodeError as err:
                    raise UserError(f"{where}: not valid JSON ({err.msg}); fix or remove the line") from None
                except RecursionError:
                    raise UserError(f"{where}: JSON nested too deeply to be a record; fix or remove the line") from None


def _iter_json_array(path: Path):
    path = shown(path)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 (at byte {err.start}); re-save the file as UTF-8") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); fix the file") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to hold records; fix the file") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: a .json record file must hold an array of records (or use JSON Lines, *.jsonl)")
    for index, record in enumerate(data):
        yield record, f"{path}: record {index}"


def read_channel(channel: Path, kind: str) -> tuple[list[dict], list[dict]]:
    """All checked records of a channel, each file read in the format detected for it.

    Args:
        kind: the record kind (or method) to read: a file of the other kind is refused with
            the method that reads it.

    Returns:
        (records without ``meta``, one ``{"file", "format", "records"}`` per file).

    Raises:
        UserError: on the first malformed or out-of-format line, naming file and line.
    """
    from hilt.training.data.formats import FileFormat, read_template

    kind = record_kind_of(kind)
    ctx = read_template(channel)
    records: list[dict] = []
    files = []
    for path in channel_files(channel):
        reader = FileFormat(path, ctx)
        for record, where in iter_jsonl([path]):
            fmt, converted = reader.convert(record, where)
            if fmt.kind != kind:
                wanted = " or ".join(methods_reading(fmt.kind))
                raise UserError(f"{where}: a {fmt.name} record ({fmt.looks_like}) is {fmt.kind} data; "
                                f"this recipe reads {kind} records: use a {wanted} recipe")
            records.append(check_record(converted, kind, where))
        if reader.format is not None:
            files.append({"file": str(path.relative_to(channel)), "format": reader.format.name,
                          "records": reader.records})
    if not records:
        raise UserError(f"{shown(channel)}: the dataset is empty")
    return records, files


def read_records(channel: Path, method: str) -> list[dict]:
    """All checked records of a channel, ``meta`` dropped (see ``read_channel``)."""
    return read_channel(channel, method)[0]


def load_dataset(channel: Path, method: str, split: str = "train"):
    """Records of a channel as a ``datasets.Dataset``; the formats read are logged."""
    from datasets import Dataset

    records, files = read_channel(channel, method)
    formats = ", ".join(f"{f['file']} ({f['format']}, {f['records']} records)" for f in files)
    print(f"[hilt] {split}: {formats}", flush=True)
    return Dataset.from_list(records)


def dataset_fingerprint(channel: Path) -> dict:
    """Provenance for hilt.json: file hashes, record count, and the export manifest's hash if any."""
    files = channel_files(channel)
    digest = hashlib.sha256()
    records = 0
    for path in files:
        data = path.read_bytes()
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(data).digest())
        records += sum(1 for line in data.splitlines() if line.strip())
    info = {"files": [str(p.relative_to(channel)) for p in files], "sha256": digest.hexdigest(), "records": records}
    # The export's manifest sits beside train/ (locally the channel is a link to it).
    for manifest in (channel / "manifest.json", channel.resolve().parent / "manifest.json"):
        if manifest.is_file():
            try:
                info["manifest_sha256"] = json.loads(manifest.read_text()).get("dataset_sha256")
            except json.JSONDecodeError:
                pass
            break
    return info
