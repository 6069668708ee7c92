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

On CPU the whole layer's attention is one autograd function (``SegmentAttention``): q, k and
v are copied once into a token-major ``[tokens, 3, heads, dim]`` tensor, each group gathers
its slots with one ``index_select`` and writes its outputs back with one ``index_copy_``;
backward gathers the output gradient the same way (zero on pads, so pads add nothing to
the keys and values they attend), calls sdpa's CPU flash backward and scatters the three
gradients back at once. The generic path (autograd through indexing and sdpa) made every
group's backward a zero-fill plus an accumulating ``index_put_`` per tensor: ~7 % of a step.
Groups are tight (``GROUP_SPREAD``): at 1.5 the padded attention work was 27 % above the
exact ``sum(length²)`` on the benchmark's data, at 1.15 it is 5 %, for ~9 sdpa calls per
layer instead of ~5.

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
GROUP_SPREAD = 1.15
_plans: dict = {}


class Group:
    """Sequences of similar length in a packed batch, stacked as ``[n, longest]``.

    ``index``: the flat token each slot reads (pads repeat the sequence's last token: finite
    values only pad queries see); ``pad``: which slots are pads; ``slots``: the non-pad slots,
    in the order of ``dest``, the flat tokens they are.
    """

    def __init__(self, starts, lengths, longest: int):
        import torch

        steps = torch.arange(longest, device=starts.device)
        valid = steps[None, :] < lengths[:, None]
        self.shape = (len(lengths), longest)
        self.index = (starts[:, None] + torch.minimum(steps[None, :], lengths[:, None] - 1)).flatten()
        self.pad = ~valid.flatten()
        self.slots = torch.nonzero(valid.flatten()).flatten()
        self.dest = self.index[self.slots]


def _plan(position_ids) -> list[Group]:
    """The groups of a packed batch, cached for the forward pass: every layer gets the same
    ``position_ids`` tensor."""
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
    starts, lengths = starts[order], lengths[order]
    sizes = lengths.tolist()
    groups = []
    begin = 0
    while begin < len(sizes):
        end = begin + 1
        while end < len(sizes) and sizes[end] * GROUP_SPREAD >= sizes[begin]:
            end += 1
        groups.append(Group(starts[begin:end], lengths[begin:end], sizes[begin]))
        begin = end
    _plans.clear()  # one batch at a time
    _plans[key] = groups
    return groups


def _cpu_function():
    import torch

    forward_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    backward_op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

    class SegmentAttention(torch.autograd.Function):
        """Causal attention per group on CPU, with one gather of q, k, v per group forward and
        one scatter of their gradients backward (sdpa's CPU flash kernels in between)."""

        @staticmethod
        def forward(ctx, qkv, groups, scale):
            # qkv: [tokens, 3, heads, dim], token-major; returns [tokens, heads, dim].
            tokens, _, heads, dim = qkv.shape
            out = qkv.new_empty(tokens, heads, dim)
            saved = []
            for group in groups:
                n, longest = group.shape
                g = qkv.index_select(0, group.index).view(n, longest, 3, heads, dim)
                q, k, v = (g[:, :, i].transpose(1, 2) for i in range(3))
                o, lse = forward_op(q, k, v, 0.0, True, scale=scale)
                out.index_copy_(0, group.dest, o.transpose(1, 2).reshape(n * longest, heads, dim)[group.slots])
                saved += [g, o, lse]
            ctx.groups, ctx.scale, ctx.shape = groups, scale, qkv.shape
            ctx.save_for_backward(*saved)
            return out

        @staticmethod
        def backward(ctx, grad_out):
            saved = ctx.saved_tensors
            heads, dim = ctx.shape[2:]
            grad_qkv = grad_out.new_empty(ctx.shape)
            for i, group in enumerate(ctx.groups):
                g, o, lse = saved[3 * i: 3 * i + 3]
                n, longest = group.shape
                # Pad queries' outputs were dropped: their gradient is zero, so they add nothing
                # to the keys and values they attended.
                grad = grad_out.index_select(0, group.index).masked_fill_(group.pad[:, None, None], 0)
                grad = grad.view(n, longest, heads, dim).transpose(1, 2)
                q, k, v = (g[:, :, j].transpose(1, 2) for j in range(3))
                dq, dk, dv = backward_op(grad, q, k, v, o, lse, 0.0, True, scale=ctx.scale)
                stacked = torch.stack([d.transpose(1, 2) for d in (dq, dk, dv)], dim=2)
                grad_qkv.index_copy_(0, group.dest, stacked.reshape(n * longest, 3, heads, dim)[group.slots])
            return grad_qkv, None, None

    return SegmentAttention


_CPU_FUNCTION = None


def segment_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                      position_ids=None, **kwargs):
    """transformers' attention-function signature: q, k, v are ``[batch, heads, length, dim]``;
    returns ``([batch, length, heads, dim], None)``."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    batch, heads, length, dim = query.shape
    if attention_mask is not None or position_ids is None or key.shape[2] != length:
        # Generation with a cache or a padding mask (segment_mask built one): the usual sdpa path.
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      position_ids=position_ids, **kwargs)
    groups_kv = query.shape[1] // key.shape[1]
    if groups_kv > 1:
        key, value = repeat_kv(key, groups_kv), repeat_kv(value, groups_kv)
    positions = position_ids.expand(batch, length) if position_ids.shape[0] != batch else position_ids
    groups = _plan(positions)
    dropout = dropout if module.training else 0.0
    attend = _attend_cpu if query.device.type == "cpu" and dropout == 0.0 else _attend_any
    return attend(query, key, value, groups, scaling, dropout).view(batch, length, heads, dim), None


def _attend_cpu(query, key, value, groups: list[Group], scaling, dropout: float = 0.0):
    """``[tokens, heads, dim]`` attention outputs through :class:`SegmentAttention` (CPU, no dropout)."""
    import torch

    global _CPU_FUNCTION
    if _CPU_FUNCTION is None:
        _CPU_FUNCTION = _cpu_function()
    batch, heads, length, dim = query.shape
    # One copy into token-major [tokens, 3, heads, dim]; each group then gathers once.
    qkv = torch.stack([t.transpose(1, 2) for t in (query, key, value)], dim=2).reshape(batch * length, 3, heads, dim)
    return _CPU_FUNCTION.apply(qkv, groups, scaling)


def _attend_any(query, key, value, groups: list[Group], scaling, dropout: float = 0.0):
    """The same through autograd over indexing and sdpa: any device, dropout included."""
    import torch

    batch, heads, length, dim = query.shape
    # [batch * length, heads, dim]: one token per row of the flat view.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
    pieces, destinations = [], []
    for group in groups:
        n, longest = group.shape
        out = torch.nn.functional.scaled_dot_product_attention(
            *(t[group.index].view(n, longest, heads, dim).transpose(1, 2) for t in (q, k, v)),
            dropout_p=dropout, is_causal=True, scale=scaling)
        pieces.append(out.transpose(1, 2).reshape(n * longest, heads, dim)[group.slots])
        destinations.append(group.dest)
    gathered = torch.cat(pieces)
    return gathered.new_zeros(batch * length, heads, dim).index_copy(0, torch.cat(destinations), gathered)


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
