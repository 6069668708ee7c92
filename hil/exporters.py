"""One exporter per labeling template: a project's tasks -> records and rejects (``Template.exporter``).

Each takes ``(tasks, spec, options, scrub, out)`` and appends to ``out`` (an ``ExportResult``):
every annotation ends in a record or in the rejects with its reason. ``export.export_annotations``
calls the template's exporter and checks that the counts add up.
"""

from __future__ import annotations

import statistics
from collections import Counter

from hilt.labeling.templates import LabelingSpec
from hilt.labeling.results import (
    CONFLICTING_PREFERENCE, DUPLICATE, EMPTY_ANSWER, IDENTICAL_ANSWERS, INVALID_RATING, NO_ANSWER,
    NO_SELECTION, NOT_CORRECTED, NUL_BYTES, SUPERSEDED, TIED_RANKING, TOO_LONG, annotator, answer_note,
    choice_of, normalize, pairwise_choice, rank_answers, ranking_of, ranking_text, rating_problem,
    raw_rating, repeated_answer_ids, same_text, sorted_annotations, textarea,
)
from hilt.labeling.export import (
    base_meta, ExportOptions, ExportResult, prompt_messages, RankPolicy, reject, Scrubber, split_of,
    usable_results,
)


def export_sft(tasks: list[dict], spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    seen_answers: set[tuple[str, ...]] = set()
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        candidates = []
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, None, out)
            if results is None:
                continue
            answer = textarea(results, spec, spec.answer_control)
            if answer is None:
                out.rejects.append(reject(task, annotation, NO_ANSWER, "no TextArea result on the prompt"))
                continue
            if not answer.strip():
                out.rejects.append(reject(task, annotation, EMPTY_ANSWER))
                continue
            if len(answer) > options.max_chars:
                out.rejects.append(reject(task, annotation, TOO_LONG, f"{len(answer)} > {options.max_chars} chars"))
                continue
            if "\x00" in answer:
                out.rejects.append(reject(task, annotation, NUL_BYTES, "the answer holds NUL (\\x00) characters"))
                continue
            candidates.append((annotation, answer.strip()))

        # Policy: which accepted answers of this task become records.
        if options.policy == "latest" and candidates:
            latest = max(candidates, key=lambda c: (c[0].get("updated_at") or "", c[0].get("id") or 0))
            for c in candidates:
                if c is not latest:
                    out.rejects.append(reject(task, c[0], SUPERSEDED, "policy latest"))
            candidates = [latest]
        elif options.policy == "ground-truth-first" and any(c[0].get("ground_truth") for c in candidates):
            gold = next(c for c in candidates if c[0].get("ground_truth"))
            for c in candidates:
                if c is not gold:
                    out.rejects.append(reject(task, c[0], SUPERSEDED, "policy ground-truth-first"))
            candidates = [gold]

        split = split_of(task.get("id"), options.validation_fraction)
        for annotation, answer in candidates:
            key = (*(normalize(m["content"]) for m in prompt), normalize(answer))
            if options.policy != "all" and key in seen_answers:
                out.rejects.append(reject(task, annotation, DUPLICATE, "same prompt and answer already exported"))
                continue
            seen_answers.add(key)
            meta = base_meta(task, annotation)
            draft = annotation.get("prediction") or {}
            if draft.get("model_version") is not None:
                meta["draft_model_version"] = draft.get("model_version")
                draft_text = textarea(draft.get("result") or [], spec, spec.answer_control)
                meta["draft_edited"] = (draft_text or "").strip() != answer
            out.records[split].append(
                {"messages": [*prompt, {"role": "assistant", "content": scrub(answer)}], "meta": meta}
            )
            out.counts["annotations_in_records"] += 1


def export_preference(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    seen: set[tuple[str, str, str]] = set()
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        data = task.get("data") or {}
        left, right = data.get(spec.left_key), data.get(spec.right_key)
        votes: list[tuple[dict, str, str | None]] = []
        both = isinstance(left, str) and left.strip() and isinstance(right, str) and right.strip()
        missing = None if both else f"task data needs '{spec.left_key}' and '{spec.right_key}'"
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            selected = pairwise_choice(results, spec.comparison_control)
            if selected not in ("left", "right"):
                out.rejects.append(reject(task, annotation, NO_SELECTION, "no Pairwise left/right choice"))
                continue
            if "\x00" in left + right:
                out.rejects.append(reject(task, annotation, NUL_BYTES, "an answer holds NUL (\\x00) characters"))
                continue
            if normalize(left) == normalize(right):
                out.rejects.append(reject(task, annotation, IDENTICAL_ANSWERS, "both answers are the same text"))
                continue
            rationale = textarea(results, spec, spec.rationale_control, exclude=None)
            votes.append((annotation, selected, rationale))
        if not votes:
            continue
        tally = Counter(v[1] for v in votes)
        if tally["left"] == tally["right"]:
            for annotation, _, _ in votes:
                out.rejects.append(reject(task, annotation, CONFLICTING_PREFERENCE,
                                           f"tie: {tally['left']} left vs {tally['right']} right"))
            continue
        winner = "left" if tally["left"] > tally["right"] else "right"
        chosen, rejected = (left, right) if winner == "left" else (right, left)
        key = (normalize(prompt[-1]["content"]), normalize(chosen), normalize(rejected))
        if key in seen:
            for annotation, _, _ in votes:
                out.rejects.append(reject(task, annotation, DUPLICATE, "same prompt and pair already exported"))
            continue
        seen.add(key)
        first = votes[0][0]
        meta = base_meta(task, first)
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


def usable_rating(task: dict, annotation: dict, results: list[dict], spec: LabelingSpec, out: ExportResult):
    """The annotation's star rating (rate, review), or None after recording why it is rejected: no Rating,
    or one that is not a whole number of stars in 1..max."""
    rating = raw_rating(results, spec.rating_control)
    if rating is None:
        out.rejects.append(reject(task, annotation, NO_SELECTION, "no Rating"))
    elif problem := rating_problem(rating, spec.max_rating):
        out.rejects.append(reject(task, annotation, INVALID_RATING, problem))
    else:
        return rating
    return None


def export_rate(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """One KTO record per task (desirable when the mean rating reaches the threshold); every
    correction also as an SFT record and a (corrected over original) preference pair."""
    out.extra = {"corrections/sft": {"train": [], "validation": []},
                 "corrections/preference": {"train": [], "validation": []}}
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        answer = (task.get("data") or {}).get(spec.answer_key)
        grades: list[tuple[dict, int, str, str]] = []
        missing = None if isinstance(answer, str) and answer.strip() else f"task data needs '{spec.answer_key}'"
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            rating = usable_rating(task, annotation, results, spec, out)
            if rating is None:
                continue
            corrected = answer_note(results, spec, spec.correction_control)
            if "\x00" in answer + corrected:
                out.rejects.append(reject(task, annotation, NUL_BYTES, "the answer holds NUL (\\x00) characters"))
                continue
            grades.append((annotation, rating, answer_note(results, spec, spec.critique_control), corrected))
        if not grades:
            continue
        split = split_of(task.get("id"), options.validation_fraction)
        mean = statistics.mean(g[1] for g in grades)
        first = grades[0][0]
        meta = base_meta(task, first)
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
            if not corrected or same_text(corrected, answer):
                continue
            fixed = {"role": "assistant", "content": scrub(corrected)}
            source = {**base_meta(task, annotation), "corrects_answer": True}
            out.extra["corrections/sft"][split].append({"messages": [*prompt, fixed], "meta": source})
            out.extra["corrections/preference"][split].append(
                {"prompt": prompt, "chosen": [fixed], "rejected": original, "meta": source})


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


def export_rank(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """Preference pairs from rankings: every annotator's complete ranking counts, the task's order is
    the mean rank of each answer, and the policy picks the pairs."""
    seen: set[tuple[str, str, str]] = set()
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        texts = rank_answers(task, spec)
        sources = (task.get("data") or {}).get("answer_sources") or {}
        missing = None if len(texts) >= 2 else f"task data needs 2 or more answers in '{spec.answers_key}'"
        repeated = repeated_answer_ids(task, spec)
        if repeated:  # which text a ranked id means is then a guess: the task is rejected, not half-read
            missing = (f"answer id(s) {', '.join(repeated)} appear more than once in '{spec.answers_key}'; give "
                       "each List item its own id")
        rankings: list[tuple[dict, dict[str, float], str | None]] = []
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            ranks, reason, detail = ranking_of(results, spec, list(texts))
            if ranks is None:
                out.rejects.append(reject(task, annotation, reason, detail))
                continue
            if any("\x00" in text for text in texts.values()):
                out.rejects.append(reject(task, annotation, NUL_BYTES, "an answer holds NUL (\\x00) characters"))
                continue
            rankings.append((annotation, ranks, textarea(results, spec, spec.rationale_control)))
        if not rankings:
            continue
        mean = {i: round(statistics.mean(r[1][i] for r in rankings), 6) for i in texts}
        pairs, why = ranked_pairs(mean, options.rank_policy)
        reason = TIED_RANKING
        if pairs:
            pairs = [(a, b) for a, b in pairs if normalize(texts[a]) != normalize(texts[b])]
            reason, why = IDENTICAL_ANSWERS, "every pair the policy gives holds the same text twice"
        if pairs:
            keys = {(a, b): (normalize(prompt[-1]["content"]), normalize(texts[a]), normalize(texts[b]))
                    for a, b in pairs}
            pairs = [pair for pair in pairs if keys[pair] not in seen]
            seen.update(keys.values())
            reason, why = DUPLICATE, "same prompt and pairs already exported"
        if not pairs:
            out.rejects.extend(reject(task, r[0], reason, why) for r in rankings)
            continue
        first = rankings[0][0]
        meta = base_meta(task, first)
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


def export_review(tasks, spec: LabelingSpec, options: ExportOptions, scrub: Scrubber, out: ExportResult):
    """A reviewed answer of the deployed model: each correction becomes an SFT record of the
    conversation plus the corrected answer, and a (corrected over original) preference pair; an
    answer left as it was is a ``not_corrected`` reject that keeps its rating."""
    out.extra = {"corrections/preference": {"train": [], "validation": []}}
    seen: set[tuple[str, ...]] = set()
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        data = task.get("data") or {}
        answer = data.get(spec.answer_key)
        missing = None if isinstance(answer, str) else f"task data needs '{spec.answer_key}'"
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, missing, out)
            if results is None:
                continue
            rating = usable_rating(task, annotation, results, spec, out)
            if rating is None:
                continue
            verdict = choice_of(results, spec.verdict_control)
            corrected = answer_note(results, spec, spec.correction_control)
            if not corrected or same_text(corrected, answer):
                detail = f"rating {rating}" + (f", marked {verdict!r} but not edited" if verdict == "Needs correction"
                                               else "")
                out.rejects.append({**reject(task, annotation, NOT_CORRECTED, detail), "rating": rating})
                continue
            if "\x00" in corrected or len(corrected) > options.max_chars:
                reason = NUL_BYTES if "\x00" in corrected else TOO_LONG
                out.rejects.append(reject(task, annotation, reason, "the corrected answer"))
                continue
            key = (*(normalize(m["content"]) for m in prompt), normalize(corrected))
            if key in seen:
                out.rejects.append(reject(task, annotation, DUPLICATE, "same conversation and correction"))
                continue
            seen.add(key)
            split = split_of(task.get("id"), options.validation_fraction)
            fixed = {"role": "assistant", "content": scrub(corrected)}
            meta = {**base_meta(task, annotation), "rating": rating, "verdict": verdict,
                    "original": scrub(answer), "event_id": data.get("event_id"),
                    "inference_time": data.get("inference_time"), "flags": data.get("flags")}
            out.records[split].append({"messages": [*prompt, fixed], "meta": meta})
            out.extra["corrections/preference"][split].append(
                {"prompt": prompt, "chosen": [fixed], "rejected": [{"role": "assistant", "content": scrub(answer)}],
                 "meta": meta})
            out.counts["annotations_in_records"] += 1
