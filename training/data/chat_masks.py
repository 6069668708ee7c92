"""Which tokens of a conversation an SFT run learns: the assistant turns, for any chat template.

transformers computes an assistant mask only from ``{% generation %}`` markers, and the
templates real models ship (Llama 3, Mistral, Gemma, Phi-3, Qwen) have none: the mask
comes back all zeros and a run trains on nothing. Here the mask comes from the rendered
text instead, the way axolotl's chat-template strategy gets there:

1. render the whole conversation with the model's own template;
2. find each assistant turn's content in it, searching from where the template's prefix up
   to that turn ends (so a user who quotes the answer does not move it), and extend the
   span over the turn's end-of-turn marker (what the template writes right after an
   assistant message: ``<|eot_id|>``, ``<end_of_turn>``, ``</s>``, ``<|im_end|>``, ``<|end|>``),
   never over the next turn's header;
3. tokenize the text once with offsets and mark every token that overlaps a span.

This holds for templates that merge the system prompt into the first user turn, rename
roles (``model``), add a BOS, trim content, or put the end-of-turn token after the
content. Templates with markers take transformers' own path (the fast path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hilt.core.errors import UserError

_SENTINEL = "hilt-sentinel-7f3a"
_MARKERS = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass(frozen=True)
class Encoded:
    """One conversation as token ids, the 0/1 loss mask, and whether truncation cut the answer."""

    input_ids: list[int]
    mask: list[int]
    learnable_before_truncation: int


def has_generation_markers(tokenizer) -> bool:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    return bool(template) and _MARKERS.search(template) is not None


def end_of_turn(tokenizer) -> str:
    """What the template writes right after an assistant message's content (whitespace dropped).

    The text after an answer is the end-of-turn marker followed either by the next turn's
    header or by whatever ends a conversation (Phi-3 adds its EOS there): what both
    renderings share is the marker.
    """
    _require_fast(tokenizer)
    user, answer, later = {"role": "user", "content": "u"}, {"role": "assistant", "content": _SENTINEL}, \
        {"role": "user", "content": _SENTINEL + "-next"}
    last = _render(tokenizer, [user, answer])
    last = last[last.find(_SENTINEL) + len(_SENTINEL):]
    try:
        middle = _render(tokenizer, [user, answer, later])
        middle = middle[middle.find(_SENTINEL) + len(_SENTINEL):]
    except Exception:  # noqa: BLE001  (a template that refuses a trailing user turn)
        return last.strip()
    # Compare tokens, not characters: "<|end|>\n<|user|>" and "<|end|>\n<|end|>" share the
    # characters "<|end|>\n<|" but only the tokens "<|end|>", "\n".
    a = tokenizer(last, add_special_tokens=False, return_offsets_mapping=True)
    b = tokenizer(middle, add_special_tokens=False)["input_ids"]
    end = 0
    for index, (token, (_, stop)) in enumerate(zip(a["input_ids"], a["offset_mapping"])):
        if index >= len(b) or b[index] != token:
            break
        end = stop
    return last[:end].strip()


def _require_fast(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(f"{type(tokenizer).__name__} is a slow tokenizer (no character offsets), so assistant "
                        "tokens cannot be found; save the model with its fast tokenizer (tokenizer.json) or set "
                        "data.assistant_only_loss=false")


def _render(tokenizer, messages: list[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def assistant_spans(tokenizer, messages: list[dict], text: str, eot: str, last_turn_only: bool = False
                    ) -> list[tuple[int, int]]:
    """Character spans of the assistant turns (content plus end-of-turn marker) in ``text``."""
    spans: list[tuple[int, int]] = []
    cursor = 0
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for index in turns:
        content = str(messages[index]["content"]).strip()
        start = cursor
        try:
            prefix = _render(tokenizer, messages[:index], add_generation_prompt=True) if index else ""
        except Exception:  # noqa: BLE001  (templates may refuse a partial conversation)
            prefix = ""
        if prefix and text.startswith(prefix) and len(prefix) >= cursor:
            start = len(prefix)
        if not content:
            continue
        found = text.find(content, start)
        if found < 0:
            continue  # the template rewrote the content: nothing can be attributed to this turn
        end = found + len(content)
        rest = text[end:]
        if eot and rest.lstrip(" \t\n").startswith(eot):
            end += len(rest) - len(rest.lstrip(" \t\n")) + len(eot)
        if messages[index].get("weight") != 0:  # OpenAI's weight 0: the turn is context, not learned
            spans.append((found, end))
        cursor = end
    if last_turn_only and spans:
        spans = spans[-1:]
    return spans


def encode_conversation(tokenizer, messages: list[dict], max_length: int, assistant_only: bool = True,
                        last_turn_only: bool = False, eot: str | None = None) -> Encoded:
    """Token ids and loss mask of one conversation, truncated to ``max_length`` (keeping the start).

    Raises:
        UserError: when the tokenizer cannot give character offsets (a slow tokenizer).
    """
    if not assistant_only:
        ids = list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        return Encoded(ids[:max_length], [1] * min(len(ids), max_length), len(ids))
    weighted = any(m.get("weight") == 0 for m in messages)
    if has_generation_markers(tokenizer) and not last_turn_only and not weighted:
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
        ids, mask = list(encoded["input_ids"]), list(encoded["assistant_masks"])
    else:
        _require_fast(tokenizer)
        text = _render(tokenizer, messages)
        eot = end_of_turn(tokenizer) if eot is None else eot
        spans = assistant_spans(tokenizer, messages, text, eot, last_turn_only)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(encoded["input_ids"])
        mask = [0] * len(ids)
        for position, (lo, hi) in enumerate(encoded["offset_mapping"]):
            if hi > lo and any(lo < end and hi > start for start, end in spans):
                mask[position] = 1
    return Encoded(ids[:max_length], mask[:max_length], sum(mask))
