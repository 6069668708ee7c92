"""scripts/bench_train.py runs end to end on a few conversations: every mode trains the same
LoRA over the same real tokens, and the result names its ratio, profile and floor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_train_compares_like_with_like(tmp_path):
    out = tmp_path / "train.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--records", "24", "--rounds", "1",
         "--max-length", "256", "--modes", "trl-group-by-length,hilt", "--profile-steps", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    modes = result["modes"]
    assert set(modes) == {"trl-group-by-length", "hilt"}
    # Same conversations, same truncation: the same real tokens; one LoRA size for both.
    assert modes["hilt"]["real_tokens"] == modes["trl-group-by-length"]["real_tokens"] > 0
    assert len({r["trainable_parameters"] for r in result["runs"]}) == 1
    assert modes["hilt"]["conversations_per_row"] > 1 and modes["hilt"]["steps"] < modes["trl-group-by-length"]["steps"]
    assert result["best_trl_mode"] == "trl-group-by-length"
    assert result["hilt_over_best_trl"] == pytest.approx(
        modes["hilt"]["tokens_per_second"] / modes["trl-group-by-length"]["tokens_per_second"])
    assert len(result["hilt_over_best_trl_per_round"]) == 1
    for mode in modes:
        profile = result["profiles"][mode]
        assert sum(profile["time_share"].values()) == pytest.approx(1, abs=0.01)
        assert profile["time_share"]["matmul"] > 0 and profile["matmul_flops"] > 0
        floor = result["matmul_floor"][mode]
        assert floor["tokens_per_second_if_only_matmuls"] > 0 and floor["share_of_that_reached"] > 0
    assert "hilt / best TRL" in proc.stdout


def test_bench_train_refuses_a_mode_this_machine_cannot_run(tmp_path):
    """Liger's kernels are TRL's GPU option: on a CPU machine asking for them is a one-line error."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU machine may run Liger's modes")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--modes", "trl-group-by-length+liger,hilt",
         "--out", str(tmp_path / "train.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--modes trl-group-by-length+liger: Liger's kernels need CUDA" in proc.stderr
    assert not (tmp_path / "train.json").exists()
