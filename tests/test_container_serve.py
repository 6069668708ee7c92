"""`serve`: the SageMaker inference contract, metering, errors, concurrency, no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hilt.serving.contract import Generation, RequestError, metering_units, parse_request

from hilt.core.net import free_port  # noqa: E402  (tests import it from here)

METERING = "x-amzn-inference-metering"


def post(url, body, content_type="application/json", timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def start_server(model_dir: Path, base: Path, extra_env: dict | None = None, timeout: float = 120,
                 log: Path | None = None):
    """`serve` over ``base`` with its model linked in; its output on a pipe, or in ``log``."""
    (base / "model").parent.mkdir(parents=True, exist_ok=True)
    if not (base / "model").exists():
        (base / "model").symlink_to(model_dir, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port), **(extra_env or {})}
    env.pop("HILT_SERVE_HOST", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve")], env=env,
                            stdout=log.open("w") if log else subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        if proc.poll() is not None or time.monotonic() >= deadline:
            proc.kill()
            output = log.read_text()[-5000:] if log else proc.stdout.read()
            raise AssertionError(f"serve did not answer /ping within {timeout} s: {output}")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    """`serve` on a plain model directory (from `hilt model tiny`), auditing its sockets."""
    base = tmp_path_factory.mktemp("opt-ml")
    audit = base / "network-audit.jsonl"
    proc, url = start_server(tiny_model_dir, base, {"HILT_AUDIT_NETWORK": str(audit)})
    yield {"url": url, "proc": proc, "audit": audit}
    proc.terminate()
    proc.wait(timeout=30)


def test_json_request_and_metering_header(server):
    status, headers, body = post(server["url"], {"inputs": "Please order a laptop.", "parameters": {"max_new_tokens": 5}})
    assert status == 200
    answer = json.loads(body)
    assert isinstance(answer["generated_text"], str)
    assert answer["usage"]["input_tokens"] > 0 and 0 <= answer["usage"]["output_tokens"] <= 5
    metering = json.loads(headers[METERING])
    assert metering == {"Dimension": "inference.count", "ConsumedUnits": answer["usage"]["output_tokens"]}


def test_jsonlines_keeps_order_and_matches_single_requests(server):
    requests = [{"inputs": f"book room {i}", "parameters": {"max_new_tokens": 3 + i}} for i in range(4)]
    requests[2] = {"inputs": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    body = "".join(json.dumps(r) + "\n" for r in requests).encode()
    status, headers, answer = post(server["url"], body, "application/jsonlines")
    assert status == 200 and headers["content-type"].startswith("application/jsonlines")
    lines = [json.loads(l) for l in answer.decode().splitlines()]
    assert len(lines) == 4
    for request, line in zip(requests, lines):  # greedy: each line equals its request sent alone
        assert json.loads(post(server["url"], request)[2]) == line
    assert json.loads(headers[METERING])["ConsumedUnits"] == sum(l["usage"]["output_tokens"] for l in lines)


@pytest.mark.parametrize(
    "body, content_type, status, message",
    [
        (b'{"inputs": ', "application/json", 400, "malformed JSON"),
        (b'{"prompt": "x"}', "application/json", 400, '"inputs"'),
        (b'{"inputs": "x", "parameters": {"max_new_tokens": 0}}', "application/json", 400, "max_new_tokens"),
        (b'{"inputs": "x", "parameters": {"temperature": "hot"}}', "application/json", 400, "temperature"),
        (b'{"inputs": "x", "parameters": {"beam": 2}}', "application/json", 400, "unknown parameter"),
        (b'{"inputs": "x"}\nnot json\n', "application/jsonlines", 400, "malformed JSON"),
        (b"a,b\n1,2\n", "text/csv", 415, "not supported"),
        (b" " * (6 * 1024 * 1024 + 1), "application/json", 413, "6 MB"),
    ],
)
def test_errors_are_answers(server, body, content_type, status, message):
    got, headers, answer = post(server["url"], body, content_type)
    assert got == status and message in json.loads(answer)["error"]
    assert METERING not in headers  # only successes are metered
    assert server["proc"].poll() is None  # and the server is still up


def test_concurrent_requests_are_all_served(server):
    def call(i):
        return post(server["url"], {"inputs": f"request {i}", "parameters": {"max_new_tokens": 4}})

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(16)))
    assert all(status == 200 and METERING in headers for status, headers, _ in results)


def test_no_outbound_network_while_loading_and_serving(server):
    post(server["url"], {"inputs": "one more", "parameters": {"max_new_tokens": 2}})
    events = [json.loads(l) for l in server["audit"].read_text().splitlines()] if server["audit"].exists() else []
    # The audit hook was active (the file is created lazily, so check the env took effect via the pid's environ).
    environ = Path(f"/proc/{server['proc'].pid}/environ").read_bytes()
    assert b"HILT_AUDIT_NETWORK=" in environ
    assert events == [], f"serve opened network connections: {events[:5]}"


def test_binds_loopback_by_default_and_honours_the_port(server):
    port = int(server["url"].rsplit(":", 1)[1])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    if listening:  # ss is not on every machine; the port itself is proven by the requests above
        local_addresses = {line.split()[3] for line in listening.splitlines()}
        assert local_addresses == {f"127.0.0.1:{port}"}


def test_ping_is_503_until_the_model_loads(tiny_model_dir, monkeypatch):
    from fastapi.testclient import TestClient

    import hilt.serving.serve as serve

    release = threading.Event()
    real_backend = serve.backend_class()

    class SlowBackend(real_backend):
        def __init__(self, model_dir):
            release.wait(30)
            super().__init__(model_dir)

    monkeypatch.setattr(serve, "backend_class", lambda: SlowBackend)
    client = TestClient(serve.create_app(model_dir=tiny_model_dir))
    assert client.get("/ping").status_code == 503
    assert client.post("/invocations", json={"inputs": "x"}).status_code == 503
    release.set()
    deadline = time.monotonic() + 60
    while client.get("/ping").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert client.post("/invocations", json={"inputs": "x", "parameters": {"max_new_tokens": 2}}).status_code == 200
    client.app.state.model_state["runner"].close()


def test_broken_model_dir_fails_ping_with_the_reason(tmp_path):
    from fastapi.testclient import TestClient

    from hilt.serving.serve import create_app

    client = TestClient(create_app(model_dir=tmp_path / "nothing-here"))
    deadline = time.monotonic() + 30
    while (response := client.get("/ping")).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert response.status_code == 500 and "nothing-here" in response.json()["error"]


def test_metering_units():
    gens = [Generation("a", input_tokens=700, output_tokens=20), Generation("b", input_tokens=400, output_tokens=5)]
    assert metering_units("invocation", gens) == 1
    assert metering_units("output_tokens", gens) == 25
    assert metering_units("total_tokens", gens) == 1125
    assert metering_units("per_1k_tokens", gens) == 2


def test_parse_request_rules():
    messages, kwargs = parse_request({"inputs": "hi", "parameters": {"temperature": 0.7, "top_p": 0.9}})
    assert messages == [{"role": "user", "content": "hi"}] and kwargs["do_sample"] is True
    assert parse_request({"inputs": "hi", "parameters": {"temperature": 0}})[1]["do_sample"] is False
    with pytest.raises(RequestError):
        parse_request({"inputs": [{"role": "robot", "content": "x"}]})


def test_packaging_code_does_not_inherit_the_servers_offline_switches():
    # The contract's constants are shared; the server's environment (hub offline) is not.
    code = ("import os, hilt.serving.marketplace, hilt.serving.validate, hilt.serving.contract; "
            "print([k for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') if k in os.environ])")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


# -- batching, streaming, the chat schema, batch-transform semantics ------------------------


def _stream(url: str, body: dict, accept: str | None = None) -> tuple[int, dict, list[tuple[float, bytes]]]:
    """POST and read the answer as it arrives: (status, headers, [(seconds since sent, line)])."""
    import http.client
    from urllib.parse import urlparse

    target = urlparse(url)
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
    headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
    started = time.monotonic()
    connection.request("POST", "/invocations", body=json.dumps(body), headers=headers)
    response = connection.getresponse()
    lines = []
    while line := response.readline():
        if line.strip():
            lines.append((time.monotonic() - started, line.strip()))
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, lines


def test_concurrent_greedy_answers_equal_each_request_alone(server):
    requests = [{"inputs": f"Book room {i} for Ana, please.", "parameters": {"max_new_tokens": 3 + i % 5}}
                for i in range(8)]
    alone = [json.loads(post(server["url"], r)[2]) for r in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        together = list(pool.map(lambda r: post(server["url"], r), requests))
    assert [status for status, _, _ in together] == [200] * 8
    assert [json.loads(body) for _, _, body in together] == alone
    for request, answer in zip(requests, alone):  # each request's own max_new_tokens
        assert 1 <= answer["usage"]["output_tokens"] <= request["parameters"]["max_new_tokens"]


def test_seeded_sampling_is_reproducible_while_the_batch_runs(server):
    sampled = {"inputs": "Write a note.", "parameters": {"max_new_tokens": 8, "do_sample": True, "seed": 7,
                                                          "temperature": 0.9}}
    greedy = {"inputs": "Book a room.", "parameters": {"max_new_tokens": 8}}
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda r: json.loads(post(server["url"], r)[2]), [sampled, greedy] * 3))
    assert answers[0] == answers[2] == answers[4] and answers[1] == answers[3] == answers[5]


def test_stop_sequences_cut_the_answer(server):
    full = json.loads(post(server["url"], {"inputs": "Name a colour.", "parameters": {"max_new_tokens": 12}})[2])
    text = full["generated_text"]
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2) if text[i:i + 2].strip() == text[i:i + 2])
    cut = json.loads(post(server["url"], {"inputs": "Name a colour.",
                                          "parameters": {"max_new_tokens": 12, "stop": [stop, "\u2603never"]}})[2])
    assert cut["generated_text"] == text[:text.find(stop)].strip() and cut["finish_reason"] == "stop"
    assert cut["usage"]["output_tokens"] < full["usage"]["output_tokens"]


@pytest.mark.parametrize("parameters", [{"max_new_tokens": 40}, {"max_new_tokens": 40, "do_sample": True, "seed": 3}],
                         ids=["batched", "exact-lane"])
def test_streamed_chunks_arrive_early_and_add_up_to_the_answer(server, parameters):
    request = {"inputs": "Tell me about the meeting.", "parameters": parameters}
    whole = json.loads(post(server["url"], request)[2])
    status, headers, lines = _stream(server["url"], {**request, "stream": True})
    assert status == 200 and headers["content-type"].startswith("application/jsonlines")
    assert json.loads(headers[METERING])["ConsumedUnits"] >= 1
    events = [json.loads(line) for _, line in lines]
    pieces = [e["token"]["text"] for e in events[:-1]]
    assert len(pieces) > 3 and "".join(pieces) == whole["generated_text"]
    assert events[-1] == whole  # the last line is the whole answer, with its usage
    assert lines[0][0] < lines[-1][0]  # the first piece came before the answer was done

    # Server-sent events when the client asks for them.
    status, headers, lines = _stream(server["url"], {**request, "stream": True}, accept="text/event-stream")
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith(b"data: ") for _, line in lines)
    assert "".join(json.loads(l[6:])["token"]["text"] for _, l in lines[:-1]) == whole["generated_text"]


def test_chat_completions_schema(server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Book room 4."}]
    plain = json.loads(post(server["url"], {"inputs": messages, "parameters": {"max_new_tokens": 6}})[2])
    status, headers, body = post(server["url"], {"model": "any", "messages": messages, "max_tokens": 6})
    chat = json.loads(body)
    assert status == 200 and chat["object"] == "chat.completion" and chat["model"] == "any"
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": plain["generated_text"]}
    assert chat["choices"][0]["finish_reason"] in ("stop", "length")
    assert chat["usage"] == {"prompt_tokens": plain["usage"]["input_tokens"],
                             "completion_tokens": plain["usage"]["output_tokens"],
                             "total_tokens": plain["usage"]["input_tokens"] + plain["usage"]["output_tokens"]}
    assert json.loads(headers[METERING])["ConsumedUnits"] == plain["usage"]["output_tokens"]

    status, headers, lines = _stream(server["url"], {"messages": messages, "max_tokens": 6, "stream": True,
                                                     "stream_options": {"include_usage": True}})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert lines[-1][1] == b"data: [DONE]"
    chunks = [json.loads(line[6:]) for _, line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert content == plain["generated_text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == chat["choices"][0]["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == chat["usage"]

    for body, message in (({"messages": messages, "n": 2}, "n must be 1"), ({"messages": messages, "n": True}, "n must be 1"),
                          ({"messages": messages, "max_tokens": 0}, "max_tokens must be"),
                          ({"messages": messages, "tools": []}, "unknown key(s) ['tools']")):
        status, _, answer = post(server["url"], body)
        assert status == 400 and message in json.loads(answer)["error"]


def test_accept_header_is_honoured(server):
    def call(accept, body=None, content_type="application/json"):
        data = json.dumps(body or {"inputs": "hi", "parameters": {"max_new_tokens": 2}}).encode()
        request = urllib.request.Request(f"{server['url']}/invocations", data=data, method="POST",
                                         headers={"Content-Type": content_type, "Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers["Content-Type"]
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())["error"]

    assert call("application/json")[0] == 200 and call("*/*")[0] == 200
    assert call("text/html;q=0.9, application/*;q=0.5")[0] == 200
    status, message = call("text/csv")
    assert status == 406 and "application/json" in message
    assert call("application/json;q=0")[0] == 406
    status, _ = call("text/event-stream", {"inputs": "hi", "parameters": {"max_new_tokens": 2}, "stream": True})
    assert status == 200
    # The official OpenAI SDK streams with Accept: application/json: answered as a stream (issue 33 item 9).
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True}
    assert call("application/json", chat) == (200, "text/event-stream; charset=utf-8")
    assert call("application/json", {"inputs": "hi", "parameters": {"max_new_tokens": 2}, "stream": True})[1] \
        .startswith("application/jsonlines")
    assert call("text/csv", chat)[0] == 406


def test_execution_parameters(server):
    with urllib.request.urlopen(f"{server['url']}/execution-parameters", timeout=5) as response:
        params = json.loads(response.read())
    assert params["BatchStrategy"] == "MULTI_RECORD" and params["MaxPayloadInMB"] == 6
    assert params["MaxConcurrentTransforms"] >= 1


def test_batch_mode_accepts_a_mini_batch_above_6_mb(tiny_model_dir, tmp_path):
    big = {"inputs": "room " * 700_000, "parameters": {"truncate": 16, "max_new_tokens": 2}}  # 3.5 MB a line
    body = (json.dumps(big) + "\n" + json.dumps(big) + "\n").encode()
    assert len(body) > 6 * 1024 * 1024
    proc, url = start_server(tiny_model_dir, tmp_path / "rt")
    try:
        assert post(url, body, "application/jsonlines")[0] == 413  # real time: 6 MB
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, url = start_server(tiny_model_dir, tmp_path / "batch",
                             {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "8"})
    try:
        status, headers, answer = post(url, body, "application/jsonlines")
        assert status == 200 and len(answer.decode().splitlines()) == 2
        assert json.loads(headers[METERING])["ConsumedUnits"] >= 2
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_metering_is_at_least_one_unit():
    empty = [Generation("", input_tokens=0, output_tokens=0)]
    for unit in ("invocation", "output_tokens", "total_tokens", "per_1k_tokens"):
        assert metering_units(unit, empty) == 1


def test_data_capture_writes_sagemakers_format(tiny_model_dir, tmp_path):
    """JSON, JSON Lines and streamed invocations captured field for field as SageMaker Data Capture
    writes them, in its hourly layout; files appear whole (published when the server stops)."""
    import base64
    import re

    from hilt.serving.capture import read_capture

    captures = tmp_path / "capture"
    proc, url = start_server(tiny_model_dir, tmp_path / "ml", {
        "HILT_DATA_CAPTURE_DIR": str(captures), "HILT_ENDPOINT_NAME": "ep-1", "HILT_VARIANT_NAME": "v1"})
    try:
        one = {"inputs": "Book room 4, please.", "parameters": {"max_new_tokens": 3}}
        status, _, answer = post(url, one)
        assert status == 200
        lines = b"".join(json.dumps({"inputs": f"Room {i}?", "parameters": {"max_new_tokens": 2}}).encode() + b"\n"
                         for i in range(2))
        status, _, jsonl_answer = post(url, lines, content_type="application/jsonlines")
        assert status == 200
        status, _, streamed = _stream(url, {**one, "stream": True}, accept="text/event-stream")
        assert status == 200
        assert post(url, b"{broken")[0] == 400  # an error is not a model answer: not captured
        assert not list(captures.rglob("*.jsonl"))  # the open file is hidden until it is published
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    (path,) = captures.rglob("*.jsonl")
    relative = path.relative_to(captures).parts
    assert relative[:2] == ("ep-1", "v1") and re.fullmatch(r"\d{4}/\d{2}/\d{2}/\d{2}", "/".join(relative[2:6]))
    assert re.fullmatch(r"\d{2}-\d{2}-\d{3}-[0-9a-f-]{36}\.jsonl", relative[6])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 3
    first = records[0]
    assert set(first) == {"captureData", "eventMetadata", "eventVersion"} and first["eventVersion"] == "0"
    assert first["captureData"]["endpointInput"] == {"observedContentType": "application/json", "mode": "INPUT",
                                                     "data": json.dumps(one), "encoding": "JSON"}
    assert first["captureData"]["endpointOutput"] == {"observedContentType": "application/json", "mode": "OUTPUT",
                                                      "data": answer.decode(), "encoding": "JSON"}
    assert set(first["eventMetadata"]) == {"eventId", "inferenceTime"}
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", first["eventMetadata"]["inferenceTime"])
    assert records[1]["captureData"]["endpointOutput"]["data"] == jsonl_answer.decode()
    stream_out = records[2]["captureData"]["endpointOutput"]
    assert stream_out["encoding"] == "BASE64" and stream_out["observedContentType"] == "text/event-stream"
    assert [x for x in base64.b64decode(stream_out["data"]).splitlines() if x] == [line for _, line in streamed]
    events, counts = read_capture(str(captures))
    assert [e.request for e in events[:1]] == [json.dumps(one)] and counts["unreadable_lines"] == 0
    assert [x for x in events[2].response.splitlines() if x] == [line.decode() for _, line in streamed]


def test_data_capture_samples_and_refuses_a_bad_percentage(tiny_model_dir, tmp_path):
    from hilt.serving.capture import DataCapture

    capture = DataCapture(tmp_path / "c", percent=0)
    assert not any(capture.sampled() for _ in range(200))
    capture.close()
    half = DataCapture(tmp_path / "c", percent=50)
    assert 50 < sum(half.sampled() for _ in range(400)) < 350
    half.close()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path / "ml"), "HILT_DATA_CAPTURE_DIR": str(tmp_path / "c"),
           "HILT_DATA_CAPTURE_PERCENT": "150"}
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "model").symlink_to(tiny_model_dir, target_is_directory=True)
    result = subprocess.run([str(Path(sys.executable).parent / "serve")], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "HILT_DATA_CAPTURE_PERCENT='150': not a percentage" in result.stderr
    # Every number serve reads from its environment is checked the same way: one line, no traceback.
    env = {**env, "HILT_DATA_CAPTURE_PERCENT": "50", "SAGEMAKER_BIND_TO_PORT": "80a"}
    result = subprocess.run([str(Path(sys.executable).parent / "serve")], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "serve: SAGEMAKER_BIND_TO_PORT='80a': not a whole number above 0 and at most 65535" in result.stderr


def test_data_capture_settings_are_checked(tmp_path, monkeypatch):
    from hilt.serving.capture import DataCapture
    from hilt.core.errors import UserError

    monkeypatch.delenv("HILT_DATA_CAPTURE_DIR", raising=False)
    assert DataCapture.from_env() is None  # off unless asked for
    monkeypatch.setenv("HILT_DATA_CAPTURE_DIR", str(tmp_path / "c"))
    for name, value, message in (("HILT_DATA_CAPTURE_PERCENT", "half", "not a percentage"),
                                 ("HILT_DATA_CAPTURE_ROTATE_SECONDS", "0", "not a positive number")):
        monkeypatch.setenv(name, value)
        with pytest.raises(UserError, match=message):
            DataCapture.from_env()
        monkeypatch.delenv(name)
    capture = DataCapture.from_env()
    assert capture.percent == 100 and capture.root == tmp_path / "c" / "hilt-serve" / "AllTraffic"
    capture.close()


def test_ping_answers_while_large_requests_are_prepared(server):
    """Request preparation (parsing, the chat template, tokenizing a body near 6 MB) ran on the event loop:
    /ping waited 5-14 s behind it, and SageMaker gives /ping 2 s (issue 33 item 6)."""
    import concurrent.futures

    words = ("please order a laptop for the new analyst " * 120_000)[:5_000_000]
    body = {"inputs": words, "parameters": {"max_new_tokens": 1, "truncate": 50}}

    def big():
        return post(server["url"], body, timeout=120)[0]

    def ping():
        started = time.monotonic()
        with urllib.request.urlopen(f"{server['url']}/ping", timeout=10) as response:
            assert response.status == 200
        return time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        bigs = [pool.submit(big) for _ in range(4)]
        time.sleep(0.5)  # the bodies are being read and prepared
        waits = []
        while not all(f.done() for f in bigs):
            waits.append(ping())
            time.sleep(0.2)
        assert [f.result() for f in bigs] == [200] * 4
    assert waits and max(waits) < 2.0, waits  # SageMaker's /ping timeout
