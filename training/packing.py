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
attention costs ``batch x row^2``. The only padding is the short tail of the few rows
shorter than the batch's longest; it forms its own segment and carries no loss.
"""

from __future__ import annotations

from typing import Any

IGNORE = -100


def tokenize_conversations(dataset, tokenizer, max_length: int, assistant_only: bool):
    """Chat-template each record; keep ``input_ids`` and the 0/1 ``loss_mask``.

    Longer sequences are truncated to ``max_length`` (keeping the start), as TRL does.
    """

    def encode(record: dict) -> dict:
        encoded = tokenizer.apply_chat_template(
            record["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=assistant_only
        )
        ids = list(encoded["input_ids"])[:max_length]
        mask = list(encoded["assistant_masks"])[:max_length] if assistant_only else [1] * len(ids)
        return {"input_ids": ids, "loss_mask": mask}

    return dataset.map(encode, remove_columns=dataset.column_names, desc="tokenizing")


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
