"""The inference contract of ``serve``: request bodies, limits, answers and metering.

What a SageMaker endpoint (and a batch transform) sends and gets back, independent of the
HTTP server and of the model: request parsing and validation (JSON and JSON Lines), the
limits SageMaker sets, the answer shape, and Marketplace's custom-metering header. Pure
Python: importing it loads no model library and changes no environment, so packaging and
validation code can use its constants.

- ``application/json``: ``{"inputs": str | [messages], "parameters": {...}}`` ->
  ``{"generated_text": str, "finish_reason": str, "usage": {"input_tokens": n, "output_tokens": m}}``
- ``application/json`` with ``messages`` (the OpenAI chat-completions shape, as SageMaker's LMI
  containers accept it) -> a ``chat.completion`` object (choices, finish_reason, usage).
- ``application/jsonlines``: one such request per line -> one answer per line, in order.
- ``"stream": true`` (JSON only): the answer comes as chunks while it is generated, server-sent
  events (``text/event-stream``) or JSON Lines (``application/jsonlines``), per ``Accept``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

METERING_HEADER = "X-Amzn-Inference-Metering"
METERING_DIMENSION = "inference.count"
METERING_UNITS = ("invocation", "output_tokens", "total_tokens", "per_1k_tokens")
HARDWARE = ("cpu", "gpu")  # one Model Package per family (serving.marketplace.INSTANCE_TYPES)
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024  # SageMaker real-time invocation limit
MAX_BATCH_PAYLOAD_MB = 100  # SageMaker batch transform: MaxPayloadInMB is at most 100
MAX_NEW_TOKENS_LIMIT = 4096
JSON = "application/json"
JSONLINES = "application/jsonlines"
EVENT_STREAM = "text/event-stream"
ALLOWED_KEYS = {"inputs", "parameters", "stream"}
ALLOWED_PARAMETERS = {"max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "seed",
                      "truncate", "stop"}
# The chat-completions keys hilt honours; "model" and "user" are accepted and ignored (one model per endpoint).
CHAT_KEYS = {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "stream",
             "stream_options", "seed", "n", "user"}
MAX_STOP_SEQUENCES = 16
SEED_MAX = 2**63 - 1  # torch.manual_seed takes a 64-bit seed


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
    finish_reason: str = "stop"  # stop | length | time_limit | cancelled | shutdown

    def as_json(self) -> dict:
        return {"generated_text": self.text, "finish_reason": self.finish_reason,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}}

    def as_chat(self, completion_id: str, model: str) -> dict:
        """The OpenAI ``chat.completion`` object, as LMI answers a ``messages`` request."""
        return {"id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.text},
                             "finish_reason": chat_finish_reason(self.finish_reason)}],
                "usage": self.chat_usage()}

    def chat_usage(self) -> dict:
        return {"prompt_tokens": self.input_tokens, "completion_tokens": self.output_tokens,
                "total_tokens": self.input_tokens + self.output_tokens}


def chat_finish_reason(reason: str) -> str:
    """OpenAI's vocabulary has stop and length: a time limit or a cancel cut the answer short (length)."""
    return "stop" if reason == "stop" else "length"


@dataclass
class Invocation:
    """One request, whichever schema it came in: what to generate and how to answer."""

    messages: list[dict]
    kwargs: dict[str, Any]
    stream: bool = False
    schema: str = "generate"  # generate ({"inputs"}) | chat ({"messages"})
    model: str = "hilt"
    include_usage: bool = False  # chat streaming: a last chunk with usage (stream_options.include_usage)
    completion_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")

    def answer(self, generation: Generation) -> dict:
        """The whole answer in this request's schema."""
        if self.schema == "chat":
            return generation.as_chat(self.completion_id, self.model)
        return generation.as_json()


def metering_units(unit: str, generations: list[Generation]) -> int:
    """ConsumedUnits for one invocation, as an integer of at least 1: every billed 2xx is one
    inference at least, also an answer of zero tokens."""
    out = sum(g.output_tokens for g in generations)
    total = out + sum(g.input_tokens for g in generations)
    if unit == "invocation":
        return 1
    if unit == "output_tokens":
        return max(1, out)
    if unit == "total_tokens":
        return max(1, total)
    return max(1, math.ceil(total / 1000))


def metering_header(unit: str, generations: list[Generation]) -> str:
    return json.dumps({"Dimension": METERING_DIMENSION, "ConsumedUnits": metering_units(unit, generations)})


def streamed_metering_header(unit: str, input_tokens: int, max_new_tokens: int) -> str:
    """The header of a streamed answer. Headers leave before the first token, so the count is
    what is known then: one invocation, or the tokens the request reserved (its input plus
    its ``max_new_tokens``), which bounds what it can consume. The stream's last chunk
    carries the actual usage."""
    reserved = Generation("", input_tokens=input_tokens, output_tokens=max_new_tokens)
    return metering_header(unit, [reserved])


def _messages(inputs: Any, key: str) -> list[dict]:
    if isinstance(inputs, str):
        if not inputs.strip():
            raise RequestError(f'"{key}" is empty')
        _check_text(inputs, f'"{key}"')
        return [{"role": "user", "content": inputs}]
    if isinstance(inputs, list) and inputs and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in inputs
    ):
        messages = [{"role": m["role"], "content": m["content"]} for m in inputs]
        for index, message in enumerate(messages):
            _check_text(message["content"], f'"{key}"[{index}].content')
        return messages
    raise RequestError(f'"{key}" must be a string or a non-empty list of {{"role", "content"}} messages '
                       "(role system, user or assistant; content a string)")


def _stop(value: Any) -> list[str]:
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or not 1 <= len(stops) <= MAX_STOP_SEQUENCES
            or not all(isinstance(x, str) and x for x in stops)):
        raise RequestError(f"stop must be a non-empty string or a list of 1 to {MAX_STOP_SEQUENCES} of them")
    for stop in stops:
        _check_text(stop, "stop")
    return stops


def _generation_kwargs(params: dict) -> dict[str, Any]:
    """Generation options (the ``parameters`` of a request) checked and normalised."""
    kwargs: dict[str, Any] = {"max_new_tokens": 64, "do_sample": False}
    if "max_new_tokens" in params:
        value = params["max_new_tokens"]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_NEW_TOKENS_LIMIT:
            raise RequestError(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]")
        kwargs["max_new_tokens"] = value
    for name, low, high in (("temperature", 0.0, 100.0), ("top_p", 0.0, 1.0), ("repetition_penalty", 0.0, 100.0)):
        if name in params and params[name] is not None:
            value = params[name]
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
                raise RequestError(f"{name} must be a number in [{low}, {high}]")
            kwargs[name] = float(value)
    if "top_k" in params:
        if not isinstance(params["top_k"], int) or isinstance(params["top_k"], bool) or params["top_k"] < 1:
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
    if not kwargs["do_sample"]:  # greedy: sampling knobs have no effect, keep the request plain
        for name in ("temperature", "top_p", "top_k"):
            kwargs.pop(name, None)
    if "seed" in params and params["seed"] is not None:
        seed = params["seed"]
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
            raise RequestError(f"seed must be an integer in [0, {SEED_MAX}]")
        kwargs["seed"] = seed
    if "truncate" in params:
        keep = params["truncate"]
        if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
            raise RequestError("truncate must be a positive integer: keep only the last N input tokens")
        kwargs["truncate"] = keep
    if "stop" in params and params["stop"] is not None:
        kwargs["stop"] = _stop(params["stop"])
    return kwargs


def _stream_flag(payload: dict) -> bool:
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError('"stream" must be true or false')
    return stream


def parse_request(payload: Any) -> tuple[list[dict], dict[str, Any]]:
    """Validate one ``{"inputs", "parameters"}`` body; return (messages, generation kwargs)."""
    invocation = parse_invocation(payload)
    return invocation.messages, invocation.kwargs


def parse_invocation(payload: Any) -> Invocation:
    """One request body, in either schema: ``{"inputs", "parameters", "stream"}`` or the chat
    shape ``{"messages", "max_tokens", ...}``."""
    if isinstance(payload, dict) and "messages" in payload and "inputs" not in payload:
        return _parse_chat(payload)
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise RequestError('body must be a JSON object with "inputs" (a string or a list of messages) '
                           'or with "messages" (the chat-completions shape)')
    unknown_keys = sorted(set(payload) - ALLOWED_KEYS)
    if unknown_keys:
        raise RequestError(f"unknown key(s) {unknown_keys} in the body; allowed: {sorted(ALLOWED_KEYS)} "
                           '(generation options go inside "parameters")')
    messages = _messages(payload["inputs"], "inputs")
    params = payload.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError('"parameters" must be an object')
    unknown = sorted(set(params) - ALLOWED_PARAMETERS)
    if unknown:
        raise RequestError(f"unknown parameter(s) {unknown}; allowed: {sorted(ALLOWED_PARAMETERS)}")
    return Invocation(messages, _generation_kwargs(params), stream=_stream_flag(payload))


def _parse_chat(payload: dict) -> Invocation:
    unknown = sorted(set(payload) - CHAT_KEYS)
    if unknown:
        raise RequestError(f"unknown key(s) {unknown} in a chat request; allowed: {sorted(CHAT_KEYS)}")
    if isinstance(payload["messages"], str):
        raise RequestError('"messages" must be a non-empty list of {"role", "content"} messages')
    messages = _messages(payload["messages"], "messages")
    n = payload.get("n", 1)
    if n != 1 or isinstance(n, bool):  # true == 1 in Python; it is not a count
        raise RequestError("n must be 1: one answer per request (send the request again for another)")
    params: dict[str, Any] = {}
    for ours, theirs in (("max_new_tokens", "max_completion_tokens"), ("max_new_tokens", "max_tokens"),
                         ("temperature", "temperature"), ("top_p", "top_p"), ("stop", "stop"), ("seed", "seed")):
        if payload.get(theirs) is not None and ours not in params:
            params[ours] = payload[theirs]
    try:
        kwargs = _generation_kwargs(params)
    except RequestError as err:  # name the chat key the client sent
        message = str(err)
        if message.startswith("max_new_tokens"):
            message = "max_tokens" + message[len("max_new_tokens"):]
        raise RequestError(message) from None
    # OpenAI samples at temperature 1 unless told otherwise; greedy only at temperature 0.
    if payload.get("temperature") is None and payload.get("top_p") is None:
        kwargs["do_sample"] = False  # hilt's chat default stays greedy, as its "inputs" default is
    options = payload.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise RequestError('"stream_options" must be an object with at most "include_usage"')
    model = payload.get("model") or "hilt"
    if not isinstance(model, str):
        raise RequestError('"model" must be a string')
    return Invocation(messages, kwargs, stream=_stream_flag(payload), schema="chat", model=model,
                      include_usage=bool(options.get("include_usage", False)))


def parse_body(body: bytes, content_type: str) -> list[tuple[int, Invocation]]:
    """Every request in a body as (line number, invocation): one for JSON, one per non-blank
    line for JSON Lines (numbered as in the body, blank lines counted).

    Raises:
        RequestError: naming the line (JSON Lines) and what is wrong.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"body is not UTF-8 (byte offset {err.start})") from None
    if content_type == JSON:
        return [(1, parse_invocation(_loads(text, "body")))]
    requests = []
    for number, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                invocation = parse_invocation(_loads(line, f"line {number}"))
                if invocation.stream:
                    raise RequestError('"stream" is for one application/json request; a JSON Lines body is '
                                       "answered whole, one line per request")
            except RequestError as err:
                message = str(err)
                raise RequestError(message if message.startswith("line ") else f"line {number}: {message}") from None
            requests.append((number, invocation))
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
