"""Several hosts the way SageMaker runs them: resourceconfig.json, host wait, NCCL/EFA, per-host checkpoints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from hilt.core.errors import UserError
from tasks import write_uppercase_dataset
from hilt.training.trainers.callbacks import latest_checkpoint
from hilt.training.run.cluster import network_env, prepare, wait_for_hosts
from hilt.training.base.job import Hosts, read_hosts


def _resource_config(opt_ml, **raw):
    opt_ml.input_config_dir.mkdir(parents=True, exist_ok=True)
    opt_ml.resource_config_file.write_text(json.dumps(raw))


def test_instance_groups_network_interface_and_instance_type(opt_ml):
    _resource_config(opt_ml, current_host="algo-3", hosts=["algo-1", "algo-2", "algo-3", "algo-4"],
                     current_group_name="train", current_instance_type="ml.p4d.24xlarge",
                     network_interface_name="eth0",
                     instance_groups=[{"instance_group_name": "data", "instance_type": "ml.c5.18xlarge",
                                       "hosts": ["algo-1"]},
                                      {"instance_group_name": "train", "instance_type": "ml.p4d.24xlarge",
                                       "hosts": ["algo-4", "algo-2", "algo-3"]}])
    hosts = read_hosts(opt_ml)
    # A heterogeneous cluster: the hosts of this host's group train together, sorted, the first leads.
    assert hosts.hosts == ["algo-2", "algo-3", "algo-4"] and hosts.node_rank == 1 and hosts.master == "algo-2"
    assert hosts.instance_type == "ml.p4d.24xlarge" and hosts.network_interface == "eth0"
    _resource_config(opt_ml, current_host="algo-9", hosts=["algo-9"],
                     instance_groups=[{"instance_group_name": "x", "hosts": ["algo-1"]}])
    with pytest.raises(UserError, match="current_host 'algo-9' is in no instance group"):
        read_hosts(opt_ml)


def test_nccl_interface_and_efa_variables():
    efa = Hosts(["algo-1", "algo-2"], "algo-1", "ml.p5.48xlarge", "eth0")
    assert network_env(efa) == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0", "FI_PROVIDER": "efa",
                                "FI_EFA_FORK_SAFE": "1", "FI_EFA_USE_DEVICE_RDMA": "1"}
    plain = Hosts(["algo-1", "algo-2"], "algo-1", "ml.g5.12xlarge", "eth0")
    assert network_env(plain) == {"NCCL_SOCKET_IFNAME": "eth0", "GLOO_SOCKET_IFNAME": "eth0"}
    assert network_env(Hosts(["algo-1"], "algo-1", "ml.p5.48xlarge", "eth0")) == {}
    # What the user set wins.
    assert prepare(Hosts(["localhost", "127.0.0.1"], "localhost", "", "eth0"),
                   {"NCCL_SOCKET_IFNAME": "ens5"})["NCCL_SOCKET_IFNAME"] == "ens5"


def test_waits_for_hosts_to_resolve_then_gives_up_in_one_line():
    calls = {"algo-2": 0}

    def resolve(host):
        if host == "algo-2":
            calls[host] += 1
            if calls[host] < 3:
                raise OSError("not yet")
        return "10.0.0.1"

    wait_for_hosts(["algo-1", "algo-2"], timeout=30, resolve=resolve)
    assert calls["algo-2"] == 3
    with pytest.raises(UserError, match=r"^hosts algo-2 did not resolve within 1 s .*HILT_HOST_WAIT_SECONDS$"):
        wait_for_hosts(["algo-1", "algo-2"], timeout=1, resolve=lambda h: (_ for _ in ()).throw(OSError())
                       if h == "algo-2" else "10.0.0.1")


@pytest.mark.slow
def test_two_hosts_train_together_and_keep_their_own_checkpoints(warm_base_dir, tmp_path):
    """Two SageMaker hosts on this machine (two /opt/ml trees, torchrun nnodes=2 over gloo on lo):
    each host checkpoints under its own name, so neither overwrites the other in the shared S3 path;
    only the first host writes the model."""
    from hilt.training.run.entry import prepare_local_tree
    from hilt.core.opt_ml import OptML

    data = write_uppercase_dataset(tmp_path / "data", n_train=32, n_validation=4)
    hosts = ["127.0.0.1", "localhost"]  # both resolve here; sorted, 127.0.0.1 leads
    port = str(29500 + os.getpid() % 1000)
    procs = []
    for host in hosts:
        tree = prepare_local_tree(tmp_path / host, "quickstart-tiny-sft", data, warm_base_dir,
                                  {"train.max_steps": "4", "train.checkpoint_steps": "2", "train.logging_steps": "2",
                                   "distributed.processes_per_host": "1"})
        _resource_config(tree, current_host=host, hosts=hosts, current_instance_type="ml.m5.xlarge",
                         network_interface_name="lo")
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tree.base), "HILT_MASTER_PORT": port,
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, "-m", "hilt.training.run.entry"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log[-4000:]
    assert "--nnodes=2 --node_rank=0 --master_addr=127.0.0.1" in logs[0]
    assert "--nnodes=2 --node_rank=1 --master_addr=127.0.0.1" in logs[1]
    for host in hosts:
        own = OptML(tmp_path / host).checkpoint_dir / host
        assert latest_checkpoint(own).name == "checkpoint-4", sorted(p.name for p in own.iterdir())
        assert not list((OptML(tmp_path / host).checkpoint_dir).glob("checkpoint-*"))
    assert json.loads((tmp_path / hosts[0] / "model" / "hilt.json").read_text())["hosts"] == hosts
    assert not (tmp_path / hosts[1] / "model" / "hilt.json").exists()
    losses = [float(x) for x in re.findall(r"train_loss=([0-9.e+-]+)", logs[0])]
    assert losses
