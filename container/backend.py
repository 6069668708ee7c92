"""The generation backends of ``serve``, behind one seam.

A backend turns a request (prompt token ids and generation options) into an async stream
of text pieces that ends with a :class:`~hilt.serving.contract.Generation`. The HTTP app
knows nothing else about it. ``HILT_SERVE_BACKEND`` picks one:

- ``hf`` (default): transformers' continuous-batching manager. Concurrent requests, and the
  lines of a JSON Lines request, are generated together in one paged-attention batch that
  admits new requests while others run. Greedy requests go there; a request that samples,
  sets a seed or a repetition penalty runs in the exact lane (below) while the batch pauses,
  because the manager shares one random stream across requests and cannot honour a seed.
- ``hf-serial``: the exact lane alone, ``model.generate`` one request at a time. What serve
  did before batching; kept as the baseline the benchmark compares against.
- ``vllm``: vLLM generates, in an engine process of its own (its own Python environment:
  vLLM pins a transformers older than hilt's), fronted by this server as AWS's LMI containers
  front theirs. See :mod:`hilt.serving.vllm_backend`.

Every generation is bounded: by the model's context (longer inputs are refused or, when the
request asks, truncated), by the invocation's wall-clock budget, by the client leaving and
by the server shutting down. Stop sequences end it early; the text is cut before them.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from hilt.core.errors import UserError
from hilt.serving.contract import Generation, RequestError

BACKEND_ENV = "HILT_SERVE_BACKEND"
BACKENDS = {
    "hf": "hilt.serving.backend:ContinuousBackend",
    "hf-serial": "hilt.serving.backend:SerialBackend",
    "vllm": "hilt.serving.vllm_backend:VLLMBackend",
}
BACKEND_NAMES = tuple(BACKENDS)
DEFAULT_BACKEND = "hf"
# The paged KV cache of the continuous batch. On a GPU transformers sizes it from free memory;
# on a CPU it would take most of the machine's RAM, so it gets a token budget instead.
KV_CACHE_TOKENS_ENV = "HILT_KV_CACHE_TOKENS"
DEFAULT_CPU_CACHE_SEQUENCES = 16  # sequences of full context the CPU cache holds
# How often a waiting request checks for a disconnect, shutdown or its deadline.
POLL_SECONDS = 0.05


def backend_class(name: str | None = None):
    """The backend class ``HILT_SERVE_BACKEND`` names (``hf`` unless set)."""
    name = name or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise SystemExit(f"serve: {BACKEND_ENV}={name!r} is not one of {', '.join(BACKENDS)}")
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)


class TextStream:
    """Token ids in, text out: what a streamed client sees equals the final answer.

    The final answer is the decoded text cut before the first stop sequence and stripped.
    While tokens arrive, a piece is released only when later tokens cannot change it: held
    back are trailing whitespace (it may end the answer), an incomplete UTF-8 character and
    any tail that could be the start of a stop sequence.
    """

    def __init__(self, tokenizer, eos_ids: set[int], stop: list[str] | None, incremental: bool):
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.stop = stop or []
        self.incremental = incremental or bool(self.stop)
        self.tokens: list[int] = []
        self.ended = False  # an end-of-sequence token was generated
        self.stopped = False  # a stop sequence was generated
        self.text = ""
        self.decoded = -1  # how many tokens self.text was decoded from
        self.sent = 0

    def update(self, tokens: list[int]) -> str:
        """Take the tokens generated so far; return the new piece that is safe to send."""
        if self.ended or self.stopped:
            return ""
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                tokens = tokens[:index]
                self.ended = True
                break
        self.tokens = list(tokens)
        if not self.incremental:
            return ""
        self._decode()
        if self.stopped:
            return ""
        safe = self.text.lstrip()
        hold = len(safe) - len(safe.rstrip())
        if safe.endswith("\ufffd"):
            hold = max(hold, 1)
        for stop in self.stop:  # a tail that may grow into a stop sequence
            for size in range(min(len(stop) - 1, len(safe)), 0, -1):
                if safe.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        piece = safe[self.sent:len(safe) - hold]
        self.sent += len(piece)
        return piece

    def _decode(self) -> None:
        if self.decoded == len(self.tokens):
            return
        self.decoded = len(self.tokens)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        if cuts:
            text = text[:min(cuts)]
            self.stopped = True
        self.text = text

    @property
    def done(self) -> bool:
        return self.ended or self.stopped

    def finish(self) -> str:
        """The rest of the answer, once generation has ended."""
        self._decode()
        final = self.text.strip()
        piece = final[self.sent:]
        self.sent = len(final)
        return piece

    @property
    def answer(self) -> str:
        return self.text.strip()


class Backend:
    """The tokenizer and configs of /opt/ml/model, and what every backend shares: prompts are
    rendered, limited and tokenized here, whatever engine generates."""

    name = "base"
    # What GET /execution-parameters suggests to a batch transform: requests in flight at once.
    concurrent_transforms = 4

    def __init__(self, model_dir):
        self.model_dir = model_dir
        self.tokenizer, self.config, self.generation_config = self.load(model_dir)
        self.context = self._context_length()
        self.eos_ids = self._eos_ids()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.shutdown = threading.Event()
        self.exact_lock = threading.Lock()

    def load(self, model_dir):
        """(tokenizer, model config, generation config); a backend that generates in this process
        keeps the model as ``self.model``."""
        from hilt.training.evaluation.generation import load_model

        self.model, tokenizer = load_model(model_dir, require_chat_template=False)
        return tokenizer, self.model.config, self.model.generation_config

    def failure(self) -> str | None:
        """Why this backend can no longer generate (``/ping`` then answers 500), or None."""
        return None

    def _context_length(self) -> int:
        """Tokens the model can attend over: its position limit (or the tokenizer's, if smaller)."""
        config = self.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or 4096
        tokenizer_limit = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
            limit = tokenizer_limit
        return int(limit)

    def _eos_ids(self) -> set[int]:
        """Every token that ends an answer: the tokenizer's EOS and the generation config's
        (Llama 3 lists <|eot_id|> and <|end_of_text|>)."""
        ids: set[int] = set()
        config_eos = getattr(self.generation_config, "eos_token_id", None)
        for value in (self.tokenizer.eos_token_id, config_eos):
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, (list, tuple)):
                ids.update(int(v) for v in value)
        return ids or {0}

    def encode(self, messages: list[dict], truncate: int | None) -> list[int]:
        """Input ids for a request, refused (400) when longer than the model's context.

        A body can be 6 MB; rendering and tokenizing that is cheap next to attending over
        it, but even that is skipped when the text is far longer than any context.
        """
        chars = sum(len(m["content"]) for m in messages)
        if truncate is None and chars > self.context * 64:
            raise RequestError(f"input of {chars} characters is far over the model's context of {self.context} "
                               'tokens; shorten it, or set parameters.truncate to keep only the last N tokens')
        if self.tokenizer.chat_template:
            ids = list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                          return_dict=True)["input_ids"])
        else:
            ids = list(self.tokenizer("\n".join(m["content"] for m in messages))["input_ids"])
        if truncate is not None:
            ids = ids[-min(truncate, self.context - 1):]
        if len(ids) >= self.context:
            raise RequestError(f"input is {len(ids)} tokens; the model's context is {self.context} tokens "
                               "(prompt plus answer); shorten it, or set parameters.truncate to keep only the "
                               "last N tokens")
        return ids

    def close(self) -> None:
        self.shutdown.set()

    def prepare(self, messages: list[dict], kwargs: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """Prompt ids and generation options for a request, before anything is generated.

        Raises:
            RequestError: when the input does not fit the model's context.
        """
        kwargs = dict(kwargs)
        ids = self.encode(messages, kwargs.pop("truncate", None))
        # Never generate past the context: the model's positions end there.
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], self.context - len(ids))
        return ids, kwargs

    async def generate(self, ids: list[int], kwargs: dict[str, Any], deadline: float | None,
                       cancelled: threading.Event | None = None, stream: bool = False
                       ) -> AsyncIterator[str | Generation]:
        """Text pieces (only when ``stream``), then the :class:`Generation`, for a prepared request."""
        kwargs = dict(kwargs)
        text = TextStream(self.tokenizer, self.eos_ids, kwargs.pop("stop", None), incremental=stream)
        events = [self.shutdown] + ([cancelled] if cancelled is not None else [])
        async for tokens in self._tokens(ids, kwargs, deadline, events, text):
            piece = text.update(tokens)
            if piece and stream:
                yield piece
        piece = text.finish()
        if piece and stream:
            yield piece
        if text.done:
            reason = "stop"
        elif any(e.is_set() for e in events):
            reason = "shutdown" if self.shutdown.is_set() else "cancelled"
            print(f"[serve] generation cancelled after {len(text.tokens)} tokens "
                  f"({'shutting down' if self.shutdown.is_set() else 'client disconnected'})", flush=True)
        elif len(text.tokens) >= kwargs["max_new_tokens"]:
            reason = "length"
        elif deadline is not None and time.monotonic() >= deadline:
            reason = "time_limit"
        else:
            reason = "stop"
        yield Generation(text=text.answer, input_tokens=len(ids), output_tokens=len(text.tokens),
                         finish_reason=reason)

    async def complete(self, ids: list[int], kwargs: dict[str, Any], deadline: float | None,
                       cancelled: threading.Event | None = None) -> Generation:
        """The whole answer of a prepared request."""
        result = None
        async for item in self.generate(ids, kwargs, deadline, cancelled):
            result = item
        assert isinstance(result, Generation)
        return result

    def _tokens(self, ids: list[int], kwargs: dict, deadline: float | None, events: list[threading.Event],
                text: TextStream) -> AsyncIterator[list[int]]:
        """The tokens generated so far, after each step, until generation ends."""
        raise NotImplementedError

    # -- the exact lane: model.generate for one request ------------------------------------

    async def _exact(self, ids: list[int], kwargs: dict, deadline: float | None, events: list[threading.Event],
                     text: TextStream) -> AsyncIterator[list[int]]:
        """``model.generate`` in a worker thread, one request at a time, every option honoured."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        worker = threading.Thread(target=self._exact_worker, name="exact-lane", daemon=True,
                                  args=(ids, dict(kwargs), deadline, events + [stop], loop, queue))
        worker.start()
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                yield item
                if text.done:
                    stop.set()
        finally:
            stop.set()

    def _exact_worker(self, ids, kwargs, deadline, events, loop, queue) -> None:
        import torch
        from transformers import StoppingCriteriaList

        class Streamer:  # transformers' streamer protocol: put(prompt) first, then each new token
            def __init__(self):
                self.tokens: list[int] = []
                self.prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                self.tokens.extend(int(t) for t in value.reshape(-1).tolist())
                loop.call_soon_threadsafe(queue.put_nowait, list(self.tokens))

            def end(self):
                pass

        seed = kwargs.pop("seed", None)
        try:
            with self.exact_lock, self._exclusive(), torch.no_grad():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return
                if seed is not None:
                    torch.manual_seed(seed)
                input_ids = torch.tensor([ids], device=self.model.device)
                self.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                                    stopping_criteria=StoppingCriteriaList([_Cancelled(*events)]),
                                    streamer=Streamer(), max_time=remaining, **kwargs)
        except BaseException as err:  # noqa: BLE001  (handed to the request, which answers 500)
            loop.call_soon_threadsafe(queue.put_nowait, err)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    def _exclusive(self):
        """What the exact lane holds while it uses the model (nothing, when it is alone)."""
        import contextlib

        return contextlib.nullcontext()


class _Cancelled:
    """A transformers StoppingCriteria: stop when any of the events is set."""

    def __init__(self, *events: threading.Event):
        self.events = events

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        stop = any(e.is_set() for e in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


class SerialBackend(Backend):
    """One ``model.generate`` at a time: every request in the exact lane."""

    name = "hf-serial"
    concurrent_transforms = 1  # one generation at a time: more in flight only queue

    def _tokens(self, ids, kwargs, deadline, events, text):
        return bounded(self._exact(ids, kwargs, deadline, events, text), deadline, events)


class ContinuousBackend(Backend):
    """transformers' continuous batching for greedy requests, the exact lane for the rest."""

    name = "hf"

    def __init__(self, model_dir):
        super().__init__(model_dir)
        from transformers import GenerationConfig

        config = GenerationConfig(do_sample=False, max_new_tokens=64, eos_token_id=sorted(self.eos_ids),
                                  pad_token_id=self.pad_id)
        self.manager = self.model.init_continuous_batching(generation_config=config,
                                                           continuous_batching_config=self._cache_config())
        self.manager.start()
        self._warm_up()

    def _cache_config(self):
        """Bounded cache on a CPU (``HILT_KV_CACHE_TOKENS``, default 16 full contexts); on a
        GPU the manager's own sizing from free memory, unless the variable is set."""
        import torch
        from transformers import ContinuousBatchingConfig

        from hilt.core.env import env_number

        tokens = env_number(KV_CACHE_TOKENS_ENV, None, kind=int, wanted="a whole number of tokens",
                            hint=f"set at least the model's context, {self.context}")
        if tokens is None:
            if torch.cuda.is_available():
                return ContinuousBatchingConfig()
            tokens = DEFAULT_CPU_CACHE_SEQUENCES * min(self.context, 8192)
        page = ContinuousBatchingConfig().page_size
        if tokens < self.context:
            raise UserError(f"{KV_CACHE_TOKENS_ENV}={tokens} is below the model's context of {self.context} "
                            "tokens; one request could not fit: raise it")
        return ContinuousBatchingConfig(num_blocks=-(-tokens // page), max_batch_tokens=min(tokens, 4096))

    def _warm_up(self) -> None:
        """The first batch sizes the paged cache (seconds on a CPU); do it before /ping says ready."""
        request_id = self.manager.add_request([self.pad_id] * 4, request_id="warm-up", max_new_tokens=2)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            result = self.manager.get_result(request_id=request_id, timeout=1)
            if result is not None and result.is_finished():
                return
            if not self.manager.is_running():
                raise RuntimeError("the continuous-batching manager stopped while warming up")

    def failure(self) -> str | None:
        if not self.shutdown.is_set() and not self.manager.is_running():
            return "the continuous-batching manager stopped; restart the server"
        return None

    @staticmethod
    def batchable(kwargs: dict) -> bool:
        """Greedy, no seed, no repetition penalty: what the batch honours exactly."""
        return not kwargs.get("do_sample") and "seed" not in kwargs and "repetition_penalty" not in kwargs

    def _exclusive(self):
        return _Paused(self.manager, self.model)

    def close(self) -> None:
        super().close()
        try:
            self.manager.stop(block=True, timeout=5)
        except Exception:  # noqa: BLE001  (shutting down)
            pass

    def _tokens(self, ids, kwargs, deadline, events, text):
        if not self.batchable(kwargs):
            return bounded(self._exact(ids, kwargs, deadline, events, text), deadline, events)
        return bounded(self._batched(ids, kwargs, text), deadline, events)

    async def _batched(self, ids, kwargs, text) -> AsyncIterator[list[int]]:
        queue: asyncio.Queue = asyncio.Queue()
        request_id = f"r-{uuid.uuid4().hex}"
        self.manager.register_result_handler(request_id, queue.put_nowait)
        added = self.manager.add_request(ids, request_id=request_id, max_new_tokens=kwargs["max_new_tokens"],
                                         streaming=True, eos_token_id=sorted(self.eos_ids))
        if added is None:
            raise RuntimeError("the continuous-batching manager refused the request (it is stopping)")
        finished = False
        try:
            while True:
                output = await queue.get()
                if output.error:
                    raise RuntimeError(f"generation failed: {output.error}")
                finished = output.is_finished()
                yield list(output.generated_tokens)
                if finished or text.done:
                    return
        finally:
            if finished:
                with self.manager.output_router._lock:
                    self.manager.output_router.result_handlers.pop(request_id, None)
            else:
                # Outputs already on their way are dropped, not left in the manager's shared
                # queue; the handler removes itself with the request's last output.
                self.manager.register_result_handler(request_id, _drop)
                self.manager.cancel_request(request_id)


def _drop(_output) -> None:
    """The result handler of a request nobody waits for any more."""


class _Paused:
    """Hold the batch still while the exact lane uses the model, in the model's own attention."""

    def __init__(self, manager, model):
        self.manager, self.model = manager, model
        self.pause = None
        self.switched = None

    def __enter__(self):
        if self.manager.is_running():
            self.pause = self.manager.pause()
            self.pause.__enter__()
        original = getattr(self.manager, "_original_attn_impl", None)
        if original is not None:  # the manager switched to paged attention; generate needs the original
            self.switched = self.model.config._attn_implementation
            self.model.set_attn_implementation(original)
        return self

    def __exit__(self, *exc):
        if self.switched is not None:
            self.model.set_attn_implementation(self.switched)
        if self.pause is not None:
            self.pause.__exit__(*exc)
        return False


async def bounded(tokens: AsyncIterator[list[int]], deadline: float | None,
                   events: list[threading.Event]) -> AsyncIterator[list[int]]:
    """Pass the token lists through until the deadline passes or an event is set."""
    iterator = tokens.__aiter__()
    pending = None
    try:
        while True:
            if any(e.is_set() for e in events):
                return
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            wait = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - time.monotonic()))
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield item
            elif deadline is not None and time.monotonic() >= deadline:
                return
    finally:
        if pending is not None:
            pending.cancel()
            try:
                await pending
            except (asyncio.CancelledError, StopAsyncIteration, Exception):  # noqa: BLE001  (being dropped)
                pass
        await iterator.aclose()
