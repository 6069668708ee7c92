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

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from hilt.labeling.export import ExportOptions, ExportResult
from hilt.labeling.templates import TEMPLATES
from hilt.core.errors import UserError
from hilt.core.outputs import MARKER, check_output_dir, make_staging_dir, os_error_message, read_text_file, replace_dir

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
    fmt = TEMPLATES[kind].record_format
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
hilt train {TEMPLATES[kind].train_recipe} --data THIS_DIR --model MODEL_DIR --output runs/x
```
"""


def build_files(result: ExportResult, source: dict, options: ExportOptions) -> tuple[dict[str, bytes], dict]:
    """The dataset's files (relative path -> bytes) and its manifest."""
    files = {f"{split}/data.jsonl": _jsonl(result.records[split]) for split in SPLITS}
    for name, sets in result.extra.items():  # e.g. corrections/sft/train/data.jsonl (a dataset of its own)
        if any(sets.values()):
            files.update({f"{name}/{split}/data.jsonl": _jsonl(sets[split]) for split in SPLITS})
    files["rejects.jsonl"] = _jsonl(result.rejects)
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(hashlib.sha256(files[f"{split}/data.jsonl"]).digest())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "template": result.kind,
        "source": source,
        "options": dataclasses.asdict(options),  # every option, since each can change the records
        "counts": result.counts,
        "extra_records": {name: {split: len(sets[split]) for split in SPLITS} for name, sets in result.extra.items()
                          if any(sets.values())},
        "quality": result.quality,
        "pii": result.pii,
        "dataset_sha256": digest.hexdigest(),
        "annotation_ids": result.annotation_ids,
        "annotation_versions": result.annotation_versions,
    }
    files["README.md"] = dataset_card(manifest).encode("utf-8")
    manifest["files"] = {path: _sha256(data) for path, data in sorted(files.items())}
    return files, manifest


def is_dataset_dir(folder: Path) -> bool:
    """Whether ``folder`` is a dataset ``hilt export`` wrote (its manifest names the format)."""
    try:
        return json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _files_not_in_dataset(folder: Path) -> list[str]:
    """Files under a dataset dir that its manifest does not list (someone else's: never deleted)."""
    listed = set(json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("files", {}))
    listed |= {"manifest.json", MARKER}
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if (p.is_file() or p.is_symlink()) and p.relative_to(folder).as_posix() not in listed)


def check_dataset_target(out: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that replacing would cost the user files.

    Allowed: a new or empty folder, or a dataset an earlier ``hilt export`` wrote that holds
    only the files its manifest lists (replaced atomically).

    Raises:
        UserError: naming the folder, what is in the way, and the fix.
    """
    check_output_dir(out, "dataset", flag, recognise=is_dataset_dir,
                     hint="the folder of an earlier `hilt export`")
    if is_dataset_dir(out):
        extra = _files_not_in_dataset(out)
        if extra:
            shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
            raise UserError(f"{flag} {out} is an earlier export, but also holds files it did not write ({shown}); "
                            "move them out of it, or export to a new folder (nothing was changed)")


def check_versions_root(root: Path, flag: str = "--out") -> None:
    """``--since-last`` only adds ``vNNNN`` folders under ``root``; a file there is refused."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{flag} {root} is a file, not a folder; pass the folder that holds (or will hold) "
                        "the versions v0001, v0002... (nothing was changed)")


def write_dataset(out: Path, files: dict[str, bytes], manifest: dict) -> Path:
    """Write the files and manifest to ``out`` atomically (replacing an older export).

    Raises:
        UserError: when ``out`` holds anything but an earlier export, or on a full disk or a
            folder that cannot be written; nothing half-written is left behind.
    """
    check_dataset_target(out)
    out = out.resolve()
    staging = None
    try:
        staging = make_staging_dir(out)
        for rel, data in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out.is_dir() and not is_dataset_dir(out):
            # An empty folder (perhaps the working directory): fill it instead of renaming it away.
            for entry in sorted(staging.iterdir(), key=lambda p: p.name == "manifest.json"):
                entry.replace(out / entry.name)
            staging.rmdir()
        else:
            replace_dir(staging, out)
    except OSError as err:
        raise UserError(os_error_message(err, out)) from None
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out


def check_same_record_kind(root: Path, template: str) -> None:
    """A folder of versions is one dataset: a version of another record kind (preference pairs beside
    SFT records) would be refused by training later, so it is refused now. Versions of several
    projects of one kind (an sft project and the review project of its deployed model) are fine."""
    kind = TEMPLATES[template].record_kind
    for manifest_file in sorted(root.glob("v[0-9][0-9][0-9][0-9]/manifest.json")):
        other = json.loads(manifest_file.read_text(encoding="utf-8")).get("template")
        if other in TEMPLATES and TEMPLATES[other].record_kind != kind:
            raise UserError(f"--out {root}: {manifest_file.parent.name} holds {TEMPLATES[other].record_kind} records "
                            f"(a {other} export) and this {template} export gives {kind} records; export it to "
                            "its own folder")


def source_identity(source: dict | None) -> str:
    """Whose annotation ids a version's records carry: a project (on a server), or a file (by name: a
    re-exported file of the same name is the same source, edited). Ids are a source's own: project 3's
    annotation 2 is not an edit of a file's annotation 2."""
    source = source if isinstance(source, dict) else {}
    if source.get("type") == "file":
        return json.dumps(["file", source.get("name")])
    return json.dumps([source.get("type"), source.get("project_id"), source.get("url")])


def exported_annotations(root: Path, source: dict | None = None) -> dict[int, str | None]:
    """Annotations the versions under ``root`` cover: id -> ``updated_at`` when exported.

    An annotation edited in Label Studio after its export has a newer ``updated_at`` and
    so goes into the next ``--since-last`` version. Versions written before hilt tracked
    ``updated_at`` map their ids to None (matched by id alone).
    """
    seen: dict[int, str | None] = {}
    for manifest_file in sorted(root.glob("v[0-9][0-9][0-9][0-9]/manifest.json")):
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
        if source is not None and source_identity(manifest.get("source")) != source_identity(source):
            continue
        versions = manifest.get("annotation_versions")
        if versions is None:
            seen.update({int(i): None for i in manifest.get("annotation_ids", [])})
        else:
            seen.update({int(i): at for i, at in versions.items()})
    return seen


def exported_annotation_ids(root: Path, source: dict | None = None) -> set[int]:
    """Annotation ids covered by the versions already under ``root`` (of ``source`` only, when given)."""
    return set(exported_annotations(root, source))


def next_version_dir(root: Path) -> Path:
    versions = sorted(int(p.name[1:]) for p in root.glob("v[0-9][0-9][0-9][0-9]") if p.is_dir())
    return root / f"v{(versions[-1] + 1 if versions else 1):04d}"


def parse_export_json(raw: bytes, path: Path) -> Any:
    """Label Studio's JSON export from its bytes, with file and line in every error.

    Raises:
        UserError: on bytes that are not UTF-8, or text that is not JSON.
    """
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start}); "
                        "export again from Label Studio or re-save the file as UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        first = text.lstrip().split("\n", 1)[0]
        if first.startswith('"') and ('","' in first or '"\t"' in first or "," in first or "\t" in first):
            kind = "TSV" if "\t" in first else "CSV"
            raise UserError(f"{path}: a {kind} export: its cells cannot say which text is the prompt and which the "
                            "answer; export the project as JSON (Export > JSON) and pass that file") from None
        raise UserError(f"{path}:{err.lineno}: not valid JSON ({err.msg}); "
                        "pass Label Studio's JSON export (Export > JSON)") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply to be a Label Studio export; "
                        "pass Label Studio's JSON export (Export > JSON)") from None


def read_export_source(project: int | None, from_file: Path | None, template: str | None,
                       label_config: Path | None = None) -> tuple[list[dict], Any, dict, str]:
    """What to export: (tasks, spec, source for the manifest, a name for messages).

    From a Label Studio JSON export file (``template`` required, ``label_config`` to check
    controls against) or a live project (its config read from the server, ``template``
    checked against it).

    Raises:
        UserError: a missing or malformed file, a missing template, a template mismatch.
    """
    from hilt.labeling.templates import default_spec, parse_label_config

    from hilt.labeling.export_files import JSON_MIN_NOT_CARRIED, check_export_shape, from_json_min, is_json_min

    if from_file is not None:
        if not template:
            raise UserError(f"--from-file needs --template {'|'.join(TEMPLATES)} (the export file has no labeling "
                            "config)")
        try:
            raw = from_file.read_bytes()
        except FileNotFoundError:
            raise UserError(f"--from-file {from_file}: no such file") from None
        except IsADirectoryError:
            raise UserError(f"--from-file {from_file} is a folder; pass the export's .json file") from None
        except OSError as err:
            raise UserError(os_error_message(err, from_file, "read")) from None
        tasks = parse_export_json(raw, from_file)
        spec = default_spec(template)
        if label_config:
            spec = parse_label_config(read_text_file(label_config, "--label-config"), where=str(label_config))
        source = {"type": "file", "name": from_file.name, "sha256": hashlib.sha256(raw).hexdigest()}
        if is_json_min(tasks):
            if not label_config:  # the bundled template's controls (answer, comparison)
                from hilt.labeling.templates import template_xml

                spec = parse_label_config(template_xml(template), where=f"template {template}")
            tasks = from_json_min(tasks, spec, str(from_file))
            source.update(format="JSON_MIN", not_carried=JSON_MIN_NOT_CARRIED)
        check_export_shape(tasks, str(from_file))
        return tasks, spec, source, str(from_file)
    from hilt.labeling.client import connect

    client = connect()
    spec = parse_label_config(client.label_config(project), where=f"project {project}")
    if template and template != spec.kind:
        raise UserError(f"project {project} is a {spec.kind} project, not {template}; "
                        f"use --template {spec.kind} or leave it out")
    tasks = client.export_tasks(project)
    check_export_shape(tasks, f"project {project}")
    return tasks, spec, {"type": "project", "project_id": project, "url": client.url}, f"project {project}"


def check_not_empty(result, tasks: list[dict], source: dict) -> None:
    """Never write an empty dataset from a non-empty export.

    Raises:
        UserError: with the reject counts, and the controls no exporter reads, when an export
            holding tasks gives no record.
    """
    from hilt.labeling.export_files import unread_controls

    if any(result.records.values()) or not tasks:
        return
    name = source.get("name") or (f"project {source['project_id']}" if "project_id" in source else "the export")
    c = result.counts
    if not c["annotations"]:
        raise UserError(f"{name}: {c['tasks']} tasks but no annotations to export; annotate first (or export the "
                        "project again if the file is older than the annotations)")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(c["rejects"]["by_reason"].items()))
    unread = unread_controls(tasks, result.kind)
    hint = (f"; results of controls a {result.kind} export does not read: {', '.join(unread[:4])}"
            if unread else "; see the reasons in `hilt export --help`")
    raise UserError(f"{name}: {c['annotations']} annotations gave 0 records (rejected: {reasons}){hint}; "
                    "nothing was written")


def export_to_dataset(tasks: list[dict], spec, options: ExportOptions, source: dict, out: Path,
                      since_last: bool = False) -> tuple[Path | None, dict | None]:
    """Export tasks to ``out`` (or to its next version with ``since_last``).

    Returns:
        (dataset dir, manifest), or (None, None) when ``since_last`` finds nothing new.
    """
    from hilt.labeling.export import export_annotations

    if since_last:
        check_versions_root(out)  # (a single dataset's folder is checked where it is written)
        check_same_record_kind(out, spec.kind)
    skip = exported_annotations(out, source) if since_last else {}
    result = export_annotations(tasks, spec, options, skip_annotation_ids=skip)
    if since_last and result.counts["annotations"] == 0:
        return None, None
    check_not_empty(result, tasks, source)
    files, manifest = build_files(result, source, options)
    target = next_version_dir(out) if since_last else out
    return write_dataset(target, files, manifest), manifest
