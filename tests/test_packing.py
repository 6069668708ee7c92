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


def test_packed_rows_keep_sequences_apart_and_mask_the_loss(tiny_model_dir):
    """The path sdpa/CPU training takes: [batch, row] packs, per-row position ids, no mask."""
    from hilt.training.data.packing import IGNORE, PackedRowCollator, pack_rows, tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    records = [
        {"messages": [{"role": "user", "content": "w " * n}, {"role": "assistant", "content": f"answer {n}"}]}
        for n in (3, 40, 7, 25, 12, 60)
    ]
    tokenized = tokenize_conversations(Dataset.from_list(records), tokenizer, max_length=80, assistant_only=True)
    rows = pack_rows(tokenized, max_length=80)
    assert len(rows) < len(records) and all(len(r["input_ids"]) <= 80 for r in rows)
    batch = PackedRowCollator(tokenizer.pad_token_id)([dict(r) for r in rows])
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == len(rows)

    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        for i, row in enumerate(rows):
            offset = 0
            for length in row["seq_lengths"]:
                segment = batch["input_ids"][i, offset : offset + length]
                alone = model(input_ids=segment[None]).logits[0]
                torch.testing.assert_close(logits[i, offset : offset + length], alone, atol=1e-4, rtol=1e-4)
                # Only assistant tokens are learned; a sequence's first token never is.
                labels = batch["labels"][i, offset : offset + length]
                assert labels[0] == IGNORE
                learned = tokenizer.decode(labels[labels != IGNORE])
                assert learned.startswith("answer") and learned.endswith("<|im_end|>")
                offset += length
            assert (batch["labels"][i, offset:] == IGNORE).all()  # padding tail carries no loss


SEGMENT_ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "phi3")


def test_segment_attention_equals_each_sequence_alone_and_the_masked_path(tiny_model_dir, tmp_path):
    """hilt_segments on the length-grouped batch it trains with (and on plain packed rows)
    against transformers' block-diagonal masked sdpa on packed rows and against each sequence
    run alone, per architecture: same logits, same loss, same gradients."""
    from families import build_architecture

    from hilt.training.data.packing import LengthGroupCollator, PackedRowCollator
    from hilt.training.kernels.segment_attention import register

    register()
    torch.manual_seed(0)
    rows = []
    for lengths in ([40, 90, 31], [150, 7], [5, 5, 5, 120], [88, 36]):  # mixed lengths, several groups
        ids = torch.randint(5, 500, (sum(lengths),)).tolist()
        mask = torch.randint(0, 2, (sum(lengths),)).tolist()
        rows.append({"input_ids": ids, "seq_lengths": lengths, "loss_mask": mask})
    packed = PackedRowCollator(0)(rows)
    grouped = LengthGroupCollator(0)(rows)
    sequences = {}  # each sequence's tokens -> where the grouped batch holds it
    offset = 0
    for n in torch.diff(torch.nonzero(grouped["position_ids"][0] == 0).flatten(),
                        append=torch.tensor([grouped["input_ids"].shape[1]])).tolist():
        sequences[offset] = n
        offset += n
    for arch in SEGMENT_ARCHITECTURES:
        path = build_architecture(arch, tiny_model_dir, tmp_path / arch)
        results = {}
        for attention, batch in (("sdpa", packed), ("hilt_segments", packed), ("hilt_segments/grouped", grouped)):
            model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention.split("/")[0],
                                                         dtype=torch.float32)
            model.config.use_cache = False  # as in training: with a cache transformers ignores packing
            output = model(**batch)
            output.loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results[attention] = (output.logits.detach(), output.loss.detach(), grads, model)
        masked = results["sdpa"]
        for name in ("hilt_segments", "hilt_segments/grouped"):
            logits, loss, grads, model = results[name]
            if name == "hilt_segments":
                torch.testing.assert_close(logits, masked[0], atol=1e-4, rtol=1e-4, msg=arch)
            torch.testing.assert_close(loss, masked[1], atol=1e-5, rtol=1e-5, msg=f"{arch} {name}")
            torch.testing.assert_close(grads, masked[2], atol=1e-5, rtol=1e-4, msg=f"{arch} {name}")
        logits, _, _, model = results["hilt_segments/grouped"]
        with torch.no_grad():
            found = 0
            for i, row in enumerate(rows):
                offset = 0
                for length in row["seq_lengths"]:
                    ids = packed["input_ids"][i, offset:offset + length]
                    alone = model(input_ids=ids[None]).logits[0]
                    at = next(at for at in sequences
                              if torch.equal(grouped["input_ids"][0, at:at + length], ids))
                    torch.testing.assert_close(logits[0, at:at + length], alone, atol=1e-4, rtol=1e-4, msg=arch)
                    found += 1
                    offset += length
            assert found == sum(len(row["seq_lengths"]) for row in rows)


def test_length_groups_lay_sequences_out_as_blocks_with_their_own_labels():
    """LengthGroupCollator: every sequence once, in blocks of similar length (longest at most
    GROUP_SPREAD x the shortest), right-padded within its block; labels are the sequence's
    loss mask (never its first token, never padding); position ids restart per sequence."""
    from hilt.training.data.packing import GROUP_SPREAD, IGNORE, LengthGroupCollator
    from hilt.training.kernels.segment_attention import _plan

    rows = []
    for lengths in ([40, 90, 31], [150, 7], [5, 5, 5, 120], [88, 36]):
        ids = list(range(1, sum(lengths) + 1))
        rows.append({"input_ids": ids, "seq_lengths": lengths, "loss_mask": [i % 3 != 0 for i in ids]})
    batch = LengthGroupCollator(pad_token_id=0)(rows)
    input_ids, labels, positions = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    groups = _plan(batch["position_ids"])
    assert sum(n * longest for n, longest in groups) == len(input_ids)
    seen, offset = [], 0
    for n, longest in groups:
        real = []
        for _ in range(n):
            slot = input_ids[offset:offset + longest]
            assert positions[offset:offset + longest] == list(range(longest))
            tokens = [t for t in slot if t != 0]
            assert slot == tokens + [0] * (longest - len(tokens))  # right padding only
            assert labels[offset] == IGNORE and all(l == IGNORE for l in labels[offset + len(tokens):offset + longest])
            assert labels[offset + 1:offset + len(tokens)] == [t if t % 3 != 0 else IGNORE for t in tokens[1:]]
            real.append(len(tokens))
            seen.append(tuple(tokens))
            offset += longest
        assert max(real) == longest and min(real) * GROUP_SPREAD >= longest
    every = []
    for row in rows:
        start = 0
        for length in row["seq_lengths"]:
            every.append(tuple(row["input_ids"][start:start + length]))
            start += length
    assert sorted(seen) == sorted(every)


def test_training_attention_uses_segments_only_where_they_are_exact(tiny_model_dir, tmp_path):
    from families import build_architecture

    from hilt.training.trainers.build import training_attention
    from hilt.training.run.entry import prepare_local_tree
    from hilt.training.base.job import read_job

    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "data.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')

    jobs = iter(range(100))

    def attention(model, **overrides):
        tree = prepare_local_tree(tmp_path / f"job-{next(jobs)}", "quickstart-tiny-sft", data, model,
                                  {k.replace("__", "."): v for k, v in overrides.items()})
        return training_attention(read_job(tree))

    assert attention(tiny_model_dir) == "hilt_segments"
    assert attention(tiny_model_dir, data__packing="false") == "sdpa"
    assert attention(tiny_model_dir, model__attn_implementation="sdpa") == "sdpa"
    # Gemma 3's sliding layers (64 tokens here) are shorter than a 256-token row: masked path.
    gemma = build_architecture("gemma3_text", tiny_model_dir, tmp_path / "gemma3")
    assert attention(gemma) == "sdpa"
