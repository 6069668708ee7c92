"""RMSNorm as one autograd function: what hilt trains with where it can.

transformers' RMSNorm (Llama's, and the same code in Qwen 2/3, Mistral, Phi-3 and others)
is five elementwise operations forward (square, mean, rsqrt, two multiplies), and autograd
replays each of them backward: ~10 passes over ``[tokens, hidden]`` per norm, two norms a
layer. On the benchmark's CPU run that is ~6.4 ms per norm for a 4,096-token step; pure
memory traffic between matmuls.

Here a norm is one :class:`torch.autograd.Function`: forward takes the sum of squares as one
dot product per token and writes ``x · rstd · w`` in two passes; backward uses the closed
form ``dx = rstd · (g·w − x · rstd² · mean(g·w·x))`` (four passes) and ``dw`` only when the
weight trains (full fine-tuning). ~2.4 ms per norm on the same step. Same result to float
rounding (tested against transformers per architecture, gradients included).

Installed by :func:`install`: a module takes the fused path when its class's ``forward`` is,
bytecode for bytecode, transformers' Llama RMSNorm (``w · x̂``) or Gemma's (``(1 + w) · x̂``),
its input and weight are float32 and autocast is off; anything else (bf16, a family's own
variant) keeps the module's own forward. Weights and state dict are unchanged. Not under
DeepSpeed ZeRO-3 (as ``hilt.training.kernels.fast_lora``).
"""

from __future__ import annotations

import torch


class RMSNormFunction(torch.autograd.Function):
    """``y = x · rsqrt(mean(x²) + eps) · (w + offset)`` over the last dimension, float32."""

    @staticmethod
    def forward(ctx, x, weight, eps: float, offset: float):
        scale = weight + offset if offset else weight
        rstd = torch.linalg.vecdot(x, x).div_(x.shape[-1]).add_(eps).rsqrt_().unsqueeze(-1)
        ctx.save_for_backward(x, scale, rstd)
        return torch.mul(x, rstd).mul_(scale)

    @staticmethod
    def backward(ctx, grad_out):
        x, scale, rstd = ctx.saved_tensors
        grad_x = grad_w = None
        scaled = grad_out * scale
        if ctx.needs_input_grad[0]:
            coefficient = torch.linalg.vecdot(scaled, x).unsqueeze(-1).mul_(rstd.square()).div_(x.shape[-1])
            grad_x = torch.addcmul(scaled, x, coefficient, value=-1).mul_(rstd)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out * x * rstd).reshape(-1, x.shape[-1]).sum(0)
        return grad_x, grad_w, None, None


def code_fingerprint(function) -> tuple | None:
    """What a function computes: its bytecode, constants (not its docstring) and names; None
    for a callable without Python code. Also used by ``hilt.training.kernels.fast_rope``."""
    code = getattr(function, "__code__", None)
    if code is None:
        return None
    constants = code.co_consts
    if function.__doc__ is not None and constants and constants[0] == function.__doc__:
        constants = constants[1:]
    return code.co_code, constants, code.co_names


def _known_forms() -> dict[tuple, float]:
    """The RMSNorm forwards this function reproduces: their bytecode -> the weight's offset."""
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    return {(code_fingerprint(LlamaRMSNorm.forward), None): 0.0,
            (code_fingerprint(GemmaRMSNorm.forward), code_fingerprint(GemmaRMSNorm._norm)): 1.0}


def _form(cls, forms: dict[tuple, float]) -> float | None:
    norm = getattr(cls, "_norm", None)
    key = (code_fingerprint(cls.forward), code_fingerprint(norm) if callable(norm) else None)
    return forms.get(key)


def _eps(module) -> float:
    """Llama's form keeps epsilon as ``variance_epsilon``, Gemma's as ``eps``."""
    return float(module.variance_epsilon if hasattr(module, "variance_epsilon") else module.eps)


class FusedRMSNorm:
    """Mixed into a recognised RMSNorm class: the fused forward where it applies."""

    norm_offset: float = 0.0

    def forward(self, x):
        weight = self.weight
        if x.dtype != torch.float32 or weight.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        return RMSNormFunction.apply(x, weight, _eps(self), self.norm_offset)


_classes: dict[type, type] = {}


def install(model) -> int:
    """Switch every recognised RMSNorm in ``model`` to its fused subclass.

    Returns:
        how many modules now take the fused path when they can.
    """
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return 0  # ZeRO-3: keep the model's own modules
    forms = _known_forms()
    count = 0
    for module in model.modules():
        cls = type(module)
        if cls in _classes.values() or not isinstance(getattr(module, "weight", None), torch.Tensor):
            continue
        if cls not in _classes:
            offset = _form(cls, forms)
            if offset is None:
                continue
            _classes[cls] = type(f"Fused{cls.__name__}", (FusedRMSNorm, cls), {"norm_offset": offset})
        module.__class__ = _classes[cls]
        count += 1
    return count
