"""The model directory's layout, named once: what every stage reads a model folder by.

A model directory is what ``save_pretrained`` writes (``config.json``, weights, tokenizer)
plus hilt's own ``hilt.json`` (provenance: recipe, data, metrics) when hilt trained it.
"""

from __future__ import annotations

import hashlib

import json
from pathlib import Path

from hilt.core.errors import UserError

CONFIG_FILE = "config.json"  # transformers' model config: present in every model directory
MANIFEST_FILE = "hilt.json"  # hilt's provenance of a model it trained
CARD_FILE = "README.md"  # the model card hilt writes and sections are added to
LOSS_PLOT_FILE = "loss_curve.png"  # the training loss, shown in the card
LOG_HISTORY_FILE = "log_history.json"  # the trainer's logged metrics, per step
ADAPTER_DIR = "adapter"  # a LoRA run's adapter, beside the merged weights


def is_model_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_manifest(model_dir: Path | str) -> dict:
    """A model directory's ``hilt.json`` (empty when hilt did not train it).

    Raises:
        UserError: a hilt.json that is not a JSON object (truncated, empty, not UTF-8, a list...).
    """
    path = Path(model_dir) / MANIFEST_FILE
    if not path.is_file():
        return {}
    return read_json_object(path, "training writes it: take the job's model/ again, or remove the file")


def read_json_object(path: Path, fix: str, flag: str = "") -> dict:
    """A JSON object hilt wrote (hilt.json, eval.json), or one line naming the file, what is wrong and ``fix``.

    Raises:
        UserError: not UTF-8, not JSON (truncated, empty, nested too deep), or not an object.
    """
    shown = f"{flag} {path}" if flag else str(path)
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise UserError(f"{shown}: not readable JSON ({type(err).__name__}); {fix}") from None
    if not isinstance(data, dict):
        raise UserError(f"{shown}: holds a {type(data).__name__}, not a JSON object; {fix}")
    return data


def require_model_dir(path: Path | str, flag: str = "", hint: str = "pass a save_pretrained model directory") -> Path:
    """``path`` when it holds a model, else one line naming the flag, the folder and the fix.

    Raises:
        UserError: no ``config.json`` in ``path``.
    """
    path = Path(path)
    if not is_model_dir(path):
        raise UserError(f"{flag + ' ' if flag else ''}{path}: no {CONFIG_FILE}; {hint}")
    return path


def write_manifest(model_dir: Path, manifest: dict) -> None:
    """hilt.json, written beside and renamed into place."""
    tmp = model_dir / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(model_dir / MANIFEST_FILE)


def upsert_section(path: Path, body: str, key: str) -> None:
    """Put ``body`` between ``<!-- hilt:key -->`` markers in a Markdown file (replace or append)."""
    start, end = f"<!-- hilt:{key} -->", f"<!-- /hilt:{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else ""
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = before + block + after
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    path.write_text(text)


def model_fingerprint(path: str | None) -> str | None:
    """Identity of a base model dir without reading gigabytes: config, file names and sizes.

    A hub id or an s3:// URI is its own identity.
    """
    if path is None or path.startswith("s3://") or not Path(path).is_dir():
        return path
    root = Path(path)
    require_model_dir(root, hint="point the model at a save_pretrained directory")
    digest = hashlib.sha256((root / CONFIG_FILE).read_bytes())
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(root).as_posix()}:{p.stat().st_size}".encode())
    return digest.hexdigest()
