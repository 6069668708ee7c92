#!/usr/bin/env python
"""GPU benchmark: LoRA SFT of a Llama-3-8B-shaped model through hilt's own training path.

No weights are downloaded: the model is built from a Llama-3-8B config (hidden 4096,
32 layers, 32 heads / 8 KV heads, MLP 14336, vocab 128256) with random bf16 weights,
directly on the GPU. Everything else is hilt's path: an /opt/ml tree laid out by
``prepare_local_tree``, ``read_job``, ``build_sft_trainer`` (chat template, loss masks,
best-fit-decreasing packing into 4k rows, LoRA on all linear layers, the recipe's
TrainingArguments), ``trainer.train()``. Only ``build.load_base_model`` is swapped for the
in-memory random model, so no 16 GB checkpoint has to be written first.

Rows: one without and one with gradient checkpointing. Per row: real (non-padding)
tokens per second over the timed steps (after warm-up), peak GPU memory, attention
kernel, and MFU:

    model FLOPs per token = 6 * N + 12 * L * H * S      (N parameters, L layers, H hidden, S row length;
                                                         the attention term counts QK^T and AV, fwd+bwd)
    MFU = tokens/s * FLOPs per token / peak dense bf16 FLOP/s of the GPU

which is the convention of the PaLM paper and NeMo's tables (a LoRA run does less work
than 6N: no weight gradients for the frozen base, ~4N; ``mfu_lora_work`` reports that
figure too, and gradient checkpointing adds a recomputed forward that neither counts).

    scripts/bench_gpu                         # on a GPU machine: bench_results/gpu.json
    scripts/bench_gpu --shape tiny --steps 3  # anywhere: proves the path runs (CPU smoke file)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12}
SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, max_position_embeddings=8192, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, max_position_embeddings=512),
}
WORDS = ("please order book laptop desk office floor meeting client summary advisor account policy request "
         "approve manager review portfolio risk travel expense report thank you the a to and").split()


def records(n: int, words: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    return [{"messages": [{"role": "user", "content": text(rng.randint(words // 8, words // 4))},
                          {"role": "assistant", "content": text(rng.randint(words // 2, words))}]} for _ in range(n)]


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def run_row(shape: str, steps: int, warmup: int, max_length: int, batch: int, checkpointing: bool,
            workdir: Path) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hilt.training.trainers import build
    from hilt.training.run.entry import prepare_local_tree
    from hilt.training.base.job import read_job
    from hilt.training.trainers.sft import build_sft_trainer
    from hilt.training.models.tiny_model import TinyModelSpec, build_tokenizer

    cuda = torch.cuda.is_available()
    # A model dir with the config and tokenizer only; the weights are made in memory below.
    model_dir = workdir / f"model-{shape}"
    model_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(TinyModelSpec(max_positions=max_length))
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(model_dir)
    config = LlamaConfig(**SHAPES[shape], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config.save_pretrained(model_dir)

    def random_model(job):
        dtype = build.resolve_dtype(job)
        with torch.device("cuda" if cuda else "cpu"):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                     attn_implementation=build.resolve_attention(job))
        model.config.use_cache = False
        return model

    build.load_base_model = random_model
    data = workdir / "data" / "train"
    data.mkdir(parents=True, exist_ok=True)
    # ~4k-token conversations once packed; enough rows for warm-up and timed steps.
    words = max_length // 4 if shape == "8b" else 40
    n_records = (steps + warmup) * batch * (8 if shape == "8b" else 4)
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records(n_records, words)))
    overrides = {"train.max_steps": str(steps + warmup), "train.per_device_batch_size": str(batch),
                 "train.logging_steps": "1", "train.checkpoint_steps": str(10**6), "data.max_length": str(max_length),
                 "model.gradient_checkpointing": json.dumps(checkpointing), "eval.after_training": "false",
                 "train.learning_rate": "0.0001"}
    job_dir = workdir / f"job-{'ckpt' if checkpointing else 'plain'}"
    opt_ml = prepare_local_tree(job_dir, "quickstart-tiny-sft", workdir / "data", model_dir, overrides)
    job = read_job(opt_ml)
    trainer, tokenizer, _ = build_sft_trainer(job)

    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.times, self.tokens = [], []

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    # Real tokens per step, counted from the very batches the trainer will draw.
    real_per_step = []
    for index, batch_ in enumerate(trainer.get_train_dataloader()):
        if index >= steps + warmup:
            break
        real_per_step.append(int((batch_["input_ids"] != tokenizer.pad_token_id).sum()))
    clock = Clock()
    trainer.add_callback(clock)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    durations = [clock.times[i + 1] - clock.times[i] for i in range(0, len(clock.times) - 1, 2)]
    timed = durations[warmup:]
    tokens = sum(real_per_step[warmup:warmup + len(timed)])
    seconds = sum(timed)
    tokens_per_s = tokens / seconds if seconds else 0.0
    n_params = sum(p.numel() for p in trainer.model.parameters())
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    c = SHAPES[shape]
    flops_per_token = 6 * n_params + 12 * c["num_hidden_layers"] * c["hidden_size"] * max_length
    lora_flops_per_token = 4 * n_params + 12 * c["num_hidden_layers"] * c["hidden_size"] * max_length
    peak = peak_flops(gpu_name()) if cuda else None
    return {
        "shape": shape,
        "gradient_checkpointing": checkpointing,
        "attention": build.resolve_attention(job),
        "precision": build.resolve_precision(job),
        "max_length": max_length,
        "per_device_batch_size": batch,
        "timed_steps": len(timed),
        "real_tokens_per_step": round(tokens / max(len(timed), 1), 1),
        "tokens_per_second": round(tokens_per_s, 1),
        "parameters": n_params,
        "trainable_parameters": trainable,
        "flops_per_token": flops_per_token,
        "mfu": round(tokens_per_s * flops_per_token / peak, 4) if peak else None,
        "mfu_lora_work": round(tokens_per_s * lora_flops_per_token / peak, 4) if peak else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 2) if cuda else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps per row (10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (2)")
    parser.add_argument("--max-length", type=int, help="packed row length (4096 for 8b, 256 for tiny)")
    parser.add_argument("--batch", type=int, default=1, help="packed rows per step (1)")
    parser.add_argument("--out", help="results file (bench_results/gpu.json on a GPU, gpu-smoke-cpu.json without)")
    args = parser.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    max_length = args.max_length or (4096 if args.shape == "8b" else 256)
    out = Path(args.out or ROOT / "bench_results" / ("gpu.json" if cuda else "gpu-smoke-cpu.json"))
    rows = []
    with tempfile.TemporaryDirectory(prefix="hilt-bench-gpu-") as tmp:
        for checkpointing in (False, True):
            print(f"[bench_gpu] shape={args.shape} gradient_checkpointing={checkpointing} ...", flush=True)
            rows.append(run_row(args.shape, args.steps, args.warmup, max_length, args.batch, checkpointing,
                                Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
            if cuda:
                torch.cuda.empty_cache()
    result = {"device": gpu_name(), "torch": torch.__version__, "python": platform.python_version(),
              "peak_bf16_flops": peak_flops(gpu_name()) if cuda else None,
              "mfu_formula": "tokens/s * (6N + 12*L*H*S) / peak dense bf16 FLOP/s", "target_mfu_h100": 0.45,
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'checkpointing':<14}{'tokens/s':>12}{'MFU':>8}{'peak GB':>9}  attention")
    for row in rows:
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
        print(f"{str(row['gradient_checkpointing']):<14}{row['tokens_per_second']:>12,.0f}{mfu:>8}"
              f"{str(row['peak_memory_gb']):>9}  {row['attention']}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
