"""Attention over packed rows, one sequence at a time: what hilt trains with on sdpa.

hilt packs several conversations into each row (``hilt.training.packing``), with position ids
restarting at every conversation. With sdpa (every CPU, and GPUs without flash-attn)
transformers then builds a block-diagonal mask per row and attends over the whole row:
``row_length²`` work although a conversation only needs ``length²`` of it. Profiled on the
benchmark's CPU run (rows of 512 holding ~3.3 conversations), that masked attention was 31 %
of the step, against 17 % for TRL's unpacked, length-grouped batches.

Here each row is cut at its position-id resets into its sequences; sequences of similar
length from the whole batch are stacked (right-padded to the longest in their group) and
attended with sdpa's causal kernel and no mask at all: a causal query never sees the
right padding, and the padded outputs are dropped. The result equals the block-diagonal
masked attention (tested per architecture); the work is ``sum(length²) / 2``.

Registered with transformers as the attention implementation ``hilt_segments``, with a
mask function that builds no mask when the batch needs none (no padding mask, no cache);
anything else (generation with a cache, a padding mask) falls back to sdpa unchanged.
Not for sliding-window attention shorter than a row, nor for models that need eager
attention (soft-capping): ``hilt.training.build.resolve_attention`` decides.
"""

from __future__ import annotations

NAME = "hilt_segments"
# Segments are stacked in groups whose longest is at most this factor above the shortest,
# so right padding wastes little attention work; each group is one sdpa call per layer.
GROUP_SPREAD = 1.5
_plans: dict = {}


def _plan(position_ids):
    """Groups of sequences in a packed batch: [(gather index [n, L], valid [n, L], dest [m])].

    Cached for the forward pass: every layer gets the same ``position_ids`` tensor.
    """
    import torch

    key = (position_ids.data_ptr(), tuple(position_ids.shape), position_ids._version)
    cached = _plans.get(key)
    if cached is not None:
        return cached
    flat = position_ids.reshape(-1)
    total = flat.numel()
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or int(starts[0]) != 0:
        raise ValueError("hilt_segments attention: position_ids must start every row at 0")
    lengths = torch.diff(starts, append=torch.tensor([total], device=starts.device))
    order = torch.argsort(lengths, descending=True)
    starts_sorted, lengths_sorted = starts[order].tolist(), lengths[order].tolist()
    groups = []
    begin = 0
    while begin < len(lengths_sorted):
        longest = lengths_sorted[begin]
        end = begin + 1
        while end < len(lengths_sorted) and lengths_sorted[end] * GROUP_SPREAD >= longest:
            end += 1
        group_starts = torch.tensor(starts_sorted[begin:end], device=flat.device)
        group_lengths = torch.tensor(lengths_sorted[begin:end], device=flat.device)
        steps = torch.arange(longest, device=flat.device)
        valid = steps[None, :] < group_lengths[:, None]
        # Pads repeat the sequence's last token: finite values that only pad queries see.
        index = group_starts[:, None] + torch.minimum(steps[None, :], group_lengths[:, None] - 1)
        groups.append((index, valid, index[valid]))
        begin = end
    _plans.clear()  # one batch at a time
    _plans[key] = groups
    return groups


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, **kwargs):
    """transformers' attention-function signature: q, k, v are ``[batch, heads, length, dim]``;
    returns ``([batch, length, heads, dim], None)``."""
    import torch
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, heads, length, dim = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        # Generation with a cache or a padding mask (segment_mask built one): the usual sdpa path.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups_kv = query.shape[1] // key.shape[1]
    if groups_kv > 1:
        key, value = repeat_kv(key, groups_kv), repeat_kv(value, groups_kv)
    # [batch * length, heads, dim]: one token per row of the flat view.
    q = query.transpose(1, 2).reshape(batch * length, heads, dim)
    k = key.transpose(1, 2).reshape(batch * length, heads, dim)
    v = value.transpose(1, 2).reshape(batch * length, heads, dim)
    positions = position_ids.expand(batch, length) if position_ids.shape[0] != batch else position_ids
    pieces, destinations = [], []
    for index, valid, dest in _plan(positions):
        out = torch.nn.functional.scaled_dot_product_attention(
            q[index].transpose(1, 2), k[index].transpose(1, 2), v[index].transpose(1, 2),
            dropout_p=dropout if module.training else 0.0, is_causal=True, scale=scaling)
        pieces.append(out.transpose(1, 2)[valid])
        destinations.append(dest)
    order = torch.cat(destinations)
    gathered = torch.cat(pieces)
    output = gathered.new_zeros(batch * length, heads, dim).index_copy(0, order, gathered)
    return output.reshape(batch, length, heads, dim), None


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
