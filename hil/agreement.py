"""How annotators agree: per-annotator counts and lead times, percent agreement, gold accuracy, and
each template's own figures (``Template.labels`` says what two annotations of a task are compared
by; ``Template.agreement`` adds kappa, Kendall's W or the rating spread)."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

from hilt.labeling.templates import LabelingSpec, template
from hilt.labeling.results import (
    annotator, pairwise_choice, choice_of, normalize, rank_answers, ranking_of, ranking_text, rating_of, sorted_annotations,
    textarea,
)


def answer_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    text = textarea(results, spec, spec.answer_control)
    return normalize(text) if text else None


def rating_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    rating = rating_of(results, spec.rating_control)
    return None if rating is None else str(rating)


def choice_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    return pairwise_choice(results)


def ranking_label(results: list[dict], spec: LabelingSpec, task: dict) -> str | None:
    ranks, _, _ = ranking_of(results, spec, list(rank_answers(task, spec)))
    return None if ranks is None else ranking_text(ranks)


def rating_summary(tasks: list[dict], spec: LabelingSpec, multi: dict | None = None) -> dict[str, Any]:
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
                verdicts[choice_of(results, spec.verdict_control) or "(none)"] += 1
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


def rank_agreement(tasks: list[dict], spec: LabelingSpec, multi: dict | None = None) -> dict[str, Any]:
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
    kind = template(spec.kind)
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
            label = kind.label(annotation.get("result") or [], spec, task)
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
    report.update(kind.agreement_figures(tasks, spec, multi))
    return report


def preference_agreement(tasks: list[dict], spec: LabelingSpec, multi: dict) -> dict[str, Any]:
    """Fleiss' kappa over the tasks with 2+ choices, and Cohen's kappa for each annotator pair."""
    if not multi:
        return {}
    return {"fleiss_kappa": _fleiss_kappa([list(l.values()) for l in multi.values()], ("left", "right")),
            "cohen_kappa": _pairwise_cohen(multi)}


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
