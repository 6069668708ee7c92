"""``hilt evaluate``: a model against its baseline on held-out records and a general set, with gates."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import positive_int as _positive_int
from hilt.training.base.recipe import TASK_METRICS


def _archived_model(path: Path, flag: str, scratch: Path) -> Path:
    """A model dir as given, or unpacked from a ``model.tar.gz`` (the file, or a folder holding only
    it: what a SageMaker processing job receives of a training job's ModelArtifacts)."""
    from hilt.serving.package import extract_model_tar
    from hilt.core.layout import is_model_dir

    archive = path if path.is_file() else path / "model.tar.gz"
    if is_model_dir(path) or not archive.is_file() or not archive.name.endswith((".tar.gz", ".tgz")):
        return path
    print(f"[hilt] {flag}: unpacking {archive}", flush=True)
    target = scratch / flag.strip("-")
    extract_model_tar(archive, target, require_manifest=False)
    return target


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from hilt.training.evaluation.evaluate import EVAL_FILE, METRICS, REPORT_FILE, evaluate
    from hilt.training.evaluation.general import GENERAL_METRICS

    with tempfile.TemporaryDirectory(prefix="hilt-evaluate-") as scratch:
        model = _archived_model(Path(args.model), "--model", Path(scratch))
        baseline = _archived_model(Path(args.baseline), "--baseline", Path(scratch)) if args.baseline else None
        general = None if args.no_general else (args.general or "bundled")
        result = evaluate(model, Path(args.data), Path(args.out), baseline_dir=baseline, gates=args.gate,
                          task_metric=args.metric, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
                          general=general)
    models = result["models"]
    print(f"{'metric':<12}" + "".join(f"{name:>12}" for name in models) + ("      change" if "deltas" in result else ""))
    for metric in METRICS:
        mark = "*" if metric == result["task_metric"] else " "
        line = f"{metric + mark:<12}" + "".join(f"{m['metrics'][metric]:>12.4f}" for m in models.values())
        if "deltas" in result:
            line += f"{result['deltas'][metric]:>+12.4f}"
        print(line)
    if "general" in result:
        general = result["general"]
        print(f"general ({general['records']} prompts outside the task: did it forget?)")
        for metric in GENERAL_METRICS:
            line = f"  {metric:<18}" + "".join(f"{general['models'][n][metric]:>12.4f}" for n in models)
            if "deltas" in general:
                line += f"{general['deltas'][metric]:>+12.4f}"
            print(line)
    for gate in result["gates"]:
        print(f"gate {gate['gate']}: {gate['value']:+.4f} -> {'pass' if gate['passed'] else 'FAIL'}")
    print(f"{Path(args.out) / EVAL_FILE}, {Path(args.out) / REPORT_FILE}")
    return 0 if result["passed"] else 1


def register(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="held-out loss, perplexity, exact match / ROUGE-L: a model vs its baseline, with gates",
        description="Score --model (and --baseline) on the held-out records of --data: loss and perplexity of "
        "the reference answers, greedy answers scored by exact match and ROUGE-L. Writes OUT/eval.json, "
        "samples.jsonl (answers side by side), metrics.png and report.md. Both models are also scored on a "
        "general set outside the task (general_loss, general_accuracy: did fine-tuning make it forget?), "
        "reported beside the task metrics and in the model card. Exit code 1 when a --gate fails.",
    )
    p.add_argument("--model", required=True, help="the candidate: a job's model/ dir, any save_pretrained dir, or "
                   "a model.tar.gz (or a folder holding one)")
    p.add_argument("--baseline", help="the model to compare against, e.g. the base model (a dir or model.tar.gz)")
    p.add_argument("--data", required=True, help="dataset dir (its validation/ split is used) or a JSONL file")
    p.add_argument("--out", required=True, help="folder for eval.json and the report")
    p.add_argument("--gate", action="append", default=[], metavar="EXPR",
                   help="e.g. 'rougeL>=+0.05' (signed: change vs baseline) or 'exact_match>=0.6' (absolute), "
                   "'general_loss<=+0.15' (forgetting); repeatable")
    p.add_argument("--metric", choices=list(TASK_METRICS),
                   help="headline task metric (default: the model's recipe eval.metric, else exact_match)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="cap on each answer (64)")
    p.add_argument("--max-samples", type=_positive_int, help="score only the first N records")
    general = p.add_mutually_exclusive_group()
    general.add_argument("--general", metavar="FILE", help="your own general set instead of hilt's: JSONL of "
                         "{prompt, reference, accept?: [regex], category?} or messages records")
    general.add_argument("--no-general", action="store_true", help="skip the general set (task metrics only)")
    p.set_defaults(func=_cmd_evaluate)
