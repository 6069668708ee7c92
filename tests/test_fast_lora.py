"""hilt's fused LoRA linear against PEFT's own forward: same outputs, loss and gradients per
architecture, PEFT's path wherever the fused one does not apply, and an unchanged adapter."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

ARCHITECTURES = ("llama", "qwen2", "phi3", "gemma2")  # qwen2: biased q/k/v; phi3: fused qkv/gate_up


def _peft_model(path, dropout=0.0):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=dropout, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the low-rank path something to carry
            torch.nn.init.normal_(param, std=0.05)
    return model


def _count_fused_calls(monkeypatch) -> list:
    from families import count_calls

    from hilt.training.kernels import fast_lora

    return count_calls(monkeypatch, fast_lora, "lora_linear")


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("tokens", [(2, 37), (1, 6)], ids=["merged", "accumulated"])
def test_fused_lora_equals_peft(arch, tokens, tiny_model_dir, tmp_path, monkeypatch):
    """74 tokens: W + scaling·BA is formed (smaller than the outputs); 6: the low-rank product
    is accumulated into the output and the input gradient."""
    from families import build_architecture, loss_step

    from hilt.training.kernels import fast_lora
    from hilt.training.kernels.fast_lora import FusedLoraLinear, install

    path = build_architecture(arch, tiny_model_dir, tmp_path / arch)
    ids = torch.randint(5, 400, tokens)
    merges = []
    decide = fast_lora._merges
    monkeypatch.setattr(fast_lora, "_merges", lambda *args: merges.append(decide(*args)) or merges[-1])
    model = _peft_model(path)
    expected = loss_step(model, ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    count = install(model)
    assert count == sum(isinstance(m, FusedLoraLinear) for m in model.modules()) > 0
    calls = _count_fused_calls(monkeypatch)
    logits, loss, grads = loss_step(model, ids)
    assert len(calls) == count  # every LoRA module took the fused path
    assert set(merges) == {tokens == (2, 37)}
    torch.testing.assert_close(logits, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected[1])
    assert grads.keys() == expected[2].keys() and grads  # LoRA A and B, nothing else
    assert all("lora_" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[2][name], atol=1e-6, rtol=1e-4, msg=name)
    # The state dict (what an adapter is saved from) is PEFT's, key for key.
    assert model.state_dict().keys() == state.keys()


def test_fused_lora_falls_back_where_it_does_not_apply(tiny_model_dir, monkeypatch):
    from hilt.training.kernels import fast_lora

    ids = torch.randint(5, 400, (1, 20))
    calls = _count_fused_calls(monkeypatch)
    # Dropout on while training: PEFT's forward (it draws the dropout mask).
    model = _peft_model(tiny_model_dir, dropout=0.1)
    assert fast_lora.install(model) > 0
    model.train()
    model(input_ids=ids)
    assert calls == []
    model.eval()  # dropout off in eval: fused
    with torch.no_grad():
        fused = model(input_ids=ids).logits
    assert calls
    calls.clear()
    # Adapters disabled (how DPO computes the reference): the base model alone.
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=ids).logits
    assert calls == []
    assert not torch.allclose(base, fused)
