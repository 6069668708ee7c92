#!/usr/bin/env python
"""Benchmark: `serve`'s generation backends, and the vLLM one against vLLM's own server.

Two suites, each in one run (same model, prompts and generation length for every side):

``--suite backends`` (default; a tiny Llama unless ``--model``): `serve`'s batching backend
(``hf``: transformers' continuous batching) vs its one-at-a-time path (``hf-serial``) and a
bare `generate` loop (no HTTP, no JSON, no threads), at client concurrency 1, 4, 8 and 16:
throughput, p50/p99 latency and errors; the metering header's own cost is timed directly.
Results: bench_results/serve.json.

``--suite engines`` (default: the real model, SmolLM2-135M-Instruct from scripts/setup): streamed
chat requests, greedy, ``--new-tokens`` (48) at most, at concurrency 1, 8, 16 and 32, to `serve`
with ``HILT_SERVE_BACKEND=hf``, to `serve` with ``HILT_SERVE_BACKEND=vllm``, and to vLLM's own
OpenAI server (``vllm serve``, same engine settings) with no hilt in front: output tokens/s,
p50/p99 latency, p50/p99 time to first token, errors. Results: bench_results/serve-engines.json.

    .venv/bin/python scripts/bench_serve.py [--suite backends|engines] [--model DIR] [--requests N]

Nothing else should run on the machine meanwhile (a second job bends ratios, not only rates).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hilt.serving.process import start_serve, wait_ready  # noqa: E402

PROMPTS = ["Please order a monitor for Ana.", "Can you book room 3A on Monday?", "I forgot my password for email.",
           "Summarize: Mrs. Lee called about bond fees and asked for a follow-up on Friday."]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_loop(model_dir: Path, n: int, new_tokens: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    latencies = []
    started = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        latencies.append(time.perf_counter() - t0)
    seconds = time.perf_counter() - started
    return {"mode": "bare generate loop", "concurrency": 1, "requests": n, "requests_per_second": n / seconds,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000}


def served(url: str, backend: str, n: int, concurrency: int, new_tokens: int) -> dict:
    def call(i: int) -> tuple[float, bool]:
        body = json.dumps({"inputs": PROMPTS[i % len(PROMPTS)], "parameters": {"max_new_tokens": new_tokens}}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                answer = json.loads(response.read())
                ok = (response.status == 200 and bool(response.headers["X-Amzn-Inference-Metering"])
                      and answer["usage"]["output_tokens"] >= 1)
        except (OSError, ValueError, KeyError):
            ok = False
        return time.perf_counter() - t0, ok

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(call, range(n)))
    seconds = time.perf_counter() - started
    latencies = [r[0] for r in results]
    return {"mode": f"serve {backend}", "concurrency": concurrency, "requests": n, "requests_per_second": n / seconds,
            "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "errors": sum(not r[1] for r in results)}


def run_server(model: Path, work: Path, backend: str, requests: int, new_tokens: int,
               concurrencies: tuple[int, ...], extra_env: dict | None = None, label: str = "") -> list[dict]:
    """Start `serve` with one backend (and ``extra_env``), load it at each concurrency, stop it."""
    base = work / f"opt_ml-{backend}{label}"
    base.mkdir()
    (base / "model").symlink_to(model.resolve(), target_is_directory=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server, url = start_serve(base, port, {"HILT_SERVE_BACKEND": backend, **(extra_env or {})})
    rows = []
    try:
        if not wait_ready(url, server, timeout=600):
            raise SystemExit(f"bench_serve: serve ({backend}) did not start")
        served(url, backend, 8, 4, new_tokens)  # warm-up
        for concurrency in concurrencies:
            rows.append(served(url, backend + label, requests, concurrency, new_tokens))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


def print_table(rows: list[dict]) -> None:
    width = max(20, *(len(r["mode"]) for r in rows))
    print(f"{'mode':<{width}} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for r in rows:
        print(f"{r['mode']:<{width}} {r['concurrency']:>4} {r['requests_per_second']:>8.1f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r.get('errors', 0):>6}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("backends", "engines"), default="backends")
    parser.add_argument("--model", help="model dir (backends: a tiny Llama built here; engines: the real model)")
    parser.add_argument("--requests", type=int, help="requests per concurrency (backends: 64; engines: 2x it, >= 8)")
    parser.add_argument("--new-tokens", type=int, help="max new tokens per request (backends: 16; engines: 48)")
    parser.add_argument("--out", help="results file (bench_results/serve.json or serve-engines.json)")
    args = parser.parse_args()
    if args.suite == "engines":
        from bench_serve_engines import engines_suite

        return engines_suite(args)
    args.requests = args.requests or 64
    args.new_tokens = args.new_tokens or 16
    args.out = args.out or str(ROOT / "bench_results" / "serve.json")

    from hilt.serving.contract import Generation, metering_header

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    model = Path(args.model) if args.model else None
    if model is None:
        from hilt.training.models.tiny_model import build_tiny_model

        model = build_tiny_model(work / "model")
    # The server generates until EOS or max_new_tokens; a random-init model rarely stops, so
    # both sides produce the same number of tokens.
    rows = [bare_loop(model, args.requests, args.new_tokens)]
    concurrencies = (1, 4, 8, 16)
    for backend in ("hf-serial", "hf"):
        rows += run_server(model, work, backend, args.requests, args.new_tokens, concurrencies)

    gens = [Generation("x" * 40, input_tokens=120, output_tokens=args.new_tokens)]
    per_call = min(timeit.repeat(lambda: metering_header("output_tokens", gens), number=10000, repeat=3)) / 10000
    def row(mode: str, concurrency: int) -> dict:
        return next(r for r in rows if r["mode"] == mode and r["concurrency"] == concurrency)

    batched_c1, batched_c8 = row("serve hf", 1), row("serve hf", 8)
    serial_c1 = row("serve hf-serial", 1)
    summary = {"rows": rows, "metering_header_us": per_call * 1e6,
               "metering_share_of_p50": per_call / (batched_c1["p50_ms"] / 1000),
               "http_overhead_ms_at_concurrency_1": serial_c1["p50_ms"] - rows[0]["p50_ms"],
               "targets": {
                   "throughput_c8_over_c1": batched_c8["requests_per_second"] / batched_c1["requests_per_second"],
                   "throughput_c8_over_c1_target": 4.0,
                   "p99_c8_over_serial_c1_p99": batched_c8["p99_ms"] / serial_c1["p99_ms"],
                   "p99_c8_over_serial_c1_p99_target": 2.0,
                   "errors": sum(r.get("errors", 0) for r in rows)},
               "config": {"requests": args.requests, "new_tokens": args.new_tokens,
                          "model": args.model or "tiny llama 2x64 (built)", "cpus": os.cpu_count()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print_table(rows)
    targets = summary["targets"]
    print(f"hf at concurrency 8: {targets['throughput_c8_over_c1']:.2f}x its concurrency-1 throughput (target >= 4); "
          f"p99 {targets['p99_c8_over_serial_c1_p99']:.2f}x the serial server's concurrency-1 p99 (target < 2)")
    print(f"metering header: {summary['metering_header_us']:.1f} us per request "
          f"({summary['metering_share_of_p50']:.4%} of p50); HTTP+JSON overhead at concurrency 1: "
          f"{summary['http_overhead_ms_at_concurrency_1']:.1f} ms -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
