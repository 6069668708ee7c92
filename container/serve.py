"""``serve``: the HTTP side of SageMaker's inference contract, with Marketplace metering.

SageMaker starts the inference image with ``serve`` and talks to it over HTTP on port
8080 (``SAGEMAKER_BIND_TO_PORT`` overrides): ``GET /ping`` must answer 200 once the
model is ready, ``POST /invocations`` gets the requests, and a batch transform may ask
``GET /execution-parameters`` how to send them. The model is read from /opt/ml/model
(under ``SAGEMAKER_BASE_DIR``) and nothing else: Marketplace runs the container with
network isolation, so hub access is switched off before anything loads.

Three parts: ``hilt.serving.contract`` (request bodies, limits, answers, the metering
header), ``hilt.serving.backend`` (the model and its batched, bounded generation, chosen by
``HILT_SERVE_BACKEND``) and this module (the HTTP app: payload limit, content types and
``Accept``, streaming, the invocation's budget, disconnects, SIGTERM). Every success
carries ``X-Amzn-Inference-Metering: {"Dimension": "inference.count", "ConsumedUnits": N}``;
N comes from the unit in ``HILT_METERING_UNIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hilt.serving.backend import backend_class
from hilt.serving.capture import DataCapture
from hilt.serving.contract import (
    EVENT_STREAM,
    JSON,
    JSONLINES,
    MAX_BATCH_PAYLOAD_MB,
    MAX_PAYLOAD_BYTES,
    METERING_HEADER,
    METERING_UNITS,
    Generation,
    Invocation,
    RequestError,
    chat_finish_reason,
    metering_header,
    parse_body,
    streamed_metering_header,
)
from hilt.core.env import env_number
from hilt.core.errors import UserError
from hilt.core.opt_ml import OptML

HOST_ENV = "HILT_SERVE_HOST"
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
METERING_ENV = "HILT_METERING_UNIT"
# SageMaker real-time answers within 60 s; a generation stops (with what it has) before that.
BUDGET_ENV = "HILT_GENERATION_TIMEOUT"
DEFAULT_BUDGET_SECONDS = 55.0
# A batch transform waits InvocationsTimeoutInSeconds (600 s unless the job sets it).
DEFAULT_BATCH_BUDGET_SECONDS = 590.0
# SIGTERM: in-flight generations are cancelled and the server exits within this many seconds.
SHUTDOWN_SECONDS = 3
# Generations in flight at once (all invocations together); the rest wait their turn.
MAX_IN_FLIGHT_ENV = "HILT_MAX_IN_FLIGHT"
DEFAULT_MAX_IN_FLIGHT = 256
# What GET /execution-parameters suggests to a batch transform.
MAX_CONCURRENT_TRANSFORMS_ENV = "HILT_MAX_CONCURRENT_TRANSFORMS"


def go_offline() -> None:
    """Marketplace runs the container without network: no hub lookups, before any model loads."""
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(name, value)


def batch_settings() -> dict[str, Any]:
    """What a SageMaker batch transform tells the container through its environment."""
    batch = os.environ.get("SAGEMAKER_BATCH", "").lower() == "true"
    payload_mb = env_number("SAGEMAKER_MAX_PAYLOAD_IN_MB", 6, kind=int, low=0, allow_low=True,
                            high=MAX_BATCH_PAYLOAD_MB) if batch else 6
    # MaxPayloadInMB 0 means "no limit" to SageMaker (streamed records); hilt then takes the batch maximum.
    limit = max((payload_mb or MAX_BATCH_PAYLOAD_MB) * 1024 * 1024, MAX_PAYLOAD_BYTES) if batch else MAX_PAYLOAD_BYTES
    return {"batch": batch, "max_payload_bytes": limit}


def accepted(accept: str | None, offers: list[str]) -> str | None:
    """The first of ``offers`` the Accept header allows (q=0 refuses), or None."""
    if not accept or not accept.strip():
        return offers[0]
    ranges = []
    for part in accept.split(","):
        media, *params = [x.strip() for x in part.split(";")]
        quality = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    quality = float(param[2:])
                except ValueError:
                    quality = 0.0
        if media:
            ranges.append((media.lower(), quality))
    best, best_quality = None, 0.0
    for offer in offers:
        kind = offer.split("/")[0]
        for media, quality in ranges:
            if media in (offer, "*/*", f"{kind}/*") and quality > best_quality:
                best, best_quality = offer, quality
    return best


def create_app(model_dir=None, metering_unit: str | None = None):
    """The FastAPI app; the model loads in a background thread (``/ping`` is 503 until then)."""
    go_offline()
    state = _AppState.from_env(model_dir, metering_unit)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        state.close()

    app = FastAPI(title="hilt serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    threading.Thread(target=state.load, name="model-loader", daemon=True).start()

    @app.get("/ping")
    def ping():
        return state.ping()

    @app.get("/execution-parameters")
    def execution_parameters():
        return {"MaxConcurrentTransforms": state.concurrent_transforms, "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": 6}

    @app.post("/invocations")
    async def invocations(request: Request):
        return await state.invoke(request)

    app.state.model_state = state.model
    app.state.capture = state.capture
    return app


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@dataclass
class _Call:
    """One POST /invocations, read and parsed: what the streamed and the whole answer both need."""

    body: bytes
    content_type: str
    requests: list[tuple[int, Invocation]]  # (line number, request)
    media: str  # the answer's content type
    deadline: float
    captured: bool

    @property
    def stream(self) -> bool:
        return self.requests[0][1].stream


class _AppState:
    """What the routes share: the settings read once at start, the model (``model["runner"]`` once loaded,
    ``model["error"]`` if it failed) and the data capture."""

    def __init__(self, model_dir, unit: str, backend_cls, batch: dict[str, Any], budget: float, max_in_flight: int,
                 concurrent_transforms: int, capture: DataCapture | None):
        self.model_dir, self.unit, self.backend_cls, self.batch = model_dir, unit, backend_cls, batch
        self.budget, self.max_in_flight, self.concurrent_transforms = budget, max_in_flight, concurrent_transforms
        self.capture = capture
        self.model: dict[str, Any] = {"runner": None, "error": None, "slots": None}

    @classmethod
    def from_env(cls, model_dir, metering_unit: str | None) -> _AppState:
        """Every setting serve reads from its environment, checked; a bad one exits in one line."""
        unit = metering_unit or os.environ.get(METERING_ENV, "output_tokens")
        if unit not in METERING_UNITS:
            raise SystemExit(f"serve: {METERING_ENV}={unit!r} is not one of {', '.join(METERING_UNITS)}")
        model_dir = model_dir or OptML.from_env().model_dir
        backend_cls = backend_class()
        try:
            batch = batch_settings()
            budget = env_number(BUDGET_ENV, DEFAULT_BATCH_BUDGET_SECONDS if batch["batch"] else DEFAULT_BUDGET_SECONDS)
            max_in_flight = env_number(MAX_IN_FLIGHT_ENV, DEFAULT_MAX_IN_FLIGHT, kind=int)
            # What GET /execution-parameters suggests: as many requests in flight as the engine batches well.
            concurrent_transforms = env_number(MAX_CONCURRENT_TRANSFORMS_ENV, backend_cls.concurrent_transforms,
                                               kind=int)
            capture = DataCapture.from_env()
        except UserError as err:
            raise SystemExit(f"serve: {err}") from None
        return cls(model_dir, unit, backend_cls, batch, budget, max_in_flight, concurrent_transforms, capture)

    def load(self) -> None:
        try:
            self.model["runner"] = self.backend_cls(self.model_dir)
            print(f"[serve] model loaded from {self.model_dir} (backend {self.backend_cls.name})", flush=True)
        except Exception as err:  # noqa: BLE001  (reported by /ping and the log)
            self.model["error"] = f"{type(err).__name__}: {err}"
            print(f"[serve] failed to load the model from {self.model_dir}: {self.model['error']}", file=sys.stderr,
                  flush=True)

    def close(self) -> None:
        if self.model["runner"] is not None:  # stop the batch's thread with the server
            self.model["runner"].close()
        if self.capture is not None:  # publish the open capture file
            self.capture.close()

    def engine_failure(self) -> str | None:
        """Why the loaded engine cannot generate any more (SageMaker then replaces the instance)."""
        return None if self.model["runner"] is None else self.model["runner"].failure()

    def ping(self) -> Response:
        failure = self.engine_failure()
        if failure is not None:
            return _error(500, failure)
        if self.model["runner"] is not None:
            # SageMaker reads only the status; the body says whether data capture is writing.
            return Response(status_code=200) if self.capture is None else JSONResponse(
                {"status": "healthy", "data_capture": self.capture.status()})
        return _error(503 if self.model["error"] is None else 500, self.model["error"] or "model is loading")

    async def invoke(self, request: Request) -> Response:
        """POST /invocations: every refusal is a JSON answer with its status; a streamed request gets its
        chunks as they come, any other the whole answer."""
        runner = self.model["runner"]
        if runner is None:
            return _error(503, self.model["error"] or "model is loading; retry when /ping answers 200")
        failure = self.engine_failure()
        if failure is not None:
            return _error(503, failure)
        call = await self._read(request)
        if isinstance(call, Response):
            return call
        prepared = await asyncio.to_thread(_prepare_all, runner, call)
        if isinstance(prepared, str):
            return _error(400, prepared)
        if self.model["slots"] is None:
            self.model["slots"] = asyncio.Semaphore(self.max_in_flight)
        # The client leaving cancels the work.
        cancelled = threading.Event()
        if call.stream:
            return self._streamed(runner, call, prepared[0], cancelled)
        return await self._completed(runner, call, prepared, request, cancelled)

    async def _read(self, request: Request) -> _Call | Response:
        """The body read within the payload limit, parsed, and the answer's media type; or the refusal
        (413, 415, 400, 406)."""
        limit = self.batch["max_payload_bytes"]
        # Read the body to the end (a client still sending when we answer gets a reset, not
        # the 413), but keep no more than the limit in memory.
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
        if size > limit:
            where = ("SAGEMAKER_MAX_PAYLOAD_IN_MB" if self.batch["batch"] else "SageMaker's 6 MB real-time limit")
            return _error(413, f"payload of {size} bytes is over {where} ({limit} bytes)")
        body = b"".join(chunks)
        # One wall-clock budget for the whole invocation, parsing and tokenizing included.
        deadline = time.monotonic() + self.budget
        captured = self.capture is not None and self.capture.sampled()
        content_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if content_type not in (JSON, JSONLINES):
            return _error(415, f"content type {content_type!r} not supported; use {JSON} or {JSONLINES}")
        # Parsing and rendering/tokenizing run in a worker thread: a 6 MB body must not hold the event
        # loop, or /ping (which SageMaker gives 2 s) waits behind it.
        try:
            requests = await asyncio.to_thread(parse_body, body, content_type)
        except RequestError as err:
            return _error(400, str(err))
        media = _answer_media(request.headers.get("accept"), requests[0][1], content_type)
        if isinstance(media, Response):
            return media
        return _Call(body, content_type, requests, media, deadline, captured)

    def _streamed(self, runner, call: _Call, prepared: tuple, cancelled: threading.Event) -> StreamingResponse:
        """The answer of a streamed request, chunk by chunk, metered on what it may consume."""
        ids, kwargs = prepared
        headers = {METERING_HEADER: streamed_metering_header(self.unit, len(ids), kwargs["max_new_tokens"]),
                   "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        chunks = _stream(runner, call.requests[0][1], ids, kwargs, call.deadline, cancelled, call.media,
                         self.model["slots"])
        if call.captured:
            chunks = _captured_stream(chunks, self.capture, call.body, call.content_type, call.media)
        return _ClosingStream(chunks, media_type=call.media, headers=headers)

    async def _completed(self, runner, call: _Call, prepared: list, request: Request,
                         cancelled: threading.Event) -> Response:
        """The whole answer: every request generated at once (at most max_in_flight in all), in the body's
        shape; a client that leaves cancels them, a cut answer is not billed."""
        slots = self.model["slots"]

        async def one(ids, kwargs):
            async with slots:
                return await runner.complete(ids, kwargs, call.deadline, cancelled)

        watcher = asyncio.create_task(_watch_disconnect(request, cancelled))
        try:
            try:
                generations = await asyncio.gather(*(one(ids, kwargs) for ids, kwargs in prepared))
            except Exception as err:  # noqa: BLE001  (the engine failed: say why, in the answer's shape)
                print(f"[serve] generation failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
                return _error(500, f"generation failed: {err}")
            if cancelled.is_set() and any(g.finish_reason == "cancelled" for g in generations):
                return _error(499, "client disconnected; generation cancelled")
            if any(g.finish_reason == "shutdown" for g in generations):  # a cut answer is not billed
                return _error(503, "the server is shutting down (SIGTERM) and cut the answer short; send the "
                                   "request again")
        finally:
            cancelled.set()
            watcher.cancel()
        headers = {METERING_HEADER: metering_header(self.unit, generations)}
        answers = [invocation.answer(generation) for (_, invocation), generation in zip(call.requests, generations)]
        if call.content_type == JSON:
            response = JSONResponse(answers[0], headers=headers)
        else:
            payload = "".join(json.dumps(answer, ensure_ascii=False) + "\n" for answer in answers)
            response = Response(payload, media_type=JSONLINES, headers=headers)
        if call.captured:
            self.capture.record(call.body, call.content_type, response.body, call.content_type)
        return response


def _answer_media(accept: str | None, first: Invocation, content_type: str) -> str | Response:
    """The answer's content type for the Accept header, or the 406 refusal."""
    if first.stream:
        offers = [EVENT_STREAM, JSONLINES] if first.schema == "chat" else [JSONLINES, EVENT_STREAM]
    else:
        offers = [content_type]
    media = accepted(accept, offers)
    if media is None and first.stream and accepted(accept, [JSON]):
        # The OpenAI SDK streams with Accept: application/json; OpenAI-compatible servers answer
        # with the stream all the same.
        media = offers[0]
    if media is None:
        return _error(406, f"cannot answer with Accept {accept!r}; this request is answered as {' or '.join(offers)}")
    return media


def _prepare_all(runner, call: _Call) -> list | str:
    """Every request rendered and tokenized (in a worker thread), or the first refusal's message."""
    prepared = []
    for number, invocation in call.requests:
        try:
            prepared.append(runner.prepare(invocation.messages, invocation.kwargs))
        except RequestError as err:
            return (f"line {number}: " if call.content_type == JSONLINES else "") + str(err)
    return prepared


async def _watch_disconnect(request: Request, cancelled: threading.Event) -> None:
    while not cancelled.is_set():
        if await request.is_disconnected():
            cancelled.set()
            return
        await asyncio.sleep(0.1)


class _ClosingStream(StreamingResponse):
    """A streamed answer whose chunks are closed when the response ends, however it ends: a client
    that leaves mid-stream cancels the generation and gets its capture now, not at garbage collection."""

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


async def _captured_stream(chunks, capture: DataCapture, body: bytes, content_type: str, media: str):
    """The chunks of a streamed answer, captured as one response once the stream has ended, also when the
    client left mid-stream (the metering header went out with the first chunk: what was billed is captured)."""
    sent = []
    try:
        async for chunk in chunks:
            sent.append(chunk)
            yield chunk
    finally:
        await chunks.aclose()
        capture.record(body, content_type, b"".join(c if isinstance(c, bytes) else c.encode("utf-8") for c in sent),
                       media)


async def _stream(runner, invocation: Invocation, ids: list[int], kwargs: dict, deadline: float,
                  cancelled: threading.Event, media: str, slots: asyncio.Semaphore):
    """The chunks of a streamed answer: server-sent events or JSON Lines.

    Chat requests get OpenAI's ``chat.completion.chunk`` objects (a role chunk, content
    deltas, a chunk with finish_reason, usage when asked, then ``[DONE]`` for SSE). Other
    requests get ``{"token": {"text": ...}}`` per piece and the whole answer last. Leaving
    mid-stream cancels the generation.
    """
    def frame(payload: dict | str) -> str:
        text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
        return f"data: {text}\n\n" if media == EVENT_STREAM else text + "\n"

    def chunk(delta: dict, finish_reason: str | None = None) -> dict:
        return {"id": invocation.completion_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": invocation.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    chat = invocation.schema == "chat"

    def frames_of(item: str | Generation) -> list[str]:
        if not isinstance(item, Generation):
            return [frame(chunk({"content": item}) if chat else {"token": {"text": item}})]
        if not chat:
            return [frame(invocation.answer(item))]
        if item.finish_reason == "shutdown":  # say why it ended: "length" would blame the request
            return [frame({"error": {"message": f"the server is shutting down (SIGTERM); the answer was cut after "
                                                f"{item.output_tokens} tokens: send the request again",
                                     "type": "server_shutdown", "code": 503}})]
        frames = [frame(chunk({}, chat_finish_reason(item.finish_reason)))]
        if invocation.include_usage:
            last = chunk({})
            last["choices"], last["usage"] = [], item.chat_usage()
            frames.append(frame(last))
        return frames

    try:
        async with slots:
            if chat:
                yield frame(chunk({"role": "assistant", "content": ""}))
            pieces = runner.generate(ids, kwargs, deadline, cancelled, stream=True)
            cut = False
            try:
                async for item in pieces:
                    cut = isinstance(item, Generation) and item.finish_reason == "shutdown"
                    for text in frames_of(item):
                        yield text
            finally:
                await pieces.aclose()
        if chat and media == EVENT_STREAM and not cut:
            yield frame("[DONE]")
    except Exception as err:  # noqa: BLE001  (the status line is gone; say it in the stream)
        print(f"[serve] streamed generation failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        yield frame({"error": f"generation failed: {type(err).__name__}: {err}"})
    finally:
        cancelled.set()


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
    try:
        port = env_number(PORT_ENV, 8080, kind=int, high=65535)
    except UserError as err:
        raise SystemExit(f"serve: {err}") from None
    print(f"[serve] listening on {host}:{port}, model dir {OptML.from_env().model_dir}", flush=True)
    app = create_app()

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # SIGTERM (SageMaker stopping the instance): stop generating now, not after the
            # longest request in flight; uvicorn then drains within SHUTDOWN_SECONDS.
            runner = app.state.model_state.get("runner")
            if runner is not None:
                runner.shutdown.set()
                threading.Thread(target=runner.close, name="backend-close", daemon=True).start()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=os.environ.get("HILT_SERVE_LOG_LEVEL", "warning"),
                            timeout_keep_alive=75, timeout_graceful_shutdown=SHUTDOWN_SECONDS)
    Server(config).run()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
