"""Spot safety: a killed job resumes from its newest checkpoint; SIGTERM saves one first."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import run_hilt
from tasks import write_uppercase_dataset
from hilt.training.trainers.callbacks import latest_checkpoint

pytestmark = pytest.mark.slow

ARGS = ("--set", "train.max_steps=60", "--set", "train.checkpoint_steps=10", "--set", "train.logging_steps=5",
        "--set", "train.checkpoint_limit=3")


def start(hilt_exe, model, data, out) -> subprocess.Popen:
    return subprocess.Popen(
        [str(hilt_exe), "train", "quickstart-tiny-sft", "--model", str(model), "--data", str(data),
         "--output", str(out), *ARGS],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
    )


def wait_for_checkpoint(out: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ckpt = latest_checkpoint(out / "checkpoints")
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint >= {step} within {timeout}s")


@pytest.fixture()
def data(tmp_path):
    return write_uppercase_dataset(tmp_path / "data", n_train=64, n_validation=8)


def test_killed_run_resumes_from_newest_checkpoint(hilt_exe, warm_base_dir, data, tmp_path):
    out = tmp_path / "job"
    proc = start(hilt_exe, warm_base_dir, data, out)
    wait_for_checkpoint(out, 20, proc)
    proc.kill()  # SIGKILL: no chance to save anything more
    proc.wait()
    saved = int(latest_checkpoint(out / "checkpoints").name.split("-")[1])
    assert 20 <= saved < 60
    assert not (out / "model" / "hilt.json").exists()

    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                      str(data), "--output", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed at step={saved} of max_steps=60" in result.stdout
    steps = [int(s) for s in re.findall(r"\[hilt\] step=(\d+) train_loss", result.stdout)]
    assert steps and min(steps) > saved  # nothing before the checkpoint was trained again
    assert json.loads((out / "model" / "hilt.json").read_text())["metrics"]["global_step"] == 60


def test_sigterm_saves_a_checkpoint_and_exits_143(hilt_exe, warm_base_dir, data, tmp_path):
    out = tmp_path / "job"
    proc = start(hilt_exe, warm_base_dir, data, out)
    wait_for_checkpoint(out, 10, proc)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, log[-3000:]
    stopped = int(re.search(r"stopped by SIGTERM at step=(\d+)", log).group(1))
    assert latest_checkpoint(out / "checkpoints").name == f"checkpoint-{stopped}"
    assert not (out / "output" / "failure").exists()
    # The weights of the stopped step are in the model dir, marked partial.
    partial = json.loads((out / "model" / "hilt.json").read_text())["partial"]
    assert partial["stopped_in"] == "train" and partial["global_step"] == stopped and partial["weights"]
    assert (out / "model" / "adapter" / "adapter_model.safetensors").is_file()

    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data",
                      str(data), "--output", str(out), *ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed at step={stopped}" in result.stdout
    assert "partial" not in json.loads((out / "model" / "hilt.json").read_text())  # the rerun finished it


def test_output_with_other_settings_is_refused(hilt_exe, warm_base_dir, data, tmp_path):
    out = tmp_path / "job"
    first = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data),
                     "--output", str(out), "--set", "train.max_steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    second = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data),
                      "--output", str(out), "--set", "train.max_steps=3")
    assert second.returncode == 2
    # The checkpoints were made with max_steps=2: resuming them would claim a run that never happened.
    assert "holds checkpoints of another run (recipe train.max_steps)" in second.stderr


def test_a_checkpoint_cut_off_mid_save_is_skipped(tmp_path):
    # What SIGKILL during a save leaves: an empty or missing trainer_state.json in the newest dir.
    for step, state in ((10, '{"global_step": 10}'), (20, ""), (30, None), (40, '{"global_')):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert latest_checkpoint(tmp_path / "missing") is None


@pytest.mark.parametrize("phase, weights, merged", [
    ("read", None, False), ("data", False, False), ("model", False, False), ("train", True, True),
    ("evaluate", True, True), ("merge", True, True), ("score", True, True),
])
def test_sigterm_in_every_phase_stops_and_leaves_what_there_is(hilt_exe, warm_base_dir, data, tmp_path, phase,
                                                                 weights, merged):
    """SageMaker gives 120 s after SIGTERM. A job stopped in any phase exits 143 well within them,
    with the adapter (and merged weights) it has in /opt/ml/model and hilt.json marking it partial."""
    out = tmp_path / "job"
    proc = subprocess.Popen(
        [str(hilt_exe), "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data),
         "--output", str(out), "--set", "train.max_steps=4", "--set", "train.checkpoint_steps=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HILT_FAILPOINT": phase})
    log = []
    for line in proc.stdout:
        log.append(line)
        if f"failpoint: holding in {phase}" in line:
            break
    else:
        raise AssertionError(f"never reached {phase}: {''.join(log)[-3000:]}")
    stopped_at = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    elapsed = time.monotonic() - stopped_at
    text = "".join(log) + rest
    assert proc.returncode == 143, text[-3000:]
    assert elapsed < 60, f"took {elapsed:.0f} s to stop"
    assert f"SIGTERM during {phase}" in text
    model = out / "model"
    if weights is None:  # stopped before the job was even read: nothing to mark
        assert not (model / "hilt.json").exists()
        return
    partial = json.loads((model / "hilt.json").read_text())["partial"]
    assert partial["stopped_in"] == phase and partial["weights"] is weights and partial["merged"] is merged
    assert (model / "adapter" / "adapter_model.safetensors").is_file() is weights
    assert (model / "model.safetensors").is_file() is merged
    assert not list(model.rglob("*.tmp"))  # nothing half-written
    if phase == "train":
        assert partial["global_step"] >= 1 and latest_checkpoint(out / "checkpoints") is not None


def test_sigterm_while_the_finished_model_is_written_exits_143_with_it_whole(hilt_exe, warm_base_dir, data, tmp_path):
    """The write phase finishes its files, then the job reports the stop: 143, as for every other phase
    (it exited 0; issue 33, cosmetic)."""
    out = tmp_path / "job"
    proc = subprocess.Popen(
        [str(hilt_exe), "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data),
         "--output", str(out), "--set", "train.max_steps=2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "HILT_FAILPOINT": "write"})
    log = []
    for line in proc.stdout:
        log.append(line)
        if "failpoint: holding in write" in line:
            break
    else:
        raise AssertionError(f"never reached write: {''.join(log)[-3000:]}")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, ("".join(log) + rest)[-3000:]
    assert "finished first and is complete" in rest
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert "partial" not in manifest and manifest["metrics"]["global_step"] == 2
    assert (out / "model" / "README.md").is_file() and (out / "model" / "loss_curve.png").is_file()
