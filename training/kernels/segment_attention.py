"""Attention over length-grouped batches, one sequence at a time: what hilt trains with on sdpa.

hilt packs conversations into rows (``hilt.training.data.packing``) to choose which share a
step; with sdpa (every CPU, and GPUs without flash-attn) transformers would then attend
over whole rows through a block-diagonal mask: ``row_length²`` work although a conversation
only needs ``length²`` of it. Profiled on the benchmark's CPU run (rows of 512 holding ~3.3
conversations), that masked attention was 31 % of the step, against 17 % for TRL's
unpacked, length-grouped batches.

So the collator (``hilt.training.data.packing.LengthGroupCollator``) lays a step's sequences
out as one row of *length groups*: sequences of similar length side by side, each
right-padded to its group's longest, position ids restarting at every sequence (and running
on through its padding). A group is then a contiguous ``[n, longest]`` block of tokens and
is attended with sdpa's causal kernel and no mask at all: a causal query never sees the
right padding, and the padding carries no loss. The result equals the block-diagonal
masked attention and each sequence alone (tested per architecture); the work is
``sum(longest²) / 2`` per group, with no gathers: the blocks are views of q, k and v,
split once and their outputs joined once (autograd's backward of a split is one ``cat``).

Here a group is read from the position ids alone: a run of consecutive sequences of equal
length. That is exact for any packed layout; it is fast for the collator's.

Registered with transformers as the attention implementation ``hilt_segments``, with a
mask function that builds no mask when the batch needs none (no padding mask, no cache);
anything else (generation with a cache, a padding mask) falls back to sdpa unchanged.
Not for sliding-window attention shorter than a row, nor for models that need eager
attention (soft-capping): ``hilt.training.trainers.build.resolve_attention`` decides.
"""

from __future__ import annotations

NAME = "hilt_segments"
_plans: dict = {}


def _plan(position_ids) -> list[tuple[int, int]]:
    """``(sequences, length)`` of each run of equal-length sequences, in token order; cached
    for the forward pass: every layer gets the same ``position_ids`` tensor."""
    import torch

    key = (position_ids.data_ptr(), tuple(position_ids.shape), position_ids._version)
    cached = _plans.get(key)
    if cached is not None:
        return cached
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("hilt_segments attention: position_ids must start every row at 0")
    lengths = torch.diff(starts, append=torch.tensor([flat.numel()], device=starts.device))
    runs, counts = torch.unique_consecutive(lengths, return_counts=True)
    groups = list(zip(counts.tolist(), runs.tolist()))
    _plans.clear()  # one batch at a time
    _plans[key] = groups
    return groups


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, **kwargs):
    """transformers' attention-function signature: q, k, v are ``[batch, heads, length, dim]``;
    returns ``([batch, length, heads, dim], None)``."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, length, dim = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        # Generation with a cache or a padding mask (segment_mask built one): the usual sdpa path.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    positions = position_ids.expand(batch, length) if position_ids.shape[0] != batch else position_ids
    groups = _plan(positions)
    dropout = dropout if module.training else 0.0
    sizes = [n * longest for n, longest in groups]
    # Token-major [tokens, heads, dim] views (the projections' layout), split into the groups'
    # blocks; each block is [n, heads, longest, dim] for sdpa. Grouped-query attention stays
    # grouped (enable_gqa): no copy of k and v per query head, no sum of their gradients back.
    blocks = [torch.split(t.transpose(1, 2).reshape(batch * length, t.shape[1], dim), sizes)
              for t in (query, key, value)]
    outputs = []
    for (n, longest), q, k, v in zip(groups, *blocks):
        q, k, v = (t.view(n, longest, t.shape[1], dim).transpose(1, 2) for t in (q, k, v))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True,
                                                               scale=scaling, enable_gqa=k.shape[1] != heads)
        outputs.append(out.transpose(1, 2).reshape(n * longest, heads, dim))
    return torch.cat(outputs).view(batch, length, heads, dim), None


def segment_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None, attention_mask=None,
                 **kwargs):
    """No mask when attention needs none (every token real, no cache): the sequences are
    read from the position ids. Otherwise sdpa's mask."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    no_padding = attention_mask is None or bool(attention_mask.all())
    if q_length == kv_length and q_offset == 0 and kv_offset == 0 and no_padding:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset,
                     mask_function=mask_function or causal_mask_function, attention_mask=attention_mask, **kwargs)


def register() -> str:
    """Make ``hilt_segments`` an attention implementation transformers can load a model with."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, segment_mask)
    return NAME
