"""``hilt quality``: who annotated what, how fast, how much they agree, without writing a dataset."""

from __future__ import annotations

import argparse
import json

from hilt.cli._common import add_export_source_flags, export_options, export_source
from hilt.core.errors import UserError


def _cmd_quality(args: argparse.Namespace) -> int:
    from hilt.labeling.export import export_annotations
    from hilt.labeling.export_files import check_template_matches

    if bool(args.from_file) == bool(args.project):
        raise UserError("give exactly one of --project ID or --from-file EXPORT.json")
    tasks, spec, _, where = export_source(args)
    check_template_matches(tasks, spec, where)
    result = export_annotations(tasks, spec, export_options(args))
    report = {"counts": result.counts, "quality": result.quality}
    if args.scrub_pii:
        report["pii"] = result.pii
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


def register(sub) -> None:
    p = sub.add_parser("quality", help="annotator counts, lead times, agreement, kappa, gold accuracy")
    add_export_source_flags(p)
    p.set_defaults(func=_cmd_quality)
