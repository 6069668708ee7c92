"""``hilt evaluate``: held-out loss, perplexity and a task metric, base vs tuned, with gates.

For each model (the candidate and, optionally, a baseline) on the held-out records:

- **loss / perplexity**: mean token negative log-likelihood of the reference answer (the
  last assistant turn; ``chosen`` for preference records) through its end-of-turn token,
  given the conversation before it, rendered with the model's own chat template (the
  tokens assistant-only training learns); perplexity = exp(loss);
- **exact_match**: the greedy answer equals the reference after whitespace is collapsed;
- **rougeL**: ROUGE-L F1 (longest common subsequence over lower-cased word tokens), the
  usual metric for summaries.

Beside the task, both models are scored on a general set (``hilt.training.evaluation.general``: the
project's own facts, arithmetic, instructions and formats, or ``--general FILE``):
``general_loss`` and ``general_accuracy``, so a model that learned the task by forgetting
everything else is seen (and gated: ``general_loss<=+0.15``). They go into eval.json
(``general``), the report, and the candidate's model card and hilt.json.

The recipe names which task metric is the headline (``eval.metric``); both are always
reported. ``--gate "rougeL>=+0.05"`` compares against the baseline when the number is
signed (candidate - baseline), against the value itself when it is not
(``exact_match>=0.6``); loss-like metrics take ``<=``. A failed gate makes the exit code 1,
so a pipeline can refuse to package a model that did not improve.

Writes ``eval.json`` (metrics, deltas, gates, data hash), ``samples.jsonl`` (every prompt
with the reference and both models' answers side by side), ``metrics.png`` and
``report.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError
from hilt.core.layout import MANIFEST_FILE
from hilt.training.data.records import check_record, iter_jsonl
from hilt.training.data.formats import TEMPLATE_FILE
from hilt.training.evaluation.general import GENERAL_METRICS
from hilt.training.base.recipe import TASK_METRICS
from hilt.training.evaluation.scoring import exact_match, heldout_loss, rouge_l

EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.jsonl"
REPORT_FILE = "report.md"
METRICS_PLOT_FILE = "metrics.png"
METRICS = ("loss", "perplexity", *TASK_METRICS)
GATE_METRICS = (*METRICS, *GENERAL_METRICS)
CARD_SECTION = "general-skills"
_GATE = re.compile(r"^\s*([A-Za-z_]+)\s*(>=|<=|>|<)\s*([+-]?)\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)\s*$")


# ---------------------------------------------------------------- metrics on text


# ---------------------------------------------------------------- gates


@dataclass(frozen=True)
class Gate:
    """``metric OP [+|-]number``: signed = delta against the baseline, unsigned = absolute."""

    text: str
    metric: str
    op: str
    threshold: float
    relative: bool

    def check(self, candidate: dict[str, float], baseline: dict[str, float] | None) -> dict[str, Any]:
        value = candidate[self.metric] - baseline[self.metric] if self.relative else candidate[self.metric]
        passed = {">=": value >= self.threshold, "<=": value <= self.threshold,
                  ">": value > self.threshold, "<": value < self.threshold}[self.op]
        return {"gate": self.text, "metric": self.metric, "relative": self.relative, "op": self.op,
                "threshold": self.threshold, "value": round(value, 6), "passed": bool(passed)}


def parse_gate(text: str, metrics: tuple[str, ...] = GATE_METRICS) -> Gate:
    """Parse ``rougeL>=+0.05`` / ``exact_match>=0.6`` / ``loss<=-0.1`` (a metric of ``metrics``).

    Raises:
        UserError: naming the gate, what is wrong and the form that works.
    """
    match = _GATE.match(text)
    if not match:
        raise UserError(f"--gate '{text}': not METRIC OP NUMBER; write e.g. --gate 'rougeL>=+0.05' "
                        "(signed = change against --baseline) or --gate 'exact_match>=0.6' (absolute)")
    metric, op, sign, number = match.groups()
    if metric not in metrics:
        raise UserError(f"--gate '{text}': unknown metric '{metric}'; use one of {', '.join(metrics)}")
    threshold = float(number) * (-1 if sign == "-" else 1)
    return Gate(text.strip(), metric, op, threshold, relative=bool(sign))


# ---------------------------------------------------------------- data


def read_eval_records(data: Path) -> tuple[list[dict], Path]:
    """Held-out records: ``DIR/validation/*.jsonl`` of a dataset, or the *.jsonl in ``DIR``.

    Each becomes ``{"prompt": [messages], "reference": str, "kind": str|None}``.

    Raises:
        UserError: when there is nothing to evaluate on, or a record has no reference.
    """
    if not data.exists():
        raise UserError(f"--data {data}: no such file or directory; pass a dataset dir from `hilt export`")
    if data.is_file():
        files = [data]
    else:
        channel = data / "validation" if (data / "validation").is_dir() else data
        # Top level only: a dataset folder without validation/ must not evaluate on its train/.
        files = sorted(p for p in channel.glob("*") if p.is_file() and p.suffix in (".jsonl", ".json")
                       and p.name != TEMPLATE_FILE)
    if not files:
        raise UserError(f"--data {data}: no validation/*.jsonl or *.jsonl to evaluate on; "
                        "export with --validation-fraction > 0 or pass a JSONL file")
    from hilt.training.data.formats import detect_format, read_template

    ctx = read_template(files[0].parent)
    out = []
    for record, where in iter_jsonl(files):
        # Held-out data of any format and either kind: read off the record, checked like training data.
        fmt = detect_format(record, where, ctx)
        checked = check_record(fmt.convert(record, where, ctx), fmt.kind, where)
        if "messages" in checked:
            messages = checked["messages"]
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            prompt, reference = messages[:last], messages[last]["content"]
        elif "chosen" in checked:
            prompt, reference = checked["prompt"], checked["chosen"][-1]["content"]
        elif checked["label"]:  # unpaired (KTO): only a desirable answer is a reference
            prompt, reference = checked["prompt"], checked["completion"][-1]["content"]
        else:
            continue
        out.append({"prompt": prompt, "reference": reference, "kind": (record.get("meta") or {}).get("kind")})
    if not out:
        raise UserError(f"--data {data}: the held-out files are empty")
    return out, data


def records_sha256(records: list[dict]) -> str:
    digest = hashlib.sha256()
    for r in records:
        digest.update(json.dumps([r["prompt"], r["reference"]], sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- model side


def score_model(model_dir: Path, records: list[dict], max_new_tokens: int = 64,
                max_length: int = 1024, label: str = "model",
                general: list[dict] | None = None) -> tuple[dict[str, float], list[str]]:
    """Loss, perplexity, exact match and ROUGE-L of one model. Returns (metrics, answers).

    With ``general`` items, ``metrics["general"]`` holds what ``score_general`` returns for them:
    (scores, answers, passed).
    """
    from hilt.training.evaluation.generation import load_model

    model, tokenizer = load_model(model_dir)
    loss = heldout_loss(model, tokenizer, records, max_length=max_length)
    from hilt.training.evaluation.generation import generate_answers

    answers = generate_answers(model, tokenizer, [r["prompt"] for r in records], max_new_tokens,
                               desc=f"{label}: answers")
    n = len(records)
    metrics = {
        "loss": round(loss, 6),
        "perplexity": round(math.exp(min(loss, 50.0)), 6),
        "exact_match": round(sum(exact_match(a, r["reference"]) for a, r in zip(answers, records)) / n, 6),
        "rougeL": round(sum(rouge_l(a, r["reference"]) for a, r in zip(answers, records)) / n, 6),
    }
    if general:
        from hilt.training.evaluation.general import score_general

        metrics["general"] = score_general(model, tokenizer, general, max_new_tokens, label)
    del model
    return metrics, answers


def task_metric_of(model_dir: Path) -> str:
    """The headline task metric the model's recipe names (``eval.metric`` in hilt.json)."""
    manifest = Path(model_dir) / MANIFEST_FILE
    if manifest.is_file():
        recipe = json.loads(manifest.read_text()).get("recipe") or {}
        metric = (recipe.get("eval") or {}).get("metric")
        if metric in TASK_METRICS:
            return metric
    return "exact_match"


# ---------------------------------------------------------------- report


def plot_metrics(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = result["models"]
    names = list(models)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        m = models[name]["metrics"]
        left.bar([x + i * width for x in range(len(TASK_METRICS))], [m[k] for k in TASK_METRICS], width, label=name)
        right.bar([i], [m["loss"]], 0.6, label=name)
    left.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(TASK_METRICS))], TASK_METRICS)
    left.set_ylim(0, 1)
    left.set_title("task metrics (higher is better)")
    left.legend()
    right.set_xticks(range(len(names)), names)
    right.set_title("held-out loss (lower is better)")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, metadata={"Software": None})
    plt.close(fig)


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_report(result: dict, samples: list[dict], out: Path) -> None:
    models = result["models"]
    names = list(models)
    lines = [f"# Evaluation: {models['candidate']['path']}", "",
             f"{result['data']['records']} held-out records from `{result['data']['path']}` "
             f"(sha256 `{result['data']['sha256'][:16]}…`). Task metric: **{result['task_metric']}**.", "",
             *_metric_table({n: models[n]["metrics"] for n in names}, METRICS, result.get("deltas")),
             "", f"![metrics]({METRICS_PLOT_FILE})", ""]
    if "general" in result:
        lines += _general_section(result["general"])
    if result["gates"]:
        lines += ["## Gates", "", "| gate | value | result |", "| --- | --- | --- |"]
        lines += [f"| `{g['gate']}` | {g['value']:+.4f} | {'pass' if g['passed'] else 'FAIL'} |" for g in result["gates"]]
        lines.append("")
    lines += ["## Samples", "", "| prompt | reference | " + " | ".join(names) + " |",
              "| --- | --- |" + " --- |" * len(names)]
    for s in samples[:20]:
        lines.append(f"| {_cell(s['prompt'][-1]['content'])} | {_cell(s['reference'])} | "
                     + " | ".join(_cell(s[n]) for n in names) + " |")
    lines += ["", f"All {len(samples)} samples: `{SAMPLES_FILE}`.", ""]
    out.write_text("\n".join(lines))


def _metric_table(values: dict[str, dict], metrics: tuple[str, ...], deltas: dict | None) -> list[str]:
    """A Markdown table: one row per metric, one column per model, and the change when there is a baseline."""
    names = list(values)
    lines = ["| metric | " + " | ".join(names) + (" | change |" if deltas else ""),
             "| --- |" + " --- |" * (len(names) + bool(deltas))]
    for metric in metrics:
        row = f"| {metric} | " + " | ".join(f"{values[n][metric]:.4f}" for n in names)
        lines.append(row + (f" | {deltas[metric]:+.4f} |" if deltas else " |"))
    return lines


def _general_section(general: dict) -> list[str]:
    models = general["models"]
    names = list(models)
    lines = ["## General skills (did it forget?)", "",
             f"{general['records']} prompts of `{general['set']}` (facts, arithmetic, instructions, formats; "
             f"sha256 `{general['sha256'][:16]}…`), outside the task: a model that learned the task by forgetting "
             "shows it here.", "", *_metric_table(models, GENERAL_METRICS, general.get("deltas"))]
    categories = sorted(models["candidate"]["by_category"])
    for category in categories:
        lines.append(f"| accuracy: {category} | " + " | ".join(f"{models[n]['by_category'][category]:.2f}" for n in names)
                     + (" | |" if "baseline" in models else " |"))
    changed = [s for s in general["samples"] if "baseline" in s and s["baseline_passed"] and not s["candidate_passed"]]
    if changed:
        lines += ["", "Answers the base got right and the tuned model got wrong:", "",
                  "| prompt | baseline | candidate |", "| --- | --- | --- |"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['baseline'], 80)} | {_cell(s['candidate'], 80)} |"
                  for s in changed[:8]]
    return lines + [""]


def general_card_section(general: dict) -> str:
    """The model card's section on general skills (written into README.md by ``hilt evaluate``)."""
    return "\n".join(_general_section(general))


def evaluate(model_dir: Path, data: Path, out: Path, baseline_dir: Path | None = None,
             gates: list[str] | None = None, task_metric: str | None = None, max_new_tokens: int = 64,
             max_samples: int | None = None, general: Path | str | None = "bundled") -> dict:
    """Evaluate a model (and a baseline) on held-out records; write eval.json and the report.

    Args:
        general: the general set to score both models on as well: "bundled" (hilt's own),
            a JSONL file, or None to skip it.

    Returns:
        The eval.json content; ``passed`` is False when a gate failed.

    Raises:
        UserError: bad gate, relative gate without a baseline, missing model or data.
    """
    from hilt.core.outputs import claim_output_dir
    from hilt.training.evaluation.general import EVAL_SET, read_general_set

    parsed = [parse_gate(g) for g in gates or []]
    if general is None and any(g.metric in GENERAL_METRICS for g in parsed):
        bad = next(g.text for g in parsed if g.metric in GENERAL_METRICS)
        raise UserError(f"--gate '{bad}' needs the general set; drop --no-general or the gate")
    claim_output_dir(out, "evaluation", "--out", recognise=lambda d: (d / EVAL_FILE).is_file(),
                     hint="the --out of an earlier `hilt evaluate`")
    if baseline_dir is None and any(g.relative for g in parsed):
        bad = next(g.text for g in parsed if g.relative)
        raise UserError(f"--gate '{bad}' compares against a baseline (signed number); pass --baseline DIR "
                        "or write the threshold unsigned for an absolute gate")
    records, path = read_eval_records(Path(data))
    if max_samples:
        records = records[:max_samples]
    general_items, general_sha = (read_general_set(None if general == "bundled" else Path(general))
                                  if general is not None else (None, None))
    metric = task_metric or task_metric_of(model_dir)
    models: dict[str, dict] = {}
    answers: dict[str, list[str]] = {}
    general_scores: dict[str, tuple[dict, list[str], list[bool]]] = {}  # model -> (scores, answers, passed)
    for name, directory in (("baseline", baseline_dir), ("candidate", model_dir)):
        if directory is None:
            continue
        print(f"[hilt] evaluating {name} {directory} on {len(records)} records"
              + (f" and {len(general_items)} general prompts" if general_items else ""), flush=True)
        scores, answers[name] = score_model(Path(directory), records, max_new_tokens, label=name,
                                            general=general_items)
        if general_items:
            general_scores[name] = scores.pop("general")
        models[name] = {"path": str(Path(directory).resolve()), "metrics": scores}
    models = {"candidate": models["candidate"], **({"baseline": models["baseline"]} if "baseline" in models else {})}
    result: dict[str, Any] = {
        "data": {"path": str(path), "records": len(records), "sha256": records_sha256(records)},
        "task_metric": metric,
        "max_new_tokens": max_new_tokens,
        "models": models,
    }
    if "baseline" in models:
        c, b = models["candidate"]["metrics"], models["baseline"]["metrics"]
        result["deltas"] = {k: round(c[k] - b[k], 6) for k in METRICS}
    flat = {name: dict(models[name]["metrics"]) for name in models}
    if general_items:
        general_models = {name: general_scores[name][0] for name in models}
        result["general"] = {
            # The card and hilt.json ship with the model: a file's name there, its path only in eval.json.
            "set": "hilt general set (bundled)" if general == "bundled" else Path(general).name,
            **({} if general == "bundled" else {"path": str(general)}),
            "records": len(general_items), "sha256": general_sha, "models": general_models,
            "samples": [{"id": item["id"], "category": item["category"], "prompt": item["prompt"][-1]["content"],
                         "reference": item["reference"],
                         **{name: general_scores[name][1][i] for name in models},
                         **{f"{name}_passed": general_scores[name][2][i] for name in models}}
                        for i, item in enumerate(general_items)],
        }
        if "baseline" in models:
            result["general"]["deltas"] = {k: round(general_models["candidate"][k] - general_models["baseline"][k], 6)
                                           for k in GENERAL_METRICS}
        for name in models:
            flat[name].update({k: general_models[name][k] for k in GENERAL_METRICS})
    result["gates"] = [g.check(flat["candidate"], flat.get("baseline")) for g in parsed]
    result["passed"] = all(g["passed"] for g in result["gates"])
    samples = [{"prompt": r["prompt"], "reference": r["reference"], "kind": r["kind"],
                **{name: answers[name][i] for name in models}} for i, r in enumerate(records)]
    result["samples"] = samples[:5]
    eval_file = out / EVAL_FILE
    previous = json.loads(eval_file.read_text()) if eval_file.is_file() else {}
    if "human_side_by_side" in previous:  # written by `hilt label compare-report`: keep it
        result["human_side_by_side"] = previous["human_side_by_side"]
    eval_file.write_text(json.dumps(result, indent=2) + "\n")
    (out / SAMPLES_FILE).write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    plot_metrics(result, out / METRICS_PLOT_FILE)
    write_report(result, samples, out / REPORT_FILE)
    if general_items:
        _write_general_to_model(Path(model_dir), result["general"])
    return result


def _write_general_to_model(model_dir: Path, general: dict) -> None:
    """The general scores into the candidate's hilt.json and model card (where hilt trained it)."""
    from hilt.core.layout import read_manifest, CARD_FILE, upsert_section, write_manifest

    manifest = read_manifest(model_dir)
    if not manifest:
        return
    manifest["general"] = {k: v for k, v in general.items() if k not in ("samples", "path")}
    write_manifest(model_dir, manifest)
    if (model_dir / "README.md").is_file():
        upsert_section(model_dir / CARD_FILE, general_card_section(general), key=CARD_SECTION)
