"""Data capture in SageMaker's format: what ``serve`` writes, what ``hilt monitor`` reads.

SageMaker endpoint data capture writes one JSON line per invocation::

    {"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                       "data": "<the body>", "encoding": "JSON"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "<the body>", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "<uuid>", "inferenceTime": "2026-11-24T19:00:00Z"},
     "eventVersion": "0"}

``data`` is the body as text for JSON content types and base64 for any other (``encoding``
says which), in files ``<endpoint>/<variant>/yyyy/mm/dd/hh/<mm-ss-mmm>-<uuid>.jsonl`` under the
capture destination. ``serve`` writes the same with ``HILT_DATA_CAPTURE_DIR`` set (sampled by
``HILT_DATA_CAPTURE_PERCENT``): requests only hand their bodies to a queue; a writer thread
formats and appends them to a hidden ``.part`` file that becomes the ``.jsonl`` when the
minute of rotation or the hour passes or the server stops, so a reader never sees half a file.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import queue
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hilt.core.env import env_number
from hilt.core.errors import UserError

DIR_ENV = "HILT_DATA_CAPTURE_DIR"
PERCENT_ENV = "HILT_DATA_CAPTURE_PERCENT"
ENDPOINT_ENV = "HILT_ENDPOINT_NAME"
VARIANT_ENV = "HILT_VARIANT_NAME"
ROTATE_ENV = "HILT_DATA_CAPTURE_ROTATE_SECONDS"
DEFAULT_ENDPOINT = "hilt-serve"
DEFAULT_VARIANT = "AllTraffic"
# Content types captured as text (SageMaker's CaptureContentTypeHeader.JsonContentTypes); any other
# body is captured as base64.
JSON_TYPES = ("application/json", "application/jsonlines", "application/x-ndjson")
EVENT_VERSION = "0"
_STOP = object()


def _encoded(body: bytes, content_type: str) -> dict[str, str]:
    media = content_type.split(";")[0].strip().lower()
    if media in JSON_TYPES:
        try:
            return {"data": body.decode("utf-8"), "encoding": "JSON"}
        except UnicodeDecodeError:
            pass
    return {"data": base64.b64encode(body).decode("ascii"), "encoding": "BASE64"}


def capture_record(request: bytes, request_type: str, response: bytes, response_type: str, when: float,
                   event_id: str | None = None, inference_id: str | None = None) -> dict[str, Any]:
    """One captured invocation, field for field as SageMaker writes it."""
    metadata = {"eventId": event_id or str(uuid.uuid4()),
                "inferenceTime": dt.datetime.fromtimestamp(when, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if inference_id:
        metadata["inferenceId"] = inference_id
    return {
        "captureData": {
            "endpointInput": {"observedContentType": request_type, "mode": "INPUT", **_encoded(request, request_type)},
            "endpointOutput": {"observedContentType": response_type, "mode": "OUTPUT",
                               **_encoded(response, response_type)},
        },
        "eventMetadata": metadata,
        "eventVersion": EVENT_VERSION,
    }


class DataCapture:
    """Sampled, non-blocking capture of invocations to hourly JSON Lines files."""

    def __init__(self, directory: Path, percent: float = 100.0, endpoint: str = DEFAULT_ENDPOINT,
                 variant: str = DEFAULT_VARIANT, rotate_seconds: float = 60.0):
        self.root = Path(directory) / endpoint / variant
        self.percent = percent
        self.rotate_seconds = rotate_seconds
        self.captured = 0
        self.dropped = 0
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._write_loop, name="data-capture", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls) -> DataCapture | None:
        """The capture ``serve`` runs with, or None when ``HILT_DATA_CAPTURE_DIR`` is unset.

        Raises:
            UserError: a percentage outside 0-100, or a folder that cannot be written.
        """
        directory = os.environ.get(DIR_ENV)
        if not directory:
            return None
        percent = env_number(PERCENT_ENV, 100.0, low=0, high=100, allow_low=True, wanted="a percentage",
                             hint="set 0 to 100 (SageMaker's InitialSamplingPercentage)")
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{DIR_ENV}={directory}: cannot create it ({err.strerror}); choose a writable folder") \
                from None
        seconds = env_number(ROTATE_ENV, 60.0, wanted="a positive number of seconds", hint="set e.g. 60")
        return cls(Path(directory), percent, os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT),
                   os.environ.get(VARIANT_ENV, DEFAULT_VARIANT), seconds)

    def sampled(self) -> bool:
        """Whether to capture this invocation (decided before the work, as SageMaker does)."""
        return self.percent >= 100 or random.uniform(0, 100) < self.percent

    def record(self, request: bytes, request_type: str, response: bytes, response_type: str) -> None:
        """Hand an invocation to the writer; never blocks (a full queue drops it and counts)."""
        try:
            self._queue.put_nowait((request, request_type, response, response_type, time.time()))
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and publish the open file."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _write_loop(self) -> None:
        handle, part, final, opened_hour, opened_at = None, None, None, None, 0.0

        def publish() -> None:
            nonlocal handle
            if handle is not None:
                handle.close()
                os.replace(part, final)
                handle = None

        while True:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                item = None
            now = time.time()
            if handle is not None and (item is _STOP or now - opened_at >= self.rotate_seconds):
                publish()
            if item is _STOP:
                return
            if item is None:
                continue
            *bodies, when = item
            stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc)
            if handle is not None and stamp.strftime("%Y%m%d%H") != opened_hour:
                publish()
            try:
                if handle is None:
                    folder = self.root / stamp.strftime("%Y/%m/%d/%H")
                    folder.mkdir(parents=True, exist_ok=True)
                    name = f"{stamp.strftime('%M-%S')}-{stamp.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
                    final, part = folder / name, folder / f".{name}.part"
                    handle = part.open("w", encoding="utf-8")
                    opened_hour, opened_at = stamp.strftime("%Y%m%d%H"), now
                handle.write(json.dumps(capture_record(*bodies, when=when), ensure_ascii=False) + "\n")
                handle.flush()
                self.captured += 1
            except OSError as err:  # a full disk must not take the endpoint down
                self.dropped += 1
                print(f"[serve] data capture: cannot write under {self.root}: {err.strerror}", file=sys.stderr,
                      flush=True)


# ---------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class CapturedEvent:
    """One captured invocation, bodies decoded."""

    event_id: str
    time: dt.datetime
    request_type: str
    request: str
    response_type: str
    response: str
    source: str  # file and line


def _decoded(part: dict, where: str) -> str:
    data, encoding = part.get("data"), str(part.get("encoding", "")).upper()
    if not isinstance(data, str):
        raise ValueError(f"{where}: 'data' is not a string")
    if encoding == "BASE64":
        return base64.b64decode(data).decode("utf-8", errors="replace")
    return data  # JSON and CSV are captured as text


def parse_capture_line(line: str, where: str) -> CapturedEvent:
    """A capture line as an event.

    Raises:
        ValueError: naming what is missing (the caller counts and skips such lines).
    """
    record = json.loads(line)
    data = record.get("captureData") if isinstance(record, dict) else None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: no captureData")
    inp, out = data.get("endpointInput") or {}, data.get("endpointOutput") or {}
    meta = record.get("eventMetadata") or {}
    # ISO 8601 with or without milliseconds (SageMaker writes both) or an offset; naive times are UTC.
    when = dt.datetime.fromisoformat(str(meta.get("inferenceTime")))
    when = when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
    return CapturedEvent(str(meta.get("eventId")), when,
                         str(inp.get("observedContentType", "")), _decoded(inp, where) if inp else "",
                         str(out.get("observedContentType", "")), _decoded(out, where) if out else "", where)


def capture_files(source: str) -> Iterator[tuple[str, bytes | None]]:
    """(name, bytes) of every ``*.jsonl`` capture file under a folder or an ``s3://bucket/prefix``,
    in path order (which is time order in SageMaker's layout); bytes None for a path named so that
    is not a readable regular file (a FIFO, a folder, a broken link).

    Raises:
        UserError: a folder that does not exist, an S3 location that cannot be listed.
    """
    if source.startswith("s3://"):
        from hilt.core.aws import clients, split_s3_uri

        bucket, prefix = split_s3_uri(source)
        # A prefix names a folder: s3://b/cap must not also read s3://b/capother/.
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        client = clients()[0]
        keys = []
        try:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".jsonl")]
        except Exception as err:  # noqa: BLE001  (botocore's errors: one line for the user)
            raise UserError(f"--capture {source}: cannot list it ({err}); check the bucket, prefix and "
                            "credentials") from None
        for key in sorted(keys):
            yield f"s3://{bucket}/{key}", client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return
    root = Path(source)
    if root.exists() and not root.is_dir():
        raise UserError(f"--capture {source} is a file, not a folder; pass the capture destination (the folder "
                        "serve writes to, or s3://...)")
    if not root.is_dir():
        raise UserError(f"--capture {source}: no such folder; pass the capture destination (a folder or s3://...)")
    for path in sorted(p for p in root.rglob("*.jsonl") if not p.name.startswith(".")):
        # Only regular files: a FIFO would block the read forever, a folder or a broken link cannot be read.
        if not path.is_file():
            yield str(path), None
            continue
        try:
            yield str(path), path.read_bytes()
        except OSError:
            yield str(path), None


def read_capture(source: str) -> tuple[list[CapturedEvent], dict[str, int]]:
    """Every captured event under ``source``, and counts of what could not be read."""
    events: list[CapturedEvent] = []
    counts = {"files": 0, "lines": 0, "unreadable_lines": 0, "unreadable_files": 0}
    for name, raw in capture_files(source):
        if raw is None:
            counts["unreadable_files"] += 1
            continue
        counts["files"] += 1
        for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            counts["lines"] += 1
            try:
                events.append(parse_capture_line(line, f"{name}:{number}"))
            except (ValueError, TypeError, AttributeError, KeyError, RecursionError):  # RecursionError: deep JSON
                counts["unreadable_lines"] += 1
    return events, counts
