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
formats and appends them to a hidden, locked ``.part`` file that becomes the ``.jsonl`` when the
minute of rotation or the hour passes or the server stops. A reader (``hilt monitor``) reads the
whole lines of ``.part`` files too, so a server killed mid-minute hides nothing; the next server
publishes what a killed one left. Write errors never stop the writer (see :class:`DataCapture`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import queue
import random
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
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
# A write that fails is retried after 1 s, then 2, 4... up to 30 s; a failing writer logs at most once a minute.
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
LOG_EVERY_SECONDS = 60.0


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


@dataclass
class _OpenFile:
    """The hidden ``.part`` file the writer appends to, locked while it is open."""

    fd: int
    part: Path
    final: Path
    hour: str
    opened_at: float
    size: int = 0  # bytes of whole lines written
    lines: int = 0


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _final_name(part: Path) -> Path:
    """``.<name>.jsonl.part`` -> ``<name>.jsonl``."""
    return part.with_name(part.name[1:-len(".part")])


class DataCapture:
    """Sampled, non-blocking capture of invocations to hourly JSON Lines files.

    The writer thread never gives up: an event it cannot write (a full disk, a folder removed
    while serving) is held and retried, backing off from 1 s to 30 s, and the lines of a file
    that cannot be published are read back from its open descriptor and held too. Past
    ``max_held_bytes`` the oldest held events are dropped and counted. ``status()`` (in
    ``/ping``'s body) and the log say when capture is failing. A ``.part`` file left by a server
    that was killed is published whole (cut after its last complete line) when the next one starts.
    """

    def __init__(self, directory: Path, percent: float = 100.0, endpoint: str = DEFAULT_ENDPOINT,
                 variant: str = DEFAULT_VARIANT, rotate_seconds: float = 60.0, max_held_bytes: int = 64 << 20):
        self.root = Path(directory) / endpoint / variant
        self.percent = percent
        self.rotate_seconds = rotate_seconds
        self.max_held_bytes = max_held_bytes
        self.captured = 0  # events published in .jsonl files
        self.dropped = 0  # events lost: the queue full, or held past max_held_bytes
        self.recovered = 0  # events published from .part files an earlier server left
        self.failing: str | None = None  # the last write error, while writing fails
        self._queue: queue.Queue = queue.Queue(maxsize=10_000)
        self._held: deque[tuple[str, str, bytes]] = deque()  # (hour folder, file name, line) not yet written
        self._held_bytes = 0
        self._file: _OpenFile | None = None
        self._retry_at = 0.0
        self._backoff = RETRY_FIRST_SECONDS
        self._logged_at = 0.0
        self._thread = threading.Thread(target=self._write_loop, name="data-capture", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls) -> DataCapture | None:
        """The capture ``serve`` runs with, or None when ``HILT_DATA_CAPTURE_DIR`` is unset.

        Raises:
            UserError: a percentage outside 0-100, or a folder that cannot be created or written.
        """
        directory = os.environ.get(DIR_ENV)
        if not directory:
            return None
        percent = env_number(PERCENT_ENV, 100.0, low=0, high=100, allow_low=True, wanted="a percentage",
                             hint="set 0 to 100 (SageMaker's InitialSamplingPercentage)")
        seconds = env_number(ROTATE_ENV, 60.0, wanted="a positive number of seconds", hint="set e.g. 60")
        endpoint, variant = os.environ.get(ENDPOINT_ENV, DEFAULT_ENDPOINT), os.environ.get(VARIANT_ENV, DEFAULT_VARIANT)
        root = Path(directory) / endpoint / variant
        try:  # an existing folder that cannot be written is refused like one that cannot be made
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".hilt-probe-"):
                pass
        except OSError as err:
            raise UserError(f"{DIR_ENV}={directory}: cannot write {root} ({err.strerror}); choose a writable "
                            "folder") from None
        return cls(Path(directory), percent, endpoint, variant, seconds)

    def sampled(self) -> bool:
        """Whether to capture this invocation (decided before the work, as SageMaker does)."""
        return self.percent >= 100 or random.uniform(0, 100) < self.percent

    def record(self, request: bytes, request_type: str, response: bytes, response_type: str) -> None:
        """Hand an invocation to the writer; never blocks (a full queue drops it and counts)."""
        try:
            self._queue.put_nowait((request, request_type, response, response_type, time.time()))
        except queue.Full:
            self.dropped += 1

    def status(self) -> dict[str, Any]:
        """Counts and health, for ``/ping``'s body and the log."""
        return {"captured": self.captured, "dropped": self.dropped, "held": len(self._held),
                "recovered": self.recovered, "failing": self.failing}

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and held (one last try), and publish the open file."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # -- the writer thread --------------------------------------------------------------------

    def _write_loop(self) -> None:
        self._recover()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is _STOP:
                for _ in range(2):  # a second try writes what a failed publish handed back
                    self._write_held()
                    if self._publish() and not self._held:
                        break
                if self._held:
                    self.dropped += len(self._held)
                    self._log(f"{len(self._held)} captured events could not be written and are lost "
                              f"({self.failing})", force=True)
                return
            if item is not None:
                self._hold(*item)
            if self._file is not None and time.time() - self._file.opened_at >= self.rotate_seconds:
                self._publish()
            if self._held and time.time() >= self._retry_at:
                self._write_held()
            elif self.failing and time.time() - self._logged_at >= LOG_EVERY_SECONDS:
                self._log(f"still failing ({self.failing}): {len(self._held)} events held, {self.dropped} dropped")

    def _hold(self, request: bytes, request_type: str, response: bytes, response_type: str, when: float) -> None:
        stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc)
        line = (json.dumps(capture_record(request, request_type, response, response_type, when=when),
                           ensure_ascii=False) + "\n").encode("utf-8")
        name = f"{stamp.strftime('%M-%S')}-{stamp.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
        self._held.append((stamp.strftime("%Y/%m/%d/%H"), name, line))
        self._held_bytes += len(line)
        while self._held_bytes > self.max_held_bytes and len(self._held) > 1:
            self._held_bytes -= len(self._held.popleft()[2])
            self.dropped += 1
            if time.time() - self._logged_at >= LOG_EVERY_SECONDS:
                self._log(f"more than {self.max_held_bytes >> 20} MiB of events wait to be written; dropping the "
                          f"oldest ({self.dropped} dropped so far)")

    def _write_held(self) -> None:
        """Write held events in order until one fails (then retry later)."""
        while self._held:
            hour, name, line = self._held[0]
            if self._file is not None and self._file.hour != hour and not self._publish():
                return
            try:
                if self._file is None:
                    self._open(hour, name)
                _write_all(self._file.fd, line)
            except OSError as err:
                if self._file is not None:  # no half line: cut the file back to its last whole line
                    with contextlib.suppress(OSError):
                        os.ftruncate(self._file.fd, self._file.size)
                self._failed(err, "write")
                return
            self._held.popleft()
            self._held_bytes -= len(line)
            self._file.size += len(line)
            self._file.lines += 1
        self._healthy()

    def _open(self, hour: str, name: str) -> None:
        folder = self.root / hour
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{name}.part"
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)  # read: see _publish
        with contextlib.suppress(OSError):  # the lock tells a starting server this file is in use
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._file = _OpenFile(fd, part, folder / name, hour, time.time())

    def _publish(self) -> bool:
        """Rename the open file to its ``.jsonl`` name. When that fails (its folder was removed,
        the disk is read-only), its lines are read back from the open descriptor and held."""
        handle, self._file = self._file, None
        if handle is None:
            return True
        try:
            os.replace(handle.part, handle.final)
        except OSError as err:
            try:
                data = os.pread(handle.fd, handle.size, 0) if handle.size <= self.max_held_bytes else b""
            except OSError:
                data = b""
            lines = data.splitlines(keepends=True)
            self.dropped += handle.lines - len(lines)
            for line in reversed(lines):
                self._held.appendleft((handle.hour, handle.final.name, line))
                self._held_bytes += len(line)
            with contextlib.suppress(OSError):
                os.close(handle.fd)
            with contextlib.suppress(OSError):
                handle.part.unlink()
            self._failed(err, "publish")
            return False
        with contextlib.suppress(OSError):
            os.close(handle.fd)
        self.captured += handle.lines
        return True

    def _failed(self, err: OSError, what: str) -> None:
        first = self.failing is None
        self.failing = f"cannot {what} under {self.root}: {err.strerror or err}"
        self._retry_at = time.time() + self._backoff
        self._backoff = min(self._backoff * 2, RETRY_MAX_SECONDS)
        if first:
            self._log(f"{self.failing}; holding events and retrying ({len(self._held)} held, "
                      f"{self.dropped} dropped)", force=True)

    def _healthy(self) -> None:
        if self.failing is not None:
            self._log(f"writing again after: {self.failing} ({self.dropped} events dropped meanwhile)", force=True)
        self.failing = None
        self._backoff = RETRY_FIRST_SECONDS

    def _log(self, message: str, force: bool = False) -> None:
        if force or time.time() - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = time.time()
            print(f"[serve] data capture: {message}", file=sys.stderr, flush=True)

    def _recover(self) -> None:
        """Publish the ``.part`` files a killed server left, each cut after its last whole line.
        A file another live server holds (its lock) is left alone."""
        files = events = 0
        for part in sorted(self.root.rglob(".*.jsonl.part")) if self.root.is_dir() else []:
            try:
                fd = os.open(part, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            try:
                data = os.pread(fd, os.fstat(fd).st_size, 0)
                whole = data[:data.rfind(b"\n") + 1]
                if not whole:
                    part.unlink()
                    continue
                os.ftruncate(fd, len(whole))
                os.replace(part, _final_name(part))
                files, events = files + 1, events + whole.count(b"\n")
            except OSError as err:
                self._log(f"cannot publish {part} an earlier server left ({err.strerror}); it stays there", force=True)
            finally:
                os.close(fd)
        if files:
            self.recovered = events
            self._log(f"published {events} events from {files} unfinished files an earlier server left", force=True)


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
    listed = sorted(p for p in root.rglob("*.jsonl") if not p.name.startswith("."))
    names = set(listed)
    # A server's open (or, after a crash, unfinished) file: its whole lines are captured events too.
    parts = sorted(p for p in root.rglob(".*.jsonl.part") if _final_name(p) not in names)
    for path in sorted(listed + parts):
        # Only regular files: a FIFO would block the read forever, a folder or a broken link cannot be read.
        if not path.is_file():
            yield str(path), None
            continue
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            if path in names or not _final_name(path).is_file():
                yield str(path), None
                continue
            path, raw = _final_name(path), _final_name(path).read_bytes()  # published while it was listed
        except OSError:
            yield str(path), None
            continue
        if path.name.endswith(".part"):
            raw = raw[:raw.rfind(b"\n") + 1]  # a line still being written is not an event yet
        yield str(path), raw


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
