"""The ``hilt`` command.

Thin glue: each subcommand parses its flags and calls one function of a stage package.
Heavy libraries (torch, transformers, trl) are imported inside the handlers, so
``hilt --help`` answers in well under a second.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from hilt import __version__
from hilt.errors import EXIT_USER_ERROR, UserError


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"hilt {__version__}")
    return 0


def _cmd_model_tiny(args: argparse.Namespace) -> int:
    from training.tiny_model import TinyModelSpec, build_tiny_model

    spec = TinyModelSpec(
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads or args.heads,
        intermediate=args.intermediate or 2 * args.hidden,
        vocab_size=args.vocab_size,
        max_positions=args.max_positions,
        seed=args.seed,
    )
    if spec.hidden % spec.heads:
        raise UserError(
            f"--hidden {spec.hidden} is not divisible by --heads {spec.heads}; "
            "pick a hidden size that is a multiple of the head count."
        )
    if spec.heads % spec.kv_heads:
        raise UserError(
            f"--heads {spec.heads} is not divisible by --kv-heads {spec.kv_heads}; "
            "pick a kv-head count that divides the head count."
        )
    out = build_tiny_model(args.out, spec)
    print(f"tiny model written to {out}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hilt.demo import run_demo

    return run_demo(Path(args.workdir))


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hilt",
        description="Human-in-the-loop data and fine-tuning: Label Studio -> TRL -> SageMaker.",
    )
    parser.add_argument("--version", action="version", version=f"hilt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("version", help="print hilt's version")
    p.set_defaults(func=_cmd_version)

    model = sub.add_parser("model", help="build local models (no hub downloads)")
    model_sub = model.add_subparsers(dest="model_command", metavar="KIND", required=True)
    p = model_sub.add_parser(
        "tiny",
        help="build a tiny Llama-shaped model and a locally trained tokenizer",
        description="Build a tiny Llama causal LM with a byte-level BPE tokenizer and a "
        "ChatML chat template (assistant turns in {% generation %} markers), and "
        "save_pretrained both to --out. Deterministic for a seed.",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--layers", type=_positive_int, default=2, help="decoder layers (2)")
    p.add_argument("--hidden", type=_positive_int, default=64, help="hidden size (64)")
    p.add_argument("--heads", type=_positive_int, default=4, help="attention heads (4)")
    p.add_argument("--kv-heads", type=_positive_int, default=None, help="KV heads (= heads)")
    p.add_argument(
        "--intermediate", type=_positive_int, default=None, help="MLP size (2 x hidden)"
    )
    p.add_argument("--vocab-size", type=_positive_int, default=512, help="BPE vocab (512)")
    p.add_argument(
        "--max-positions", type=_positive_int, default=512, help="context length (512)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for weights and corpus (0)")
    p.set_defaults(func=_cmd_model_tiny)

    p = sub.add_parser(
        "demo",
        help="run the main job end to end on embedded defaults (no cloud, no GPU)",
    )
    p.add_argument(
        "--workdir", default=".hilt-demo", help="where the demo keeps its files (.hilt-demo)"
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"hilt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
