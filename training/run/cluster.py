"""Several hosts, the way SageMaker's training toolkit prepares them before the first collective.

- every host in ``resourceconfig.json`` must resolve by name before torchrun starts (a
  host's DNS entry can appear seconds after the job starts): waited for, with a deadline
  and one line naming the hosts that never resolved;
- NCCL talks over the interface SageMaker names (``network_interface_name``), not the
  first one it finds (often the Docker bridge);
- on instance types with EFA, NCCL goes through libfabric's EFA provider with GPUDirect
  RDMA, and fork safety on (data-loader workers fork after EFA memory is registered).

Variables the user set win: nothing here overrides the environment.
"""

from __future__ import annotations

import socket
import time

from hilt.core.env import env_number
from hilt.core.errors import UserError
from hilt.training.base.job import Hosts

HOST_WAIT_ENV = "HILT_HOST_WAIT_SECONDS"
DEFAULT_HOST_WAIT_SECONDS = 300.0
# Instance families with Elastic Fabric Adapter (the sizes that carry one).
EFA_INSTANCE_TYPES = frozenset({
    "ml.p4d.24xlarge", "ml.p4de.24xlarge", "ml.p5.48xlarge", "ml.p5e.48xlarge", "ml.p5en.48xlarge",
    "ml.g5.48xlarge", "ml.g6.48xlarge", "ml.g6e.48xlarge", "ml.trn1.32xlarge", "ml.trn1n.32xlarge",
    "ml.trn2.48xlarge", "ml.g4dn.metal", "ml.g4dn.12xlarge",
})
# EFA with GPUDirect RDMA (A100/H100/H200 and Trainium instances).
RDMA_INSTANCE_TYPES = frozenset({t for t in EFA_INSTANCE_TYPES if t.startswith(("ml.p4", "ml.p5", "ml.trn"))})


def wait_for_hosts(hosts: list[str], timeout: float | None = None, resolve=socket.gethostbyname) -> None:
    """Block until every host resolves.

    Raises:
        UserError: naming the hosts still unresolved at the deadline.
    """
    timeout = env_number(HOST_WAIT_ENV, DEFAULT_HOST_WAIT_SECONDS) if timeout is None else timeout
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    delay = 0.5
    while True:
        still = []
        for host in pending:
            try:
                resolve(host)
            except OSError:
                still.append(host)
        pending = still
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise UserError(f"hosts {', '.join(pending)} did not resolve within {timeout:.0f} s (resourceconfig.json "
                            f"lists {len(hosts)}); check the cluster's network, or raise {HOST_WAIT_ENV}")
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 10.0)


def network_env(hosts: Hosts) -> dict[str, str]:
    """The NCCL / libfabric variables a multi-host job on ``hosts`` needs (empty on one host)."""
    if len(hosts.hosts) < 2:
        return {}
    env: dict[str, str] = {}
    if hosts.network_interface:
        env["NCCL_SOCKET_IFNAME"] = hosts.network_interface
        env["GLOO_SOCKET_IFNAME"] = hosts.network_interface
    if hosts.instance_type in EFA_INSTANCE_TYPES:
        env.update(FI_PROVIDER="efa", FI_EFA_FORK_SAFE="1")
        if hosts.instance_type in RDMA_INSTANCE_TYPES:
            env["FI_EFA_USE_DEVICE_RDMA"] = "1"
    return env


def prepare(hosts: Hosts, environ: dict[str, str]) -> dict[str, str]:
    """Wait for the hosts, then ``environ`` with the network variables it does not set already."""
    if len(hosts.hosts) > 1:
        wait_for_hosts(hosts.hosts)
    return {**network_env(hosts), **environ}
