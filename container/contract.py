"""The inference contract of ``serve``: request bodies, limits, answers and metering.

What a SageMaker endpoint (and a batch transform) sends and gets back, independent of the
HTTP server and of the model: request parsing and validation (JSON and JSON Lines), the
limits SageMaker sets, the answer shape, and Marketplace's custom-metering header. Pure
Python: importing it loads no model library and changes no environment, so packaging and
validation code can use its constants.

- ``application/json``: ``{"inputs": str | [messages], "parameters": {...}}`` ->
  ``{"generated_text": str, "finish_reason": str, "usage": {"input_tokens": n, "output_tokens": m}}``
- ``application/jsonlines``: one such request per line -> one answer per line, in order.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

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
