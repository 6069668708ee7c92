"""The ``hilt`` command.

Thin glue: each subcommand parses its flags and calls one function of a stage package.
Heavy libraries (torch, transformers, trl) are imported inside the handlers, so
``hilt --help`` answers in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hilt import __version__
from hilt.core.errors import EXIT_USER_ERROR, UserError


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"hilt {__version__}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    # One module per top-level command, named after it, with its flags beside its handlers.
    from hilt.cli import (demo, evaluate, export, inspect_data, label, launch, model, monitor, package, pipeline,
                          quality, recipe, studio, train)

    parser = argparse.ArgumentParser(
        prog="hilt",
        description="Human-in-the-loop data and fine-tuning: Label Studio -> TRL -> SageMaker.",
    )
    parser.add_argument("--version", action="version", version=f"hilt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("version", help="print hilt's version")
    p.set_defaults(func=_cmd_version)

    # The order --help lists them: models, labeling and its data, packaging, training, monitoring, the whole loop.
    for command in (model, studio, label, export, quality, package, train, launch, recipe, inspect_data, evaluate,
                    monitor, pipeline, demo):
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"hilt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as err:
        from hilt.core.outputs import as_user_error

        user_error = as_user_error(err, "a file")
        if user_error is None:
            raise
        print(f"hilt: error: {user_error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
