"""Packed rows for attention kernels without variable-length support (sdpa, eager).

TRL's padding-free packing flattens a whole batch into one row and relies on the
attention kernel to read sequence boundaries from ``cu_seq_lens``. Flash attention does
that; sdpa (CPU, and GPUs without flash-attn) does not, so the flattened row of
``batch x max_length`` tokens is attended as one block-masked square: attention cost
grows with the square of the *batch*, and on CPU a packed run measured 0.6x the speed
of no packing at all.

Here sequences are packed best-fit-decreasing into rows of at most ``max_length``
tokens, rows stay separate in the batch (``[batch, row]``), and position ids restart at
every sequence with no attention mask. transformers then builds a per-row
block-diagonal causal mask, so no token attends across a sequence boundary and
attention costs ``batch x row^2`` (eager: ``PackedRowCollator``). The only padding is the
short tail of the few rows shorter than the batch's longest; it forms its own segment and
carries no loss.

With hilt's segment attention (sdpa) the rows only choose which sequences share a step:
``LengthGroupCollator`` lays them out as one row of length groups, each a contiguous block of
similar-length sequences that ``hilt.training.kernels.segment_attention`` attends with a plain causal
kernel, ``sum(longest^2)`` work and no gathers.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100
# A length group's longest sequence is at most this factor above its shortest, so right
# padding adds ~1.6 % tokens on the benchmark's data (1.15: 2.7 %; 1.0: none, but twice the
# sdpa calls, each a small one).
GROUP_SPREAD = 1.1


def tokenize_conversations(dataset, tokenizer, max_length: int, assistant_only: bool, split: str = "train",
                           last_turn_only: bool = False):
    """Chat-template each record; keep ``input_ids`` and the 0/1 ``loss_mask``.

    The mask covers every assistant turn's content and its end-of-turn token, for any chat
    template (``hilt.training.data.chat_masks``). Longer sequences are truncated to ``max_length``
    (keeping the start), as TRL does.

    Raises:
        UserError: when records have nothing to learn (see ``check_learnable``).
    """
    from hilt.training.data.chat_masks import encode_conversation, end_of_turn, has_generation_markers

    needs_eot = assistant_only and (last_turn_only or not has_generation_markers(tokenizer))
    eot = end_of_turn(tokenizer) if needs_eot else None

    def encode(record: dict) -> dict:
        encoded = encode_conversation(tokenizer, record["messages"], max_length, assistant_only, last_turn_only, eot)
        answered = any(m["role"] == "assistant" and str(m["content"]).strip() and m.get("weight") != 0
                       for m in record["messages"])
        return {"input_ids": encoded.input_ids, "loss_mask": encoded.mask,
                "learnable_before_truncation": encoded.learnable_before_truncation if answered else -1}

    tokenized = dataset.map(encode, remove_columns=dataset.column_names, desc=f"tokenizing {split}")
    check_learnable(tokenized, split, max_length)
    return tokenized.remove_columns(["learnable_before_truncation"])


def check_learnable(tokenized, split: str, max_length: int) -> None:
    """Never train on nothing: every record must keep at least one token in the loss.

    Raises:
        UserError: naming how many records have nothing to learn and why: the chat
            template gives no assistant tokens, ``data.max_length`` cuts the answer off,
            or the answers are empty.
    """
    from hilt.core.errors import UserError

    empty = template = cut = 0
    learnable = 0
    for before, mask in zip(tokenized["learnable_before_truncation"], tokenized["loss_mask"]):
        kept = sum(mask)
        learnable += kept
        if kept:
            continue
        if before < 0:
            empty += 1
        elif before == 0:
            template += 1
        else:
            cut += 1
    if not (empty or template or cut):
        return
    causes = []
    if template:
        causes.append(f"{template} where the chat template marks no assistant tokens (check the template renders "
                      "each assistant message's content verbatim, or set data.assistant_only_loss=false)")
    if cut:
        causes.append(f"{cut} whose answer starts after token {max_length} (raise data.max_length or shorten them)")
    if empty:
        causes.append(f"{empty} with empty answers (re-export; empty answers are rejects)")
    total = len(tokenized)
    nothing = " - the run would learn nothing" if learnable == 0 else ""
    raise UserError(f"{split} data: {empty + template + cut} of {total} records have no tokens to learn{nothing}: "
                    + "; ".join(causes))


def pack_rows(dataset, max_length: int):
    """Best-fit-decreasing packing into rows of <= ``max_length`` tokens (adds ``seq_lengths``)."""
    from trl.data_utils import pack_dataset

    return pack_dataset(dataset, seq_length=max_length, strategy="bfd")


class PackedRowCollator:
    """Batch packed rows as ``[batch, longest row]`` with per-sequence position ids.

    Returns ``input_ids``, ``labels`` (``-100`` outside the loss, on padding and on
    each sequence's first token, so no sequence predicts the next one's start) and
    ``position_ids``; deliberately no ``attention_mask``, which would turn off
    transformers' packed-sequence masking.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids = torch.tensor(row["input_ids"], dtype=torch.long)
            n = len(ids)
            input_ids[i, :n] = ids
            lengths = list(row["seq_lengths"]) + ([width - n] if width > n else [])
            position_ids[i] = torch.cat([torch.arange(length) for length in lengths])
            keep = torch.tensor(row["loss_mask"], dtype=torch.bool)
            labels[i, :n] = torch.where(keep, ids, torch.tensor(IGNORE))
        labels[position_ids == 0] = IGNORE
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


class LengthGroupCollator:
    """Batch packed rows as one row of length groups, for ``hilt_segments`` attention.

    The rows decide which sequences share a step (as with :class:`PackedRowCollator`); their
    sequences are then sorted by length, cut into groups whose longest is at most
    ``GROUP_SPREAD`` times their shortest, and laid out group after group, each sequence
    right-padded to its group's longest: ``[1, tokens]`` where every group is a contiguous
    ``[n, longest]`` block (``hilt.training.kernels.segment_attention`` attends each block with a plain
    causal kernel, no gathers). Position ids restart at every sequence and run on through its
    padding; ``labels`` are ``-100`` outside the loss, on padding and on each sequence's first
    token. No ``attention_mask``.
    """

    def __init__(self, pad_token_id: int, spread: float = GROUP_SPREAD):
        self.pad_token_id = pad_token_id
        self.spread = spread

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        sequences = []
        for row in rows:
            offset = 0
            for length in row["seq_lengths"]:
                end = offset + length
                sequences.append((row["input_ids"][offset:end], row["loss_mask"][offset:end]))
                offset = end
        sequences.sort(key=lambda s: len(s[0]), reverse=True)
        input_ids, labels, positions = [], [], []
        begin = 0
        while begin < len(sequences):
            longest = len(sequences[begin][0])
            end = begin + 1
            while end < len(sequences) and len(sequences[end][0]) * self.spread >= longest:
                end += 1
            for ids, mask in sequences[begin:end]:
                pad = longest - len(ids)
                input_ids += list(ids) + [self.pad_token_id] * pad
                labels += [IGNORE] + [t if keep else IGNORE for t, keep in zip(ids[1:], mask[1:])] + [IGNORE] * pad
                positions += range(longest)
            begin = end
        return {"input_ids": torch.tensor([input_ids]), "labels": torch.tensor([labels]),
                "position_ids": torch.tensor([positions])}
