"""Label Studio's JSON export -> SFT / preference records, with every annotation accounted for.

Pure functions over the parsed export (a list of tasks, each with ``annotations``), so the
same code reads a live project and an export file. Each annotation ends up either in a
record or in the rejects with a machine-readable reason; ``ExportResult.counts`` adds up.

Records use TRL's conversational formats:

- sft: ``{"messages": [system?, user, assistant], "meta": {...}}``
- chat: ``{"messages": [the conversation..., assistant (the new turn)], "meta": {...}}``
- preference, rank: ``{"prompt": [system?, user], "chosen": [assistant], "rejected": [assistant], "meta": {...}}``
- rate: ``{"prompt": [...], "completion": [assistant], "label": bool, "meta": {...}}`` (KTO)
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from hilt.labeling.templates import TEMPLATES, LabelingSpec

SftPolicy = Literal["distinct", "all", "latest", "ground-truth-first"]
SFT_POLICIES = ("distinct", "all", "latest", "ground-truth-first")
# rank: which (chosen, rejected) pairs a task's mean ranking gives.
RankPolicy = Literal["best-vs-rest", "all-pairs", "adjacent"]
RANK_POLICIES = ("best-vs-rest", "all-pairs", "adjacent")

# Reject reasons (machine-readable, stable: downstream tools filter on them).
CANCELLED = "cancelled"
MISSING_PROMPT = "missing_prompt"
MISSING_ANSWERS = "missing_answers"
NO_ANSWER = "no_answer"
EMPTY_ANSWER = "empty_answer"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
SUPERSEDED = "superseded"
UNKNOWN_CONTROL = "unknown_control"
NO_SELECTION = "no_selection"
IDENTICAL_ANSWERS = "identical_answers"
CONFLICTING_PREFERENCE = "conflicting_preference"
NUL_BYTES = "nul_bytes"
INCOMPLETE_RANKING = "incomplete_ranking"
INVALID_RANKING = "invalid_ranking"
TIED_RANKING = "tied_ranking"
NOT_CORRECTED = "not_corrected"
INVALID_RATING = "invalid_rating"

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


def _normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def _same_text(a: str, b: str) -> bool:
    """Equal but for white space: a correction of case or punctuation is still a correction."""
    return a.split() == b.split()


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


def annotator(annotation: dict) -> Any:
    """Who made an annotation: the user id, or the email where the export expands the user."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # some exports expand the user
        return who.get("email") or who.get("id")
    return who


def _base_meta(task: dict, annotation: dict) -> dict:
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


def _reject(task: dict, annotation: dict, reason: str, detail: str = "") -> dict:
    return {"reason": reason, "detail": detail, **_base_meta(task, annotation)}


def _basic_reject(task: dict, annotation: dict, spec: LabelingSpec, prompt: list[dict] | None) -> dict | None:
    """The reasons any template rejects an annotation for, before looking at its results."""
    if annotation.get("was_cancelled"):
        return _reject(task, annotation, CANCELLED)
    if prompt is None:
        wanted = "conversation ending with a user turn" if spec.kind in ("chat", "review") else "text"
        return _reject(task, annotation, MISSING_PROMPT, f"task data has no {wanted} in '{spec.prompt_key}'")
    return None


def pairwise_choice(results: list[dict], control: str | None = None) -> str | None:
    """The ``selected`` side (``left`` = first object) of the Pairwise result (of ``control``, if named)."""
    return next(((r.get("value") or {}).get("selected") for r in results
                 if r.get("type") == "pairwise" and (control is None or r.get("from_name") == control)), None)


def _results(annotation: dict, spec: LabelingSpec) -> tuple[list[dict], list[str]]:
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
    notes_on = spec.answer_object if spec.kind == "rate" else spec.prompt_object
    unknown = {str(r.get("from_name")) for r in results
               if r.get("type") not in TEMPLATES[spec.kind].result_types
               or (r.get("type") == "textarea" and r.get("to_name") != notes_on)}
    answers = {str(r.get("from_name")) for r in results
               if r.get("type") == "textarea" and r.get("to_name") == spec.prompt_object}
    if spec.kind in ("sft", "chat") and len(answers) > 1:
        unknown |= answers
    return results, sorted(unknown)


def _textarea(results: list[dict], spec: LabelingSpec, control: str | None, exclude: str | None = None) -> str | None:
    for r in results:
        if r.get("type") != "textarea" or r.get("to_name") != spec.prompt_object:
            continue
        if control is not None and r.get("from_name") != control:
            continue
        if exclude is not None and r.get("from_name") == exclude:
            continue
        text = (r.get("value") or {}).get("text")
        if isinstance(text, list):
            return "\n".join(str(t) for t in text)
        return str(text) if text is not None else None
    return None


def _prompt_messages(task: dict, spec: LabelingSpec, scrub: Scrubber) -> list[dict] | None:
    """The messages an answer follows: system? + the prompt, or (chat) the conversation so far."""
    data = task.get("data") or {}
    prompt = data.get(spec.prompt_key)
    if spec.kind in ("chat", "review"):
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


def _id_order(item: dict) -> tuple:
    """Sort key for tasks and annotations by id, whatever type the ids have (checked before)."""
    value = item.get("id")
    return (value is None, str(type(value).__name__), value if value is not None else 0)


def sorted_annotations(task: dict) -> list[dict]:
    """A task's annotations oldest first (by id), so "latest" means the same in every pass."""
    return sorted(task.get("annotations") or [], key=_id_order)


def _usable_results(task: dict, annotation: dict, spec: LabelingSpec, prompt: list[dict] | None,
                   missing: str | None, out: ExportResult) -> list[dict] | None:
    """The annotation's results, or None after recording why it is rejected: cancelled, no
    prompt, ``missing`` (the task data lacks what is judged), or a control the config lacks."""
    rejected = _basic_reject(task, annotation, spec, prompt)
    if rejected is None and missing:
        rejected = _reject(task, annotation, MISSING_ANSWERS, missing)
    if rejected is None:
        results, unknown = _results(annotation, spec)
        if not unknown:
            return results
        rejected = _reject(task, annotation, UNKNOWN_CONTROL, f"from_name not in config: {unknown}")
    out.rejects.append(rejected)
    return None


def _export_sft(tasks: list[dict], spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    seen_answers: set[tuple[str, ...]] = set()
    for task in tasks:
        prompt = _prompt_messages(task, spec, scrub)
        candidates = []
        for annotation in sorted_annotations(task):
            results = _usable_results(task, annotation, spec, prompt, None, out)
            if results is None:
                continue
            answer = _textarea(results, spec, spec.answer_control)
            if answer is None:
                out.rejects.append(_reject(task, annotation, NO_ANSWER, "no TextArea result on the prompt"))
                continue
            if not answer.strip():
                out.rejects.append(_reject(task, annotation, EMPTY_ANSWER))
                continue
            if len(answer) > options.max_chars:
                out.rejects.append(_reject(task, annotation, TOO_LONG, f"{len(answer)} > {options.max_chars} chars"))
                continue
            if "\x00" in answer:
                out.rejects.append(_reject(task, annotation, NUL_BYTES, "the answer holds NUL (\\x00) characters"))
                continue
            candidates.append((annotation, answer.strip()))

        # Policy: which accepted answers of this task become records.
        if options.policy == "latest" and candidates:
            latest = max(candidates, key=lambda c: (c[0].get("updated_at") or "", c[0].get("id") or 0))
            for c in candidates:
                if c is not latest:
                    out.rejects.append(_reject(task, c[0], SUPERSEDED, "policy latest"))
            candidates = [latest]
        elif options.policy == "ground-truth-first" and any(c[0].get("ground_truth") for c in candidates):
            gold = next(c for c in candidates if c[0].get("ground_truth"))
            for c in candidates:
                if c is not gold:
                    out.rejects.append(_reject(task, c[0], SUPERSEDED, "policy ground-truth-first"))
            candidates = [gold]

        split = split_of(task.get("id"), options.validation_fraction)
        for annotation, answer in candidates:
            key = (*(_normalize(m["content"]) for m in prompt), _normalize(answer))
            if options.policy != "all" and key in seen_answers:
                out.rejects.append(_reject(task, annotation, DUPLICATE, "same prompt and answer already exported"))
                continue
            seen_answers.add(key)
            meta = _base_meta(task, annotation)
            draft = annotation.get("prediction") or {}
            if draft.get("model_version") is not None:
                meta["draft_model_version"] = draft.get("model_version")
                draft_text = _textarea(draft.get("result") or [], spec, spec.answer_control)
                meta["draft_edited"] = (draft_text or "").strip() != answer
            out.records[split].append(
                {"messages": [*prompt, {"role": "assistant", "content": scrub(answer)}], "meta": meta}
            )
            out.counts["annotations_in_records"] += 1


def _export_preference(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    seen: set[tuple[str, str, str]] = set()
    for task in tasks:
        prompt = _prompt_messages(task, spec, scrub)
        data = task.get("data") or {}
        left, right = data.get(spec.left_key), data.get(spec.right_key)
        votes: list[tuple[dict, str, str | None]] = []
        both = isinstance(left, str) and left.strip() and isinstance(right, str) and right.strip()
        missing = None if both else f"task data needs '{spec.left_key}' and '{spec.right_key}'"
        for annotation in sorted_annotations(task):
            results = _usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            selected = pairwise_choice(results, spec.comparison_control)
            if selected not in ("left", "right"):
                out.rejects.append(_reject(task, annotation, NO_SELECTION, "no Pairwise left/right choice"))
                continue
            if "\x00" in left + right:
                out.rejects.append(_reject(task, annotation, NUL_BYTES, "an answer holds NUL (\\x00) characters"))
                continue
            if _normalize(left) == _normalize(right):
                out.rejects.append(_reject(task, annotation, IDENTICAL_ANSWERS, "both answers are the same text"))
                continue
            rationale = _textarea(results, spec, spec.rationale_control, exclude=None)
            votes.append((annotation, selected, rationale))
        if not votes:
            continue
        tally = Counter(v[1] for v in votes)
        if tally["left"] == tally["right"]:
            for annotation, _, _ in votes:
                out.rejects.append(_reject(task, annotation, CONFLICTING_PREFERENCE,
                                           f"tie: {tally['left']} left vs {tally['right']} right"))
            continue
        winner = "left" if tally["left"] > tally["right"] else "right"
        chosen, rejected = (left, right) if winner == "left" else (right, left)
        key = (_normalize(prompt[-1]["content"]), _normalize(chosen), _normalize(rejected))
        if key in seen:
            for annotation, _, _ in votes:
                out.rejects.append(_reject(task, annotation, DUPLICATE, "same prompt and pair already exported"))
            continue
        seen.add(key)
        first = votes[0][0]
        meta = _base_meta(task, first)
        del meta["annotation_id"], meta["annotator"]
        meta.update(
            annotation_ids=[v[0].get("id") for v in votes],
            annotators=[annotator(v[0]) for v in votes],
            votes={"left": tally["left"], "right": tally["right"]},
            chosen_side=winner,
            rationales=[scrub(v[2]) for v in votes if v[2]],
            ground_truth=any(v[0].get("ground_truth") for v in votes),
            created_at=min((v[0].get("created_at") or "") for v in votes) or None,
            updated_at=max((v[0].get("updated_at") or "") for v in votes) or None,
        )
        out.records[split_of(task.get("id"), options.validation_fraction)].append({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": scrub(chosen)}],
            "rejected": [{"role": "assistant", "content": scrub(rejected)}],
            "meta": meta,
        })
        out.counts["annotations_in_records"] += len(votes)


def rating_of(results: list[dict], control: str | None = None) -> int | None:
    """The star rating of a Rating result (of ``control``, if named), when it is a whole number."""
    value = raw_rating(results, control)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def raw_rating(results: list[dict], control: str | None = None) -> object:
    """What a Rating result (of ``control``, if named) holds, as exported; None when there is none."""
    for r in results:
        if r.get("type") == "rating" and (control is None or r.get("from_name") == control):
            value = (r.get("value") or {}).get("rating")
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value
    return None


def rating_problem(value: object, max_rating: int) -> str | None:
    """Why an exported rating cannot be used (not a number, not whole, outside 1..max), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"rating {json.dumps(value)[:40]} is not a number"
    if isinstance(value, float):  # whole floats arrive as ints from raw_rating
        return f"rating {value} is not a whole number of stars" if math.isfinite(value) else f"rating {value}"
    if not 1 <= value <= max_rating:
        return f"rating {value} is outside 1-{max_rating}"
    return None


def _answer_note(results: list[dict], spec: LabelingSpec, control: str | None) -> str:
    """A TextArea on the graded answer (the critique or the correction), stripped; empty when absent."""
    if control is None:
        return ""
    for r in results:
        if r.get("type") == "textarea" and r.get("from_name") == control:
            text = (r.get("value") or {}).get("text")
            return ("\n".join(str(t) for t in text) if isinstance(text, list) else str(text or "")).strip()
    return ""


def _export_rate(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """One KTO record per task (desirable when the mean rating reaches the threshold); every
    correction also as an SFT record and a (corrected over original) preference pair."""
    out.extra = {"corrections/sft": {"train": [], "validation": []},
                 "corrections/preference": {"train": [], "validation": []}}
    for task in tasks:
        prompt = _prompt_messages(task, spec, scrub)
        answer = (task.get("data") or {}).get(spec.answer_key)
        grades: list[tuple[dict, int, str, str]] = []
        missing = None if isinstance(answer, str) and answer.strip() else f"task data needs '{spec.answer_key}'"
        for annotation in sorted_annotations(task):
            results = _usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            rating = raw_rating(results, spec.rating_control)
            if rating is None:
                out.rejects.append(_reject(task, annotation, NO_SELECTION, "no Rating"))
                continue
            if problem := rating_problem(rating, spec.max_rating):
                out.rejects.append(_reject(task, annotation, INVALID_RATING, problem))
                continue
            corrected = _answer_note(results, spec, spec.correction_control)
            if "\x00" in answer + corrected:
                out.rejects.append(_reject(task, annotation, NUL_BYTES, "the answer holds NUL (\\x00) characters"))
                continue
            grades.append((annotation, rating, _answer_note(results, spec, spec.critique_control), corrected))
        if not grades:
            continue
        split = split_of(task.get("id"), options.validation_fraction)
        mean = statistics.mean(g[1] for g in grades)
        first = grades[0][0]
        meta = _base_meta(task, first)
        del meta["annotation_id"], meta["annotator"]
        meta.update(annotation_ids=[g[0].get("id") for g in grades], annotators=[annotator(g[0]) for g in grades],
                    ratings=[g[1] for g in grades], mean_rating=round(mean, 3),
                    critiques=[scrub(g[2]) for g in grades if g[2]],
                    ground_truth=any(g[0].get("ground_truth") for g in grades))
        original = [{"role": "assistant", "content": scrub(answer.strip())}]
        out.records[split].append({"prompt": prompt, "completion": original,
                                   "label": mean >= options.rating_threshold, "meta": meta})
        out.counts["annotations_in_records"] += len(grades)
        for annotation, _, _, corrected in grades:
            if not corrected or _same_text(corrected, answer):
                continue
            fixed = {"role": "assistant", "content": scrub(corrected)}
            source = {**_base_meta(task, annotation), "corrects_answer": True}
            out.extra["corrections/sft"][split].append({"messages": [*prompt, fixed], "meta": source})
            out.extra["corrections/preference"][split].append(
                {"prompt": prompt, "chosen": [fixed], "rejected": original, "meta": source})


def rank_answers(task: dict, spec: LabelingSpec) -> dict[str, str]:
    """A rank task's answers, ``{List item id: text}``, in the order shown (items without text left out)."""
    items = (task.get("data") or {}).get(spec.answers_key)
    if not isinstance(items, list):
        return {}
    return {str(item["id"]): item["body"] for item in items
            if isinstance(item, dict) and item.get("id") is not None and isinstance(item.get("body"), str)
            and item["body"].strip()}


def repeated_answer_ids(task: dict, spec: LabelingSpec) -> list[str]:
    """The List item ids of a rank task that appear more than once (``rank_answers`` would keep the last)."""
    items = (task.get("data") or {}).get(spec.answers_key)
    ids = [str(item["id"]) for item in items or [] if isinstance(item, dict) and item.get("id") is not None] \
        if isinstance(items, list) else []
    return sorted(i for i, n in Counter(ids).items() if n > 1)


def ranking_of(results: list[dict], spec: LabelingSpec, ids: list[str]) -> tuple[dict[str, float] | None, str, str]:
    """The rank of each answer id in a Ranker result (1 = best; answers in one Bucket share the mean
    of their places), or None with the reject reason and its detail.

    Without Buckets the Ranker saves one ordered column named after it; with Buckets (Label Studio's
    stock "LLM Ranker") the Buckets are tiers, best first, and answers left in the List are unranked.
    """
    result = next((r for r in results if r.get("type") == "ranker"
                   and (spec.ranker_control is None or r.get("from_name") == spec.ranker_control)), None)
    if result is None:
        return None, NO_SELECTION, "no Ranker result"
    value = result.get("value") or {}
    columns = value.get("ranker", value)  # JSON-MIN may drop the "ranker" level
    if not isinstance(columns, dict) or not all(isinstance(v, list) for v in columns.values()):
        return None, INVALID_RANKING, "the Ranker value is not {column: [answer ids]}"
    if spec.buckets:
        tiers = [[str(i) for i in columns.get(b) or []] for b in spec.buckets]
    else:
        order = columns.get(str(result.get("from_name")))
        if order is None and len(columns) == 1:
            order = next(iter(columns.values()))
        tiers = [[str(i)] for i in order or []]
    placed = [i for tier in tiers for i in tier]
    unknown = sorted(set(placed) - set(ids))
    if unknown:
        return None, INVALID_RANKING, f"answer ids not in the task: {unknown}"
    twice = sorted({i for i in placed if placed.count(i) > 1})
    if twice:
        return None, INVALID_RANKING, f"answers ranked twice: {twice}"
    missing = [i for i in ids if i not in placed]
    if missing:
        return None, INCOMPLETE_RANKING, f"{len(missing)} of {len(ids)} answers not ranked: {missing}"
    ranks: dict[str, float] = {}
    place = 0
    for tier in filter(None, tiers):
        ranks.update(dict.fromkeys(tier, place + (len(tier) + 1) / 2))
        place += len(tier)
    return ranks, "", ""


def ranked_pairs(mean_ranks: dict[str, float], policy: RankPolicy) -> tuple[list[tuple[str, str]], str]:
    """(chosen id, rejected id) pairs of a ranking by policy, or none and why (ties).

    ``best-vs-rest``: the best over every other answer (the best must be alone at the top);
    ``all-pairs``: every answer over each one ranked below it; ``adjacent``: each answer over the
    next one down. Answers with equal mean ranks are never paired with each other.
    """
    levels = sorted(set(mean_ranks.values()))
    tiers = [[i for i, r in mean_ranks.items() if r == level] for level in levels]
    if len(tiers) < 2:
        return [], f"all {len(mean_ranks)} answers tie (mean rank {levels[0]:g})"
    if policy == "best-vs-rest":
        if len(tiers[0]) > 1:
            return [], f"answers {tiers[0]} tie for best (mean rank {levels[0]:g})"
        return [(tiers[0][0], j) for tier in tiers[1:] for j in tier], ""
    if policy == "adjacent":
        return [(a, b) for upper, lower in zip(tiers, tiers[1:]) for a in upper for b in lower], ""
    return [(a, b) for k, upper in enumerate(tiers) for lower in tiers[k + 1:] for a in upper for b in lower], ""


def _export_rank(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """Preference pairs from rankings: every annotator's complete ranking counts, the task's order is
    the mean rank of each answer, and the policy picks the pairs."""
    seen: set[tuple[str, str, str]] = set()
    for task in tasks:
        prompt = _prompt_messages(task, spec, scrub)
        texts = rank_answers(task, spec)
        sources = (task.get("data") or {}).get("answer_sources") or {}
        missing = None if len(texts) >= 2 else f"task data needs 2 or more answers in '{spec.answers_key}'"
        repeated = repeated_answer_ids(task, spec)
        if repeated:  # which text a ranked id means is then a guess: the task is rejected, not half-read
            missing = (f"answer id(s) {', '.join(repeated)} appear more than once in '{spec.answers_key}'; give "
                       "each List item its own id")
        rankings: list[tuple[dict, dict[str, float], str | None]] = []
        for annotation in sorted_annotations(task):
            results = _usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            ranks, reason, detail = ranking_of(results, spec, list(texts))
            if ranks is None:
                out.rejects.append(_reject(task, annotation, reason, detail))
                continue
            if any("\x00" in text for text in texts.values()):
                out.rejects.append(_reject(task, annotation, NUL_BYTES, "an answer holds NUL (\\x00) characters"))
                continue
            rankings.append((annotation, ranks, _textarea(results, spec, spec.rationale_control)))
        if not rankings:
            continue
        mean = {i: round(statistics.mean(r[1][i] for r in rankings), 6) for i in texts}
        pairs, why = ranked_pairs(mean, options.rank_policy)
        reason = TIED_RANKING
        if pairs:
            pairs = [(a, b) for a, b in pairs if _normalize(texts[a]) != _normalize(texts[b])]
            reason, why = IDENTICAL_ANSWERS, "every pair the policy gives holds the same text twice"
        if pairs:
            keys = {(a, b): (_normalize(prompt[-1]["content"]), _normalize(texts[a]), _normalize(texts[b]))
                    for a, b in pairs}
            pairs = [pair for pair in pairs if keys[pair] not in seen]
            seen.update(keys.values())
            reason, why = DUPLICATE, "same prompt and pairs already exported"
        if not pairs:
            out.rejects.extend(_reject(task, r[0], reason, why) for r in rankings)
            continue
        first = rankings[0][0]
        meta = _base_meta(task, first)
        del meta["annotation_id"], meta["annotator"]
        meta.update(
            annotation_ids=[r[0].get("id") for r in rankings], annotators=[annotator(r[0]) for r in rankings],
            rankings=[ranking_text(r[1]) for r in rankings], mean_ranks=mean, policy=options.rank_policy,
            rationales=[scrub(r[2]) for r in rankings if r[2]],
            ground_truth=any(r[0].get("ground_truth") for r in rankings),
            created_at=min((r[0].get("created_at") or "") for r in rankings) or None,
            updated_at=max((r[0].get("updated_at") or "") for r in rankings) or None,
        )
        split = split_of(task.get("id"), options.validation_fraction)
        for chosen, rejected in pairs:
            out.records[split].append({
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": scrub(texts[chosen])}],
                "rejected": [{"role": "assistant", "content": scrub(texts[rejected])}],
                "meta": {**meta, "chosen_id": chosen, "rejected_id": rejected,
                         "chosen_source": sources.get(chosen), "rejected_source": sources.get(rejected)},
            })
        out.counts["annotations_in_records"] += len(rankings)


def _choice(results: list[dict], control: str | None) -> str | None:
    for r in results:
        if r.get("type") == "choices" and (control is None or r.get("from_name") == control):
            chosen = (r.get("value") or {}).get("choices") or []
            if isinstance(chosen, str):
                return chosen
            return str(chosen[0]) if chosen else None
    return None


def _export_review(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """A reviewed answer of the deployed model: each correction becomes an SFT record of the
    conversation plus the corrected answer, and a (corrected over original) preference pair; an
    answer left as it was is a ``not_corrected`` reject that keeps its rating."""
    out.extra = {"corrections/preference": {"train": [], "validation": []}}
    seen: set[tuple[str, ...]] = set()
    for task in tasks:
        prompt = _prompt_messages(task, spec, scrub)
        data = task.get("data") or {}
        answer = data.get(spec.answer_key)
        missing = None if isinstance(answer, str) else f"task data needs '{spec.answer_key}'"
        for annotation in sorted_annotations(task):
            results = _usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            rating = raw_rating(results, spec.rating_control)
            verdict = _choice(results, spec.verdict_control)
            corrected = _answer_note(results, spec, spec.correction_control)
            if rating is None:
                out.rejects.append(_reject(task, annotation, NO_SELECTION, "no Rating"))
                continue
            if problem := rating_problem(rating, spec.max_rating):
                out.rejects.append(_reject(task, annotation, INVALID_RATING, problem))
                continue
            if not corrected or _same_text(corrected, answer):
                detail = f"rating {rating}" + (f", marked {verdict!r} but not edited" if verdict == "Needs correction"
                                               else "")
                out.rejects.append({**_reject(task, annotation, NOT_CORRECTED, detail), "rating": rating})
                continue
            if "\x00" in corrected or len(corrected) > options.max_chars:
                reason = NUL_BYTES if "\x00" in corrected else TOO_LONG
                out.rejects.append(_reject(task, annotation, reason, "the corrected answer"))
                continue
            key = (*(_normalize(m["content"]) for m in prompt), _normalize(corrected))
            if key in seen:
                out.rejects.append(_reject(task, annotation, DUPLICATE, "same conversation and correction"))
                continue
            seen.add(key)
            split = split_of(task.get("id"), options.validation_fraction)
            fixed = {"role": "assistant", "content": scrub(corrected)}
            meta = {**_base_meta(task, annotation), "rating": rating, "verdict": verdict,
                    "original": scrub(answer), "event_id": data.get("event_id"),
                    "inference_time": data.get("inference_time"), "flags": data.get("flags")}
            out.records[split].append({"messages": [*prompt, fixed], "meta": meta})
            out.extra["corrections/preference"][split].append(
                {"prompt": prompt, "chosen": [fixed], "rejected": [{"role": "assistant", "content": scrub(answer)}],
                 "meta": meta})
            out.counts["annotations_in_records"] += 1


# One exporter per labeling template (hilt.labeling.templates.TEMPLATES): a new template is one
# function and one entry here.
EXPORTERS = {"sft": _export_sft, "chat": _export_sft, "preference": _export_preference, "rank": _export_rank,
             "rate": _export_rate, "review": _export_review}


def _answer_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    text = _textarea(results, spec, spec.answer_control)
    return _normalize(text) if text else None


def _rating_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    rating = rating_of(results, spec.rating_control)
    return None if rating is None else str(rating)


def ranking_text(ranks: dict[str, float]) -> str:
    """A ranking as text: ``2>1=3`` (answer 2 best, 1 and 3 tied)."""
    tiers = [[i for i in ranks if ranks[i] == level] for level in sorted(set(ranks.values()))]
    return ">".join("=".join(tier) for tier in tiers)


def _ranking_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    ranks, _, _ = ranking_of(results, spec, list(rank_answers(task, spec)))
    return None if ranks is None else ranking_text(ranks)


# What two annotations of a task are compared by, per template.
_QUALITY_LABELS = {"sft": _answer_label, "chat": _answer_label,
                   "preference": lambda results, spec, task: pairwise_choice(results),
                   "rank": _ranking_label, "rate": _rating_label, "review": _rating_label}


def _ratings(tasks: list[dict], spec: LabelingSpec) -> dict[str, Any]:
    """How the graded answers were rated: count of each star, the mean, and (review) the share
    marked as needing correction."""
    stars: Counter = Counter()
    verdicts: Counter = Counter()
    for task in tasks:
        for annotation in sorted_annotations(task):
            if annotation.get("was_cancelled"):
                continue
            results = annotation.get("result") or []
            rating = rating_of(results, spec.rating_control)
            if rating is not None:
                stars[rating] += 1
            if spec.verdict_control:
                verdicts[_choice(results, spec.verdict_control) or "(none)"] += 1
    total = sum(stars.values())
    report: dict[str, Any] = {"ratings": {str(k): stars[k] for k in sorted(stars)},
                              "mean_rating": round(sum(k * v for k, v in stars.items()) / total, 3) if total else None}
    if spec.verdict_control:
        report["verdicts"] = dict(sorted(verdicts.items()))
    return report


def _kendall_w(rankings: list[dict[str, float]]) -> float | None:
    """Kendall's coefficient of concordance of m rankings of the same n answers, corrected for ties."""
    m, ids = len(rankings), list(rankings[0])
    n = len(ids)
    totals = [sum(r[i] for r in rankings) for i in ids]
    mean = sum(totals) / n
    spread = sum((t - mean) ** 2 for t in totals)
    ties = sum(c ** 3 - c for r in rankings for c in Counter(r.values()).values())
    denominator = m * m * (n ** 3 - n) - m * ties
    return None if denominator <= 0 else round(12 * spread / denominator, 4)


def _kendall_tau(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Kendall's tau-b of two rankings of the same answers (None when either ties everything)."""
    ids = list(a)
    concordant = discordant = ties_a = ties_b = 0
    for x in range(len(ids)):
        for y in range(x + 1, len(ids)):
            da, db = a[ids[x]] - a[ids[y]], b[ids[x]] - b[ids[y]]
            ties_a += da == 0
            ties_b += db == 0
            concordant += da * db > 0
            discordant += da * db < 0
    pairs = len(ids) * (len(ids) - 1) / 2
    denominator = ((pairs - ties_a) * (pairs - ties_b)) ** 0.5
    return None if denominator == 0 else round((concordant - discordant) / denominator, 4)


def _rank_agreement(tasks: list[dict], spec: LabelingSpec) -> dict[str, Any]:
    """Agreement of annotators who ranked the same task: mean Kendall's W over tasks with 2+ complete
    rankings, mean tau-b per annotator pair, and the share of rankings left in the order shown (an
    annotator who submits without dragging leaves it so)."""
    w_values: list[float] = []
    taus: dict[str, list[float]] = defaultdict(list)
    complete = unchanged = 0
    for task in tasks:
        ids = list(rank_answers(task, spec))
        by_annotator: dict[Any, dict[str, float]] = {}
        for annotation in sorted_annotations(task):
            if annotation.get("was_cancelled") or len(ids) < 2:
                continue
            ranks, _, _ = ranking_of(annotation.get("result") or [], spec, ids)
            if ranks is None:
                continue
            complete += 1
            unchanged += all(ranks[i] == place for place, i in enumerate(ids, 1))
            by_annotator[annotator(annotation)] = ranks
        if len(by_annotator) < 2:
            continue
        w = _kendall_w(list(by_annotator.values()))
        if w is not None:
            w_values.append(w)
        people = sorted(by_annotator, key=str)
        for x in range(len(people)):
            for y in range(x + 1, len(people)):
                tau = _kendall_tau(by_annotator[people[x]], by_annotator[people[y]])
                if tau is not None:
                    taus[f"{people[x]}~{people[y]}"].append(tau)
    return {
        "kendall_w": round(statistics.mean(w_values), 4) if w_values else None,
        "kendall_tau": {pair: round(statistics.mean(v), 4) for pair, v in sorted(taus.items())},
        "complete_rankings": complete,
        "rankings_in_shown_order": round(unchanged / complete, 4) if complete else None,
    }


def percent_agreement(label_lists: list[list[Any]]) -> float | None:
    """The share of agreeing pairs among all pairs of labels given to the same item (None: no pairs)."""
    pairs = sum(len(v) * (len(v) - 1) // 2 for v in label_lists)
    agree = sum(a == b for v in label_lists for i, a in enumerate(v) for b in v[i + 1:])
    return round(agree / pairs, 4) if pairs else None


def quality_report(tasks: list[dict], spec: LabelingSpec) -> dict[str, Any]:
    """Per-annotator counts and median lead time, agreement, gold accuracy.

    Agreement is over tasks with at least two non-cancelled annotations: percent
    agreement (share of agreeing annotation pairs), and for preferences Fleiss' kappa
    and Cohen's kappa for each annotator pair that shares tasks. Gold accuracy compares
    each non-gold annotation with the ground-truth annotation of its task.
    """
    per_annotator: dict[Any, list[float]] = defaultdict(list)
    labels_by_task: dict[Any, dict[Any, str]] = {}
    gold_hits = gold_total = 0
    for task in tasks:
        labels: dict[Any, str] = {}
        gold_label = None
        done = [a for a in sorted_annotations(task) if not a.get("was_cancelled")]
        for annotation in done:
            per_annotator[annotator(annotation)].append(float(annotation.get("lead_time") or 0.0))
        # Labels only matter where there is something to compare: 2+ annotations or a gold one.
        if len(done) < 2 and not any(a.get("ground_truth") for a in done):
            continue
        for annotation in done:
            who = annotator(annotation)
            label = _QUALITY_LABELS[spec.kind](annotation.get("result") or [], spec, task)
            if label is None:
                continue
            if annotation.get("ground_truth"):
                gold_label = label
            else:
                labels[who] = label
        if gold_label is not None:
            gold_total += len(labels)
            gold_hits += sum(1 for label in labels.values() if label == gold_label)
        if labels:
            labels_by_task[task.get("id")] = labels

    multi = {t: l for t, l in labels_by_task.items() if len(l) >= 2}
    report: dict[str, Any] = {
        "annotators": {
            str(who): {"annotations": len(times), "median_lead_time_s": round(statistics.median(times), 3)}
            for who, times in sorted(per_annotator.items(), key=lambda kv: str(kv[0]))
        },
        "tasks_with_2plus_annotations": len(multi),
        "percent_agreement": percent_agreement([list(labels.values()) for labels in multi.values()]),
        "gold_accuracy": round(gold_hits / gold_total, 4) if gold_total else None,
        "gold_annotations_checked": gold_total,
    }
    if spec.kind == "preference" and multi:
        report["fleiss_kappa"] = _fleiss_kappa([list(l.values()) for l in multi.values()], ("left", "right"))
        report["cohen_kappa"] = _pairwise_cohen(multi)
    if spec.kind == "rank":
        report.update(_rank_agreement(tasks, spec))
    if spec.kind in ("rate", "review"):
        report.update(_ratings(tasks, spec))
    return report


def _fleiss_kappa(items: list[list[str]], categories: tuple[str, ...]) -> float | None:
    totals = Counter()
    agreement = []
    for ratings in items:
        n = len(ratings)
        counts = Counter(ratings)
        totals.update(counts)
        agreement.append((sum(c * c for c in counts.values()) - n) / (n * (n - 1)))
    n_ratings = sum(totals.values())
    p_e = sum((totals[c] / n_ratings) ** 2 for c in categories)
    p_bar = sum(agreement) / len(agreement)
    return None if p_e == 1 else round((p_bar - p_e) / (1 - p_e), 4)


def _pairwise_cohen(multi: dict[Any, dict[Any, str]]) -> dict[str, float | None]:
    shared: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
    for labels in multi.values():
        people = sorted(labels, key=str)
        for i in range(len(people)):
            for j in range(i + 1, len(people)):
                shared[(str(people[i]), str(people[j]))].append((labels[people[i]], labels[people[j]]))
    out = {}
    for (a, b), pairs in sorted(shared.items()):
        n = len(pairs)
        p_o = sum(x == y for x, y in pairs) / n
        ca, cb = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
        p_e = sum((ca[k] / n) * (cb[k] / n) for k in set(ca) | set(cb))
        out[f"{a}~{b}"] = None if p_e == 1 else round((p_o - p_e) / (1 - p_e), 4)
    return out


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

    tasks = sorted(tasks, key=_id_order)
    if skip:
        tasks = [{**t, "annotations": [a for a in (t.get("annotations") or []) if not exported_before(a)]}
                 for t in tasks]
    scrub = Scrubber(options.scrub_pii)
    out = ExportResult(kind=spec.kind, records={"train": [], "validation": []}, rejects=[],
                       counts=Counter(), quality={})
    EXPORTERS[spec.kind](tasks, spec, options, scrub, out)
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
    out.annotation_versions = {str(a["id"]): a.get("updated_at") for a in sorted(exported, key=_id_order)}
    return out


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
    from hilt.core.errors import UserError

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
    from hilt.core.errors import UserError

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
    from hilt.core.errors import UserError

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
