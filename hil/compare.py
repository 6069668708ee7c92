"""Blinded human side-by-side: two models' answers in a Label Studio preference project.

``hilt label compare`` answers each prompt with the baseline and the candidate (greedy),
and creates a project from the ``preference`` template whose tasks show the two answers
as *Answer 1* / *Answer 2* in an order drawn per pair from ``seed`` and the pair id:
random to the annotator, the same on every rerun. Which side is the candidate is kept in a
mapping file on the operator's disk, never in the task data (the task carries only an
opaque ``pair_id``). Pairs whose answers are the same text are not sent to annotators;
they count as ties.

``hilt label compare-report`` reads the project's export back through the mapping: each
Pairwise choice (left = answer1) becomes a vote for the candidate or the baseline; each
pair is won by its majority (a split vote is a tie). It reports the candidate's win rate
over decided pairs with a Wilson 95 % interval, ties, and per-annotator agreement, and
writes the result into eval.json, the candidate's hilt.json and model card, and a listing
draft. The same project exports as DPO records with ``hilt export --template preference``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError
from hilt.core.layout import MANIFEST_FILE, upsert_section

MAPPING_VERSION = 1
SECTION = "human-side-by-side"


def pair_id(index: int, prompt: str) -> str:
    return hashlib.sha256(f"{index}\x00{prompt}".encode()).hexdigest()[:16]


def candidate_side(seed: int, pid: str) -> str:
    """``answer1`` or ``answer2``: where the candidate's answer goes for this pair."""
    return "answer1" if random.Random(f"{seed}:{pid}").random() < 0.5 else "answer2"


def blind_pairs(rows: list[dict], candidate: list[str], baseline: list[str], seed: int) -> tuple[list[dict], dict]:
    """Label Studio tasks with the answers in blinded order, and the mapping that undoes it.

    Args:
        rows: prompts (``prompt``, optional ``system`` and ``id``).
        candidate, baseline: each model's answer per row.
        seed: drives the order; the same seed gives the same tasks.

    Returns:
        (tasks for the preference template, {pair_id: {"candidate": "answer1"|"answer2"} or
        {"identical": True}}).
    """
    from hilt.training.evaluation.scoring import normalize_answer

    tasks, pairs = [], {}
    for index, (row, cand, base) in enumerate(zip(rows, candidate, baseline, strict=True)):
        pid = pair_id(index, str(row["prompt"]))
        entry: dict[str, Any] = {"prompt": str(row["prompt"])}
        if row.get("id") is not None:
            entry["source_id"] = str(row["id"])
        if normalize_answer(cand) == normalize_answer(base):
            pairs[pid] = {**entry, "identical": True}
            continue
        side = candidate_side(seed, pid)
        pairs[pid] = {**entry, "candidate": side}
        data = {"prompt": str(row["prompt"]), "pair_id": pid}
        if row.get("system"):
            data["system"] = str(row["system"])
        data["answer1"], data["answer2"] = (cand, base) if side == "answer1" else (base, cand)
        tasks.append({"data": data})
    return tasks, pairs


def winner_of(selected: str, candidate_at: str) -> str:
    """Pairwise ``left``/``right`` (left = answer1) -> ``candidate`` or ``baseline``."""
    chosen = {"left": "answer1", "right": "answer2"}[selected]
    return "candidate" if chosen == candidate_at else "baseline"


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (95 % by default); None when n = 0."""
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_report(tasks: list[dict], mapping: dict) -> dict[str, Any]:
    """Win rate, ties and agreement from the export of a compare project.

    Raises:
        UserError: when a task's pair is not in the mapping (the wrong mapping file).
    """
    from hilt.labeling.agreement import percent_agreement
    from hilt.labeling.results import annotator, pairwise_choice, sorted_annotations

    pairs = mapping["pairs"]
    votes: dict[str, dict[str, str]] = {}  # pair -> annotator -> winner
    judgements = 0
    for task in tasks:
        pid = (task.get("data") or {}).get("pair_id")
        if pid not in pairs or "candidate" not in pairs[pid]:
            raise UserError(f"task {task.get('id')} (pair_id {pid!r}) is not in the mapping of project "
                            f"{mapping.get('project')}; pass the --mapping file `hilt label compare` wrote for it")
        for annotation in sorted_annotations(task):
            selected = None if annotation.get("was_cancelled") else pairwise_choice(annotation.get("result") or [])
            if selected not in ("left", "right"):
                continue
            # An annotator's latest judgement of a pair counts once.
            votes.setdefault(pid, {})[str(annotator(annotation))] = winner_of(selected, pairs[pid]["candidate"])
            judgements += 1
    outcome: dict[str, str] = {}
    for pid, by_annotator in votes.items():
        tally = Counter(by_annotator.values())
        outcome[pid] = ("tie" if tally["candidate"] == tally["baseline"]
                        else "candidate" if tally["candidate"] > tally["baseline"] else "baseline")
    identical = sum(1 for p in pairs.values() if p.get("identical"))
    wins = sum(1 for o in outcome.values() if o == "candidate")
    losses = sum(1 for o in outcome.values() if o == "baseline")
    split = sum(1 for o in outcome.values() if o == "tie")
    decided = wins + losses
    interval = wilson_interval(wins, decided)
    counted = decided + split + identical
    per_annotator: dict[str, dict[str, Any]] = defaultdict(lambda: {"judgements": 0, "prefers_candidate": 0,
                                                                   "compared": 0, "agrees": 0})
    for pid, by_annotator in votes.items():
        for who, choice in by_annotator.items():
            row = per_annotator[who]
            row["judgements"] += 1
            row["prefers_candidate"] += choice == "candidate"
            others = Counter(c for w, c in by_annotator.items() if w != who)
            if others and others["candidate"] != others["baseline"]:
                row["compared"] += 1
                row["agrees"] += choice == others.most_common(1)[0][0]
    annotators = {
        who: {"judgements": r["judgements"],
              "candidate_preferred": round(r["prefers_candidate"] / r["judgements"], 4),
              "pairs_shared_with_others": r["compared"],
              "agreement_with_others": round(r["agrees"] / r["compared"], 4) if r["compared"] else None}
        for who, r in sorted(per_annotator.items())
    }
    shared = [list(v.values()) for v in votes.values() if len(v) >= 2]
    return {
        "project": mapping.get("project"),
        "candidate": mapping.get("candidate"),
        "baseline": mapping.get("baseline"),
        "pairs": len(pairs),
        "judged_pairs": len(outcome),
        "unjudged_pairs": len(pairs) - identical - len(outcome),
        "judgements": judgements,
        "wins": wins,
        "losses": losses,
        "ties": {"split_votes": split, "identical_answers": identical, "total": split + identical},
        "win_rate": round(wins / decided, 4) if decided else None,
        "win_rate_ci95": [round(interval[0], 4), round(interval[1], 4)] if interval else None,
        "win_rate_ties_as_half": round((wins + 0.5 * (split + identical)) / counted, 4) if counted else None,
        "annotators": annotators,
        "percent_agreement": percent_agreement(shared),
        "pairs_with_2plus_judgements": len(shared),
    }


def summary_markdown(report: dict) -> str:
    """A short section for the model card and the listing draft."""
    ci = report["win_rate_ci95"]
    rate = "n/a (no decided pairs)" if report["win_rate"] is None else (
        f"**{report['win_rate']:.1%}** (95 % Wilson interval {ci[0]:.1%}–{ci[1]:.1%})")
    lines = [
        "## Human side-by-side evaluation",
        "",
        # The card and listing ship: the baseline by name and weights hash, never the seller's local path.
        f"Annotators compared this model's answers with the baseline's "
        f"(`{report['baseline'].get('version') or Path(report['baseline']['path']).name}`) "
        f"on {report['pairs']} prompts, blinded and in random order, in Label Studio project {report['project']}.",
        "",
        f"- Candidate win rate over decided pairs: {rate}; {report['wins']} wins, {report['losses']} losses.",
        f"- Ties: {report['ties']['total']} ({report['ties']['split_votes']} split votes, "
        f"{report['ties']['identical_answers']} identical answers); {report['unjudged_pairs']} pairs not judged yet.",
        f"- {report['judgements']} judgements by {len(report['annotators'])} annotator(s); agreement between "
        f"annotators on shared pairs: "
        + (f"{report['percent_agreement']:.1%}" if report["percent_agreement"] is not None else "n/a") + ".",
        "",
    ]
    return "\n".join(lines)


def read_mapping(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"--mapping {path}: no such file; `hilt label compare` writes it (see its --out)")
    mapping = json.loads(path.read_text())
    if mapping.get("version") != MAPPING_VERSION or "pairs" not in mapping:
        raise UserError(f"{path}: not a mapping file of `hilt label compare` (version {MAPPING_VERSION})")
    return mapping


def create_compare_project(client, baseline: Path, candidate: Path, rows: list[dict], out: Path, seed: int = 0,
                           max_new_tokens: int = 64, title: str | None = None,
                           prompts_file: Path | None = None) -> tuple[int, Path, dict]:
    """Answer ``rows`` with both models, create the blinded project, write its mapping file.

    Returns:
        (project id, mapping file, mapping).

    Raises:
        UserError: when the two models answer every prompt identically (nothing to judge).
    """
    from hilt.labeling.importing import model_version
    from hilt.labeling.templates import template_xml
    from hilt.core.outputs import claim_output_dir, write_atomic
    from hilt.training.evaluation.generation import greedy_answers

    # The mapping folder first: a folder of someone else's files is refused before any work.
    claim_output_dir(out, "compare", "--out", recognise=lambda d: any(d.glob("project-*.json")),
                     hint="the --out of an earlier `hilt label compare`")
    models = {"baseline": baseline, "candidate": candidate}
    conversations = [([{"role": "system", "content": r["system"]}] if r.get("system") else [])
                     + [{"role": "user", "content": str(r["prompt"])}] for r in rows]
    answers = {name: greedy_answers(d, conversations, max_new_tokens=max_new_tokens) for name, d in models.items()}
    tasks, pairs = blind_pairs(rows, answers["candidate"], answers["baseline"], seed)
    if not tasks:
        raise UserError(f"both models answer all {len(rows)} prompts with the same text; nothing to compare")
    title = title or f"hilt compare: {candidate.name} vs {baseline.name}"
    project = client.create_project(title, template_xml("preference"),
                                    description="Pick the better answer. The order of the answers is random.")
    client.import_tasks(project, tasks)
    mapping = {
        "version": MAPPING_VERSION, "project": project, "url": client.url, "seed": seed,
        "prompts": {"file": str(prompts_file.resolve()) if prompts_file else None,
                    "sha256": hashlib.sha256(prompts_file.read_bytes()).hexdigest()
                    if prompts_file and prompts_file.is_file() else None},
        "max_new_tokens": max_new_tokens,
        **{name: {"path": str(d.resolve()), "version": model_version(d)} for name, d in models.items()},
        "pairs": pairs,
    }
    mapping_file = out / f"project-{project}.json"
    write_atomic(mapping_file, json.dumps(mapping, indent=2) + "\n")
    return project, mapping_file, mapping


def report_compare(client, project: int, mapping_file: Path, eval_dir: Path | None = None,
                   listing: Path | None = None) -> tuple[dict, str, list[Path]]:
    """Export the project, report, and write the result into eval.json, the candidate and a listing.

    Returns:
        (report, Markdown section, files written).
    """
    mapping = read_mapping(mapping_file)
    if mapping["project"] != project:
        raise UserError(f"--mapping {mapping_file} belongs to project {mapping['project']}, not {project}; "
                        "pass the matching mapping file")
    report = compare_report(client.export_tasks(project), mapping)
    section = summary_markdown(report)
    eval_dir = eval_dir or mapping_file.parent
    eval_dir.mkdir(parents=True, exist_ok=True)
    eval_file = eval_dir / "eval.json"
    result = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    result["human_side_by_side"] = report
    eval_file.write_text(json.dumps(result, indent=2) + "\n")
    written = [eval_file]
    candidate = Path(mapping["candidate"]["path"])
    if (candidate / MANIFEST_FILE).is_file():
        manifest = json.loads((candidate / MANIFEST_FILE).read_text())
        manifest["human_side_by_side"] = report
        (candidate / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        written.append(candidate / MANIFEST_FILE)
    if (candidate / "README.md").is_file():
        upsert_section(candidate / "README.md", section, SECTION)
        written.append(candidate / "README.md")
    if listing is not None:
        upsert_section(listing, section, SECTION)
        written.append(listing)
    return report, section, written
