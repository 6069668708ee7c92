"""What a model's answers are scored with: exact match and ROUGE-L on text, and the held-out loss
of reference answers. ``evaluate`` (the task) and ``general`` (skills outside it) both score with
these; neither imports the other for them."""

from __future__ import annotations

import re

from hilt.core.errors import UserError

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_answer(text: str) -> str:
    """Whitespace collapsed and stripped: what exact match compares."""
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased word tokens (Lin, 2004; beta = 1)."""
    pred, ref = _WORD.findall(prediction.lower()), _WORD.findall(reference.lower())
    if not pred or not ref:
        return float(pred == ref)
    previous = [0] * (len(ref) + 1)
    for p in pred:
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if p == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def heldout_loss(model, tokenizer, records: list[dict], max_length: int = 1024, batch_size: int = 8) -> float:
    """Mean per-token NLL of each reference answer given its prompt (chat template applied)."""
    import torch

    from hilt.training.data.chat_masks import encode_conversation, end_of_turn

    # The answer's tokens are found the way training finds them (any chat template): its
    # content and end-of-turn token, not the template's text after it.
    eot = end_of_turn(tokenizer)
    rows = []
    for r in records:
        encoded = encode_conversation(tokenizer, [*r["prompt"], {"role": "assistant", "content": r["reference"]}],
                                      max_length, last_turn_only=True, eot=eot)
        labels = [t if bit else -100 for t, bit in zip(encoded.input_ids, encoded.mask)]
        if any(l != -100 for l in labels[1:]):
            rows.append((encoded.input_ids, labels))
    if not rows:
        raise UserError("no held-out record has answer tokens within the max length; raise eval max_length")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([i + [pad] * (width - len(i)) for i, _ in chunk], device=device)
        labels = torch.tensor([l + [-100] * (width - len(l)) for _, l in chunk], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)),
                                                shift_labels.reshape(-1), ignore_index=-100, reduction="sum")
        total_nll += float(nll)
        total_tokens += int((shift_labels != -100).sum())
    return total_nll / total_tokens
