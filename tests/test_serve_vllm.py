"""`serve` with HILT_SERVE_BACKEND=vllm: vLLM generates, serve keeps the SageMaker contract.

One vLLM engine for the module (it takes a minute or two to start on a CPU), on the real
model, beside an `hf` server on the same model to compare with. The engine is killed by the
last test, so the order of this file matters.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hilt.serving import vllm_backend
from hilt.serving.backend import backend_class
from hilt.core.errors import UserError
from test_container_serve import METERING, _stream, post, start_server

VLLM_PYTHON = Path(__file__).resolve().parent.parent / ".venv-vllm" / "bin" / "python"
PROMPTS = ["Please order a monitor for Ana.", "Can you book room 3A on Monday?", "I forgot my password for email.",
           "What is the capital of France?", "Write a haiku about the sea.", "Summarize: the meeting moved to Friday."]


# -- without an engine ------------------------------------------------------------------------


def test_the_vllm_backend_is_registered_and_says_where_its_engine_is_missing(monkeypatch, tmp_path):
    assert backend_class("vllm") is vllm_backend.VLLMBackend
    monkeypatch.setenv("HILT_VLLM_PYTHON", str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="HILT_VLLM_PYTHON=.*not an executable"):
        vllm_backend.vllm_python()
    monkeypatch.setenv("HILT_VLLM_PYTHON", sys.executable)
    monkeypatch.setenv("HILT_VLLM_ARGS", "--tensor-parallel-size '4")
    backend = vllm_backend.VLLMBackend.__new__(vllm_backend.VLLMBackend)
    backend.model_dir, backend.context, backend.socket = tmp_path, 2048, tmp_path / "s"
    with pytest.raises(UserError, match="HILT_VLLM_ARGS=.*No closing quotation"):
        backend.command()
    monkeypatch.setenv("HILT_VLLM_ARGS", "--tensor-parallel-size 4")
    assert backend.command()[-2:] == ["--tensor-parallel-size", "4"]


def test_request_options_map_to_vllms_sampling_parameters():
    backend = vllm_backend.VLLMBackend.__new__(vllm_backend.VLLMBackend)  # no engine: the mapping only
    backend.eos_ids = {2, 0}
    from transformers import GenerationConfig

    backend.generation_config = GenerationConfig(top_k=40)
    greedy = backend.request_body([1, 2, 3], {"max_new_tokens": 9, "do_sample": False})
    assert greedy["prompt"] == [1, 2, 3] and greedy["max_tokens"] == 9 and greedy["stream"] is True
    assert greedy["temperature"] == 0.0 and greedy["return_token_ids"] is True and greedy["stop_token_ids"] == [0, 2]
    sampled = backend.request_body([1], {"max_new_tokens": 4, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
                                         "top_k": 20, "seed": 5, "repetition_penalty": 1.2, "stop": ["\n\n"]})
    assert {k: sampled[k] for k in ("temperature", "top_p", "top_k", "seed", "repetition_penalty", "stop")} == \
        {"temperature": 0.7, "top_p": 0.9, "top_k": 20, "seed": 5, "repetition_penalty": 1.2, "stop": ["\n\n"]}
    assert sampled["include_stop_str_in_output"] is True  # hilt cuts before the stop, as for hf
    unset = backend.request_body([1], {"max_new_tokens": 4, "do_sample": True})
    # What model.generate would take: the model's generation config over transformers' defaults.
    assert (unset["temperature"], unset["top_p"], unset["top_k"]) == (1.0, 1.0, 40)


# -- with the engine (slow: it starts in a minute or two) --------------------------------------


@pytest.fixture(scope="module")
def servers(real_model_dir, tmp_path_factory):
    assert VLLM_PYTHON.is_file(), f"{VLLM_PYTHON} missing: run ./scripts/setup (it makes .venv-vllm)"
    logs = tmp_path_factory.mktemp("logs")
    hf, hf_url = start_server(real_model_dir, tmp_path_factory.mktemp("opt-ml-hf"), log=logs / "hf.log")
    try:
        vllm, vllm_url = start_server(real_model_dir, tmp_path_factory.mktemp("opt-ml-vllm"),
                                      {"HILT_SERVE_BACKEND": "vllm", "VLLM_CPU_KVCACHE_SPACE": "1"}, timeout=600,
                                      log=logs / "vllm.log")
    except BaseException:
        hf.terminate()
        raise
    yield {"hf": hf_url, "vllm": vllm_url, "proc": vllm, "log": logs / "vllm.log"}
    for proc in (hf, vllm):
        proc.terminate()
        proc.wait(timeout=60)


slow = pytest.mark.slow


def answer(url, body):
    status, headers, raw = post(url, body, timeout=300)
    assert status == 200, raw
    return json.loads(raw), headers


@slow
def test_greedy_answers_equal_the_hf_backends_under_concurrent_load(servers):
    requests = [{"inputs": p, "parameters": {"max_new_tokens": 32}} for p in PROMPTS]
    expected = [answer(servers["hf"], r)[0] for r in requests]
    with ThreadPoolExecutor(max_workers=len(requests) * 2) as pool:
        together = list(pool.map(lambda r: post(servers["vllm"], r, timeout=300), requests * 2))
    assert [status for status, _, _ in together] == [200] * len(together)
    got = [json.loads(body) for _, _, body in together]
    assert [g["generated_text"] for g in got] == [e["generated_text"] for e in expected] * 2
    assert [g["usage"] for g in got] == [e["usage"] for e in expected] * 2
    assert all(json.loads(h[METERING])["ConsumedUnits"] >= 1 for _, h, _ in together)
    assert all(len(g["generated_text"]) > 5 for g in got)  # a real model answers in words


@slow
def test_jsonlines_and_the_chat_schema(servers):
    lines = "".join(json.dumps({"inputs": p, "parameters": {"max_new_tokens": 12}}) + "\n" for p in PROMPTS[:3])
    status, headers, body = post(servers["vllm"], lines.encode(), content_type="application/jsonlines")
    assert status == 200
    status_hf, _, body_hf = post(servers["hf"], lines.encode(), content_type="application/jsonlines")
    assert status_hf == 200 and body.decode().splitlines() == body_hf.decode().splitlines()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}]
    chat, headers = answer(servers["vllm"], {"model": "m", "messages": messages, "max_tokens": 16})
    chat_hf, _ = answer(servers["hf"], {"model": "m", "messages": messages, "max_tokens": 16})
    assert chat["choices"][0]["message"] == chat_hf["choices"][0]["message"] and chat["usage"] == chat_hf["usage"]
    assert json.loads(headers[METERING])["ConsumedUnits"] == chat["usage"]["completion_tokens"] >= 1


@slow
def test_streamed_chunks_add_up_to_the_answer(servers):
    request = {"inputs": "Tell me about the meeting.", "parameters": {"max_new_tokens": 40}}
    whole, _ = answer(servers["vllm"], request)
    status, headers, lines = _stream(servers["vllm"], {**request, "stream": True})
    assert status == 200 and json.loads(headers[METERING])["ConsumedUnits"] >= 1
    events = [json.loads(line) for _, line in lines]
    assert len(events) > 3 and "".join(e["token"]["text"] for e in events[:-1]) == whole["generated_text"]
    assert events[-1] == whole and lines[0][0] < lines[-1][0]

    chat = {"messages": [{"role": "user", "content": "Tell me about the meeting."}], "max_tokens": 40, "stream": True,
            "stream_options": {"include_usage": True}}
    status, _, lines = _stream(servers["vllm"], chat, accept="text/event-stream")
    assert status == 200 and lines[-1][1] == b"data: [DONE]"
    chunks = [json.loads(line[6:]) for _, line in lines[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == \
        whole["generated_text"]
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["output_tokens"]


@slow
def test_per_request_parameters_are_honoured(servers):
    url = servers["vllm"]
    short, _ = answer(url, {"inputs": PROMPTS[4], "parameters": {"max_new_tokens": 3}})
    assert short["usage"]["output_tokens"] == 3 and short["finish_reason"] == "length"
    full, _ = answer(url, {"inputs": PROMPTS[4], "parameters": {"max_new_tokens": 24}})
    text = full["generated_text"]
    stop = text.split()[2]
    cut, _ = answer(url, {"inputs": PROMPTS[4], "parameters": {"max_new_tokens": 24, "stop": [stop]}})
    assert cut["generated_text"] == text[:text.find(stop)].strip() and cut["finish_reason"] == "stop"
    sampled = {"inputs": PROMPTS[4], "parameters": {"max_new_tokens": 24, "do_sample": True, "temperature": 1.5,
                                                    "top_p": 0.95, "seed": 11}}
    first, second = answer(url, sampled)[0], answer(url, sampled)[0]
    assert first == second  # a seed reproduces a sampled answer
    others = {answer(url, {**sampled, "parameters": {**sampled["parameters"], "seed": s}})[0]["generated_text"]
              for s in (1, 2, 3)}
    assert len(others | {first["generated_text"]}) > 1  # and sampling samples


@slow
def test_limits_and_execution_parameters_stay_serves(servers):
    status, _, body = post(servers["vllm"], {"inputs": "word " * 9000, "parameters": {"max_new_tokens": 2}})
    assert status == 400 and "context" in json.loads(body)["error"]
    with urllib.request.urlopen(f"{servers['vllm']}/execution-parameters", timeout=5) as response:
        assert json.loads(response.read())["MaxConcurrentTransforms"] == vllm_backend.VLLMBackend.concurrent_transforms


@slow
def test_a_client_leaving_mid_stream_frees_the_engine(servers):
    import http.client
    from urllib.parse import urlparse

    target = urlparse(servers["vllm"])
    for _ in range(3):
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        connection.request("POST", "/invocations", headers={"Content-Type": "application/json"},
                           body=json.dumps({"inputs": "Count to a thousand.", "stream": True,
                                            "parameters": {"max_new_tokens": 2000}}))
        response = connection.getresponse()
        response.readline()
        connection.close()
    # The engine aborted them: its own count of running requests falls to 0 (not after 6,000 tokens).
    deadline = time.monotonic() + 20
    while (running := _engine_running(servers["proc"].pid)) > 0:
        assert time.monotonic() < deadline, f"the engine still runs {running} requests whose clients left"
        time.sleep(0.5)


@slow
def test_a_killed_engine_makes_ping_unhealthy_and_no_request_hangs(servers):
    """Last in this file: it kills the module's engine."""
    url = servers["vllm"]
    results: list = []

    def long_request():
        results.append(post(url, {"inputs": "Count to a thousand.", "parameters": {"max_new_tokens": 2000}},
                            timeout=120))

    waiter = threading.Thread(target=long_request)
    waiter.start()
    time.sleep(3)
    engine = _engine_pid(servers["proc"].pid)
    os.killpg(engine, signal.SIGKILL)
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "a request in flight hung after the engine died"
    assert results[0][0] == 500 and "vLLM engine" in json.loads(results[0][2])["error"]
    deadline = time.monotonic() + 15
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=3) as response:
                status = response.status
        except urllib.error.HTTPError as err:
            status, body = err.code, json.loads(err.read())
            break
        assert time.monotonic() < deadline, "/ping stayed 200 after the engine died"
        time.sleep(0.5)
    assert status == 500 and "vLLM engine exited" in body["error"]
    started = time.monotonic()
    status, _, raw = post(url, {"inputs": "hi", "parameters": {"max_new_tokens": 2}}, timeout=30)
    assert status == 503 and "vLLM engine" in json.loads(raw)["error"] and time.monotonic() - started < 5
    assert servers["proc"].poll() is None  # serve stays up to say so; SageMaker replaces the instance


def _engine_running(serve_pid: int) -> float:
    """The engine's own gauge of requests it is running, read from its /metrics over its socket."""
    argv = (Path("/proc") / str(_engine_pid(serve_pid)) / "cmdline").read_bytes().decode().split("\0")
    socket_path = Path(argv[argv.index("--uds") + 1])
    with vllm_backend._unix_opener(socket_path).open("http://engine/metrics", timeout=5) as response:
        metrics = response.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("vllm:num_requests_running"))


def _engine_pid(serve_pid: int) -> int:
    """The engine process serve started (a child in a process group of its own)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            if parent == serve_pid and "vllm_engine" in (entry / "cmdline").read_bytes().decode(errors="replace"):
                return int(entry.name)
    raise AssertionError("no vLLM engine process under serve")
