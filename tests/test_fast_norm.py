"""hilt's fused RMSNorm against transformers' own: same outputs, loss and gradients per
architecture (Llama form and Gemma's 1 + w form), the model's own forward wherever the fused
one does not apply, and an unchanged state dict."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

ARCHITECTURES = ("llama", "qwen3", "phi3", "gemma2")  # qwen3: q/k head norms; gemma2: (1 + w) norms


def _count_fused_calls(monkeypatch) -> list:
    from families import count_calls

    from hilt.training.kernels import fast_norm

    return count_calls(monkeypatch, fast_norm.RMSNormFunction, "apply")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fused_rmsnorm_equals_transformers(arch, tiny_model_dir, tmp_path, monkeypatch):
    """Full fine-tuning (every weight trains, norm weights included), so the norm weights'
    gradients are checked too; the norm weights are randomised away from their init."""
    from families import build_architecture, loss_step

    from hilt.training.kernels.fast_norm import FusedRMSNorm, install

    path = build_architecture(arch, tiny_model_dir, tmp_path / arch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(-0.5, 1.5)
    ids = torch.randint(5, 400, (2, 37))
    expected = loss_step(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    count = install(model)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    assert count == len(norms) == sum(isinstance(m, FusedRMSNorm) for m in model.modules()) > 0
    calls = _count_fused_calls(monkeypatch)
    logits, loss, grads = loss_step(model, ids)
    assert len(calls) == count  # every norm took the fused path, once
    torch.testing.assert_close(logits, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected[1])
    assert grads.keys() == expected[2].keys() and any("norm" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[2][name], atol=1e-5, rtol=1e-4, msg=name)
    assert model.state_dict().keys() == state.keys()


def test_fused_rmsnorm_keeps_the_modules_own_forward_where_it_does_not_apply(tiny_model_dir, monkeypatch):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from hilt.training.kernels.fast_norm import install

    class ScaledNorm(LlamaRMSNorm):  # a family's own variant: not the code the fused path reproduces
        def forward(self, x):
            return 2 * super().forward(x)

    holder = torch.nn.ModuleList([LlamaRMSNorm(16), ScaledNorm(16)])
    assert install(holder) == 1 and type(holder[1]) is ScaledNorm
    calls = _count_fused_calls(monkeypatch)
    x = torch.randn(3, 16)
    expected = LlamaRMSNorm(16)(x.bfloat16())
    assert torch.equal(holder[0](x.bfloat16()), expected) and not calls  # bf16: the module's own forward
    with torch.autocast("cpu", dtype=torch.bfloat16):
        holder[0](x)
    assert not calls  # autocast: the module's own forward
    holder[0](x)
    assert len(calls) == 1
