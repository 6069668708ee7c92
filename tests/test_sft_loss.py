"""hilt's CPU SFT loss against TRL's fused LM head: same loss, gradients and logged metrics per
architecture (Gemma 2's soft-capped logits included), in one tile or many, never a full
[tokens, vocabulary] tensor; a head that does more than a linear layer is not tiled; TRL's own
loss wherever hilt's does not apply."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

ARCHITECTURES = ("llama", "qwen3", "phi3", "gemma2")  # gemma2: final logit soft-capping


def _batch(vocab: int, seed: int = 0) -> dict:
    """Two rows, the second right-padded, with a random loss mask (prompt tokens at -100)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (2, 41), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 29:] = 0
    labels = ids.masked_fill(torch.rand(ids.shape, generator=generator) < 0.4, -100).masked_fill(attention == 0, -100)
    return {"input_ids": ids, "attention_mask": attention, "labels": labels}


def _grads(model) -> dict:
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


@pytest.mark.parametrize("tile_rows", [None, 3], ids=["one-tile", "3-row-tiles"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_next_token_loss_equals_trls_fused_head(arch, tile_rows, tiny_model_dir, tmp_path, monkeypatch):
    """Full fine-tuning, so the LM head's and the embeddings' gradients are compared too."""
    from families import build_architecture
    from trl.trainer.utils import add_fused_lm_head

    from hilt.training.kernels import sft_loss
    from hilt.training.kernels.sft_loss import next_token_loss

    path = build_architecture(arch, tiny_model_dir, tmp_path / arch)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    if arch == "gemma2":  # a cap the tiny model's logits reach, so the tanh's slope shows in the gradients
        model.config.final_logit_softcapping = 0.5
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does
    batch = _batch(model.config.vocab_size)
    if tile_rows:
        monkeypatch.setattr(sft_loss, "TILE_ELEMENTS", tile_rows * model.config.vocab_size)
    for items in (None, torch.tensor(57)):  # the Trainer's count over gradient accumulation, or none
        expected = model(**batch, fused_lm_head=True, num_items_in_batch=items, use_cache=False)
        expected.loss.backward()
        expected_grads = _grads(model)

        loss, counted, entropy_sum, correct = next_token_loss(model, batch, items)
        loss.backward()
        grads = _grads(model)
        torch.testing.assert_close(loss, expected.loss.detach())
        assert counted == expected.label_mask.sum() == (batch["labels"][:, 1:] != -100).sum()
        torch.testing.assert_close(entropy_sum, expected.entropy.sum().detach(), rtol=1e-5, atol=1e-4)
        assert correct == expected.is_top1.sum()
        assert grads.keys() == expected_grads.keys() and "lm_head.weight" in grads
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    assert sft_loss.tiled_head(model) is model.lm_head  # the tiled head ran, not the materialised logits


def test_no_tensor_holds_every_position_times_the_vocabulary(tiny_model_dir, tmp_path, monkeypatch):
    """Forward and backward, the largest tensor with a vocabulary axis holds one tile of rows."""
    from families import build_architecture
    from torch.utils._python_dispatch import TorchDispatchMode

    from hilt.training.kernels import sft_loss

    model = AutoModelForCausalLM.from_pretrained(build_architecture("llama", tiny_model_dir, tmp_path / "m"))
    vocab = model.config.vocab_size
    monkeypatch.setattr(sft_loss, "TILE_ELEMENTS", 4 * vocab)
    batch = _batch(vocab)
    counted = int((batch["labels"][:, 1:] != -100).sum())
    rows_with_vocab = []
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if (isinstance(tensor, torch.Tensor) and tensor.dim() >= 2 and tensor.shape[-1] == vocab
                        and tensor.untyped_storage().data_ptr() not in weights):  # not the head's weight.T
                    rows_with_vocab.append(tensor.numel() // vocab)
            return out

    model.model.embed_tokens.weight.requires_grad_(False)  # its [vocab, hidden] gradient is not a logit tile
    model.lm_head.weight.requires_grad_(False)
    with Shapes():
        loss = sft_loss.next_token_loss(model, batch)[0]
        loss.backward()
    assert counted > 4 and rows_with_vocab and max(rows_with_vocab) == 4, (counted, sorted(set(rows_with_vocab)))


def test_a_head_that_does_more_than_a_linear_layer_is_not_tiled(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """A family that scales its logits after the head (Cohere's logit_scale, say): the probe rows differ,
    so its own head's logits are used, and above the logits budget TRL's loss is asked for."""
    from families import build_architecture

    from hilt.training.kernels import sft_loss

    model = AutoModelForCausalLM.from_pretrained(build_architecture("llama", tiny_model_dir, tmp_path / "m"))
    model.lm_head.register_forward_hook(lambda _module, _args, out: out * 2.0)
    batch = _batch(model.config.vocab_size)
    logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100])
    loss = sft_loss.next_token_loss(model, batch)[0]
    torch.testing.assert_close(loss, expected)
    assert sft_loss.tiled_head(model) is None and "are not tiled" in capsys.readouterr().out
    monkeypatch.setattr(sft_loss, "MAX_LOGITS", 0)
    with pytest.raises(sft_loss.HeadNotTiled):
        sft_loss.next_token_loss(model, batch)


def test_next_token_loss_can_fail(tiny_model_dir, tmp_path):
    """A shifted target (the position's own token, not the next one) changes the loss."""
    from families import build_architecture
    from trl.trainer.utils import add_fused_lm_head

    from hilt.training.kernels.sft_loss import next_token_loss

    model = AutoModelForCausalLM.from_pretrained(build_architecture("llama", tiny_model_dir, tmp_path / "m"))
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    batch = _batch(model.config.vocab_size)
    expected = model(**batch, fused_lm_head=True, use_cache=False).loss
    unshifted = {**batch, "labels": torch.cat([batch["labels"][:, :1], batch["labels"][:, :-1]], dim=1)}
    assert not torch.allclose(next_token_loss(model, unshifted)[0], expected)


@pytest.fixture(params=["true", "false"], ids=["packed", "padded"])
def sft_trainer(request, tiny_model_dir, tmp_path):
    from hilt.training.run.entry import prepare_local_tree
    from hilt.training.base.job import read_job
    from hilt.training.trainers.sft import build_sft_trainer

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    records = [{"messages": [{"role": "user", "content": "book a desk " * n},
                             {"role": "assistant", "content": f"Booked {n} desks on floor three."}]}
               for n in (1, 4, 9, 2, 16, 3, 7, 5)]
    (data / "train" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    overrides = {"train.per_device_batch_size": "4", "data.max_length": "64", "model.dtype": "auto",
                 "data.assistant_only_loss": "true", "data.packing": request.param}
    tree = prepare_local_tree(tmp_path / "job", "quickstart-tiny-sft", data, tiny_model_dir, overrides)
    trainer, _, _ = build_sft_trainer(read_job(tree))
    return trainer


def test_sft_trainer_takes_it_on_cpu_with_trls_loss_and_metrics(sft_trainer, monkeypatch):
    """One batch of hilt's SFT path (length groups with position ids, or padded rows with an
    attention mask; assistant-only loss): the loss and the entropy, accuracy and token-count
    metrics equal TRL's compute_loss; above the logits budget TRL's loss runs instead."""
    from families import count_calls

    from hilt.training.kernels import sft_loss

    trainer = sft_trainer
    batch = next(iter(trainer.get_train_dataloader()))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompts are not counted
    calls = count_calls(monkeypatch, sft_loss, "next_token_loss")

    def step() -> tuple:
        trainer._metrics["train"].clear()
        trainer._total_train_tokens = 0
        items = (batch["labels"][:, 1:] != -100).sum()
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=items)
        loss.backward()
        metrics = trainer._metrics["train"]
        return loss.detach(), metrics["entropy"][-1], metrics["mean_token_accuracy"][-1], metrics["num_tokens"]

    ours = step()
    assert len(calls) == 1
    ours_grads = _grads(trainer.model)
    assert ours_grads and all("lora" in name for name in ours_grads)
    # A head that cannot be tiled, over the budget: TRL's compute_loss.
    monkeypatch.setattr(sft_loss, "tiled_head", lambda model: None)
    monkeypatch.setattr(sft_loss, "MAX_LOGITS", 0)
    trls = step()
    assert len(calls) == 1
    trls_grads = _grads(trainer.model)
    torch.testing.assert_close(ours[0], trls[0])
    assert ours[1] == pytest.approx(trls[1], rel=1e-5) and ours[2] == trls[2] and ours[3] == trls[3]
    assert ours_grads.keys() == trls_grads.keys()
    for name, grad in ours_grads.items():
        torch.testing.assert_close(grad, trls_grads[name], atol=1e-6, rtol=1e-4, msg=name)
