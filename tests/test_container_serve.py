"""`serve`: the SageMaker inference contract, metering, errors, concurrency, no network."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from container.contract import Generation, RequestError, metering_units, parse_request

METERING = "x-amzn-inference-metering"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url, body, content_type="application/json", timeout=120):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(f"{url}/invocations", data=data, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def start_server(model_dir: Path, base: Path, extra_env: dict | None = None):
    (base / "model").parent.mkdir(parents=True, exist_ok=True)
    if not (base / "model").exists():
        (base / "model").symlink_to(model_dir, target_is_directory=True)
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port), **(extra_env or {})}
    env.pop("HILT_SERVE_HOST", None)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "serve")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except (urllib.error.URLError, OSError):
            pass
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "timeout"
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

    import container.serve as serve

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


def test_broken_model_dir_fails_ping_with_the_reason(tmp_path):
    from fastapi.testclient import TestClient

    from container.serve import create_app

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
    code = ("import os, container.marketplace, container.validate, container.contract; "
            "print([k for k in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE') if k in os.environ])")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr
