"""Reading one annotation: who made it, its judgements (a written answer, a choice, a rating, a
ranking) and why one is unusable (the reject reasons). The exporters (``exporters.py``) and the
agreement figures (``agreement.py``) read annotations through these."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from hilt.labeling.templates import LabelingSpec

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


def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def same_text(a: str, b: str) -> bool:
    """Equal but for white space: a correction of case or punctuation is still a correction."""
    return a.split() == b.split()


def annotator(annotation: dict) -> Any:
    """Who made an annotation: the user id, or the email where the export expands the user."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):  # some exports expand the user
        return who.get("email") or who.get("id")
    return who


def pairwise_choice(results: list[dict], control: str | None = None) -> str | None:
    """The ``selected`` side (``left`` = first object) of the Pairwise result (of ``control``, if named)."""
    return next(((r.get("value") or {}).get("selected") for r in results
                 if r.get("type") == "pairwise" and (control is None or r.get("from_name") == control)), None)


def textarea(results: list[dict], spec: LabelingSpec, control: str | None, exclude: str | None = None) -> str | None:
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


def id_order(item: dict) -> tuple:
    """Sort key for tasks and annotations by id, whatever type the ids have (checked before)."""
    value = item.get("id")
    return (value is None, str(type(value).__name__), value if value is not None else 0)


def sorted_annotations(task: dict) -> list[dict]:
    """A task's annotations oldest first (by id), so "latest" means the same in every pass."""
    return sorted(task.get("annotations") or [], key=id_order)


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


def answer_note(results: list[dict], spec: LabelingSpec, control: str | None) -> str:
    """A TextArea on the graded answer (the critique or the correction), stripped; empty when absent."""
    if control is None:
        return ""
    for r in results:
        if r.get("type") == "textarea" and r.get("from_name") == control:
            text = (r.get("value") or {}).get("text")
            return ("\n".join(str(t) for t in text) if isinstance(text, list) else str(text or "")).strip()
    return ""


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


def ranking_text(ranks: dict[str, float]) -> str:
    """A ranking as text: ``2>1=3`` (answer 2 best, 1 and 3 tied)."""
    tiers = [[i for i in ranks if ranks[i] == level] for level in sorted(set(ranks.values()))]
    return ">".join("=".join(tier) for tier in tiers)


def choice_of(results: list[dict], control: str | None) -> str | None:
    for r in results:
        if r.get("type") == "choices" and (control is None or r.get("from_name") == control):
            chosen = (r.get("value") or {}).get("choices") or []
            if isinstance(chosen, str):
                return chosen
            return str(chosen[0]) if chosen else None
    return None
