"""Write an export as a dataset directory in the SageMaker channel layout, atomically.

    DIR/train/data.jsonl  DIR/validation/data.jsonl  DIR/rejects.jsonl
    DIR/manifest.json     DIR/README.md (dataset card)

Files are byte-identical for the same annotations (sorted keys, no wall-clock times),
the manifest holds each file's sha256 and one ``dataset_sha256`` over the record files,
and the directory appears whole or not at all: it is written beside the target and
renamed into place. ``--since-last`` exports go to numbered versions ``DIR/v0001``,
``DIR/v0002``... whose manifests list the annotation ids they cover, so the next export
knows what is already out, across runs and server restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hil.export import ExportOptions, ExportResult
from hilt.errors import UserError

FORMAT = "hilt-dataset/1"
SPLITS = ("train", "validation")


_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True)


def _jsonl(rows: list[dict]) -> bytes:
    encode = _ENCODER.encode
    return "".join(encode(r) + "\n" for r in rows).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_card(manifest: dict) -> str:
    c = manifest["counts"]
    reasons = "\n".join(f"| {k} | {v} |" for k, v in c["rejects"]["by_reason"].items()) or "| (none) | 0 |"
    q = manifest["quality"]
    annotators = "\n".join(
        f"| {who} | {v['annotations']} | {v['median_lead_time_s']} |" for who, v in q.get("annotators", {}).items()
    ) or "| (none) | 0 | - |"
    kind = manifest["template"]
    fmt = ('`{"messages": [system?, user, assistant], "meta": {...}}`' if kind == "sft"
           else '`{"prompt": [...], "chosen": [assistant], "rejected": [assistant], "meta": {...}}`')
    agreement = ", ".join(
        f"{k} {q[k]}" for k in ("percent_agreement", "fleiss_kappa", "gold_accuracy") if q.get(k) is not None
    ) or "n/a (no task has two annotations or a gold answer)"
    pii = manifest.get("pii") or {}
    return f"""# Dataset card

Exported from Label Studio by `hilt export` ({kind} template; source: {manifest['source'].get('type')}).
Records are in TRL's conversational format: {fmt}; `meta` carries the Label Studio task
id, annotation id(s), annotator(s) and timestamps.

| split | records | file |
| --- | --- | --- |
| train | {c['records']['train']} | `train/data.jsonl` |
| validation | {c['records']['validation']} | `validation/data.jsonl` |

Dataset sha256: `{manifest['dataset_sha256']}`. Validation split: tasks whose id hashes
below {manifest['options']['validation_fraction']} (a task never changes split).

## Every annotation is accounted for

{c['annotations']} annotations on {c['tasks']} tasks: {c['annotations_in_records']} in records,
{c['rejects']['total']} rejected (each in `rejects.jsonl` with its reason).

| reject reason | annotations |
| --- | --- |
{reasons}

## Quality

Agreement: {agreement}. Duplicate rate: {q.get('duplicate_rate')}.
{"PII scrubbed: " + ", ".join(f"{v} {k}" for k, v in pii.items()) + "." if manifest['options']['scrub_pii'] else "PII scrub: off."}

| annotator | annotations | median lead time (s) |
| --- | --- | --- |
{annotators}

## Train on it

```bash
hilt train quickstart-tiny-sft --data THIS_DIR --model MODEL_DIR --output runs/x
```
"""


def build_files(result: ExportResult, source: dict, options: ExportOptions) -> tuple[dict[str, bytes], dict]:
    """The dataset's files (relative path -> bytes) and its manifest."""
    files = {f"{split}/data.jsonl": _jsonl(result.records[split]) for split in SPLITS}
    files["rejects.jsonl"] = _jsonl(result.rejects)
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(hashlib.sha256(files[f"{split}/data.jsonl"]).digest())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "template": result.kind,
        "source": source,
        "options": {"policy": options.policy, "validation_fraction": options.validation_fraction,
                    "max_chars": options.max_chars, "scrub_pii": options.scrub_pii},
        "counts": result.counts,
        "quality": result.quality,
        "pii": result.pii,
        "dataset_sha256": digest.hexdigest(),
        "annotation_ids": result.annotation_ids,
    }
    files["README.md"] = dataset_card(manifest).encode("utf-8")
    manifest["files"] = {path: _sha256(data) for path, data in sorted(files.items())}
    return files, manifest


def write_dataset(out: Path, files: dict[str, bytes], manifest: dict) -> Path:
    """Write the files and manifest to ``out`` atomically (replacing an older export)."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for rel, data in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def exported_annotation_ids(root: Path) -> set[int]:
    """Annotation ids covered by the versions already under ``root`` (``--since-last``)."""
    ids: set[int] = set()
    for manifest in sorted(root.glob("v[0-9][0-9][0-9][0-9]/manifest.json")):
        ids.update(json.loads(manifest.read_text()).get("annotation_ids", []))
    return ids


def next_version_dir(root: Path) -> Path:
    versions = sorted(int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())
    return root / f"v{(versions[-1] + 1 if versions else 1):04d}"


def read_export_source(project: int | None, from_file: Path | None, template: str | None,
                       label_config: Path | None = None) -> tuple[list[dict], Any, dict, str]:
    """What to export: (tasks, spec, source for the manifest, a name for messages).

    From a Label Studio JSON export file (``template`` required, ``label_config`` to check
    controls against) or a live project (its config read from the server, ``template``
    checked against it).

    Raises:
        UserError: a missing or malformed file, a missing template, a template mismatch.
    """
    from hil.templates import default_spec, parse_label_config

    if from_file is not None:
        if not template:
            raise UserError("--from-file needs --template sft|preference (the export file has no labeling config)")
        try:
            raw = from_file.read_bytes()
            tasks = json.loads(raw)
        except FileNotFoundError:
            raise UserError(f"--from-file {from_file}: no such file") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{from_file}: not valid JSON ({err.msg} at line {err.lineno}); "
                            "pass Label Studio's JSON export (Export > JSON)") from None
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            raise UserError(f"{from_file}: expected Label Studio's JSON export, a list of tasks")
        spec = default_spec(template)
        if label_config:
            spec = parse_label_config(label_config.read_text(), where=str(label_config))
        source = {"type": "file", "name": from_file.name, "sha256": hashlib.sha256(raw).hexdigest()}
        return tasks, spec, source, str(from_file)
    from hil.client import connect

    client = connect()
    spec = parse_label_config(client.label_config(project), where=f"project {project}")
    if template and template != spec.kind:
        raise UserError(f"project {project} is a {spec.kind} project, not {template}; "
                        f"use --template {spec.kind} or leave it out")
    tasks = client.export_tasks(project)
    return tasks, spec, {"type": "project", "project_id": project, "url": client.url}, f"project {project}"


def export_to_dataset(tasks: list[dict], spec, options: ExportOptions, source: dict, out: Path,
                      since_last: bool = False) -> tuple[Path | None, dict | None]:
    """Export tasks to ``out`` (or to its next version with ``since_last``).

    Returns:
        (dataset dir, manifest), or (None, None) when ``since_last`` finds nothing new.
    """
    from hil.export import export_annotations

    skip = exported_annotation_ids(out) if since_last else set()
    result = export_annotations(tasks, spec, options, skip_annotation_ids=skip)
    if since_last and result.counts["annotations"] == 0:
        return None, None
    files, manifest = build_files(result, source, options)
    target = next_version_dir(out) if since_last else out
    return write_dataset(target, files, manifest), manifest
