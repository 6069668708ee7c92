"""``hilt studio``, ``label``, ``export``, ``compare-report``, ``quality``: Label Studio and the data it yields."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hilt.cli._common import positive_int as _positive_int
from hilt.core.errors import UserError
from hilt.core.layout import require_model_dir
from hilt.labeling.templates import TEMPLATE_NAMES


def _cmd_studio(args: argparse.Namespace) -> int:
    from hilt.labeling import studio

    if args.studio_command == "start":
        state = studio.start(port=args.port, data_dir=args.data_dir)
        how = "already running" if state["already_running"] else f"started in {state['seconds']}s"
        print(f"Label Studio {how}: {state['url']}")
        print(f"  user:     {state['user']}")
        print(f"  password: {state['password']}")
        print(f"  token:    {state['token']}")
        print(f"  data:     {state['data_dir']}  (log: {state['log']})")
        print(f"  export LABEL_STUDIO_URL={state['url']} LABEL_STUDIO_API_KEY={state['token']}")
        return 0
    if args.studio_command == "stop":
        print("stopped" if studio.stop(args.data_dir) else "not running")
        return 0
    info = studio.status(args.data_dir)
    print(json.dumps({k: v for k, v in info.items() if k != "password"}, indent=2))
    return 0 if info["running"] else 1


def _cmd_label_create(args: argparse.Namespace) -> int:
    from hilt.labeling.client import connect
    from hilt.labeling.importing import build_tasks, drafts_from_model, load_drafts, load_prompts, model_version
    from hilt.labeling.templates import parse_label_config, template, template_xml

    sources = [*(args.drafts or []), *(args.drafts_from or [])]
    takes = template(args.template).drafts
    if takes == "none" and sources:
        raise UserError(f"--drafts/--drafts-from do not apply to the {args.template} template (its tasks bring "
                        "their answers); drop them")
    if takes == "one" and len(sources) > 1:
        raise UserError(f"the {args.template} template takes one draft per prompt; pass one --drafts or "
                        "--drafts-from (several are for --template rank)")
    for model_dir in args.drafts_from or []:
        require_model_dir(model_dir, "--drafts-from")
    config = template_xml(args.template)
    spec = parse_label_config(config, where=f"template {args.template}")
    rows = load_prompts(Path(args.prompts), args.template)
    drafts = [(f"file:{Path(f).name}", load_drafts(Path(f))) for f in args.drafts or []]
    drafts += [(model_version(Path(d)), drafts_from_model(Path(d), rows)) for d in args.drafts_from or []]
    tasks = build_tasks(rows, spec, drafts)
    client = connect()
    title = args.title or f"hilt {args.template}: {Path(args.prompts).stem}"
    project = client.create_project(title, config, description=f"created by hilt label create ({args.template})")
    ids = client.import_tasks(project, tasks, batch_size=args.batch_size)
    with_drafts = sum(1 for t in tasks if t.get("predictions"))
    print(f"project {project} ({title}): {len(ids)} tasks, {with_drafts} with drafts -> {client.url}/projects/{project}")
    print(project)
    return 0


def _cmd_label_compare(args: argparse.Namespace) -> int:
    from hilt.labeling.client import connect
    from hilt.labeling.importing import load_prompts
    from hilt.labeling.compare import create_compare_project

    models = {"baseline": Path(args.baseline), "candidate": Path(args.candidate)}
    for flag, directory in models.items():
        require_model_dir(directory, f"--{flag}")
    rows = load_prompts(Path(args.prompts), "sft")
    client = connect()  # fail on a bad server or token before generating anything
    project, mapping_file, mapping = create_compare_project(
        client, models["baseline"], models["candidate"], rows, Path(args.out), seed=args.seed,
        max_new_tokens=args.max_new_tokens, title=args.title, prompts_file=Path(args.prompts))
    shown = sum(1 for p in mapping["pairs"].values() if "candidate" in p)
    print(f"project {project}: {shown} blinded pairs, {len(rows) - shown} identical answers kept out (ties) "
          f"-> {client.url}/projects/{project}")
    print(f"mapping (keep it away from annotators): {mapping_file}")
    print(project)
    return 0


def _cmd_compare_report(args: argparse.Namespace) -> int:
    from hilt.labeling.client import connect
    from hilt.labeling.compare import report_compare

    mapping_file = Path(args.mapping or Path(args.compare_dir) / f"project-{args.project}.json")
    report, section, written = report_compare(connect(), args.project, mapping_file,
                                              Path(args.eval_dir) if args.eval_dir else None,
                                              Path(args.listing) if args.listing else None)
    print(section)
    print("written: " + ", ".join(map(str, written)))
    return 0


def _read_export_source(args: argparse.Namespace):
    """(tasks, spec, source, where) from --from-file or --project."""
    from hilt.labeling.dataset import read_export_source

    return read_export_source(args.project, Path(args.from_file) if args.from_file else None, args.template,
                              Path(args.label_config) if args.label_config else None)


def _export_options(args: argparse.Namespace):
    from hilt.labeling.export import ExportOptions

    if not 0.0 <= args.validation_fraction < 1.0:
        raise UserError(f"--validation-fraction {args.validation_fraction}: must be in [0, 1)")
    return ExportOptions(policy=args.policy, validation_fraction=args.validation_fraction,
                         max_chars=args.max_chars, scrub_pii=args.scrub_pii, rating_threshold=args.rating_threshold,
                         rank_policy=args.rank_policy)


def _cmd_export(args: argparse.Namespace) -> int:
    from hilt.labeling.dataset import check_dataset_target, check_versions_root, export_to_dataset
    from hilt.labeling.export import check_template_matches

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    if args.since_last and not args.project:
        raise UserError("--since-last needs --project (it tracks what a project already exported)")
    options = _export_options(args)
    # The output folder first: a folder that is not a dataset is refused before any work.
    (check_versions_root if args.since_last else check_dataset_target)(Path(args.out))
    tasks, spec, source, where = _read_export_source(args)
    check_template_matches(tasks, spec, where)
    out, manifest = export_to_dataset(tasks, spec, options, source, Path(args.out), since_last=args.since_last)
    if out is None:
        print(f"nothing new to export from {where} since the last version in {args.out}")
        return 0
    c = manifest["counts"]
    print(f"{out}: {c['records']['train']} train + {c['records']['validation']} validation records, "
          f"{c['rejects']['total']} rejects {c['rejects']['by_reason'] or ''} "
          f"from {c['annotations']} annotations on {c['tasks']} tasks; sha256 {manifest['dataset_sha256'][:16]}")
    return 0


def _cmd_quality(args: argparse.Namespace) -> int:
    from hilt.labeling.export import check_template_matches, export_annotations

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    tasks, spec, _, where = _read_export_source(args)
    check_template_matches(tasks, spec, where)
    result = export_annotations(tasks, spec, _export_options(args))
    report = {"counts": result.counts, "quality": result.quality}
    if args.scrub_pii:
        report["pii"] = result.pii
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def register(sub) -> None:
    studio = sub.add_parser("studio", help="run a local Label Studio server (SQLite, 127.0.0.1)")
    studio_sub = studio.add_subparsers(dest="studio_command", metavar="ACTION", required=True)
    for action, text in (("start", "start it (or find it running); print URL, user and token"),
                         ("stop", "stop it"), ("status", "print its state; exit 1 if not running")):
        p = studio_sub.add_parser(action, help=text)
        p.add_argument("--data-dir", help="server data (SQLite, media); default .hilt/studio or $HILT_STUDIO_DIR")
        if action == "start":
            p.add_argument("--port", type=_positive_int, default=8080, help="port on 127.0.0.1 (8080)")
        p.set_defaults(func=_cmd_studio)

    label = sub.add_parser("label", help="set up Label Studio projects for annotators")
    label_sub = label.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    p = label_sub.add_parser(
        "create", help="create a project from a template and import prompts (with model drafts)",
        description="Create a Label Studio project from one of hilt's templates and import prompts from "
        "JSONL, CSV or a saved HF dataset in batches: sft (write the answer), chat (write the next assistant "
        "turn of a conversation), preference (pick the better of two), rank (order N answers), rate (grade "
        "one answer, critique it, correct it), review (rate and correct a deployed model's answer; `hilt monitor "
        "review` fills such projects from captured traffic). Drafts (from a file or generated by a local model) become "
        "predictions the annotator edits (sft, chat), the answer to grade (rate), or answers to rank (rank: "
        "repeat --drafts/--drafts-from, one answer each). Prints the project id last. The server is "
        "$LABEL_STUDIO_URL/$LABEL_STUDIO_API_KEY, else the one `hilt studio start` runs.",
    )
    p.add_argument("--template", choices=list(TEMPLATE_NAMES), required=True)
    p.add_argument("--prompts", required=True, help="JSONL / CSV / saved HF dataset: a prompt column (chat: "
                   "messages or ShareGPT conversations; rank: an answers list or answer1, answer2... columns)")
    p.add_argument("--title", help="project title")
    p.add_argument("--drafts", action="append", metavar="FILE", help="JSONL of {id|prompt, draft}")
    p.add_argument("--drafts-from", action="append", metavar="MODEL_DIR",
                   help="model dir that writes the drafts (greedy)")
    p.add_argument("--batch-size", type=_positive_int, default=500, help="tasks per import call (500)")
    p.set_defaults(func=_cmd_label_create)
    p = label_sub.add_parser(
        "compare", help="blinded side-by-side of two models' answers (a preference project)",
        description="Answer each prompt with --baseline and --candidate (greedy) and create a preference "
        "project showing the two answers in a random order that is the same on every rerun (--seed). Which "
        "answer is the candidate's is written to OUT/project-ID.json, never to the task data. Prints the "
        "project id last; then `hilt compare-report --project ID`.",
    )
    p.add_argument("--baseline", required=True, help="model dir of the baseline (e.g. the base model)")
    p.add_argument("--candidate", required=True, help="model dir of the candidate (e.g. a job's model/)")
    p.add_argument("--prompts", required=True, help="JSONL / CSV / saved HF dataset with a prompt column")
    p.add_argument("--seed", type=int, default=0, help="order of the answers per pair (0)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=64, help="cap on each answer (64)")
    p.add_argument("--title", help="project title")
    p.add_argument("--out", default="compare", help="folder for the blinding mapping (compare/)")
    p.set_defaults(func=_cmd_label_compare)

    from hilt.labeling.export import RANK_POLICIES, SFT_POLICIES, ExportOptions  # light: no Label Studio or torch

    defaults = ExportOptions()  # one source: the same defaults as the pipeline's export section

    def add_source_flags(p):
        p.add_argument("--project", type=int, help="Label Studio project id (live server)")
        p.add_argument("--from-file", help="a Label Studio JSON export file instead of a live project")
        p.add_argument("--template", choices=list(TEMPLATE_NAMES),
                       help="the project's template (required with --from-file; checked with --project)")
        p.add_argument("--label-config", help="with --from-file: the project's labeling config XML, to "
                       "check every result's control against it")
        p.add_argument("--policy", choices=SFT_POLICIES, default=defaults.policy,
                       help="SFT tasks with several answers: keep each distinct one (default), all, the latest, "
                       "or the ground-truth one first")
        p.add_argument("--validation-fraction", type=float, default=defaults.validation_fraction,
                       help=f"share of tasks held out ({defaults.validation_fraction})")
        p.add_argument("--max-chars", type=_positive_int, default=defaults.max_chars,
                       help=f"longer answers are rejected ({defaults.max_chars})")
        p.add_argument("--scrub-pii", action="store_true", help="replace emails and phone numbers; count them")
        p.add_argument("--rank-policy", choices=RANK_POLICIES, default=defaults.rank_policy,
                       help="rank template: which pairs a ranking gives: the best over each other answer (default), "
                       "every ordered pair, or each answer over the next")
        p.add_argument("--rating-threshold", type=float, default=defaults.rating_threshold,
                       help=f"rate template: a mean rating at or above it makes a desirable KTO answer "
                       f"({defaults.rating_threshold:g})")

    p = sub.add_parser(
        "export", help="Label Studio annotations -> versioned SFT / preference dataset",
        description="Export annotations to DIR/{train,validation}/data.jsonl, rejects.jsonl, manifest.json "
        "and README.md, atomically and deterministically. Every annotation lands in a record or in "
        "rejects.jsonl with its reason.",
    )
    add_source_flags(p)
    p.add_argument("--out", required=True, help="dataset dir (with --since-last: the folder of versions)")
    p.add_argument("--since-last", action="store_true",
                   help="only annotations not in an earlier version under --out; writes OUT/vNNNN")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "compare-report", help="win rate (Wilson 95%% CI), ties, agreement of a `label compare` project",
        description="Export a compare project, undo the blinding with its mapping, and report the "
        "candidate's win rate over decided pairs with a Wilson 95%% interval, ties and per-annotator "
        "agreement. Writes it into eval.json (--eval-dir), the candidate's hilt.json and model card, "
        "and --listing.",
    )
    p.add_argument("--project", type=int, required=True, help="the compare project's id")
    p.add_argument("--mapping", help="mapping file (default COMPARE_DIR/project-ID.json)")
    p.add_argument("--compare-dir", default="compare", help="where `label compare --out` wrote it (compare/)")
    p.add_argument("--eval-dir", help="folder whose eval.json gets the result (default: the mapping's folder)")
    p.add_argument("--listing", help="a LISTING.md draft to add the result to")
    p.set_defaults(func=_cmd_compare_report)

    p = sub.add_parser("quality", help="annotator counts, lead times, agreement, kappa, gold accuracy")
    add_source_flags(p)
    p.set_defaults(func=_cmd_quality)
