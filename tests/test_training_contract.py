"""The SageMaker training contract: /opt/ml inputs, failure file, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hilt.core.errors import UserError
from hilt.training.base.job import read_hosts, read_job
from hilt.core.opt_ml import OptML
from tasks import write_uppercase_dataset


def write_config(opt_ml: OptML, hyperparameters: dict, resource: dict | None = None, data: dict | None = None):
    opt_ml.hyperparameters_file.write_text(json.dumps(hyperparameters))
    if resource is not None:
        opt_ml.resource_config_file.write_text(json.dumps(resource))
    if data is not None:
        opt_ml.input_data_config_file.write_text(json.dumps(data))


def run_train_entry(opt_ml: OptML) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "train"
    return subprocess.run(
        [str(exe)], capture_output=True, text=True, timeout=300,
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(opt_ml.base)},
    )


def test_reads_the_job_as_sagemaker_writes_it(opt_ml, tiny_model_dir):
    write_uppercase_dataset(opt_ml.input_data_dir, n_train=4, n_validation=2)
    (opt_ml.channel_dir("model")).symlink_to(tiny_model_dir, target_is_directory=True)
    # SageMaker gives every hyperparameter value as a string.
    write_config(
        opt_ml,
        {"recipe": "quickstart-tiny-sft", "train.learning_rate": "0.0001", "train.max_steps": "5",
         "sagemaker_program": "ignored", "_tuning_objective_metric": "eval_loss"},
        resource={"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"},
        data={"train": {"TrainingInputMode": "File"}, "validation": {"TrainingInputMode": "File"},
              "model": {"TrainingInputMode": "File"}},
    )
    job = read_job(opt_ml)
    assert job.recipe.train.learning_rate == 1e-4 and job.recipe.train.max_steps == 5
    assert set(job.channels) == {"train", "validation", "model"}
    assert job.model_path == str(opt_ml.channel_dir("model"))
    assert job.hosts.master == "algo-1" and job.hosts.node_rank == 1
    assert job.world_size == 2  # one process per host without GPUs
    assert "sagemaker_program" not in job.hyperparameters


@pytest.mark.parametrize(
    "hyperparameters, setup, expected",
    [
        ({}, None, "hyperparameter 'recipe' is missing"),
        ({"recipe": "quickstart-tiny-sft", "train.lr": "1"}, "data", "train.lr: unknown key"),
        ({"recipe": "quickstart-tiny-sft"}, None, "no 'train' channel"),
        ({"recipe": "quickstart-tiny-sft"}, "data", "no base model"),
        ({"recipe": "quickstart-tiny-sft", "peft.method": "qlora"}, "data+model", "qlora needs a CUDA GPU"),
    ],
)
def test_user_errors_write_the_failure_file(opt_ml, tiny_model_dir, hyperparameters, setup, expected):
    if setup and "data" in setup:
        write_uppercase_dataset(opt_ml.input_data_dir, n_train=4, n_validation=2)
    if setup and "model" in setup:
        opt_ml.channel_dir("model").symlink_to(tiny_model_dir, target_is_directory=True)
    write_config(opt_ml, hyperparameters)
    result = run_train_entry(opt_ml)
    assert result.returncode == 2, result.stderr
    failure = opt_ml.failure_file.read_text()
    assert expected in failure
    assert failure.count("\n") == 1  # one readable line
    assert "Traceback" not in result.stderr
    assert not any(opt_ml.model_dir.iterdir())


def test_declared_channel_missing_and_unknown_channel(opt_ml):
    write_uppercase_dataset(opt_ml.input_data_dir, n_train=2, n_validation=1)
    write_config(opt_ml, {"recipe": "quickstart-tiny-sft"}, data={"train": {}, "extra": {}})
    with pytest.raises(UserError, match="channel 'extra' is declared"):
        read_job(opt_ml)
    (opt_ml.channel_dir("extra")).mkdir()
    with pytest.raises(UserError, match="unknown channel"):
        read_job(opt_ml)


def test_bad_records_name_file_and_line(opt_ml, tiny_model_dir):
    from hilt.training.data.records import read_records

    channel = opt_ml.channel_dir("train")
    channel.mkdir()
    (channel / "data.jsonl").write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
        + "\n" + json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n"
    )
    with pytest.raises(UserError, match=r"data.jsonl:2: messages\[0\].role is 'robot'"):
        read_records(channel, "sft")
    (channel / "data.jsonl").write_text(json.dumps({"prompt": [], "chosen": [], "rejected": []}) + "\n")
    with pytest.raises(UserError, match="preference record"):
        read_records(channel, "sft")


def test_local_host_when_no_resource_config(opt_ml):
    hosts = read_hosts(opt_ml)
    assert hosts.hosts == ["algo-1"] and hosts.node_rank == 0


def test_local_tree_reads_the_same_in_sagemaker_training_toolkit(tmp_path, tiny_model_dir, monkeypatch):
    """`hilt train`'s /opt/ml tree, read by the sagemaker-training toolkit itself, agrees with ours."""
    from hilt.training.run.entry import prepare_local_tree
    from hilt.training.base.recipe import decode_hyperparameter

    data = write_uppercase_dataset(tmp_path / "data", n_train=4, n_validation=2)
    opt_ml = prepare_local_tree(
        tmp_path / "job", "quickstart-tiny-sft", data, tiny_model_dir,
        {"train.learning_rate": "0.0001", "peft.target_modules": '["q_proj", "v_proj"]', "data.packing": "false"},
    )
    opt_ml.resource_config_file.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml.base))
    monkeypatch.setenv("SM_STUDIO_LOCAL_MODE", "true")  # else the toolkit waits on DNS for algo-1
    monkeypatch.setenv("SM_NUM_GPUS", "0")
    toolkit_dir = Path(sys.executable).parent.parent / "sagemaker-training-toolkit"
    assert toolkit_dir.is_dir(), f"{toolkit_dir} missing: run ./scripts/setup"
    monkeypatch.syspath_prepend(str(toolkit_dir))
    from sagemaker_training import environment

    toolkit = environment.Environment()
    ours = read_job(opt_ml)
    assert toolkit.hyperparameters == {k: decode_hyperparameter(v) for k, v in ours.hyperparameters.items()}
    assert {k: Path(v) for k, v in toolkit.channel_input_dirs.items()} == ours.channels
    assert Path(toolkit.model_dir) == opt_ml.model_dir
    assert Path(toolkit.output_data_dir) == opt_ml.output_data_dir
    assert toolkit.hosts == ours.hosts.hosts and toolkit.current_host == ours.hosts.current_host
    assert toolkit.master_hostname == ours.hosts.master
    assert ours.recipe.peft.target_modules == ["q_proj", "v_proj"] and ours.recipe.data.packing is False


def test_multi_host_gpu_job_launches_one_torchrun_node_per_host(opt_ml, tiny_model_dir, monkeypatch):
    """Two 8-GPU hosts: this host (algo-2) is node 1 of 2, algo-1 is the master."""
    from hilt.training.run.entry import torchrun_command

    write_uppercase_dataset(opt_ml.input_data_dir, n_train=2, n_validation=1)
    opt_ml.channel_dir("model").symlink_to(tiny_model_dir, target_is_directory=True)
    write_config(opt_ml, {"recipe": "llama3-70b-sft-lora-zero3"},
                 resource={"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]})
    monkeypatch.setenv("SM_NUM_GPUS", "8")
    job = read_job(opt_ml)
    assert job.processes_per_host == 8 and job.world_size == 16
    command = torchrun_command(job)
    assert command[1:3] == ["-m", "torch.distributed.run"] and command[-2:] == ["-m", "hilt.training.run.worker"]
    assert {"--nproc_per_node=8", "--nnodes=2", "--node_rank=1", "--master_addr=algo-1", "--master_port=29500"} <= set(command)
    assert job.recipe.deepspeed_config_path().name == "zero3.json"
