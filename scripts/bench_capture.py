#!/usr/bin/env python
"""Benchmark: what data capture costs a request in `serve`.

The same server (transformers' batching backend, a tiny Llama) with and without
``HILT_DATA_CAPTURE_DIR``, in one run, alternating rounds so both see the same machine:
p50/p99 latency and throughput at client concurrency 1 and 8. The request path only hands
the bodies to a queue (the writer thread formats and writes them); that call is timed
directly too, as is the writer's throughput in records per second.

    .venv/bin/python scripts/bench_capture.py [--requests 64] [--new-tokens 16] [--rounds 2]

Results: bench_results/capture.json (and a table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_serve import print_table, run_server  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="off/on rounds, alternated")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "capture.json"))
    args = parser.parse_args()

    from hilt.serving.capture import DataCapture
    from hilt.training.models.tiny_model import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    model = build_tiny_model(work / "model")
    rows = []
    for round_ in range(args.rounds):
        for capture in (False, True):
            env = {"HILT_DATA_CAPTURE_DIR": str(work / f"capture-{round_}")} if capture else {}
            label = f"-capture-{round_}" if capture else f"-plain-{round_}"
            for row in run_server(model, work, "hf", args.requests, args.new_tokens, (1, 8), env, label):
                rows.append({**row, "capture": capture, "round": round_})
    captured = sum(len(p.read_text().splitlines()) for p in work.glob("capture-*/**/*.jsonl"))

    # The request path's share: one record() call (a queue put) per captured request.
    probe = DataCapture(work / "probe")
    body = json.dumps({"inputs": "Please order a monitor for Ana.", "parameters": {"max_new_tokens": 16}}).encode()
    answer = json.dumps({"generated_text": "x" * 200, "finish_reason": "length"}).encode()
    n = 5000
    started = time.perf_counter()
    for _ in range(n):
        probe.record(body, "application/json", answer, "application/json")
    record_us = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    probe.close(timeout=120)
    written_per_second = probe.captured / (time.perf_counter() - started + 1e-9)

    def median_of(capture: bool, concurrency: int, key: str) -> float:
        return statistics.median(r[key] for r in rows if r["capture"] is capture and r["concurrency"] == concurrency)

    summary = {"rows": rows, "captured_records": captured, "record_call_us": record_us,
               "writer_records_per_second": written_per_second,
               "p50_overhead_ms": {c: median_of(True, c, "p50_ms") - median_of(False, c, "p50_ms") for c in (1, 8)},
               "throughput_ratio": {c: median_of(True, c, "requests_per_second")
                                    / median_of(False, c, "requests_per_second") for c in (1, 8)},
               "record_call_share_of_p50": record_us / 1000 / median_of(True, 1, "p50_ms"),
               "config": {"requests": args.requests, "new_tokens": args.new_tokens, "rounds": args.rounds,
                          "model": "tiny llama 2x64 (built)", "cpus": os.cpu_count()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print_table(rows)
    print(f"capture on vs off: p50 {summary['p50_overhead_ms'][1]:+.2f} ms at concurrency 1, "
          f"{summary['p50_overhead_ms'][8]:+.2f} ms at 8; throughput x{summary['throughput_ratio'][1]:.3f} / "
          f"x{summary['throughput_ratio'][8]:.3f}; record() {record_us:.1f} us "
          f"({summary['record_call_share_of_p50']:.4%} of p50); writer {written_per_second:.0f} records/s; "
          f"{captured} records captured -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
