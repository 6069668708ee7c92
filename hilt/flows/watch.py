"""``hilt pipeline watch``: start pipeline runs from Label Studio webhooks.

Listens on 127.0.0.1 (only this machine's Label Studio can reach it) for Label Studio's
webhook POSTs, registered on the pipeline's project for ANNOTATION_CREATED,
ANNOTATIONS_CREATED and ANNOTATION_UPDATED with the full payload and a shared secret in
the ``X-Hilt-Secret`` header. A request without the right secret gets 403 and counts for
nothing. Once ``min_annotations`` distinct new annotations have arrived, one pipeline run
starts (runs never overlap; annotations that arrive during a run count toward the next).

Label Studio sends each webhook once and never retries, so a watcher that was down or
busy can miss events: every ``--poll`` seconds it also compares the project's annotation
count with what the exported versions already hold, and starts a run when that gap
reaches the threshold. The run itself exports only what is new (``--since-last``).
"""

from __future__ import annotations

import hmac
import json
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hilt.core.errors import UserError

SECRET_HEADER = "X-Hilt-Secret"
SECRET_ENV = "HILT_WEBHOOK_SECRET"
ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
PATH = "/webhook"


class Inbox:
    """Annotation ids announced by webhooks since the last run started (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[int] = set()
        self.arrived = threading.Event()
        self.events = 0
        self.refused = 0

    def add(self, ids: list[int]) -> None:
        with self._lock:
            self._ids.update(ids)
            self.events += 1
        self.arrived.set()

    def count(self) -> int:
        with self._lock:
            return len(self._ids)

    def take(self) -> set[int]:
        with self._lock:
            ids, self._ids = self._ids, set()
        return ids


MAX_BODY_BYTES = 1024 * 1024  # a Label Studio webhook with the full payload is a few kB


def annotation_ids(payload: dict) -> list[int]:
    """The annotation id(s) a Label Studio webhook payload is about."""
    found = []
    if isinstance(payload.get("annotation"), dict) and "id" in payload["annotation"]:
        found.append(int(payload["annotation"]["id"]))
    for item in payload.get("annotations") or []:
        if isinstance(item, dict) and "id" in item:
            found.append(int(item["id"]))
    return found


def make_handler(inbox: Inbox, secret: str, project: int | None):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            # Who is asking first, then how much: nothing is read before the secret matches,
            # and no body over MAX_BODY_BYTES is read at all.
            self.close_connection = True
            if self.path.split("?")[0] != PATH:
                return self._answer(404, {"error": f"post webhooks to {PATH}"})
            if not hmac.compare_digest(self.headers.get(SECRET_HEADER, "").encode(), secret.encode()):
                inbox.refused += 1
                return self._answer(403, {"error": f"missing or wrong {SECRET_HEADER}"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._answer(400, {"error": "Content-Length is not a number"})
            if length < 0 or length > MAX_BODY_BYTES:
                return self._answer(413, {"error": f"body of {length} bytes is over the {MAX_BODY_BYTES}-byte limit"})
            body = self.rfile.read(length) if length else b""
            try:
                payload = json.loads(body or b"{}")
            except (ValueError, RecursionError):
                return self._answer(400, {"error": "body is not JSON"})
            if not isinstance(payload, dict):
                return self._answer(400, {"error": "body is not a JSON object"})
            action = payload.get("action")
            project_field = payload.get("project")
            hook_project = project_field.get("id") if isinstance(project_field, dict) else project_field
            if action not in ACTIONS or (project is not None and hook_project not in (None, project)):
                return self._answer(200, {"ignored": action if isinstance(action, str) else None})
            try:
                ids = annotation_ids(payload)
            except (TypeError, ValueError):
                return self._answer(400, {"error": "annotation ids must be integers"})
            inbox.add(ids)
            return self._answer(200, {"counted": ids})

        def log_message(self, format, *args):  # quiet: one line per event is printed by the loop
            return

    return Handler


def _unexported(client, project: int, datasets: Path) -> int:
    from hilt.labeling.dataset import exported_annotation_ids

    source = {"type": "project", "project_id": project, "url": client.url}  # as hilt export records it
    return max(0, client.annotation_count(project) - len(exported_annotation_ids(datasets, source)))


def watch(pipeline_file: Path, secret: str | None, port: int = 0, min_annotations: int | None = None,
          max_runs: int | None = None, poll_seconds: float = 60.0, register: bool = True,
          ready_file: Path | None = None) -> int:
    """Serve webhooks and run the pipeline when enough annotations arrived. Returns an exit code."""
    from hilt.flows.pipeline import load_pipeline, run_pipeline

    secret = secret or os.environ.get(SECRET_ENV)
    if not secret:
        raise UserError(f"no shared secret: pass --secret or set {SECRET_ENV}; Label Studio sends it in "
                        f"{SECRET_HEADER} and the watcher refuses webhooks without it")
    pipeline, base = load_pipeline(pipeline_file)
    project = pipeline.source.project
    if project is None:
        raise UserError(f"{pipeline_file}: source.project is not set; `pipeline watch` needs a Label Studio project")
    threshold = min_annotations or pipeline.min_annotations
    datasets = (base / pipeline.workdir).resolve() / "datasets"
    inbox = Inbox()
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(inbox, secret, project))
    url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
    threading.Thread(target=server.serve_forever, daemon=True).start()

    from hilt.labeling.client import connect

    client = connect()
    hook = client.create_webhook(project, url, ACTIONS, {SECRET_HEADER: secret}) if register else None
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()
        inbox.arrived.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    print(f"[watch] listening on {url} for project {project} (webhook {hook}); a run starts after "
          f"{threshold} new annotation(s); reconciling every {poll_seconds:.0f}s", flush=True)
    if ready_file is not None:
        ready_file.write_text(json.dumps({"url": url, "webhook": hook, "project": project}))
    runs, exit_code = 0, 0
    last_poll = 0.0
    try:
        while not stop.is_set() and (max_runs is None or runs < max_runs):
            inbox.arrived.wait(timeout=max(0.1, poll_seconds - (time.monotonic() - last_poll)))
            inbox.arrived.clear()
            if stop.is_set():
                break
            pending = inbox.count()
            reason = f"{pending} new annotation(s) from webhooks"
            if pending < threshold and time.monotonic() - last_poll >= poll_seconds:
                last_poll = time.monotonic()
                gap = _unexported(client, project, datasets)
                if gap >= threshold:
                    pending, reason = gap, f"{gap} annotation(s) not exported yet (reconciled by polling)"
            if pending < threshold:
                if pending:
                    print(f"[watch] {pending}/{threshold} new annotation(s)", flush=True)
                continue
            taken = inbox.take()
            runs += 1
            print(f"[watch] run {runs}: {reason} ({len(taken)} via webhook)", flush=True)
            try:
                exit_code = run_pipeline(pipeline_file)
            except UserError as err:
                exit_code = 2
                print(f"[watch] run {runs} stopped: {err}", flush=True)
            print(f"[watch] run {runs} finished with exit code {exit_code}", flush=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        server.shutdown()
        if hook is not None:
            try:
                client.delete_webhook(hook)
            except UserError:
                pass
    print(f"[watch] stopped after {runs} run(s); {inbox.events} webhook(s) counted, {inbox.refused} refused")
    return exit_code
