"""``hilt monitor report``: what changed between the training data and the deployed model's traffic.

The traffic is SageMaker Data Capture (``hilt.serving.capture``): from a SageMaker endpoint's
capture destination on S3 or from hilt's own ``serve`` with ``HILT_DATA_CAPTURE_DIR``. Each
captured invocation is read into exchanges (prompt, answer, finish reason) whatever the
serving container: hilt's and TGI/LMI's ``{"inputs"}`` / ``{"generated_text"}``, OpenAI-style
``{"messages"}`` / ``chat.completion`` (and their JSON Lines and streamed forms).

Features per exchange: prompt and answer length in words, whether the answer is empty, a
refusal, or was cut at the token limit, and the prompt's words (for the share never seen in
the training prompts). Drift is the population stability index (PSI) of each length against
the training set's, over the training set's deciles. Gates like evaluation's (``--gate
'psi_prompt_words<=0.2'``) decide the exit code: 1 when one fails.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
LENGTH_FEATURES = ("prompt_words", "answer_words")
RATES = ("empty_rate", "refusal_rate", "truncated_rate", "unseen_vocabulary_rate")
METRICS = (*(f"psi_{f}" for f in LENGTH_FEATURES), *RATES)
# PSI above 0.2 is the usual "significant shift"; the rates are what a reviewer would not accept.
DEFAULT_GATES = ("psi_prompt_words<=0.2", "psi_answer_words<=0.2", "unseen_vocabulary_rate<=0.25",
                 "empty_rate<=0.05", "refusal_rate<=0.1", "truncated_rate<=0.25")
FEW_EXCHANGES = 100  # below it the report says its PSI is noisy
_REFUSAL = re.compile(r"\b(I\s*(?:can(?:no|')t|am unable|'m unable|won't)|I'm sorry|I am sorry|as an AI)\b",
                      re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Exchange:
    """One prompt and the model's answer to it."""

    prompt: list[dict]  # messages up to the turn answered
    answer: str
    finish_reason: str | None = None
    time: dt.datetime | None = None
    event_id: str = ""

    @property
    def prompt_text(self) -> str:
        return next((m["content"] for m in reversed(self.prompt) if m.get("role") == "user"), "")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


# ------------------------------------------------------------------ reading requests and answers


def _request_messages(body: Any) -> list[dict] | None:
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("messages"), list):
        # A message without a role cannot be shown or compared: the request is not read (counted as such).
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in body["messages"]):
            return None
        return [m for m in body["messages"] if isinstance(m.get("content"), str)]
    for key in ("inputs", "prompt", "text_inputs"):
        if isinstance(body.get(key), str):
            return [{"role": "user", "content": body[key]}]
    return None


def _answer_of(body: Any) -> tuple[str, str | None] | None:
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("generated_text"), str):
        details = body.get("details") if isinstance(body.get("details"), dict) else {}
        return body["generated_text"], body.get("finish_reason") or details.get("finish_reason")
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        text = message.get("content") if isinstance(message.get("content"), str) else choice.get("text")
        if isinstance(text, str):
            return text, choice.get("finish_reason")
    return None


def _streamed_answer(text: str) -> tuple[str, str | None] | None:
    """An answer sent as server-sent events or JSON Lines chunks: the final frame's full text if
    it has one (TGI, hilt), else the deltas joined (OpenAI chat chunks)."""
    parts, reason = [], None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("data:"):
            line = line[5:].strip()
        if not line or line == "[DONE]":
            continue
        try:
            frame = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(frame, dict):
            continue
        if isinstance(frame.get("generated_text"), str):
            return frame["generated_text"], frame.get("finish_reason") or reason
        if isinstance(frame.get("token"), dict) and isinstance(frame["token"].get("text"), str):
            parts.append(frame["token"]["text"])
        choices = frame.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and isinstance(delta.get("content"), str):
                parts.append(delta["content"])
            if isinstance(choice, dict) and choice.get("finish_reason"):
                reason = choice["finish_reason"]
    return ("".join(parts), reason) if parts else None


def _json_values(text: str, content_type: str) -> list[Any] | None:
    try:
        if "jsonlines" in content_type or "ndjson" in content_type:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return [json.loads(text)]
    except (json.JSONDecodeError, RecursionError):
        return None


def exchanges_of(event) -> list[Exchange]:
    """The exchanges of one captured invocation (several for a JSON Lines batch); none when the
    bodies are not a request and an answer hilt can read."""
    requests = _json_values(event.request, event.request_type)
    if not requests:
        return []
    if "event-stream" in event.response_type or (len(requests) == 1 and isinstance(requests[0], dict)
                                                 and requests[0].get("stream")):
        answers = [_streamed_answer(event.response)]
    else:
        values = _json_values(event.response, event.response_type) or []
        answers = [_answer_of(v) for v in values]
    out = []
    for request, answer in zip(requests, answers):
        messages = _request_messages(request)
        if messages is not None and answer is not None:
            out.append(Exchange(messages, answer[0], answer[1], event.time, event.event_id))
    return out


def read_traffic(source: str, since: dt.datetime | None = None) -> tuple[list[Exchange], dict[str, int]]:
    """The exchanges captured under ``source`` (at or after ``since``), and what was read."""
    from hilt.serving.capture import read_capture

    events, counts = read_capture(source)
    if since is not None:
        events = [e for e in events if e.time >= since]
    exchanges: list[Exchange] = []
    unread = 0
    for event in events:
        found = exchanges_of(event)
        unread += not found
        exchanges += found
    return exchanges, {**counts, "events": len(events), "events_not_understood": unread,
                       "exchanges": len(exchanges)}


def read_baseline(dataset: Path) -> list[Exchange]:
    """The training set's exchanges: the prompt and the (chosen, desirable) answer of each record
    of ``DIR/train`` (or the *.jsonl in DIR), in any format hilt trains on.

    Raises:
        UserError: no records, or a file hilt cannot read.
    """
    from hilt.training.data.records import channel_files, iter_jsonl
    from hilt.training.data.formats import FileFormat, read_template

    channel = dataset / "train" if (dataset / "train").is_dir() else dataset
    if not channel.is_dir():
        raise UserError(f"--baseline {dataset}: no such folder; pass the dataset the model was trained on")
    ctx = read_template(channel)
    out = []
    for path in channel_files(channel):
        reader = FileFormat(path, ctx)
        for record, where in iter_jsonl([path]):
            _, converted = reader.convert(record, where)
            if "messages" in converted:
                messages = converted["messages"]
                last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
                if last is not None:
                    out.append(Exchange(messages[:last], str(messages[last].get("content") or "")))
            elif converted.get("label") is False:
                continue  # an undesirable KTO completion is not what the model was trained to say
            else:
                answer = converted.get("chosen") or converted.get("completion") or []
                text = answer[-1].get("content", "") if isinstance(answer, list) and answer else str(answer)
                prompt = converted.get("prompt")
                prompt = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
                out.append(Exchange(prompt, str(text)))
    if not out:
        raise UserError(f"--baseline {dataset}: no training records in {channel}")
    return out


# ------------------------------------------------------------------ statistics


def psi(expected: list[float], actual: list[float], bins: int = 10) -> float | None:
    """Population stability index of ``actual`` against ``expected`` over ``expected``'s quantile bins."""
    if not expected or not actual:
        return None
    ordered = sorted(expected)
    edges = sorted({ordered[min(len(ordered) - 1, int(len(ordered) * k / bins))] for k in range(1, bins)})

    def shares(values: list[float]) -> list[float]:
        counts = [0] * (len(edges) + 1)
        for value in values:
            counts[sum(value >= edge for edge in edges)] += 1
        return [max(c / len(values), 1e-4) for c in counts]

    return round(sum((a - e) * math.log(a / e) for e, a in zip(shares(expected), shares(actual))), 4)


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)
    return {"count": len(values), "mean": round(statistics.mean(values), 2), "p50": ordered[len(ordered) // 2],
            "p90": ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))], "max": ordered[-1]}


def features(exchanges: list[Exchange]) -> dict[str, list[float]]:
    return {"prompt_words": [len(words(e.prompt_text)) for e in exchanges],
            "answer_words": [len(words(e.answer)) for e in exchanges]}


def flags(exchange: Exchange) -> list[str]:
    """Why a reviewer should look at an exchange: ``empty``, ``refusal``, ``truncated``."""
    found = []
    if not exchange.answer.strip():
        found.append("empty")
    elif _REFUSAL.search(exchange.answer):
        found.append("refusal")
    if exchange.finish_reason in ("length", "time_limit"):
        found.append("truncated")
    return found


def drift(baseline: list[Exchange], live: list[Exchange]) -> dict[str, Any]:
    """Distributions, PSI, rates and unseen vocabulary of ``live`` against ``baseline``."""
    base, now = features(baseline), features(live)
    vocabulary = {w for e in baseline for w in words(e.prompt_text)}
    live_words = [w for e in live for w in words(e.prompt_text)]
    flagged = Counter(f for e in live for f in flags(e))
    n = len(live) or 1
    metrics = {f"psi_{name}": psi(base[name], now[name]) for name in LENGTH_FEATURES}
    metrics.update(empty_rate=round(flagged["empty"] / n, 4), refusal_rate=round(flagged["refusal"] / n, 4),
                   truncated_rate=round(flagged["truncated"] / n, 4),
                   unseen_vocabulary_rate=round(sum(w not in vocabulary for w in live_words) / len(live_words), 4)
                   if live_words else 0.0)
    hours = Counter(e.time.strftime("%Y-%m-%dT%H:00Z") for e in live if e.time is not None)
    return {
        "metrics": metrics,
        "distributions": {name: {"baseline": _summary(base[name]), "live": _summary(now[name])}
                          for name in LENGTH_FEATURES},
        "baseline_refusal_rate": round(sum(bool(_REFUSAL.search(e.answer)) for e in baseline) / len(baseline), 4)
        if baseline else 0.0,
        "traffic_per_hour": dict(sorted(hours.items())),
        "flagged": dict(flagged),
    }


# ------------------------------------------------------------------ the report


def plot_report(baseline: list[Exchange], live: list[Exchange], result: dict, out: Path) -> list[str]:
    """One PNG per drift feature (baseline vs live histogram) and the traffic per hour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    base, now = features(baseline), features(live)
    for name in LENGTH_FEATURES:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        top = max(base[name] + now[name] + [1])
        bins = list(range(0, top + 2, max(1, (top + 1) // 30)))
        for values, label in ((base[name], "training"), (now[name], "traffic")):
            ax.hist(values, bins=bins, weights=[1 / len(values)] * len(values), alpha=0.55,
                    label=f"{label} ({len(values)})")
        ax.set_xlabel(name.replace("_", " "))
        ax.set_ylabel("share of exchanges")
        ax.set_title(f"{name}: PSI {result['metrics'][f'psi_{name}']}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)
        written.append(f"{name}.png")
    hours = result["traffic_per_hour"]
    if hours:
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        ax.bar(range(len(hours)), list(hours.values()))
        ax.set_xticks(range(len(hours)), [h[5:13] for h in hours], rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("exchanges")
        ax.set_title("traffic per hour (UTC)")
        fig.tight_layout()
        fig.savefig(out / "traffic.png")
        plt.close(fig)
        written.append("traffic.png")
    return written


def write_markdown(result: dict, out: Path) -> None:
    m = result["metrics"]
    lines = [f"# Drift report: {result['capture']}", "",
             f"{result['counts']['exchanges']} exchanges from {result['counts']['events']} captured invocations "
             f"({result['counts']['files']} files) against {result['baseline']['records']} training records "
             f"(`{result['baseline']['path']}`). **{'PASSED' if result['passed'] else 'FAILED'}**.", "",
             *([f"Only {result['counts']['exchanges']} exchanges: the PSI of so few is noisy; read it with the "
                "plots.", ""] if result["counts"]["exchanges"] < FEW_EXCHANGES else []),
             "| gate | value | |", "|---|---|---|"]
    lines += [f"| `{g['gate']}` | {g['value']} | {'pass' if g['passed'] else '**FAIL**'} |" for g in result["gates"]]
    lines += ["", "| feature | training p50 / p90 | traffic p50 / p90 | PSI |", "|---|---|---|---|"]
    for name, d in result["distributions"].items():
        b, live = d["baseline"], d["live"]
        lines.append(f"| {name} | {b.get('p50')} / {b.get('p90')} | {live.get('p50')} / {live.get('p90')} | "
                     f"{m[f'psi_{name}']} |")
    lines += ["", f"Empty answers {m['empty_rate']:.1%}, refusals {m['refusal_rate']:.1%} (training "
              f"{result['baseline_refusal_rate']:.1%}), cut at the token limit {m['truncated_rate']:.1%}, prompt "
              f"words never seen in training {m['unseen_vocabulary_rate']:.1%}.", ""]
    lines += [f"![{p}]({p})" for p in result["plots"]]
    (out / REPORT_MD).write_text("\n".join(lines) + "\n")


def is_monitor_report_dir(folder: Path) -> bool:
    """An earlier report's folder, known by what only a monitor report holds (not by a file name any
    folder may have)."""
    from hilt.core.outputs import json_with_keys

    report = folder / REPORT_JSON
    return report.is_file() and json_with_keys("capture", "counts", "gates")(report.read_bytes())


def monitor_report(capture: str, baseline_dir: Path, out: Path, gates: list[str] | None = None,
                   since: dt.datetime | None = None) -> dict:
    """Compare captured traffic with the training set; write report.json, report.md and plots.

    Returns:
        The report; ``passed`` is False when a gate failed.

    Raises:
        UserError: a bad gate, a missing baseline or capture, or no exchange to compare.
    """
    from hilt.core.outputs import claim_output_dir
    from hilt.training.evaluation.evaluate import parse_gate

    parsed = [parse_gate(g, METRICS) for g in (gates or DEFAULT_GATES)]
    if any(g.relative for g in parsed):
        raise UserError(f"--gate '{next(g.text for g in parsed if g.relative)}': monitor gates are absolute; "
                        "write the threshold unsigned (e.g. psi_prompt_words<=0.2)")
    baseline = read_baseline(Path(baseline_dir))
    live, counts = read_traffic(capture, since)
    if not live:
        raise UserError(f"--capture {capture}: {counts['events']} captured invocations"
                        f"{' since ' + since.isoformat() if since else ''}, none with a request and an answer "
                        "hilt can read; point it at a data capture destination")
    claim_output_dir(out, "monitor-report", "--out", recognise=is_monitor_report_dir,
                     hint="the --out of an earlier `hilt monitor report`")
    result: dict[str, Any] = {"capture": capture, "since": since.isoformat() if since else None, "counts": counts,
                              "baseline": {"path": str(baseline_dir), "records": len(baseline)}}
    result.update(drift(baseline, live))
    result["gates"] = [g.check(result["metrics"], None) for g in parsed if result["metrics"][g.metric] is not None]
    result["passed"] = all(g["passed"] for g in result["gates"])
    result["plots"] = plot_report(baseline, live, result, out)
    (out / REPORT_JSON).write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out)
    return result


# ------------------------------------------------------------------ human review of live answers


def drifting(exchange: Exchange, vocabulary: set[str], longest: int) -> bool:
    """A prompt mostly of words training never saw, or longer than any training prompt."""
    prompt = words(exchange.prompt_text)
    unseen = sum(w not in vocabulary for w in prompt) / len(prompt) if prompt else 0.0
    return unseen >= 0.5 or len(prompt) > longest


def select_for_review(exchanges: list[Exchange], per_day: int, max_tasks: int, seed: int = 0,
                      baseline: list[Exchange] | None = None) -> list[tuple[Exchange, list[str]]]:
    """Every flagged exchange (empty, refusal, truncated; drifting when a baseline is given), then up
    to ``per_day`` others drawn at random from each UTC day; at most ``max_tasks`` in all, flagged first."""
    import random

    vocabulary = {w for e in baseline or [] for w in words(e.prompt_text)}
    longest = max((len(words(e.prompt_text)) for e in baseline or []), default=0)
    flagged, by_day = [], {}
    for exchange in exchanges:
        why = flags(exchange) + (["drifting"] if baseline and drifting(exchange, vocabulary, longest) else [])
        if why:
            flagged.append((exchange, why))
        else:
            by_day.setdefault(exchange.time.date() if exchange.time else None, []).append(exchange)
    rng = random.Random(seed)
    sampled = []
    for day in sorted(by_day, key=str):
        pool = by_day[day]
        sampled += [(e, []) for e in rng.sample(pool, min(per_day, len(pool)))]
    return (flagged + sampled)[:max_tasks]


def review_rows(selected: list[tuple[Exchange, list[str]]]) -> tuple[list[dict], dict[str, int]]:
    """Prompts-file rows for the review template, emails and phone numbers scrubbed first: captured
    text can hold a buyer's customers' data, and none of it goes to Label Studio unscrubbed."""
    from hilt.labeling.export import Scrubber

    scrub = Scrubber(True)
    rows = []
    for exchange, why in selected:
        rows.append({
            "id": exchange.event_id or None,
            "messages": [{"role": m["role"], "content": scrub(m["content"])} for m in exchange.prompt],
            "answer": scrub(exchange.answer),
            "flags": ("flagged: " + ", ".join(why)) if why else "picked at random from the day's traffic",
            "event_id": exchange.event_id,
            "inference_time": exchange.time.strftime("%Y-%m-%dT%H:%M:%SZ") if exchange.time else None,
        })
    return rows, dict(scrub.counts)


def reviewable_exchange(exchange) -> bool:
    """Whether the review template can show an exchange: text turns of system/user/assistant ending with
    the user's. ``serve`` also answers others (a ``tool`` turn, an empty one): those are skipped and
    counted, not a reason to refuse the whole capture."""
    from hilt.labeling.importing import CHAT_ROLES

    prompt = exchange.prompt
    return bool(prompt) and prompt[-1].get("role") == "user" and all(
        isinstance(m, dict) and m.get("role") in CHAT_ROLES and isinstance(m.get("content"), str)
        and m["content"].strip() for m in prompt)


def create_review_project(capture: str, title: str, per_day: int, max_tasks: int, seed: int = 0,
                          baseline_dir: Path | None = None, since: dt.datetime | None = None, client=None) -> dict:
    """Sample captured exchanges into a Label Studio review project (the ``review`` template), on
    ``client``'s server (default: the configured one, as for every hilt command).

    Raises:
        UserError: nothing captured to review, or a conversation the template cannot show.
    """
    from hilt.labeling.client import connect
    from hilt.labeling.importing import review_row, build_tasks
    from hilt.labeling.templates import parse_label_config, template_xml

    live, counts = read_traffic(capture, since)
    reviewable = [e for e in live if reviewable_exchange(e)]
    if not reviewable:
        raise UserError(f"--capture {capture}: {counts['events']} captured invocations, no exchange to review "
                        "(a conversation ending with the user's turn and the model's answer)")
    baseline = read_baseline(baseline_dir) if baseline_dir else None
    selected = select_for_review(reviewable, per_day, max_tasks, seed, baseline)
    rows, scrubbed = review_rows(selected)
    config = template_xml("review")
    spec = parse_label_config(config, where="template review")
    tasks = build_tasks([review_row(r, f"captured event {r['event_id']}") for r in rows], spec)
    client = client or connect()
    project = client.create_project(title, config, description=f"created by hilt monitor review from {capture}")
    client.import_tasks(project, tasks)
    return {"project": project, "url": f"{client.url}/projects/{project}", "tasks": len(tasks),
            "flagged": sum(1 for _, why in selected if why), "exchanges": len(live), "pii_scrubbed": scrubbed,
            "not_reviewable": len(live) - len(reviewable)}
