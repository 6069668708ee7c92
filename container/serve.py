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

import json
import math
import os
import sys
import threading
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
ALLOWED_PARAMETERS = {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "seed"}


class RequestError(ValueError):
    """A bad request: answered with HTTP 400 and this message."""


@dataclass(frozen=True)
class Generation:
    text: str
    input_tokens: int
    output_tokens: int

    def as_json(self) -> dict:
        return {"generated_text": self.text,
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
    inputs = payload["inputs"]
    if isinstance(inputs, str):
        if not inputs.strip():
            raise RequestError('"inputs" is empty')
        messages = [{"role": "user", "content": inputs}]
    elif isinstance(inputs, list) and inputs and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in inputs
    ):
        messages = inputs
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
        if not isinstance(params["seed"], int):
            raise RequestError("seed must be an integer")
        kwargs["seed"] = params["seed"]
    return messages, kwargs


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

    def generate(self, messages: list[dict], kwargs: dict[str, Any]) -> Generation:
        import torch

        kwargs = dict(kwargs)
        seed = kwargs.pop("seed", None)
        if self.tokenizer.chat_template:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                                     return_dict=True)["input_ids"]
        else:
            ids = self.tokenizer("\n".join(m["content"] for m in messages), return_tensors="pt")["input_ids"]
        ids = ids.to(self.model.device)
        with self.lock, torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
                                         **kwargs)
        new = output[0, ids.shape[1]:]
        eos = self.tokenizer.eos_token_id
        n_out = len(new)
        text = self.tokenizer.decode(new, skip_special_tokens=True)
        # The end-of-turn token is generated but is not part of the answer the user pays for.
        if n_out and eos is not None and int(new[-1]) == eos:
            n_out -= 1
        return Generation(text=text.strip(), input_tokens=int(ids.shape[1]), output_tokens=n_out)


def create_app(model_dir=None, metering_unit: str | None = None):
    """The FastAPI app; the model loads in a background thread (``/ping`` is 503 until then)."""
    unit = metering_unit or os.environ.get(METERING_ENV, "output_tokens")
    if unit not in METERING_UNITS:
        raise SystemExit(f"serve: {METERING_ENV}={unit!r} is not one of {', '.join(METERING_UNITS)}")
    model_dir = model_dir or OptML.from_env().model_dir
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
            text = body.decode("utf-8")
            if content_type == JSON:
                requests = [parse_request(json.loads(text))]
            else:
                lines = [line for line in text.splitlines() if line.strip()]
                if not lines:
                    raise RequestError("empty JSON Lines body")
                requests = [parse_request(json.loads(line)) for line in lines]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            return error(400, f"malformed JSON: {err}")
        except RequestError as err:
            return error(400, str(err))
        generations = [await run_in_threadpool(runner.generate, m, k) for m, k in requests]
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
    uvicorn.run(create_app(), host=host, port=port, log_level=os.environ.get("HILT_SERVE_LOG_LEVEL", "warning"),
                timeout_keep_alive=75)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
