"""LoRA linear layers as one autograd function: what hilt trains LoRA with where it can.

PEFT computes a LoRA linear as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: two
extra full-size passes over the output (the scaling multiply and the add) forward, and
again backward, plus a full-size add of the two input gradients. On the benchmark's CPU
run these elementwise passes were ~10 % of a step; they are pure memory traffic around
matmuls that the CPU runs near its peak.

Here the same function is one :class:`torch.autograd.Function`. In float32, when a call has
more tokens than ``in·out / (in + out)`` (the benchmark's steps: thousands of tokens, layers
of a few hundred features), it multiplies by ``W + scaling·BA``, formed forward and formed
again backward (never saved): one matmul each way, and the rank-``r`` products only for the
gradients of A and B. Otherwise (bf16, where the sum would round a small update away; few
tokens, where forming it costs more) the scaled low-rank product is accumulated into the base
output by ``addmm`` (``alpha=scaling``), and backward accumulates the low-rank input gradient
into the base one the same way. The result is PEFT's to rounding (tested against PEFT, both
ways, per architecture). Saved tensors are the ones PEFT's autograd graph keeps (the input
and the rank-``r`` activation), so memory does not grow.

Installed on a trainer's PEFT model by :func:`install`: each eligible ``lora.Linear``
changes class to :class:`FusedLoraLinear`, whose forward takes the fused path only for
plain LoRA (one active adapter, no DoRA or other variant, no LoRA bias, dropout off or the
module in eval mode, a frozen ``nn.Linear`` base, one dtype, no autocast) and otherwise
calls PEFT's own forward. Weights, state dict and saved adapters are PEFT's unchanged. Not
under DeepSpeed ZeRO-3, whose hooks gather a layer's weights only when it is called.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear


class LoraLinearFunction(torch.autograd.Function):
    """``y = x Wᵀ + b + scaling · (x Aᵀ) Bᵀ`` with W, b frozen; gradients for x, A, B."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        low = flat @ lora_a.t()  # [tokens, r]
        merge = _merges(flat, weight)
        if merge:  # one matmul with W + scaling·BA: the sum costs less than adding x Aᵀ Bᵀ per token
            merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
            out = torch.addmm(bias, flat, merged.t()) if bias is not None else flat @ merged.t()
        else:
            base = torch.addmm(bias, flat, weight.t()) if bias is not None else flat @ weight.t()
            out = base.addmm_(low, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(flat, weight, lora_a, lora_b, low)
        ctx.scaling, ctx.shape, ctx.merge = scaling, shape, merge
        return out.view(*shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        flat, weight, lora_a, lora_b, low = ctx.saved_tensors
        scaling = ctx.scaling
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_low = grad @ lora_b  # [tokens, r], unscaled
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.merge:  # recomputed, not saved: a weight-sized tensor per layer would stay alive
                grad_x = (grad @ torch.addmm(weight, lora_b, lora_a, alpha=scaling)).view(ctx.shape)
            else:
                grad_x = (grad @ weight).addmm_(grad_low, lora_a, alpha=scaling).view(ctx.shape)
        if ctx.needs_input_grad[3]:
            grad_a = (grad_low.t() @ flat).mul_(scaling)
        if ctx.needs_input_grad[4]:
            grad_b = (grad.t() @ low).mul_(scaling)
        return grad_x, None, None, grad_a, grad_b, None


def _merges(flat, weight) -> bool:
    """Whether forming ``W + scaling·BA`` (``out x in`` values, forward and backward) moves
    less memory than accumulating the low-rank product into the output and the input gradient
    (``tokens x (out + in)``). float32 only: in bf16 the sum would round a small update away."""
    out_features, in_features = weight.shape
    return flat.dtype == torch.float32 and flat.shape[0] * (out_features + in_features) > out_features * in_features


def lora_linear(x, weight, bias, lora_a, lora_b, scaling: float):
    """``x Wᵀ + b + scaling · (x Aᵀ) Bᵀ`` as :class:`LoraLinearFunction`."""
    return LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling)


class FusedLoraLinear(Linear):
    """PEFT's ``lora.Linear`` with the fused forward where it applies (module docstring)."""

    def forward(self, x, *args: Any, **kwargs: Any):
        if args or kwargs or self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.lora_A]
        if len(active) != 1 or active[0] in self.lora_variant:
            return super().forward(x, *args, **kwargs)
        name = active[0]
        base, lora_a, lora_b = self.base_layer, self.lora_A[name], self.lora_B[name]
        dropout = self.lora_dropout[name]
        if ((self.training and not isinstance(dropout, torch.nn.Identity)) or lora_b.bias is not None
                or type(base) is not torch.nn.Linear or base.weight.requires_grad
                or (base.bias is not None and base.bias.requires_grad)
                or not (x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype)
                or torch.is_autocast_enabled(x.device.type)):
            return super().forward(x, *args, **kwargs)
        return lora_linear(x, base.weight, base.bias, lora_a.weight, lora_b.weight, float(self.scaling[name]))


def install(model) -> int:
    """Switch every plain ``lora.Linear`` in ``model`` to :class:`FusedLoraLinear`.

    Returns:
        how many modules now take the fused path when they can (0 for a model without LoRA).
    """
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return 0  # ZeRO-3 gathers a layer's weights in its own forward hooks: keep PEFT's calls
    count = 0
    for module in model.modules():
        if type(module) is Linear:
            module.__class__ = FusedLoraLinear
            count += 1
    return count
