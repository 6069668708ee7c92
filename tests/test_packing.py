"""Packing without cross-contamination: packed rows give the same logits as separate ones."""

from __future__ import annotations

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl.data_utils import pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def test_packed_sequences_do_not_attend_across_boundaries(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    conversations = [
        [{"role": "user", "content": "book a desk on floor three"}, {"role": "assistant", "content": "Done."}],
        [{"role": "user", "content": "order a laptop"}, {"role": "assistant", "content": "Submitted, thanks!"}],
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"}],
    ]
    ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in conversations]
    # The trainer's own path: best-fit-decreasing packing, then the padding-free collator.
    packed = pack_dataset(Dataset.from_dict({"input_ids": ids}), seq_length=512, strategy="bfd")
    assert len(packed) == 1
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(
        [dict(row) for row in packed]
    )
    assert "attention_mask" not in batch
    positions = batch["position_ids"][0].tolist()
    assert positions.count(0) == 3  # position ids restart at each sequence

    with torch.no_grad():
        # use_cache=False as in training: with a KV cache transformers ignores the packing.
        packed_logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        offset = 0
        for length in packed[0]["seq_lengths"]:
            segment = batch["input_ids"][0, offset : offset + length]
            alone = model(input_ids=segment[None]).logits[0]
            torch.testing.assert_close(packed_logits[offset : offset + length], alone, atol=1e-4, rtol=1e-4)
            offset += length

        # The check can fail: without the packing-aware mask, later sequences see earlier ones.
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits[0]
        first = packed[0]["seq_lengths"][0]
        assert not torch.allclose(leaky[first:], packed_logits[first:], atol=1e-3)
