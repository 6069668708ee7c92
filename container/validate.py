"""``hilt package validate``: replay SageMaker's certification batch transform locally.

What SageMaker does with a Model Package's ValidationSpecification, done here first so a
seller does not wait an hour to learn the container fails: extract model.tar.gz into a
fresh /opt/ml/model, start ``serve`` as a process, wait for ``/ping``, send the input
the way a transform job does (``SplitType=Line``: one request per line; ``None``: the
whole file), write ``<input>.out`` the way TransformOutput assembles it, and check
every answer and its metering header.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from container.package import DEFAULT_MAX_UNPACKED_BYTES, extract_model_tar
from container.contract import JSON, JSONLINES, METERING_DIMENSION, METERING_HEADER
from hilt.errors import UserError
from hilt.outputs import claim_output_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: bytes, content_type: str, timeout: float) -> tuple[int, dict, bytes, float]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": content_type, "Accept": content_type})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read(), time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read(), time.perf_counter() - started


def check_answer(status: int, headers: dict, body: bytes, content_type: str, expected_lines: int) -> list[str]:
    """Problems with one invocation's answer (empty when it passes)."""
    problems = []
    if status != 200:
        return [f"HTTP {status}: {body[:200]!r}"]
    metering = {k.lower(): v for k, v in headers.items()}.get(METERING_HEADER.lower())
    if metering is None:
        problems.append(f"no {METERING_HEADER} header")
    else:
        try:
            parsed = json.loads(metering)
            if parsed.get("Dimension") != METERING_DIMENSION or not isinstance(parsed.get("ConsumedUnits"), int):
                problems.append(f"bad metering header {metering!r}")
        except json.JSONDecodeError:
            problems.append(f"metering header is not JSON: {metering!r}")
    try:
        text = body.decode("utf-8")
        answers = [json.loads(l) for l in text.splitlines() if l.strip()] if content_type == JSONLINES else [json.loads(text)]
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return problems + [f"answer is not {content_type}: {err}"]
    if len(answers) != expected_lines:
        problems.append(f"{len(answers)} answer lines for {expected_lines} request lines")
    for answer in answers:
        if not isinstance(answer.get("generated_text"), str) or "usage" not in answer:
            problems.append(f"answer lacks generated_text/usage: {str(answer)[:200]}")
    return problems


def write_validation_input(prompts: list[list[dict]], out: Path, max_new_tokens: int) -> Path:
    """The JSON Lines input of a validation transform: one serve request per held-out prompt."""
    out.write_text("".join(json.dumps({"inputs": p, "parameters": {"max_new_tokens": max_new_tokens}}) + "\n"
                           for p in prompts))
    return out


def validate_model_tar(model_tar: Path, input_file: Path, content_type: str, split_type: str = "Line",
                       assemble_with: str = "Line", output_dir: Path | None = None,
                       ping_timeout: float = 600.0, request_timeout: float = 600.0,
                       max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES) -> dict:
    """Run the replay and return the report (also written to ``output_dir/validation-report.json``).

    The model is extracted into a temporary /opt/ml tree that is removed afterwards, also
    when the replay fails or is interrupted.

    Raises:
        UserError: on bad arguments or inputs (a failing model is a report, not an error).
    """
    if content_type not in (JSON, JSONLINES):
        raise UserError(f"--content-type {content_type}: use {JSON} or {JSONLINES}")
    if split_type not in ("Line", "None"):
        raise UserError(f"--split-type {split_type}: use Line or None (what the ValidationSpecification sets)")
    if not input_file.is_file():
        raise UserError(f"--input {input_file}: no such file")
    raw = input_file.read_bytes()
    if split_type == "Line":
        records = [line for line in raw.splitlines() if line.strip()]
    else:
        records = [raw]
    if not records:
        raise UserError(f"--input {input_file}: empty")
    if output_dir is not None:
        output_dir = claim_output_dir(Path(output_dir), "validation", "--output", recognise=_is_validation_dir,
                                      hint="the --output of an earlier `hilt package validate`")
    else:
        output_dir = Path(tempfile.mkdtemp(prefix="hilt-validate-"))
    base = Path(tempfile.mkdtemp(prefix="hilt-validate-opt-ml-"))
    try:
        package = extract_model_tar(model_tar, base / "model", max_unpacked_bytes=max_unpacked_bytes)
        return _replay(base, package, model_tar, input_file, records, content_type, split_type, assemble_with,
                       output_dir, ping_timeout, request_timeout)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _is_validation_dir(folder: Path) -> bool:
    return (folder / "validation-report.json").is_file()


def _replay(base: Path, package: dict, model_tar: Path, input_file: Path, records: list[bytes], content_type: str,
            split_type: str, assemble_with: str, output_dir: Path, ping_timeout: float,
            request_timeout: float) -> dict:
    """Serve the extracted model from ``base`` and send it the transform's requests."""
    port = _free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port),
           "HILT_SERVE_HOST": "127.0.0.1"}
    log_path = output_dir / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "container.serve"], env=env, stdin=subprocess.DEVNULL,
                              stdout=log_path.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    report: dict = {"model_tar": str(model_tar), "input": str(input_file), "content_type": content_type,
                    "split_type": split_type, "assemble_with": assemble_with, "package_verified": package["verified"],
                    "records": len(records), "failures": [], "samples": []}
    try:
        started = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except urllib.error.HTTPError as err:
                if err.code != 503:  # 503 = still loading; anything else = the model will not load
                    report["failures"].append(f"/ping answered {err.code}: {err.read()[:300]!r}; see {log_path}")
                    report["passed"] = False
                    return _write_report(report, output_dir)
            except (urllib.error.URLError, OSError):
                pass
            if server.poll() is not None or time.monotonic() - started > ping_timeout:
                report["failures"].append(f"/ping never answered 200 (serve exited: {server.poll()}); see {log_path}")
                report["passed"] = False
                return _write_report(report, output_dir)
            time.sleep(0.5)
        report["ping_seconds"] = round(time.monotonic() - started, 2)

        outputs, latencies = [], []
        for index, body in enumerate(records):
            expected = len([l for l in body.splitlines() if l.strip()]) if content_type == JSONLINES else 1
            status, headers, answer, seconds = _post(f"{url}/invocations", body, content_type, request_timeout)
            latencies.append(seconds)
            problems = check_answer(status, headers, answer, content_type, expected)
            report["failures"] += [f"record {index + 1}: {p}" for p in problems]
            outputs.append(answer)
            if len(report["samples"]) < 3 and not problems:
                metering = {k.lower(): v for k, v in headers.items()}.get(METERING_HEADER.lower())
                report["samples"].append({"input": body.decode("utf-8", "replace"),
                                          "output": answer.decode("utf-8", "replace").strip(),
                                          "metering": json.loads(metering)})
        out_file = output_dir / f"{input_file.name}.out"
        if assemble_with == "Line":
            out_file.write_bytes(b"".join(o if o.endswith(b"\n") else o + b"\n" for o in outputs))
        else:
            out_file.write_bytes(b"".join(outputs))
        report["output_file"] = str(out_file)
        ordered = sorted(latencies)
        report["latency_ms"] = {"p50": round(statistics.median(ordered) * 1000, 1),
                                "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
                                "max": round(ordered[-1] * 1000, 1)}
        report["passed"] = not report["failures"]
        return _write_report(report, output_dir)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _write_report(report: dict, output_dir: Path) -> dict:
    report["report_file"] = str(output_dir / "validation-report.json")
    Path(report["report_file"]).write_text(json.dumps(report, indent=2) + "\n")
    return report
