"""DPO on preference records (the shape `hil` exports) with TRL's DPOTrainer."""

from __future__ import annotations

import json
import random
import re

import pytest
from safetensors.torch import load_file

from conftest import run_hilt
from tasks import LETTERS, write_preference_dataset

pytestmark = pytest.mark.slow


def test_dpo_lora_prefers_chosen(hilt_exe, warm_base_dir, tmp_path):
    data = write_preference_dataset(tmp_path / "prefs", n_train=48)
    # A buyer's second file in TRL's standard (string) preference format: read beside the first.
    rng = random.Random(1)
    strings = []
    for _ in range(16):
        word = "".join(rng.choice(LETTERS) for _ in range(4))
        strings.append({"prompt": f"upper: {word}", "chosen": word.upper(), "rejected": word})
    (data / "train" / "strings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in strings))
    out = tmp_path / "job"
    result = run_hilt(
        hilt_exe, "train", "llama3-8b-dpo-lora", "--model", str(warm_base_dir), "--data", str(data),
        "--output", str(out),
        "--set", "distributed.deepspeed=null", "--set", "model.gradient_checkpointing=false",
        "--set", "model.dtype=float32", "--set", "train.max_steps=30", "--set", "train.learning_rate=5e-3",
        "--set", "train.per_device_batch_size=8", "--set", "train.gradient_accumulation_steps=1",
        "--set", "train.logging_steps=5", "--set", "data.max_length=64",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "data.jsonl (preference, 48 records), strings.jsonl (preference, 16 records)" in result.stdout
    losses = [float(x) for x in re.findall(r"train_loss=([0-9.e+-]+)", result.stdout)]
    # DPO's sigmoid loss starts at log(2) (policy == reference) and falls as the margin grows.
    assert abs(losses[0] - 0.6931) < 0.01
    assert losses[-1] < 0.5
    adapter = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert (out / "model" / "hilt.json").is_file()


def test_kto_lora_learns_from_thumbs_up_and_down(hilt_exe, warm_base_dir, tmp_path):
    """KTO (TRL's KTOTrainer) from unpaired records: a desirable and an undesirable answer per prompt,
    in two files of the two shapes buyers have (strings, messages)."""
    rng = random.Random(0)
    strings, messages = [], []
    for i in range(64):
        word = "".join(rng.choice(LETTERS) for _ in range(4))
        good, bad = word.upper(), word
        for answer, label in ((good, True), (bad, False)):
            if i % 2:
                strings.append({"prompt": f"upper: {word}", "completion": answer, "label": label})
            else:
                messages.append({"prompt": [{"role": "user", "content": f"upper: {word}"}],
                                 "completion": [{"role": "assistant", "content": answer}], "label": label})
    train = tmp_path / "kto" / "train"
    train.mkdir(parents=True)
    (train / "strings.jsonl").write_text("".join(json.dumps(r) + "\n" for r in strings))
    (train / "messages.jsonl").write_text("".join(json.dumps(r) + "\n" for r in messages))
    out = tmp_path / "job"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-kto", "--model", str(warm_base_dir), "--data",
                      str(tmp_path / "kto"), "--output", str(out))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "messages.jsonl (unpaired, 64 records), strings.jsonl (unpaired, 64 records)" in result.stdout
    losses = [float(x) for x in re.findall(r"train_loss=([0-9.e+-]+)", result.stdout)]
    assert all(loss == loss and abs(loss) < 1e3 for loss in losses)  # finite
    assert losses[-1] < losses[0] * 0.8
    adapter = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert json.loads((out / "model" / "hilt.json").read_text())["recipe"]["method"] == "kto"

    # An SFT recipe on these files says which method reads them.
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                      str(tmp_path / "kto"), "--output", str(tmp_path / "sft-job"))
    assert result.returncode == 2 and "is unpaired data; this recipe reads sft records: use a kto recipe" in \
        result.stderr
