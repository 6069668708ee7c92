"""CPU training keeps freed activations in the heap: the page faults of reallocating them go.

Each case runs in its own process: malloc settings are process-wide and cannot be undone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# 20 "steps": each allocates and touches 8 layers' activations of 2-12 MiB (~200 MiB), then
# frees them all, as a training step does; count the minor page faults.
PROBE = """
import json, resource, sys
import torch
from hilt.training.kernels.host_memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step = []
    for layer in range(8):
        step += [torch.empty(n).fill_(1.0) for n in (1 << 20, 3 << 20, 1 << 19, 2 << 20)]
    del step
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _probe(mode: str, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120,
                          env={**base, **env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    step_pages = 8 * ((1 << 20) + (3 << 20) + (1 << 19) + (2 << 20)) * 4 // 4096  # 53,248
    kept = _probe("keep")
    default = _probe("default")
    assert kept["kept"] is True
    # With it, one step's pages are faulted in once and reused for the other 19 (~57k
    # measured). Without it, glibc maps big blocks afresh or trims the freed top of the
    # heap, depending on what else sits in the heap: 108k to 1M faults measured.
    assert kept["faults"] < 1.5 * step_pages
    assert default["faults"] > kept["faults"]


def test_a_users_own_allocator_settings_win():
    assert _probe("keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")["kept"] is False
    assert _probe("keep", MALLOC_MMAP_THRESHOLD_="65536")["kept"] is False
