"""``hilt package validate``: replay SageMaker's certification batch transform locally.

What SageMaker does with a Model Package's ValidationSpecification, done here first so a
seller does not wait an hour to learn the container fails: extract model.tar.gz into a
fresh /opt/ml/model, start ``serve`` as a process with the ``SAGEMAKER_BATCH*``
environment a transform sets, wait for ``/ping`` (each ping answered within 2 s, healthy
within the start window, 4 minutes by default), ask ``/execution-parameters``, send the
input the way a transform job does, write ``<input>.out`` the way TransformOutput
assembles it, and check every answer and its metering header.

Splitting and batching follow the TransformJobDefinition: ``SplitType=Line`` makes one
record per line (``None``: the whole file is one record); ``BatchStrategy=SingleRecord``
sends one record per request, ``MultiRecord`` packs consecutive records into mini-batches
of at most ``MaxPayloadInMB``; ``MaxConcurrentTransforms`` requests are in flight at
once. As in SageMaker, a record that fails leaves no ``.out``: the report says why.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from hilt.serving.package import DEFAULT_MAX_UNPACKED_BYTES, extract_model_tar
from hilt.serving.backend import BACKEND_ENV, BACKENDS
from hilt.serving.contract import JSON, JSONLINES, MAX_BATCH_PAYLOAD_MB, METERING_DIMENSION, METERING_HEADER
from hilt.core.net import free_port
from hilt.core.errors import UserError
from hilt.core.outputs import claim_output_dir, write_atomic


BATCH_STRATEGIES = ("SingleRecord", "MultiRecord")
PING_TIMEOUT_SECONDS = 2.0  # SageMaker's limit for one /ping answer
DEFAULT_START_SECONDS = 240.0  # a container has 4 minutes to answer /ping with 200
DEFAULT_INVOCATION_SECONDS = 600.0  # ModelClientConfig.InvocationsTimeoutInSeconds unless set


def mini_batches(records: list[bytes], strategy: str, max_payload_bytes: int) -> list[list[bytes]]:
    """Records grouped into requests: one each (SingleRecord), or as many consecutive
    records as fit in ``max_payload_bytes`` with their newlines (MultiRecord). A record
    alone over the limit is its own batch; the caller reports it."""
    if strategy == "SingleRecord":
        return [[record] for record in records]
    batches: list[list[bytes]] = []
    size = 0
    for record in records:
        cost = len(record) + 1
        if batches and size + cost <= max_payload_bytes:
            batches[-1].append(record)
            size += cost
        else:
            batches.append([record])
            size = cost
    return batches


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
                       ping_timeout: float = DEFAULT_START_SECONDS, request_timeout: float = DEFAULT_INVOCATION_SECONDS,
                       max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES, *, batch_strategy: str = "SingleRecord",
                       max_payload_mb: int = 6, max_concurrent_transforms: int = 1,
                       require_manifest: bool = True, image: str | None = None, backend: str | None = None) -> dict:
    """Run the replay and return the report (also written to ``output_dir/validation-report.json``).

    ``require_manifest`` False accepts an archive SageMaker made of /opt/ml/model (no
    ``hilt-package.json`` to check files against). ``image`` runs ``serve`` inside that local
    image (``hilt.serving.image``) with the extracted tree mounted at /opt/ml, as SageMaker does,
    instead of from this environment. ``backend`` is ``serve``'s generation backend
    (``HILT_SERVE_BACKEND``: hf, hf-serial or vllm; default: the environment's, else hf).

    The model is extracted into a temporary /opt/ml tree that is removed afterwards, also
    when the replay fails or is interrupted.

    Raises:
        UserError: on bad arguments or inputs (a failing model is a report, not an error).
    """
    if content_type not in (JSON, JSONLINES):
        raise UserError(f"--content-type {content_type}: use {JSON} or {JSONLINES}")
    if split_type not in ("Line", "None"):
        raise UserError(f"--split-type {split_type}: use Line or None (what the ValidationSpecification sets)")
    if batch_strategy not in BATCH_STRATEGIES:
        raise UserError(f"--batch-strategy {batch_strategy}: use SingleRecord or MultiRecord")
    if not 1 <= max_payload_mb <= MAX_BATCH_PAYLOAD_MB:
        raise UserError(f"--max-payload-mb {max_payload_mb}: SageMaker allows 1 to {MAX_BATCH_PAYLOAD_MB}")
    if backend is not None and backend not in BACKENDS:
        raise UserError(f"--backend {backend}: use one of {', '.join(BACKENDS)}")
    if max_concurrent_transforms < 1:
        raise UserError(f"--max-concurrent-transforms {max_concurrent_transforms}: must be at least 1")
    if batch_strategy == "MultiRecord" and (split_type != "Line" or content_type != JSONLINES):
        raise UserError("--batch-strategy MultiRecord packs lines: use it with --split-type Line and "
                        f"--content-type {JSONLINES}")
    if not input_file.is_file():
        raise UserError(f"--input {input_file}: no such file")
    if image:
        from hilt.serving.image import require_image

        require_image(image)
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
        package = extract_model_tar(model_tar, base / "model", require_manifest=require_manifest,
                                    max_unpacked_bytes=max_unpacked_bytes)
        transform = {"BatchStrategy": batch_strategy, "MaxPayloadInMB": max_payload_mb,
                     "MaxConcurrentTransforms": max_concurrent_transforms}
        return _replay(base, package, model_tar, input_file, records, content_type, split_type, assemble_with,
                       output_dir, ping_timeout, request_timeout, transform, image, backend)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _is_validation_dir(folder: Path) -> bool:
    return (folder / "validation-report.json").is_file()


def _replay(base: Path, package: dict, model_tar: Path, input_file: Path, records: list[bytes], content_type: str,
            split_type: str, assemble_with: str, output_dir: Path, ping_timeout: float,
            request_timeout: float, transform: dict, image: str | None = None, backend: str | None = None) -> dict:
    """Serve the extracted model from ``base`` (inside ``image`` when given) and send it the transform's requests."""
    from hilt.serving.image import entry_command, stop_process

    port = free_port()
    strategy = transform["BatchStrategy"]
    settings = {"SAGEMAKER_BIND_TO_PORT": str(port), "HILT_SERVE_HOST": "127.0.0.1", "SAGEMAKER_BATCH": "true",
                "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(transform["MaxPayloadInMB"]),
                "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD" if strategy == "MultiRecord" else "SINGLE_RECORD",
                "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": str(transform["MaxConcurrentTransforms"]),
                **({BACKEND_ENV: backend} if backend else {})}
    log_path = output_dir / "serve.log"
    out_file = output_dir / f"{input_file.name}.out"
    out_file.unlink(missing_ok=True)  # an earlier run's answers must not pass for this run's
    url = f"http://127.0.0.1:{port}"
    report: dict = {"model_tar": str(model_tar), "input": str(input_file), "content_type": content_type,
                    "split_type": split_type, "assemble_with": assemble_with, "package_verified": package["verified"],
                    "transform": transform, "records": len(records), "failures": [], "samples": [],
                    **({"image": image} if image else {})}
    with entry_command("serve", image, base, settings) as (argv, env):
        server = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log_path.open("wb"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return _send_transform(server, url, report, records, content_type, split_type, assemble_with, output_dir,
                                   out_file, log_path, ping_timeout, request_timeout, transform)
        finally:
            stop_process(server, 30)


def _send_transform(server: subprocess.Popen, url: str, report: dict, records: list[bytes], content_type: str,
                    split_type: str, assemble_with: str, output_dir: Path, out_file: Path, log_path: Path,
                    ping_timeout: float, request_timeout: float, transform: dict) -> dict:
    """The transform's requests to a started ``serve``, checked as SageMaker checks them."""
    strategy = transform["BatchStrategy"]
    problem = _wait_healthy(url, server, ping_timeout, log_path, report)
    if problem:
        report["failures"].append(problem)
        report["passed"] = False
        return _write_report(report, output_dir)
    report["execution_parameters"] = _execution_parameters(url)

    limit = transform["MaxPayloadInMB"] * 1024 * 1024
    batches = mini_batches(records, strategy, limit)
    report["requests"] = len(batches)

    def send(batch: list[bytes]) -> tuple[bytes, int, dict, bytes, float]:
        body = b"".join(r + b"\n" for r in batch) if strategy == "MultiRecord" else batch[0]
        if len(body) > limit:
            return body, 0, {}, b"", 0.0
        return (body, *_post(f"{url}/invocations", body, content_type, request_timeout))

    with ThreadPoolExecutor(max_workers=transform["MaxConcurrentTransforms"]) as pool:
        results = list(pool.map(send, batches))
    outputs, latencies, first = [], [], 1
    for batch, (body, status, headers, answer, seconds) in zip(batches, results):
        where = f"record {first}" if len(batch) == 1 else f"records {first}-{first + len(batch) - 1}"
        first += len(batch)
        if status == 0:
            report["failures"].append(f"{where}: {len(body)} bytes is over MaxPayloadInMB "
                                      f"({transform['MaxPayloadInMB']} MB); SageMaker fails such a record")
            continue
        latencies.append(seconds)
        expected = len([l for l in body.splitlines() if l.strip()]) if content_type == JSONLINES else 1
        problems = check_answer(status, headers, answer, content_type, expected)
        report["failures"] += [f"{where}: {p}" for p in problems]
        outputs.append(answer)
        if len(report["samples"]) < 3 and not problems:
            metering = {k.lower(): v for k, v in headers.items()}.get(METERING_HEADER.lower())
            report["samples"].append({"input": body.decode("utf-8", "replace"),
                                      "output": answer.decode("utf-8", "replace").strip(),
                                      "metering": json.loads(metering)})
    if latencies:
        ordered = sorted(latencies)
        report["latency_ms"] = {"p50": round(statistics.median(ordered) * 1000, 1),
                                "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
                                "max": round(ordered[-1] * 1000, 1)}
    report["passed"] = not report["failures"]
    if report["passed"]:  # as in SageMaker, a failed record leaves no .out
        if assemble_with == "Line":
            data = b"".join(o if o.endswith(b"\n") else o + b"\n" for o in outputs)
            answered = len([l for l in data.splitlines() if l.strip()])
            if split_type == "Line" and answered != len(records):
                report["failures"].append(f"{answered} output lines for {len(records)} input records")
                report["passed"] = False
        else:
            data = b"".join(outputs)
        if report["passed"]:
            write_atomic(out_file, data)
            report["output_file"] = str(out_file)
    return _write_report(report, output_dir)


def _wait_healthy(url: str, server: subprocess.Popen, start_timeout: float, log_path: Path, report: dict) -> str | None:
    """Ping until 200, as SageMaker does: each answer within 2 s, healthy within the window."""
    started = time.monotonic()
    slow_pings = 0
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=PING_TIMEOUT_SECONDS) as response:
                if response.status == 200:
                    report["ping_seconds"] = round(time.monotonic() - started, 2)
                    if slow_pings:
                        report["slow_pings"] = slow_pings
                    return None
        except urllib.error.HTTPError as err:
            if err.code != 503:  # 503 = still loading; anything else = the model will not load
                return f"/ping answered {err.code}: {err.read()[:300]!r}; see {log_path}"
        except TimeoutError:
            slow_pings += 1  # SageMaker counts a ping slower than 2 s as a failed health check
        except (urllib.error.URLError, OSError) as err:
            if isinstance(getattr(err, "reason", None), TimeoutError):
                slow_pings += 1
        if server.poll() is not None:
            return f"serve exited with {server.poll()} before /ping answered 200; see {log_path}"
        if time.monotonic() - started > start_timeout:
            return (f"/ping did not answer 200 within {start_timeout:.0f} s (SageMaker's start window); "
                    f"see {log_path}")
        time.sleep(0.5)


def _execution_parameters(url: str) -> dict | None:
    """What the container suggests to a batch transform (optional in the contract)."""
    try:
        with urllib.request.urlopen(f"{url}/execution-parameters", timeout=PING_TIMEOUT_SECONDS) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def _write_report(report: dict, output_dir: Path) -> dict:
    report["report_file"] = str(output_dir / "validation-report.json")
    Path(report["report_file"]).write_text(json.dumps(report, indent=2) + "\n")
    return report
