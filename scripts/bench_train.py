#!/usr/bin/env python
"""Benchmark: hilt's SFT data path vs vanilla TRL SFTTrainer, side by side in one run.

Both train the same LoRA on the same model and data on this machine for the same number
of steps; they differ only where hilt differs: best-fit-decreasing packing, padding-free
batches with position-id resets, assistant-only loss. Each runs in its own process so
peak memory is its own. Reported per mode: real (non-padding) tokens/s, padding
fraction of the batches, peak memory, and hilt/vanilla ratio; on a GPU also MFU.

    .venv/bin/python scripts/bench_train.py                # tiny model built here, CPU
    .venv/bin/python scripts/bench_train.py --model /weights/llama3-8b --steps 20   # GPU box

Results: bench_results/train.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("please order book laptop desk office floor meeting client summary advisor account policy "
         "request approve manager review portfolio risk travel expense report thank you the a to and").split()
# Peak dense bf16 FLOP/s per GPU, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12}


def make_records(n: int, seed: int) -> list[dict]:
    """Chat records with the long-tailed lengths real instruction data has."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.2) * lo) % hi + 3))

    return [{"messages": [{"role": "user", "content": text(8, 120)},
                          {"role": "assistant", "content": text(12, 300)}]} for _ in range(n)]


def count_padding(trainer, steps: int) -> tuple[int, int]:
    """(real tokens, total token slots) over the first `steps` batches the trainer would see."""
    real = total = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i >= steps:
            break
        total += batch["input_ids"].numel()
        if "attention_mask" in batch:
            real += int(batch["attention_mask"].sum())
        else:  # packed batches: every slot that is not the pad token carries a real token
            real += int((batch["input_ids"] != trainer.processing_class.pad_token_id).sum())
    return real, total


def run_worker(mode: str, model: str, data: Path, steps: int, batch: int, max_length: int) -> dict:
    import torch
    from peft import LoraConfig

    cuda = torch.cuda.is_available()
    if mode == "hilt":
        from training.entry import prepare_local_tree
        from training.job import read_job
        from training.sft import build_sft_trainer

        overrides = {"train.max_steps": str(steps), "train.per_device_batch_size": str(batch),
                     "data.max_length": str(max_length), "train.logging_steps": str(steps),
                     "train.checkpoint_steps": "1000000", "model.dtype": "auto",
                     "model.gradient_checkpointing": "false", "train.learning_rate": "1e-4"}
        tree = prepare_local_tree(Path(tempfile.mkdtemp()) / "job", "quickstart-tiny-sft", data, Path(model), overrides)
        trainer, _, _ = build_sft_trainer(read_job(tree))
    else:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import SFTConfig, SFTTrainer

        records = [json.loads(line) for line in (data / "train" / "data.jsonl").read_text().splitlines()]
        args = SFTConfig(
            output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, max_steps=steps, learning_rate=1e-4,
            max_length=max_length, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
            gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=steps,
            include_num_input_tokens_seen="non_padding",
        )
        dtype = torch.bfloat16 if args.bf16 else torch.float32
        trainer = SFTTrainer(
            model=AutoModelForCausalLM.from_pretrained(model, dtype=dtype), args=args,
            train_dataset=Dataset.from_list(records), processing_class=AutoTokenizer.from_pretrained(model),
            peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                   task_type="CAUSAL_LM"),
        )
    real, total = count_padding(trainer, steps)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen
    result = {
        "mode": mode, "steps": steps, "seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
        "padding_fraction": 1 - real / total if total else 0.0,
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    if cuda:
        params = sum(p.numel() for p in trainer.model.parameters())
        peak = next((v for k, v in PEAK_FLOPS.items() if k in result["device"]), None)
        if peak:
            result["mfu"] = 6 * params * result["tokens_per_second"] / peak
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model dir (default: a tiny Llama built here)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "train.json"))
    parser.add_argument("--worker", choices=["hilt", "vanilla"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = run_worker(args.worker, args.model, Path(args.data), args.steps, args.batch, args.max_length)
        print("RESULT " + json.dumps(result))
        return 0

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = args.model
    if model is None:
        from training.tiny_model import TinyModelSpec, build_tiny_model

        model = str(build_tiny_model(work / "model", TinyModelSpec(layers=4, hidden=256, heads=8, intermediate=688)))
    data = work / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "data.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in make_records(args.records, seed=0)))

    results = {}
    for mode in ("vanilla", "hilt"):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--model", model, "--data", str(data),
             "--steps", str(args.steps), "--batch", str(args.batch), "--max-length", str(args.max_length)],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        results[mode] = json.loads(line.removeprefix("RESULT "))

    ratio = results["hilt"]["tokens_per_second"] / results["vanilla"]["tokens_per_second"]
    summary = {"results": results, "speedup_tokens_per_second": ratio,
               "goal": "hilt >= 1.5x vanilla tokens/s with < 2% padding",
               "goal_met": ratio >= 1.5 and results["hilt"]["padding_fraction"] < 0.02,
               "config": {"steps": args.steps, "batch": args.batch, "max_length": args.max_length,
                          "records": args.records, "model": args.model or "tiny llama 4x256 (built)"}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")

    print(f"{'mode':<8} {'tokens/s':>10} {'padding':>8} {'peak MB':>9} {'seconds':>8}")
    for mode, r in results.items():
        print(f"{mode:<8} {r['tokens_per_second']:>10.0f} {r['padding_fraction']:>8.1%} "
              f"{r['peak_memory_mb']:>9.0f} {r['seconds']:>8.1f}" + (f"  MFU {r['mfu']:.1%}" if "mfu" in r else ""))
    print(f"hilt / vanilla tokens/s: {ratio:.2f}x  (goal >= 1.5x with < 2% padding: "
          f"{'met' if summary['goal_met'] else 'NOT met'})  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
