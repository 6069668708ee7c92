"""Export files as they arrive: JSON-MIN rows read as tasks, and the checks that refuse a file that is
not Label Studio's export shape, or was made with another template, before anything is written."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hilt.core.errors import UserError
from hilt.labeling.templates import TEMPLATES, LabelingSpec


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _first_bad_string(value: Any, path: str) -> str | None:
    """The path of the first string (key or value) that cannot be written as UTF-8 (a lone surrogate)."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if not _is_text(item):
                return where
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and not _is_text(key):
                    return f"{where} (a key)"
                stack.append((child, f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))
    return None


# JSON-MIN: one flat object per annotation (Label Studio's "JSON-MIN" export): the task's data
# keys, one key per control, and these. Cancelled annotations, drafts (predictions) and the
# ground-truth flag are not in it; a dataset exported from it says so in its manifest.
JSON_MIN_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time")
JSON_MIN_NOT_CARRIED = ["cancelled annotations", "drafts (predictions) and whether they were edited",
                        "ground-truth flags", "tasks without annotations"]


def is_json_min(tasks: Any) -> bool:
    """Whether a parsed export is JSON-MIN (flat rows with ``annotation_id``), not JSON."""
    return isinstance(tasks, list) and bool(tasks) and all(
        isinstance(t, dict) and "annotation_id" in t and "annotations" not in t and "data" not in t for t in tasks)


def from_json_min(rows: list[dict], spec: LabelingSpec, where: str) -> list[dict]:
    """JSON-MIN rows as JSON-export tasks, using the labeling config to tell answers from task data.

    Raises:
        UserError: when the spec does not say which keys are controls.
    """
    if not spec.control_tags:
        raise UserError(f"{where}: a JSON-MIN export does not say which keys are answers; pass --label-config "
                        "(the project's labeling config) or export as JSON (Export > JSON)")
    controls = {name: (tag, to_name) for name, tag, to_name in spec.control_tags}
    tasks: dict[Any, dict] = {}
    for row in rows:
        task = tasks.setdefault(row.get("id"), {"id": row.get("id"), "annotations": [], "data": {
            k: v for k, v in row.items() if k not in controls and k not in JSON_MIN_KEYS}})
        results = []
        for name, value in row.items():
            if name not in controls:
                continue
            tag, to_name = controls[name]
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                value = value[0]  # Pairwise and most controls: a list of their value objects
            elif tag == "textarea":
                value = {"text": value if isinstance(value, list) else [value]}
            elif tag == "choices" and not isinstance(value, dict):  # one choice: its text
                value = {"choices": value if isinstance(value, list) else [value]}
            elif not isinstance(value, dict):
                value = {tag: value}
            results.append({"from_name": name, "to_name": to_name, "type": tag, "value": value})
        task["annotations"].append({"id": row.get("annotation_id"), "completed_by": row.get("annotator"),
                                    "created_at": row.get("created_at"), "updated_at": row.get("updated_at"),
                                    "lead_time": row.get("lead_time"), "result": results})
    return list(tasks.values())


def unread_controls(tasks: list[dict], kind: str) -> list[str]:
    """``name (type)`` of the controls whose results the ``kind`` exporter does not read (a Rating in
    an sft project, a Chat tag's chatmessage...)."""
    found = {(str(r.get("from_name")), str(r.get("type"))) for t in tasks if isinstance(t, dict)
             for a in (t.get("annotations") or []) if isinstance(a, dict) for r in (a.get("result") or [])
             if isinstance(r, dict) and r.get("type") not in TEMPLATES[kind].result_types}
    return [f"{name} ({kind})" for name, kind in sorted(found)]


def check_export_shape(tasks: Any, where: str) -> None:
    """Refuse, with one line, an export that is not Label Studio's JSON export shape.

    Checked: a list of task objects; ``data`` an object; ``annotations`` a list of objects;
    ``result`` a list of objects; task and annotation ids integers; every string valid
    Unicode (a lone surrogate such as ``\\ud800`` cannot be written as UTF-8).

    Raises:
        UserError: naming the task (position and id), the key, and the fix.
    """
    fix = "pass Label Studio's own JSON export (Export > JSON), unedited"
    if not isinstance(tasks, list):
        raise UserError(f"{where}: expected a list of tasks, got a JSON {type(tasks).__name__}; {fix}")

    def is_id(value: Any) -> bool:
        return value is None or (isinstance(value, int) and not isinstance(value, bool))

    for index, task in enumerate(tasks, 1):
        if not isinstance(task, dict):
            raise UserError(f"{where}: task #{index} is a {type(task).__name__}, not an object; {fix}")
        name = f"task #{index} (id {task.get('id')!r})"
        if not is_id(task.get("id")):
            raise UserError(f"{where}: {name} has a non-integer id; Label Studio's ids are integers; {fix}")
        if not isinstance(task.get("data", {}), dict):
            raise UserError(f"{where}: {name}: 'data' is a {type(task['data']).__name__}, not an object; {fix}")
        annotations = task.get("annotations") or []
        if not isinstance(annotations, list):
            raise UserError(f"{where}: {name}: 'annotations' is a {type(annotations).__name__}, not a list; {fix}")
        for annotation in annotations:
            if not isinstance(annotation, dict):
                raise UserError(f"{where}: {name}: an annotation is a {type(annotation).__name__}, not an object; {fix}")
            if not is_id(annotation.get("id")):
                raise UserError(f"{where}: {name}: annotation id {annotation.get('id')!r} is not an integer; {fix}")
            results = annotation.get("result") or []
            if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
                raise UserError(f"{where}: {name}: annotation {annotation.get('id')}: 'result' must be a list of "
                                f"objects, got {str(results)[:40]!r}; {fix}")
            if any(not isinstance(r.get("value", {}), dict) for r in results):
                raise UserError(f"{where}: {name}: annotation {annotation.get('id')}: a result's 'value' is not "
                                f"an object; {fix}")
        bad = _first_bad_string(task, f"task #{index}")
        if bad is not None:
            raise UserError(f"{where}: {bad} holds a lone surrogate (an invalid \\uD800-\\uDFFF escape), which is "
                            "not text; fix that string in the export")


def check_template_matches(tasks: list[dict], spec: LabelingSpec, where: str) -> None:
    """Refuse an export made with another template, before writing anything: its results are of a
    type only another template reads (Pairwise, Ranker, Rating), and none of this template's own.
    A spec read from a labeling config (a live project, ``--label-config``) is the project's own.

    Raises:
        UserError: naming the template the annotations look like.
    """
    if spec.controls:
        return
    types = Counter(
        r.get("type") for t in tasks for a in (t.get("annotations") or []) for r in (a.get("result") or [])
    )
    own = TEMPLATES[spec.kind].result_types - {"textarea"}  # a TextArea is in every template
    if own and not any(types[t] for t in own) and types["textarea"]:
        raise UserError(f"{where} holds only TextArea results (written answers), none of a {spec.kind} project's "
                        f"{'/'.join(sorted(own))}; use --template sft (or chat for conversations)")
    if any(types[t] for t in own):
        return
    for name, other in TEMPLATES.items():
        theirs = sorted(t for t in other.result_types - {"textarea"} if types[t])
        if theirs and name != spec.kind:
            raise UserError(f"{where} holds {name} annotations ({', '.join(theirs)} results), not {spec.kind} ones; "
                            f"use --template {name}")
