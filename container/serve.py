"""``serve``: the HTTP side of SageMaker's inference contract, with Marketplace metering.

SageMaker starts the inference image with ``serve`` and talks to it over HTTP on port
8080 (``SAGEMAKER_BIND_TO_PORT`` overrides): ``GET /ping`` must answer 200 once the
model is ready, ``POST /invocations`` gets the requests. The model is read from
/opt/ml/model (under ``SAGEMAKER_BASE_DIR``) and nothing else: Marketplace runs the
container with network isolation, so hub access is switched off before anything loads.

Three parts: ``container.contract`` (request bodies, limits, answers, the metering
header), ``container.backend`` (the model and its bounded generation) and this module
(the HTTP app: payload limit, content types, the invocation's budget, disconnects,
SIGTERM). Every success carries ``X-Amzn-Inference-Metering: {"Dimension":
"inference.count", "ConsumedUnits": N}``; N comes from the unit in ``HILT_METERING_UNIT``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from container.backend import ModelRunner
from container.contract import (
    JSON,
    JSONLINES,
    MAX_PAYLOAD_BYTES,
    METERING_HEADER,
    METERING_UNITS,
    RequestError,
    metering_header,
    parse_body,
)
from training.opt_ml import OptML

HOST_ENV = "HILT_SERVE_HOST"
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
METERING_ENV = "HILT_METERING_UNIT"
# SageMaker real-time answers within 60 s; a generation stops (with what it has) before that.
BUDGET_ENV = "HILT_GENERATION_TIMEOUT"
DEFAULT_BUDGET_SECONDS = 55.0
# SIGTERM: in-flight generations are cancelled and the server exits within this many seconds.
SHUTDOWN_SECONDS = 3


def go_offline() -> None:
    """Marketplace runs the container without network: no hub lookups, before any model loads."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)


def create_app(model_dir=None, metering_unit: str | None = None):
    """The FastAPI app; the model loads in a background thread (``/ping`` is 503 until then)."""
    go_offline()
    unit = metering_unit or os.environ.get(METERING_ENV, "output_tokens")
    if unit not in METERING_UNITS:
        raise SystemExit(f"serve: {METERING_ENV}={unit!r} is not one of {', '.join(METERING_UNITS)}")
    model_dir = model_dir or OptML.from_env().model_dir
    try:
        budget = float(os.environ.get(BUDGET_ENV) or DEFAULT_BUDGET_SECONDS)
    except ValueError:
        raise SystemExit(f"serve: {BUDGET_ENV}={os.environ[BUDGET_ENV]!r} is not a number of seconds") from None
    state: dict[str, Any] = {"runner": None, "error": None}

    def load() -> None:
        try:
            state["runner"] = ModelRunner(model_dir)
            print(f"[serve] model loaded from {model_dir}", flush=True)
        except Exception as err:  # noqa: BLE001  (reported by /ping and the log)
            state["error"] = f"{type(err).__name__}: {err}"
            print(f"[serve] failed to load the model from {model_dir}: {state['error']}", file=sys.stderr, flush=True)

    app = FastAPI(title="hilt serve", docs_url=None, redoc_url=None, openapi_url=None)
    threading.Thread(target=load, name="model-loader", daemon=True).start()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/ping")
    def ping():
        if state["runner"] is not None:
            return Response(status_code=200)
        return error(503 if state["error"] is None else 500, state["error"] or "model is loading")

    @app.post("/invocations")
    async def invocations(request: Request):
        runner = state["runner"]
        if runner is None:
            return error(503, state["error"] or "model is loading; retry when /ping answers 200")
        # Read the body to the end (a client still sending when we answer gets a reset, not
        # the 413), but keep no more than the limit in memory.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= MAX_PAYLOAD_BYTES:
                chunks.append(chunk)
        if size > MAX_PAYLOAD_BYTES:
            return error(413, f"payload of {size} bytes is over SageMaker's 6 MB limit ({MAX_PAYLOAD_BYTES} bytes)")
        body = b"".join(chunks)
        content_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if content_type not in (JSON, JSONLINES):
            return error(415, f"content type {content_type!r} not supported; use {JSON} or {JSONLINES}")
        try:
            requests = parse_body(body, content_type)
        except RequestError as err:
            return error(400, str(err))
        # One wall-clock budget for the whole invocation; the client leaving cancels the work.
        deadline = time.monotonic() + budget
        cancelled = threading.Event()

        async def watch_disconnect():
            while not cancelled.is_set():
                if await request.is_disconnected():
                    cancelled.set()
                    return
                await asyncio.sleep(0.1)

        watcher = asyncio.create_task(watch_disconnect())
        generations = []
        number = 1
        try:
            for number, messages, kwargs in requests:
                generations.append(await run_in_threadpool(runner.generate, messages, kwargs,
                                                           deadline - time.monotonic(), cancelled))
                if cancelled.is_set():
                    return error(499, "client disconnected; generation cancelled")
        except RequestError as err:
            where = f"line {number}: " if content_type == JSONLINES else ""
            return error(400, where + str(err))
        finally:
            cancelled.set()
            watcher.cancel()
        headers = {METERING_HEADER: metering_header(unit, generations)}
        if content_type == JSON:
            return JSONResponse(generations[0].as_json(), headers=headers)
        payload = "".join(json.dumps(g.as_json(), ensure_ascii=False) + "\n" for g in generations)
        return Response(payload, media_type=JSONLINES, headers=headers)

    app.state.model_state = state
    return app


def audit_network(log_path: str) -> None:
    """Record every outbound socket operation of this process (network-isolation proof).

    Marketplace runs the container without network; with ``HILT_AUDIT_NETWORK=FILE`` each
    connect / DNS lookup / sendto the process attempts is appended to FILE, so a test can
    show that loading and serving make none.
    """
    events = {"socket.connect", "socket.getaddrinfo", "socket.sendto", "socket.sendmsg", "socket.gethostbyname"}

    def hook(event: str, args: tuple) -> None:
        if event in events:
            with open(log_path, "a") as handle:
                handle.write(json.dumps({"event": event, "args": [repr(a) for a in args[:3]]}) + "\n")

    sys.addaudithook(hook)


def main() -> int:
    """``serve``: what SageMaker runs in the inference image."""
    import uvicorn

    if os.environ.get("HILT_AUDIT_NETWORK"):
        audit_network(os.environ["HILT_AUDIT_NETWORK"])

    host = os.environ.get(HOST_ENV, "127.0.0.1")
    port = int(os.environ.get(PORT_ENV, "8080"))
    print(f"[serve] listening on {host}:{port}, model dir {OptML.from_env().model_dir}", flush=True)
    app = create_app()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # SIGTERM (SageMaker stopping the instance): stop generating now, not after the
            # longest request in flight; uvicorn then drains within SHUTDOWN_SECONDS.
            runner = app.state.model_state.get("runner")
            if runner is not None:
                runner.shutdown.set()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=os.environ.get("HILT_SERVE_LOG_LEVEL", "warning"),
                            timeout_keep_alive=75, timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    Server(config).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
