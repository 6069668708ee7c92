"""``serve`` as a local process: started over an ``/opt/ml`` tree, ready when ``/ping`` answers 200."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def start_serve(base: Path, port: int, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``serve`` with ``SAGEMAKER_BASE_DIR=base`` (its model in ``base/model``) on 127.0.0.1:port.

    Returns:
        (the process, its URL); wait for it with ``wait_ready``.
    """
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port), **(extra_env or {})}
    env.pop("HILT_SERVE_HOST", None)
    server = subprocess.Popen([sys.executable, "-m", "hilt.serving.serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    return server, f"http://127.0.0.1:{port}"


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 300.0, path: str = "/ping") -> bool:
    """Poll ``url + path`` until it answers 200 (True), the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.3)
