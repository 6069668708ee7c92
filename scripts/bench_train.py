#!/usr/bin/env python
"""Benchmark: hilt's SFT LoRA path against every way a TRL user can configure SFTTrainer.

One run, side by side, on this machine. Every mode trains the same LoRA (same rank,
alpha, dropout and target modules: the trainable parameter count is asserted equal) on
the same model, with the same optimizer, schedule, seed and loss (every token of the
conversation, TRL's default for ``messages`` data), over the same conversations: one full
epoch, so every mode sees the same real tokens (TRL's "wrapped" packing keeps the tails that
truncation drops elsewhere; its real-token count is reported as it is). Modes:

- ``trl-padded``: SFTTrainer's default (random batches padded to the longest);
- ``trl-group-by-length``: ``train_sampling_strategy="group_by_length"``;
- ``trl-packing-wrapped``: ``packing=True, packing_strategy="wrapped"`` (sequences cut at
  row ends and attending across each other);
- ``trl-padding-free``: ``padding_free=True`` (the batch as one row);
- ``trl-packing-bfd``: ``packing=True`` (best-fit decreasing into one row per batch);
- ``hilt``: hilt's own path (``data.packing``: rows choose a step's conversations, laid out
  as length groups, each example attending only to itself; fused LoRA linears, RMSNorms and
  rotary embeddings; on CPU, the loss on the counted positions only
  (``hilt.training.kernels.sft_loss``) and malloc keeps freed blocks: ``hilt.training.kernels.host_memory``);
- ``trl-group-by-length+host-memory``: TRL's group-by-length with hilt's malloc setting
  applied to its process too. Not a TRL option, so not a candidate for "best TRL mode"; it
  shows how much of hilt's lead is that setting and how much its own path.

Each mode runs in its own process (peak memory is its own), in interleaved rounds (A B C …
A B C …) so drift hits all alike. Reported per mode and round: real tokens per second of
training time, padding share of the batches, optimizer steps, conversations per row, peak
RSS, final loss, and the machine's load average; the summary takes each mode's median, the
ratio of hilt to the best TRL mode (of the medians, and per round), and then a profile of a
few steps of each mode: where the time goes (matmuls, attention, gathers, the rest), the
matmul rate, and the floor that rate sets (real tokens/s if only the matmuls took time).

hilt packs ~3.2 of these conversations into each 512-token row, so a batch of 8 rows is ~26
conversations and one epoch is 31 optimizer steps; the unpacked modes take 100 steps of 8
conversations. Same tokens, same learning-rate schedule over the epoch, fewer updates: the
final loss of the packed modes (TRL's and hilt's) is higher after one epoch for that reason.

    .venv/bin/python scripts/bench_train.py                 # tiny Llama 4x256 built here, CPU
    .venv/bin/python scripts/bench_train.py --records 2000 --rounds 3
    scripts/bench_gpu compare                               # GPU: Llama-3-8B layers, 4k rows

On a GPU the modes run in bf16; TRL's one-row modes (padding-free, BFD packing) use
flash-attention's varlen kernels where the flash_attn package is installed (sdpa otherwise),
Liger's kernels (``use_liger_kernel``) make two more TRL modes where liger_kernel is
installed, the host-memory row (a CPU setting) is left out, and each mode reports its MFU
(PaLM's ``6N`` FLOPs per token over the GPU's peak dense bf16 rate); profiles then count device
time. Modes this machine cannot run are named at the start and left out.

Results: bench_results/train.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_gpu import PEAK_FLOPS  # peak dense bf16 FLOP/s per GPU, for MFU
from bench_gpu import SHAPES as GPU_SHAPES

WORDS = ("please order book laptop desk office floor meeting client summary advisor account policy "
         "request approve manager review portfolio risk travel expense report thank you the a to and").split()
TRL_MODES = {
    "trl-padded": {},
    "trl-group-by-length": {"train_sampling_strategy": "group_by_length"},
    "trl-packing-wrapped": {"packing": True, "packing_strategy": "wrapped"},
    "trl-padding-free": {"padding_free": True},
    "trl-packing-bfd": {"packing": True, "packing_strategy": "bfd"},
}
# TRL's best sampling with the malloc setting hilt applies to its own CPU process.
WITH_HOST_MEMORY = "trl-group-by-length+host-memory"
# TRL with Liger's Triton kernels (use_liger_kernel=True): TRL options, CUDA only, where the
# liger_kernel package is installed.
LIGER_MODES = ("trl-group-by-length+liger", "trl-padding-free+liger")
MODES = (*TRL_MODES, *LIGER_MODES, WITH_HOST_MEMORY, "hilt")
# Model shapes: "tiny" runs anywhere; "8b" is Llama-3-8B's layer (hidden 4096, MLP 14336,
# 32 heads / 8 KV heads, vocabulary 128,256) with random bf16 weights, for a GPU.
SHAPES = {
    "tiny": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                 num_key_value_heads=4, vocab_size=512),
    "8b": GPU_SHAPES["8b"],  # the model scripts/bench_gpu trains
}


def is_trl_mode(mode: str) -> bool:
    """A configuration a TRL user can choose (a candidate for "best TRL mode")."""
    return mode in TRL_MODES or mode in LIGER_MODES


def unavailable(mode: str) -> str | None:
    """Why ``mode`` cannot run on this machine, or None."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    if mode in LIGER_MODES and not (cuda and importlib.util.find_spec("liger_kernel")):
        return "Liger's kernels need CUDA and the liger_kernel package"
    if mode == WITH_HOST_MEMORY and cuda:
        return "the malloc setting is hilt's on CPU only"
    return None


def flash_attention() -> bool:
    """Whether flash-attention's varlen kernels can run here (CUDA and the flash_attn package)."""
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def build_model(work: Path, shape: str, layers: int | None) -> str:
    """A model directory of ``shape`` with random weights and the tiny tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hilt.training.models.tiny_model import TinyModelSpec, build_tiny_model, build_tokenizer

    if shape == "tiny" and layers is None:
        return str(build_tiny_model(work / "model", TinyModelSpec(layers=4, hidden=256, heads=8, intermediate=688)))
    tokenizer = build_tokenizer(TinyModelSpec(max_positions=8192))
    config = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})},
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    config.vocab_size = max(config.vocab_size, len(tokenizer))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if shape == "8b" else torch.float32)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return str(work / "model")
LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
SCHEDULE = {"learning_rate": 1e-4, "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "weight_decay": 0.0,
            "max_grad_norm": 1.0, "seed": 42}


def make_records(n: int, seed: int) -> list[dict]:
    """Chat records with the long-tailed lengths real instruction data has."""
    rng = random.Random(seed)

    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(int(rng.paretovariate(1.2) * lo) % hi + 3))

    return [{"messages": [{"role": "user", "content": text(8, 120)},
                          {"role": "assistant", "content": text(12, 300)}]} for _ in range(n)]


def hilt_trainer(model: str, data: Path, batch: int, max_length: int, micro_batch: int | None = None,
                 checkpointing: bool = False):
    from hilt.training.run.entry import prepare_local_tree
    from hilt.training.base.job import read_job
    from hilt.training.trainers.sft import build_sft_trainer

    # --hilt-micro-batch: the same rows per optimizer step, a few at a time (gradient accumulation).
    micro_batch = micro_batch or batch
    if batch % micro_batch:
        raise SystemExit(f"--hilt-micro-batch {micro_batch} must divide --batch {batch}")
    overrides = {"train.epochs": "1", "train.max_steps": "-1", "train.per_device_batch_size": str(micro_batch),
                 "train.gradient_accumulation_steps": str(batch // micro_batch),
                 "data.max_length": str(max_length), "data.assistant_only_loss": "false",
                 "train.logging_steps": "1000000", "train.checkpoint_steps": "1000000", "model.dtype": "auto",
                 "model.gradient_checkpointing": str(checkpointing).lower(), "train.learning_rate": str(SCHEDULE["learning_rate"]),
                 "train.lr_scheduler": SCHEDULE["lr_scheduler_type"], "train.warmup_ratio": str(SCHEDULE["warmup_steps"]),
                 "train.weight_decay": str(SCHEDULE["weight_decay"]), "train.max_grad_norm": str(SCHEDULE["max_grad_norm"]),
                 "train.seed": str(SCHEDULE["seed"]), "peft.r": str(LORA["r"]), "peft.alpha": str(LORA["alpha"]),
                 "peft.dropout": str(LORA["dropout"]), "peft.target_modules": LORA["target_modules"]}
    tree = prepare_local_tree(Path(tempfile.mkdtemp()) / "job", "quickstart-tiny-sft", data, Path(model), overrides)
    trainer, _, _ = build_sft_trainer(read_job(tree))
    rows = trainer.train_dataset
    real = sum(len(ids) for ids in rows["input_ids"])
    conversations = sum(len(lengths) for lengths in rows["seq_lengths"]) if "seq_lengths" in rows.column_names else len(rows)
    total = sum(b["input_ids"].numel() for b in trainer.get_train_dataloader())
    return trainer, real, total, conversations / len(rows)


def trl_trainer(mode: str, model: str, data: Path, batch: int, max_length: int):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    records = [json.loads(line) for line in (data / "train" / "data.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(model)
    if mode.startswith("trl-padding-free"):
        # TRL does not truncate in padding-free mode without packing: give it the same
        # truncated sequences the other modes train on.
        records = [{"input_ids": list(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"])
                    [:max_length]} for r in records]
    base, _, option = mode.partition("+")
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch, num_train_epochs=1, max_steps=-1,
        max_length=None if base == "trl-padding-free" else max_length, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
        gradient_checkpointing=False, report_to="none", save_strategy="no", logging_steps=1_000_000,
        data_seed=SCHEDULE["seed"], include_num_input_tokens_seen="non_padding", **SCHEDULE, **TRL_MODES[base],
        use_liger_kernel=option == "liger",
    )
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    # The batch as one row (padding-free, BFD packing) is what flash-attention's varlen kernels
    # are for; elsewhere, and without flash_attn, sdpa (transformers masks packed sequences).
    one_row = base in ("trl-padding-free", "trl-packing-bfd")
    attention = "flash_attention_2" if one_row and flash_attention() else "sdpa"
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation=attention), args=args,
        train_dataset=Dataset.from_list(records), processing_class=tokenizer,
        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                               target_modules=LORA["target_modules"], task_type="CAUSAL_LM"),
    )
    rows = trainer.train_dataset
    real = sum(len(ids) for ids in rows["input_ids"])
    total = 0
    for b in trainer.get_train_dataloader():
        total += b["input_ids"].numel()
    conversations = (sum(len(s) for s in rows["seq_lengths"]) / len(rows)) if "seq_lengths" in rows.column_names else 1.0
    return trainer, real, total, conversations


# Where a step's time goes, by the self time of the ops the profiler records.
CATEGORIES = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")),
    ("attention", ("aten::scaled_dot_product", "aten::_scaled_dot_product", "aten::_flash_attention",
                   "aten::_efficient_attention", "flash_attn::")),
    ("gather/scatter", ("aten::index", "aten::_index_put", "aten::masked", "aten::cat", "aten::stack")),
)  # name prefixes: "aten::addmm" covers addmm_, "aten::index" index_select/_copy/_put


def _addmm_flops(event) -> int:
    """FLOPs of an in-place ``addmm_`` (the profiler counts none): 2·m·k·n per call."""
    shapes = event.input_shapes or []
    if event.key != "aten::addmm_" or len(shapes) < 3 or len(shapes[1]) != 2 or len(shapes[2]) != 2:
        return 0
    (m, k), (_, n) = shapes[1], shapes[2]
    return 2 * m * k * n * event.count


def profile_worker(trainer, steps: int) -> dict:
    """Train ``steps`` steps under torch.profiler: time shares by op category, matmul FLOPs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    # On a GPU the time that counts is the kernels' (device time), attributed to the ops that launched them.
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    timing = "self_device_time_total" if cuda else "self_cpu_time_total"
    trainer.args.max_steps = steps
    with profile(activities=activities, with_flops=True, record_shapes=True) as prof:
        trainer.train()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(getattr(e, timing) for e in events)
    shares: dict[str, float] = {name: 0.0 for name, _ in CATEGORIES}
    shares["elementwise and other"] = 0.0
    flops = 0
    for e in events:
        category = next((name for name, prefixes in CATEGORIES if e.key.startswith(prefixes)), "elementwise and other")
        shares[category] += getattr(e, timing)
        if category == "matmul":
            flops += e.flops or _addmm_flops(e)
    seconds = total / 1e6
    tokens = trainer.state.num_input_tokens_seen or None
    return {"profiled_steps": steps, "profiled_seconds": seconds,
            "time_share": {k: round(v / total, 3) for k, v in shares.items()},
            "matmul_gflops_per_second": flops / (shares["matmul"] / 1e6) / 1e9 if shares["matmul"] else None,
            "matmul_flops": flops, "real_tokens_seen": tokens}


def run_worker(mode: str, model: str, data: Path, batch: int, max_length: int, profile_steps: int = 0,
               micro_batch: int | None = None) -> dict:
    import torch
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    load_before = os.getloadavg()[0]
    if mode == "hilt":
        trainer, real, total, per_row = hilt_trainer(model, data, batch, max_length, micro_batch,
                                                     os.environ.get("HILT_BENCH_CHECKPOINTING") == "1")
    else:
        if mode == WITH_HOST_MEMORY:
            from hilt.training.kernels.host_memory import keep_freed_memory

            assert keep_freed_memory(), "malloc settings did not apply (not glibc, or MALLOC_*_THRESHOLD_/GLIBC_TUNABLES/LD_PRELOAD set)"
        trainer, real, total, per_row = trl_trainer(mode, model, data, batch, max_length)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if profile_steps:
        return {"mode": mode, **profile_worker(trainer, profile_steps)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_first: list[int] = []

    class FirstStep(TrainerCallback):  # faults after the first step: the steady state, not first touches
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                after_first.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)

    trainer.add_callback(FirstStep())
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - started
    faults_end = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    faults = faults_end - faults_before
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "mode": mode, "steps": trainer.state.global_step, "seconds": seconds, "real_tokens": real,
        "tokens_per_second": real / seconds, "padding_fraction": 1 - real / total if total else 0.0,
        "conversations_per_row": per_row, "trainable_parameters": trainable,
        "minor_page_faults_per_step": round(faults / max(trainer.state.global_step, 1)),
        "minor_page_faults_per_step_after_first": (round((faults_end - after_first[0]) / (trainer.state.global_step - 1))
                                                   if after_first and trainer.state.global_step > 1 else None),
        "train_loss": output.training_loss, "last_logged_loss": losses[-1] if losses else None,
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if cuda
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "load_average": [load_before, os.getloadavg()[0]],
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    if cuda:
        # N without the input embeddings: a lookup, not a matmul (the LM head counts).
        params = (sum(p.numel() for p in trainer.model.parameters())
                  - trainer.model.get_input_embeddings().weight.numel())
        peak = next((v for k, v in PEAK_FLOPS.items() if k in result["device"]), None)
        if peak:
            result["mfu"] = 6 * params * result["tokens_per_second"] / peak  # PaLM's 6N, no attention term
    return result


def matmul_floor(summary_rows: dict, profiles: dict) -> dict:
    """What each mode would reach if only its matmuls took time, at the matmul rate the
    profiler measured in this run: this machine's floor for that mode's arithmetic (padding
    included, so a mode that pads pays for it here too)."""
    floor = {}
    for mode, profile in profiles.items():
        if mode not in summary_rows or not (profile.get("matmul_gflops_per_second") and profile.get("real_tokens_seen")):
            continue
        per_token = profile["matmul_flops"] / profile["real_tokens_seen"]
        ceiling = profile["matmul_gflops_per_second"] * 1e9 / per_token
        floor[mode] = {"matmul_flops_per_real_token": round(per_token),
                       "tokens_per_second_if_only_matmuls": round(ceiling),
                       "share_of_that_reached": round(summary_rows[mode]["tokens_per_second"] / ceiling, 3)}
    return floor


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model dir (default: one of --shape built here)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny",
                        help="model built when no --model: tiny (Llama 4x256, CPU) or 8b (Llama-3-8B layers, GPU)")
    parser.add_argument("--layers", type=int, help="number of layers of --shape (8b: 32; fewer fit a short run)")
    parser.add_argument("--records", type=int, default=800, help="conversations in the epoch (800)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all modes (3)")
    parser.add_argument("--modes", help="comma-separated subset of " + ",".join(MODES) + " (default: all that run here)")
    parser.add_argument("--profile-steps", type=int, default=6,
                        help="after the timed rounds, profile this many steps of each mode (0: skip)")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "train.json"))
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--hilt-gradient-checkpointing", action="store_true",
                        help="hilt with model.gradient_checkpointing on (what fitting memory that way costs)")
    parser.add_argument("--hilt-micro-batch", type=int,
                        help="hilt's rows per forward pass, accumulated to --batch rows per optimizer step")
    args = parser.parse_args()

    if args.worker:
        result = run_worker(args.worker, args.model, Path(args.data), args.batch, args.max_length, args.profile_steps,
                            args.hilt_micro_batch)
        print("RESULT " + json.dumps(result))
        return 0

    if args.modes is None:
        modes = [m for m in MODES if not unavailable(m)]
        print("modes not run here: " + ("; ".join(f"{m} ({unavailable(m)})" for m in MODES if unavailable(m))
                                         or "none"), flush=True)
    else:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        for mode in modes:
            if unavailable(mode):
                parser.error(f"--modes {mode}: {unavailable(mode)}; leave it out")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    model = args.model or build_model(work, args.shape, args.layers)
    data = work / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "data.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in make_records(args.records, seed=0)))

    def worker(mode: str, profile_steps: int = 0) -> dict | None:
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", mode, "--model", model, "--data", str(data),
             "--batch", str(args.batch), "--max-length", str(args.max_length), "--profile-steps", str(profile_steps),
             *(["--hilt-micro-batch", str(args.hilt_micro_batch)] if args.hilt_micro_batch else [])],
            capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false",
                                                 "HILT_BENCH_CHECKPOINTING": "1" if args.hilt_gradient_checkpointing else "0"},
        )
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            print(f"{mode}: worker exited with {proc.returncode}"
                  + (" (killed: out of memory?)" if proc.returncode == -9 else ""), file=sys.stderr)
            return None
        return json.loads(line.removeprefix("RESULT "))

    runs: list[dict] = []
    for round_index in range(args.rounds):
        for mode in modes:
            result = worker(mode)
            if result is None:
                return 1
            result["round"] = round_index + 1
            runs.append(result)
            print(f"round {round_index + 1} {mode:<32} {result['tokens_per_second']:>8.0f} tok/s "
                  f"({result['seconds']:.1f} s, load {result['load_average'][0]:.2f})", flush=True)

    # The rounds are kept before profiling: a profile costs memory (record_shapes) a mode may not have.
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).with_suffix(".runs.tmp").write_text(json.dumps(runs, indent=2) + "\n")
    profiles = {}
    failed_profiles = []
    for mode in modes if args.profile_steps else ():
        profiles[mode] = worker(mode, args.profile_steps)
        if profiles[mode] is None:
            failed_profiles.append(mode)
            del profiles[mode]
            print(f"profile {mode:<32} failed (see above); the other modes are profiled", flush=True)
            continue
        shares = ", ".join(f"{k} {v:.0%}" for k, v in profiles[mode]["time_share"].items())
        print(f"profile {mode:<32} {shares}", flush=True)

    trainable = {r["trainable_parameters"] for r in runs}
    assert len(trainable) == 1, f"modes train different parameter counts: {trainable}"
    summary_rows = {}
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        summary_rows[mode] = {
            "tokens_per_second": statistics.median(r["tokens_per_second"] for r in mine),
            "tokens_per_second_runs": [round(r["tokens_per_second"], 1) for r in mine],
            **{k: mine[-1][k] for k in ("real_tokens", "padding_fraction", "steps", "conversations_per_row",
                                        "minor_page_faults_per_step", "minor_page_faults_per_step_after_first",
                                        "peak_memory_mb", "train_loss", "device")},
            **({"mfu": statistics.median(r["mfu"] for r in mine)} if all("mfu" in r for r in mine) else {}),
        }
    trl = {m: v for m, v in summary_rows.items() if is_trl_mode(m)}
    best = max(trl, key=lambda m: trl[m]["tokens_per_second"]) if trl else None
    ratio = (summary_rows["hilt"]["tokens_per_second"] / trl[best]["tokens_per_second"]
             if best and "hilt" in summary_rows else None)
    # Within a round the modes ran back to back, so a round's ratio is untouched by the drift
    # between rounds that a shared machine shows (+-25 % here).
    per_round = []
    for round_index in range(1, args.rounds + 1):
        mine = {r["mode"]: r["tokens_per_second"] for r in runs if r["round"] == round_index}
        peers = [v for m, v in mine.items() if is_trl_mode(m)]
        if "hilt" in mine and peers:
            per_round.append(round(mine["hilt"] / max(peers), 3))
    same_memory = (summary_rows["hilt"]["tokens_per_second"] / summary_rows[WITH_HOST_MEMORY]["tokens_per_second"]
                   if "hilt" in summary_rows and WITH_HOST_MEMORY in summary_rows else None)
    summary = {"modes": summary_rows, "runs": runs, "best_trl_mode": best, "hilt_over_best_trl": ratio,
               "hilt_over_best_trl_per_round": per_round,
               "hilt_over_best_trl_per_round_median": statistics.median(per_round) if per_round else None,
               "hilt_over_trl_group_by_length_with_host_memory": same_memory,
               "profiles": profiles, "profiles_failed": failed_profiles,
               "matmul_floor": matmul_floor(summary_rows, profiles),
               "target": "hilt >= 1.3x the best TRL mode's real tokens/s",
               "config": {"records": args.records, "batch": args.batch, "max_length": args.max_length,
                          "hilt_micro_batch": args.hilt_micro_batch,
                          "hilt_gradient_checkpointing": args.hilt_gradient_checkpointing,
                          "rounds": args.rounds, "lora": LORA, "schedule": SCHEDULE,
                          "trainable_parameters": trainable.pop(),
                          "model": args.model or f"{args.shape} llama (built, random weights)",
                          "shape": None if args.model else {**SHAPES[args.shape],
                                                            **({"num_hidden_layers": args.layers} if args.layers else {})},
                          "flash_attention_varlen": flash_attention(), "cpus": os.cpu_count()}}
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    Path(args.out).with_suffix(".runs.tmp").unlink(missing_ok=True)

    print(f"\n{'mode':<32} {'tok/s':>8} {'padding':>8} {'steps':>6} {'conv/row':>8} {'faults/step':>11} "
          f"{'after 1st':>10} {'peak MB':>8} {'loss':>7} {'MFU':>6}")
    for mode, r in summary_rows.items():
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "-"
        steady = r.get("minor_page_faults_per_step_after_first")
        print(f"{mode:<32} {r['tokens_per_second']:>8.0f} {r['padding_fraction']:>8.1%} {r['steps']:>6} "
              f"{r['conversations_per_row']:>8.2f} {r['minor_page_faults_per_step']:>11} "
              f"{'-' if steady is None else steady:>10} {r['peak_memory_mb']:>8.0f} {r['train_loss']:>7.3f} {mfu:>6}")
    floor = summary["matmul_floor"]
    if floor:
        print(f"\n{'mode':<32} {'matmul':>7} {'attention':>9} {'gather':>7} {'rest':>6} "
              f"{'GFLOP/s':>8} {'MFLOP/tok':>9} {'floor tok/s':>11} {'reached':>7}")
        for mode, profile in profiles.items():
            share, f = profile["time_share"], floor.get(mode, {})
            print(f"{mode:<32} {share['matmul']:>7.0%} {share['attention']:>9.0%} {share['gather/scatter']:>7.0%} "
                  f"{share['elementwise and other']:>6.0%} {profile['matmul_gflops_per_second'] or 0:>8.0f} "
                  f"{f.get('matmul_flops_per_real_token', 0) / 1e6:>9.2f} {f.get('tokens_per_second_if_only_matmuls', 0):>11} "
                  f"{f.get('share_of_that_reached', 0):>7.0%}")
    if ratio is not None:
        print(f"hilt / best TRL ({best}): {ratio:.2f}x of medians; per round {per_round}  -> {args.out}")
    if same_memory is not None:
        print(f"hilt / {WITH_HOST_MEMORY}: {same_memory:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
