"""hilt's fused rotary embedding against transformers' own: same outputs, loss and gradients per
architecture, the original code wherever the fused one does not apply, and families with
their own rotation left alone."""

from __future__ import annotations

import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

ARCHITECTURES = ("llama", "qwen3", "mistral", "gemma2")


def _unpatch_rotary():
    for name, module in list(sys.modules.items()):
        if not name.startswith("transformers.models."):
            continue
        function = getattr(module, "apply_rotary_pos_emb", None)
        if hasattr(function, "hilt_original"):
            module.apply_rotary_pos_emb = function.hilt_original


@pytest.fixture()
def restore_rotary():
    """install() rebinds a modeling module's function for the whole process: every test here
    starts from transformers' own code (another test may have trained in this process) and
    leaves it so, in modules imported during the test too."""
    _unpatch_rotary()
    yield
    _unpatch_rotary()


def _count_fused_calls(monkeypatch) -> list:
    from families import count_calls

    from hilt.training.kernels import fast_rope

    return count_calls(monkeypatch, fast_rope.RotaryFunction, "apply")


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_fused_rotary_equals_transformers(arch, tiny_model_dir, tmp_path, monkeypatch, restore_rotary):
    """Full fine-tuning, so every gradient upstream of the rotation is compared."""
    from families import build_architecture, loss_step

    from hilt.training.kernels.fast_rope import install

    path = build_architecture(arch, tiny_model_dir, tmp_path / arch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    ids = torch.randint(5, 400, (2, 37))
    expected = loss_step(model, ids)

    assert install(model) == [type(model).__module__]
    calls = _count_fused_calls(monkeypatch)
    logits, loss, grads = loss_step(model, ids)
    assert len(calls) == 2 * model.config.num_hidden_layers  # q and k of every layer
    torch.testing.assert_close(logits, expected[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, expected[1])
    assert grads.keys() == expected[2].keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected[2][name], atol=1e-5, rtol=1e-4, msg=name)
    assert install(model) == [type(model).__module__]  # a second install keeps one wrapper
    assert not hasattr(sys.modules[type(model).__module__].apply_rotary_pos_emb.hilt_original, "hilt_original")


def test_fused_rotary_keeps_the_original_where_it_does_not_apply(tiny_model_dir, tmp_path, monkeypatch,
                                                                 restore_rotary):
    from families import build_architecture

    from hilt.training.kernels.fast_rope import install

    # Phi-3 rotates only part of each head (its own apply_rotary_pos_emb): not replaced.
    phi3 = AutoModelForCausalLM.from_pretrained(build_architecture("phi3", tiny_model_dir, tmp_path / "phi3"))
    assert install(phi3) == []
    path = build_architecture("llama", tiny_model_dir, tmp_path / "llama")
    llama = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(5, 400, (1, 9))
    generate = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0}
    before = llama.generate(ids, **generate)
    assert install(llama) == [type(llama).__module__]
    # Llama's own function is replaced now; another family with the same code is still found.
    qwen3 = AutoModelForCausalLM.from_pretrained(build_architecture("qwen3", tiny_model_dir, tmp_path / "qwen3"))
    assert install(qwen3) == [type(qwen3).__module__]
    calls = _count_fused_calls(monkeypatch)
    assert torch.equal(llama.generate(ids, **generate), before) and calls  # one token at a time, with a cache
    calls.clear()
    with torch.no_grad():
        bf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)(ids).logits
        assert not calls and bf16.dtype == torch.bfloat16  # bf16: the original code
        with torch.autocast("cpu", dtype=torch.bfloat16):
            llama(ids)
        assert not calls  # autocast: the original code
        llama(ids)
    assert len(calls) == 2 * llama.config.num_hidden_layers
