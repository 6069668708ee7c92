"""``hilt export``: Label Studio annotations -> a versioned SFT, preference or KTO dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.cli._common import add_export_source_flags, export_options, export_source
from hilt.core.errors import UserError


def _cmd_export(args: argparse.Namespace) -> int:
    from hilt.labeling.dataset import check_dataset_target, check_versions_root, export_to_dataset
    from hilt.labeling.export_files import check_template_matches

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    if args.since_last and not args.project:
        raise UserError("--since-last needs --project (it tracks what a project already exported)")
    options = export_options(args)
    # The output folder first: a folder that is not a dataset is refused before any work.
    (check_versions_root if args.since_last else check_dataset_target)(Path(args.out))
    tasks, spec, source, where = export_source(args)
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


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="Label Studio annotations -> versioned SFT / preference dataset",
        description="Export annotations to DIR/{train,validation}/data.jsonl, rejects.jsonl, manifest.json "
        "and README.md, atomically and deterministically. Every annotation lands in a record or in "
        "rejects.jsonl with its reason.",
    )
    add_export_source_flags(p)
    p.add_argument("--out", required=True, help="dataset dir (with --since-last: the folder of versions)")
    p.add_argument("--since-last", action="store_true",
                   help="only annotations not in an earlier version under --out; writes OUT/vNNNN")
    p.set_defaults(func=_cmd_export)
