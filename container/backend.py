"""The generation backend of ``serve``: the model of /opt/ml/model, one generation at a time.

Every generation is bounded: by the model's context (longer inputs are refused or, when the
request asks, truncated), by a wall-clock budget, by the client disconnecting, and by the
server shutting down.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from container.contract import Generation, RequestError

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
