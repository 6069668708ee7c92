"""The multi-process path on CPU: 2 workers over gloo with DDP, ZeRO-2 and ZeRO-3.

`train` launches the workers itself with torchrun (as on a multi-GPU host), and the
model directory is finished in the launching process afterwards.
"""

from __future__ import annotations

import re

import pytest
from safetensors.torch import load_file

from conftest import run_hilt
from tasks import write_uppercase_dataset

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "deepspeed, engine",
    [
        (None, "engine=ddp world_size=2 backend=gloo"),
        ("deepspeed/zero2.json", "engine=deepspeed zero_stage=2 world_size=2 backend=gloo"),
        ("deepspeed/zero3.json", "engine=deepspeed zero_stage=3 world_size=2 backend=gloo"),
    ],
    ids=["ddp", "zero2", "zero3"],
)
def test_two_processes_train_and_save(hilt_exe, warm_base_dir, tmp_path, deepspeed, engine):
    data = write_uppercase_dataset(tmp_path / "data", n_train=64, n_validation=8)
    out = tmp_path / "job"
    args = ["train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data), "--output", str(out),
            "--set", "distributed.processes_per_host=2", "--set", "train.max_steps=8",
            "--set", "train.logging_steps=2"]
    if deepspeed:
        args += ["--set", f"distributed.deepspeed={deepspeed}"]
    result = run_hilt(hilt_exe, *args, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "--nproc_per_node=2" in result.stdout
    assert engine in result.stdout
    losses = [float(x) for x in re.findall(r"train_loss=([0-9.e+-]+)", result.stdout)]
    assert losses[-1] < losses[0]
    adapter = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    # With ZeRO-3 the saved adapter must be the gathered full tensors, not empty shards.
    assert lora_b and all(v.numel() > 0 and v.abs().sum() > 0 for v in lora_b)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "hilt.json").is_file()
