"""``serve``: the SageMaker inference contract, with Marketplace custom metering.

SageMaker starts the inference image with ``serve`` and talks to it over HTTP on port
8080 (``SAGEMAKER_BIND_TO_PORT`` overrides): ``GET /ping`` must answer 200 once the
model is ready, ``POST /invocations`` gets the requests. The model is read from
/opt/ml/model (under ``SAGEMAKER_BASE_DIR``) and nothing else: Marketplace runs the
container with network isolation, so hub access is switched off before anything loads.

Requests (per-request options live in the body: behind SageMaker only Content-Type,
Accept and X-Amzn-SageMaker-Custom-Attributes reach the container):

- ``application/json``: ``{"inputs": str | [messages], "parameters": {...}}`` ->
  ``{"generated_text": str, "usage": {"input_tokens": n, "output_tokens": m}}``
- ``application/jsonlines``: one such request per line (batch transform with
  ``SplitType=Line``) -> one result line per input line, in order.

Every success carries ``X-Amzn-Inference-Metering: {"Dimension": "inference.count",
"ConsumedUnits": N}``; N comes from the unit in ``HILT_METERING_UNIT``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse, Response  # noqa: E402
from starlette.concurrency import run_in_threadpool  # noqa: E402

from training.opt_ml import OptML  # noqa: E402  (after the offline switches)

HOST_ENV = "HILT_SERVE_HOST"
PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
METERING_ENV = "HILT_METERING_UNIT"
METERING_HEADER = "X-Amzn-Inference-Metering"
METERING_DIMENSION = "inference.count"
METERING_UNITS = ("invocation", "output_tokens", "total_tokens", "per_1k_tokens")
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker real-time invocation limit
MAX_NEW_TOKENS_LIMIT = 4096
JSON = "application/json"
JSONLINES = "application/jsonlines"
ALLOWED_KEYS = {"inputs", "parameters"}
ALLOWED_PARAMETERS = {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "seed",
                      "truncate"}
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed
# SageMaker real-time answers within 60 s; a generation stops (with what it has) before that.
BUDGET_ENV = "HILT_GENERATION_TIMEOUT"
DEFAULT_BUDGET_SECONDS = 55.0
# SIGTERM: in-flight generations are cancelled and the server exits within this many seconds.
SHUTDOWN_SECONDS = 3


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and this message."""


def _check_text(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(f"{where} holds a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not text")


@dataclass(frozen=True)
class Generation:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str = "stop"  # stop | length | time_limit | cancelled

    def as_json(self) -> dict:
        return {"generated_text": self.text, "finish_reason": self.finish_reason,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}


def metering_units(unit: str, generations: list[Generation]) -> int:
    """ConsumedUnits for one invocation, as an integer."""
    out = sum(g.output_tokens for g in generations)
    total = out + sum(g.input_tokens for g in generations)
    if unit == "invocation":
        return 1
    if unit == "output_tokens":
        return out
    if unit == "total_tokens":
        return total
    return math.ceil(total / 1000)


def metering_header(unit: str, generations: list[Generation]) -> str:
    return json.dumps({"Dimension": METERING_DIMENSION, "ConsumedUnits": metering_units(unit, generations)})


def parse_request(payload: Any) -> tuple[list[dict], dict[str, Any]]:
    """Validate one request body; return (messages, generation kwargs)."""
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError('body must be a JSON object with "inputs" (a string or a list of messages)')
    unknown_keys = sorted(set(payload) - ALLOWED_KEYS)
    if unknown_keys:
        raise RequestError(f"unknown key(s) {unknown_keys} in the body; allowed: {sorted(ALLOWED_KEYS)} "
                           '(generation options go inside "parameters")')
    inputs = payload["inputs"]
    if isinstance(inputs, str):
        if not inputs.strip():
            raise RequestError('"inputs" is empty')
        _check_text(inputs, '"inputs"')
        messages = [{"role": "user", "content": inputs}]
    elif isinstance(inputs, list) and inputs and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in inputs
    ):
        messages = [{"role": m["role"], "content": m["content"]} for m in inputs]
        for index, message in enumerate(messages):
            _check_text(message["content"], f'"inputs"[{index}].content')
    else:
        raise RequestError('"inputs" must be a string or a non-empty list of {"role", "content"} messages')
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError('"parameters" must be an object')
    unknown = sorted(set(params) - ALLOWED_PARAMETERS)
    if unknown:
        raise RequestError(f"unknown parameter(s) {unknown}; allowed: {sorted(ALLOWED_PARAMETERS)}")
    kwargs: dict[str, Any] = {"max_new_tokens": 64, "do_sample": False}
    if "max_new_tokens" in params:
        value = params["max_new_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
            raise RequestError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]")
        kwargs["max_new_tokens"] = value
    for name, low, high in (("temperature", 0.0, 100.0), ("top_p", 0.0, 1.0), ("repetition_penalty", 0.0, 100.0)):
        if name in params:
            value = params[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise RequestError(f"{name} must be a number in [{low}, {high}]")
            kwargs[name] = float(value)
    if "top_k" in params:
        if not isinstance(params["top_k"], int) or params["top_k"] < 1:
            raise RequestError("top_k must be a positive integer")
        kwargs["top_k"] = params["top_k"]
    if "do_sample" in params:
        if not isinstance(params["do_sample"], bool):
            raise RequestError("do_sample must be true or false")
        kwargs["do_sample"] = params["do_sample"]
    elif kwargs.get("temperature", 0.0) > 0:
        kwargs["do_sample"] = True
    if kwargs.get("temperature") == 0.0:
        kwargs.pop("temperature")
        kwargs["do_sample"] = False
    if "seed" in params:
        seed = params["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
            raise RequestError(f"seed must be an integer in [0, {SEED_MAX}]")
        kwargs["seed"] = seed
    if "truncate" in params:
        keep = params["truncate"]
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise RequestError("truncate must be a positive integer: keep only the last N input tokens")
        kwargs["truncate"] = keep
    return messages, kwargs


def parse_body(body: bytes, content_type: str) -> list[tuple[int, list[dict], dict[str, Any]]]:
    """Every request in a body as (line number, messages, kwargs): one for JSON, one per
    non-blank line for JSON Lines (numbered as in the body, blank lines counted).

    Raises:
        RequestError: naming the line (JSON Lines) and what is wrong.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"body is not UTF-8 (byte offset {err.start})") from None
    if content_type == JSON:
        return [(1, *parse_request(_loads(text, "body")))]
    requests = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                requests.append((number, *parse_request(_loads(line, f"line {number}"))))
            except RequestError as err:
                message = str(err)
                raise RequestError(message if message.startswith("line ") else f"line {number}: {message}") from None
    if not requests:
        raise RequestError("empty JSON Lines body")
    return requests


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RequestError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise RequestError(f"{where}: JSON nested too deeply") from None


class _Cancelled:
    """A transformers StoppingCriteria: stop when the client left or the server is stopping."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class ModelRunner:
    """The model and tokenizer of /opt/ml/model; one generation at a time."""

    def __init__(self, model_dir):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.model.eval()
        self.lock = threading.Lock()
        self.context = self._context_length()
        self.shutdown = threading.Event()

    def _context_length(self) -> int:
        """Tokens the model can attend over: its position limit (or the tokenizer's, if smaller)."""
        config = self.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 4096
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
            limit = tokenizer_limit
        return int(limit)

    def encode(self, messages: list[dict], truncate: int | None):
        """Input ids for a request, refused (400) when longer than the model's context.

        A body can be 6 MB; rendering and tokenizing that is cheap next to attending over
        it, but even that is skipped when the text is far longer than any context.
        """
        chars = sum(len(m["content"]) for m in messages)
        if truncate is None and chars > self.context * 64:
            raise RequestError(f"input of {chars} characters is far over the model's context of {self.context} "
                               'tokens; shorten it, or set parameters.truncate to keep only the last N tokens')
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
        else:
            ids = self.tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt")["input_ids"]
        if truncate is not None:
            ids = ids[:, -min(truncate, self.context - 1):]
        if ids.shape[1] >= self.context:
            raise RequestError(f"input is {ids.shape[1]} tokens; the model's context is {self.context} tokens "
                               "(prompt plus answer); shorten it, or set parameters.truncate to keep only the "
                               "last N tokens")
        return ids

    def generate(self, messages: list[dict], kwargs: dict[str, Any], budget_s: float | None = None,
                 cancelled: threading.Event | None = None) -> Generation:
        """One answer; stops early at the wall-clock budget, a disconnect or shutdown.

        Raises:
            RequestError: when the input does not fit the model's context.
        """
        import torch
        from transformers import StoppingCriteriaList

        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", None)
        ids = self.encode(messages, kwargs.pop("truncate", None)).to(self.model.device)
        # Never generate past the context: the model's positions end there.
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], self.context - ids.shape[1])
        events = [self.shutdown] + ([cancelled] if cancelled is not None else [])
        started = time.monotonic()
        with self.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            remaining = None if budget_s is None else budget_s - (time.monotonic() - started)
            if remaining is not None and remaining <= 0:
                return Generation("", int(ids.shape[1]), 0, "time_limit")
            output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                         stopping_criteria=StoppingCriteriaList([_Cancelled(*events)]),
                                         max_time=remaining, **kwargs)
        new = output[0, ids.shape[1]:]
        eos = self.tokenizer.eos_token_id
        n_out = len(new)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        # The end-of-turn token is generated but is not part of the answer the user pays for.
        ended = bool(n_out and eos is not None and int(new[-1]) == eos)
        if ended:
            n_out -= 1
        if ended:
            reason = "stop"
        elif any(e.is_set() for e in events):
            reason = "cancelled"
            print(f"[serve] generation cancelled after {len(new)} tokens "
                  f"({'shutting down' if self.shutdown.is_set() else 'client disconnected'})", flush=True)
        elif len(new) >= kwargs["max_new_tokens"]:
            reason = "length"
        elif remaining is not None and time.monotonic() - started >= remaining:
            reason = "time_limit"
        else:
            reason = "stop"
        return Generation(text=text.strip(), input_tokens=int(ids.shape[1]), output_tokens=n_out,
                          finish_reason=reason)


def create_app(model_dir=None, metering_unit: str | None = None):
    """The FastAPI app; the model loads in a background thread (``/ping`` is 503 until then)."""
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
