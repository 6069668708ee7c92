"""Label Studio's JSON export -> records, with every annotation accounted for.

Pure functions over the parsed export (a list of tasks, each with ``annotations``), so the
same code reads a live project and an export file. The project's template
(``hilt.labeling.templates.TEMPLATES``) names its exporter (``exporters.py``); each annotation
ends up either in a record or in the rejects with a machine-readable reason
(``results.py``), and ``ExportResult.counts`` adds up. The quality figures come from
``agreement.py``; JSON-MIN files and the shape checks from ``export_files.py``.

Records use TRL's conversational formats:

- sft: ``{"messages": [system?, user, assistant], "meta": {...}}``
- chat: ``{"messages": [the conversation..., assistant (the new turn)], "meta": {...}}``
- preference, rank: ``{"prompt": [system?, user], "chosen": [assistant], "rejected": [assistant], "meta": {...}}``
- rate: ``{"prompt": [...], "completion": [assistant], "label": bool, "meta": {...}}`` (KTO)
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from hilt.labeling.templates import LabelingSpec, template
from hilt.labeling.results import (
    CANCELLED, DUPLICATE, MISSING_ANSWERS, MISSING_PROMPT, UNKNOWN_CONTROL, annotator, id_order,
)
from hilt.labeling.agreement import quality_report


SftPolicy = Literal["distinct", "all", "latest", "ground-truth-first"]
SFT_POLICIES = ("distinct", "all", "latest", "ground-truth-first")
# rank: which (chosen, rejected) pairs a task's mean ranking gives.
RankPolicy = Literal["best-vs-rest", "all-pairs", "adjacent"]
RANK_POLICIES = ("best-vs-rest", "all-pairs", "adjacent")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<!\w)(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)[\s.-]?|\d{2,4}[\s.-])\d{3,4}[\s.-]?\d{3,4}(?!\w)")


@dataclass
class ExportOptions:
    """How annotations become records."""

    policy: SftPolicy = "distinct"
    validation_fraction: float = 0.1
    max_chars: int = 20_000
    scrub_pii: bool = False
    rating_threshold: float = 4.0  # rate: a mean rating at or above it makes a desirable (KTO) answer
    rank_policy: RankPolicy = "best-vs-rest"  # rank: which pairs a ranking gives


@dataclass
class ExportResult:
    """Records per split, rejects, counts and quality figures of one export."""

    kind: str
    records: dict[str, list[dict]]
    rejects: list[dict]
    counts: dict[str, Any]
    quality: dict[str, Any]
    pii: dict[str, int] = field(default_factory=dict)
    annotation_ids: list[int] = field(default_factory=list)
    # id -> updated_at: an annotation edited after its export is exported again (--since-last).
    annotation_versions: dict[str, str | None] = field(default_factory=dict)
    # Further record sets some templates give beside the main one (rate: its corrections as
    # "corrections/sft" and "corrections/preference"), each by split.
    extra: dict[str, dict[str, list[dict]]] = field(default_factory=dict)


def split_of(task_id: Any, validation_fraction: float) -> str:
    """``validation`` or ``train``, from a hash of the task id: stable as data grows."""
    digest = hashlib.sha256(str(task_id).encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < validation_fraction else "train"


class Scrubber:
    """Replaces emails and phone numbers (when enabled) and counts them."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.counts = Counter()

    def __call__(self, text: str) -> str:
        if not self.enabled or not text:
            return text
        text, emails = _EMAIL.subn("[EMAIL]", text)
        text, phones = _PHONE.subn("[PHONE]", text)
        self.counts["emails"] += emails
        self.counts["phones"] += phones
        return text


def base_meta(task: dict, annotation: dict) -> dict:
    meta = {
        "task_id": task.get("id"),
        "annotation_id": annotation.get("id"),
        "annotator": annotator(annotation),
        "created_at": annotation.get("created_at"),
        "updated_at": annotation.get("updated_at"),
        "lead_time": annotation.get("lead_time"),
        "ground_truth": bool(annotation.get("ground_truth")),
    }
    return meta


def reject(task: dict, annotation: dict, reason: str, detail: str = "") -> dict:
    return {"reason": reason, "detail": detail, **base_meta(task, annotation)}


def _basic_reject(task: dict, annotation: dict, spec: LabelingSpec, prompt: list[dict] | None) -> dict | None:
    """The reasons any template rejects an annotation for, before looking at its results."""
    if annotation.get("was_cancelled"):
        return reject(task, annotation, CANCELLED)
    if prompt is None:
        wanted = "conversation ending with a user turn" if template(spec.kind).conversation else "text"
        return reject(task, annotation, MISSING_PROMPT, f"task data has no {wanted} in '{spec.prompt_key}'")
    return None


def results_of(annotation: dict, spec: LabelingSpec) -> tuple[list[dict], list[str]]:
    """The annotation's results, and the from_names the config does not know.

    With the project's config at hand, a control it does not name is unknown. Without it
    (an export file and no ``--label-config``) only what the template reads is known: a
    TextArea on the prompt (the SFT answer, or a preference rationale) and, for
    preferences, a Pairwise; several differently named TextAreas on the prompt of an SFT
    annotation are ambiguous, so they are unknown too.
    """
    results = annotation.get("result") or []
    if spec.controls:
        return results, sorted({str(r.get("from_name")) for r in results if r.get("from_name") not in spec.controls})
    kind = template(spec.kind)
    notes_on = spec.answer_object if kind.notes_on == "answer" else spec.prompt_object
    unknown = {str(r.get("from_name")) for r in results
               if r.get("type") not in kind.result_types
               or (r.get("type") == "textarea" and r.get("to_name") != notes_on)}
    answers = {str(r.get("from_name")) for r in results
               if r.get("type") == "textarea" and r.get("to_name") == spec.prompt_object}
    if kind.one_answer and len(answers) > 1:
        unknown |= answers
    return results, sorted(unknown)


def prompt_messages(task: dict, spec: LabelingSpec, scrub: Scrubber) -> list[dict] | None:
    """The messages an answer follows: system? + the prompt, or (chat) the conversation so far."""
    data = task.get("data") or {}
    prompt = data.get(spec.prompt_key)
    if template(spec.kind).conversation:
        usable = isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
            and m["content"].strip() for m in prompt) and prompt[-1]["role"] == "user"
        return [{"role": m["role"], "content": scrub(m["content"])} for m in prompt] if usable else None
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    messages = []
    if isinstance(data.get("system"), str) and data["system"].strip():
        messages.append({"role": "system", "content": scrub(data["system"])})
    messages.append({"role": "user", "content": scrub(prompt)})
    return messages


def usable_results(task: dict, annotation: dict, spec: LabelingSpec, prompt: list[dict] | None,
                   missing: str | None, out: ExportResult) -> list[dict] | None:
    """The annotation's results, or None after recording why it is rejected: cancelled, no
    prompt, ``missing`` (the task data lacks what is judged), or a control the config lacks."""
    rejected = _basic_reject(task, annotation, spec, prompt)
    if rejected is None and missing:
        rejected = reject(task, annotation, MISSING_ANSWERS, missing)
    if rejected is None:
        results, unknown = results_of(annotation, spec)
        if not unknown:
            return results
        rejected = reject(task, annotation, UNKNOWN_CONTROL, f"from_name not in config: {unknown}")
    out.rejects.append(rejected)
    return None


def export_annotations(tasks: list[dict], spec: LabelingSpec, options: ExportOptions,
                       skip_annotation_ids: dict[int, str | None] | set[int] | None = None) -> ExportResult:
    """Turn Label Studio export tasks into records and rejects.

    Args:
        tasks: Label Studio JSON export (list of task dicts with ``annotations``).
        spec: where prompt, answers and judgements are (from the project's config).
        options: policy, validation fraction, limits, PII scrubbing.
        skip_annotation_ids: annotations exported before (``--since-last``): id -> the
            ``updated_at`` it had then (None: any). Left out unless edited since.

    Returns:
        The records by split, the rejects, and counts that add up:
        ``annotations == annotations_in_records + rejects``.
    """
    skip = skip_annotation_ids or {}
    if not isinstance(skip, dict):
        skip = dict.fromkeys(skip)

    def exported_before(annotation: dict) -> bool:
        if annotation.get("id") not in skip:
            return False
        then = skip[annotation.get("id")]
        return then is None or then == annotation.get("updated_at")

    tasks = sorted(tasks, key=id_order)
    if skip:
        tasks = [{**t, "annotations": [a for a in (t.get("annotations") or []) if not exported_before(a)]}
                 for t in tasks]
    scrub = Scrubber(options.scrub_pii)
    out = ExportResult(kind=spec.kind, records={"train": [], "validation": []}, rejects=[],
                       counts=Counter(), quality={})
    template(spec.kind).export(tasks, spec, options, scrub, out)
    annotations = sum(len(t.get("annotations") or []) for t in tasks)
    reasons = Counter(r["reason"] for r in out.rejects)
    out.counts = {
        "tasks": len(tasks),
        "tasks_with_annotations": sum(1 for t in tasks if t.get("annotations")),
        "annotations": annotations,
        "annotations_in_records": out.counts["annotations_in_records"],
        "records": {split: len(records) for split, records in out.records.items()},
        "rejects": {"total": len(out.rejects), "by_reason": dict(sorted(reasons.items()))},
    }
    if out.counts["annotations_in_records"] + len(out.rejects) != annotations:
        raise RuntimeError("export bug: an annotation is neither in a record nor in the rejects")
    out.quality = quality_report(tasks, spec)
    out.quality["duplicate_rate"] = round(reasons[DUPLICATE] / annotations, 4) if annotations else 0.0
    out.pii = dict(scrub.counts) if options.scrub_pii else {}
    exported = [a for t in tasks for a in (t.get("annotations") or []) if a.get("id") is not None]
    out.annotation_ids = sorted(a["id"] for a in exported)
    out.annotation_versions = {str(a["id"]): a.get("updated_at") for a in sorted(exported, key=id_order)}
    return out
