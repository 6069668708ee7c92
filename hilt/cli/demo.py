"""``hilt demo``: the main job end to end on embedded defaults (no cloud, no GPU)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hilt.flows.demo import DEMO_MODELS, run_demo
from hilt.serving.backend import BACKEND_NAMES


def _cmd_demo(args: argparse.Namespace) -> int:
    return run_demo(Path(args.workdir) if args.workdir else None, model=args.model, backend=args.backend)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on embedded defaults (no cloud, no GPU)",
        description="Label Studio with model drafts, stand-in annotators, training, evaluation (task and general "
        "skills), a blinded side-by-side, packaging, SageMaker's validation replayed, serving with capture and "
        "the review loop, on a real pretrained model (SmolLM2-135M-Instruct, imported by scripts/setup) or, with "
        "--model tiny, a tiny local one.",
    )
    p.add_argument("--model", choices=list(DEMO_MODELS), default="real",
                   help="base model: " + "; ".join(f"{k} = {m.describe}" for k, m in DEMO_MODELS.items()))
    p.add_argument(
        "--workdir", help="where the demo keeps its files (.hilt-demo for real, .hilt-demo-tiny for tiny)"
    )
    p.add_argument("--backend", choices=list(BACKEND_NAMES),
                   help="serve's generation backend for the validation replay and the served model "
                   "(HILT_SERVE_BACKEND; default hf): vllm needs .venv-vllm (scripts/setup)")
    p.set_defaults(func=_cmd_demo)
