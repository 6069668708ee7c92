"""``hilt monitor``: drift of a deployed model's captured traffic, and its review."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import positive_int as _positive_int, since as _since


def _cmd_monitor_review(args: argparse.Namespace) -> int:
    from hilt.flows.monitor import create_review_project

    made = create_review_project(args.capture, args.project_title, args.per_day, args.max_tasks, args.seed,
                                 Path(args.baseline) if args.baseline else None, _since(args.since))
    print(f"project {made['project']} ({args.project_title}): {made['tasks']} of {made['exchanges']} captured "
          f"exchanges ({made['flagged']} flagged), PII scrubbed {made['pii_scrubbed'] or 'none found'} -> {made['url']}")
    if made["not_reviewable"]:
        print(f"skipped {made['not_reviewable']} exchanges the review template cannot show (a tool or empty turn, "
              "or not ending with the user's turn)")
    print(f"then: hilt export --project {made['project']} --out DATA_DIR --since-last")
    print(made["project"])
    return 0


def _cmd_monitor_report(args: argparse.Namespace) -> int:
    from hilt.flows.monitor import REPORT_JSON, REPORT_MD, monitor_report

    result = monitor_report(args.capture, Path(args.baseline), Path(args.out), gates=args.gate or None,
                            since=_since(args.since))
    c = result["counts"]
    print(f"{c['exchanges']} exchanges from {c['events']} captured invocations ({c['files']} files, "
          f"{c['unreadable_lines']} unreadable lines, {c['events_not_understood']} not understood"
          + (f", {c['unreadable_files']} *.jsonl paths that are not readable files, skipped" if c.get("unreadable_files")
             else "") + ") vs "
          f"{result['baseline']['records']} training records")
    for gate in result["gates"]:
        print(f"gate {gate['gate']}: {gate['value']:.4f} -> {'pass' if gate['passed'] else 'FAIL'}")
    print(f"{Path(args.out) / REPORT_JSON}, {Path(args.out) / REPORT_MD}, plots: {', '.join(result['plots'])}")
    return 0 if result["passed"] else 1


def register(sub) -> None:
    monitor = sub.add_parser("monitor", help="watch a deployed model: drift of its captured traffic")
    monitor_sub = monitor.add_subparsers(dest="monitor_command", metavar="ACTION", required=True)
    from hilt.flows.monitor import DEFAULT_GATES, METRICS as MONITOR_METRICS  # light: no torch import

    p = monitor_sub.add_parser(
        "report", help="training data vs live traffic: lengths, PSI, empty/refusal/truncated, unseen words",
        description="Read SageMaker Data Capture files (an endpoint's capture destination on S3, or the "
        "HILT_DATA_CAPTURE_DIR of `serve`) and compare the traffic with the dataset the model was trained on: "
        "prompt and answer length distributions with their population stability index, empty / refusal / "
        "truncated answer rates, the share of prompt words never seen in training, traffic per hour. Writes "
        "report.json, report.md and a PNG per feature. Exit 1 when a --gate fails.",
    )
    p.add_argument("--capture", required=True, help="capture folder or s3://bucket/prefix")
    p.add_argument("--baseline", required=True, help="the training dataset (an export's folder, or *.jsonl)")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--since", help="only traffic at or after this UTC time (2026-11-24 or 2026-11-24T18:00Z)")
    p.add_argument("--gate", action="append", metavar="EXPR",
                   help=f"METRIC OP NUMBER, repeatable; metrics: {', '.join(MONITOR_METRICS)} "
                   f"(default: {' '.join(DEFAULT_GATES)})")
    p.set_defaults(func=_cmd_monitor_report)
    p = monitor_sub.add_parser(
        "review", help="captured answers -> a Label Studio review project (rate, mark, correct)",
        description="Sample captured exchanges into a Label Studio project of the review template: every "
        "flagged one (empty, refusal, cut at the token limit; drifting from --baseline) and up to --per-day "
        "others from each UTC day. Emails and phone numbers are scrubbed before anything reaches Label Studio. "
        "Reviewers rate the model's answer, mark it and correct it in a box that starts as the answer; "
        "`hilt export --project ID --since-last` turns the corrections into SFT records and (corrected over "
        "original) preference pairs, a dataset version `hilt pipeline run` merges. Prints the project id last.",
    )
    p.add_argument("--capture", required=True, help="capture folder or s3://bucket/prefix")
    p.add_argument("--project-title", required=True, help="title of the review project")
    p.add_argument("--baseline", help="the training dataset: also flag prompts that drift from it")
    p.add_argument("--per-day", type=_positive_int, default=20, help="unflagged exchanges per day (20)")
    p.add_argument("--max-tasks", type=_positive_int, default=200, help="cap on the project's tasks (200)")
    p.add_argument("--since", help="only traffic at or after this UTC time")
    p.add_argument("--seed", type=int, default=0, help="which unflagged exchanges are drawn (0)")
    p.set_defaults(func=_cmd_monitor_review)
