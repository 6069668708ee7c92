"""Rotary position embedding as one autograd function per tensor: what hilt trains with where it can.

transformers' ``apply_rotary_pos_emb`` (Llama's, and the same code in Qwen 2/3, Mistral,
Gemma and others) computes ``x·cos + rotate_half(x)·sin``: two slices, a negation, a
``cat``, two multiplies and an add forward, and autograd replays each of them backward,
saving ``x`` for it. On the benchmark's CPU run that is ~6.4 ms a layer for q and k of a
4,190-token step.

Here it is one :class:`torch.autograd.Function` per tensor: ``x·cos`` then one ``addcmul``
into each half; backward is the transposed rotation the same way, and only ``cos`` and
``sin`` are saved (not ``x``). ~2.9 ms a layer. Same result to float rounding (tested per
architecture, gradients included).

:func:`install` replaces ``apply_rotary_pos_emb`` in the modeling module of each attention
class a model uses, where that function and its ``rotate_half`` are, bytecode for bytecode,
Llama's (families with partial or interleaved rotation keep theirs). The attention layers
look the function up at call time, so the replacement holds for every model of that family
in the process; it takes the fused path for float32 tensors without autocast whose shapes
need no broadcasting back, and otherwise calls the original.
"""

from __future__ import annotations

import sys

import torch


class RotaryFunction(torch.autograd.Function):
    """``x·cos + rotate_half(x)·sin`` with ``cos`` and ``sin`` constant."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        half = x.shape[-1] // 2
        out = x * cos
        out[..., :half].addcmul_(x[..., half:], sin[..., :half], value=-1)
        out[..., half:].addcmul_(x[..., :half], sin[..., half:])
        ctx.save_for_backward(cos, sin)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        cos, sin = ctx.saved_tensors
        half = grad_out.shape[-1] // 2
        grad = grad_out * cos
        grad[..., :half].addcmul_(grad_out[..., half:], sin[..., half:])
        grad[..., half:].addcmul_(grad_out[..., :half], sin[..., :half], value=-1)
        return grad, None, None


def _applies(x, cos, sin) -> bool:
    return (x.dtype == cos.dtype == sin.dtype == torch.float32 and not torch.is_autocast_enabled(x.device.type)
            and not (cos.requires_grad or sin.requires_grad) and x.shape[-1] % 2 == 0
            and cos.shape == sin.shape and cos.shape[-1] == x.shape[-1]
            and torch.broadcast_shapes(x.shape, cos.shape) == x.shape)


def _fused(original):
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        cos_b, sin_b = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        if not (_applies(q, cos_b, sin_b) and _applies(k, cos_b, sin_b)):
            return original(q, k, cos, sin, unsqueeze_dim)
        return RotaryFunction.apply(q, cos_b, sin_b), RotaryFunction.apply(k, cos_b, sin_b)

    apply_rotary_pos_emb.hilt_original = original
    return apply_rotary_pos_emb


def install(model) -> list[str]:
    """Replace Llama's rotary code in the modeling modules ``model``'s attention classes use.

    Returns:
        the modules that now take the fused path where it applies (installed now or before).
    """
    from transformers.models.llama import modeling_llama

    from hilt.training.kernels.fast_norm import code_fingerprint

    reference = modeling_llama.apply_rotary_pos_emb
    reference = getattr(reference, "hilt_original", reference)  # Llama's own may be replaced already
    known = (code_fingerprint(reference), code_fingerprint(modeling_llama.rotate_half))
    fused = set()
    for module in model.modules():
        modeling = sys.modules.get(type(module).__module__)
        apply = getattr(modeling, "apply_rotary_pos_emb", None)
        rotate = getattr(modeling, "rotate_half", None)
        if modeling is None or not callable(apply) or not callable(rotate) or modeling.__name__ in fused:
            continue
        if hasattr(apply, "hilt_original"):
            fused.add(modeling.__name__)
        elif (code_fingerprint(apply), code_fingerprint(rotate)) == known:
            modeling.apply_rotary_pos_emb = _fused(apply)
            fused.add(modeling.__name__)
    return sorted(fused)
