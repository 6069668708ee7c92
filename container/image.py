"""Run an entry point of hilt's images (``train``, ``serve``) as SageMaker runs them: inside the
image, with the job's /opt/ml tree mounted.

Docker is used where its daemon answers (``docker run --rm --network host -v TREE:/opt/ml``).
Where there is none (CI, this project's machines), Debian's buildah runs the command in a working
container of the image with chroot isolation, as root: ``buildah from IMAGE`` then ``buildah
run --isolation chroot -v TREE:/opt/ml CONTAINER -- COMMAND``, the container removed afterwards.
Both share the host's network, so a ``serve`` inside answers on 127.0.0.1; the image's own
environment (``HF_HUB_OFFLINE``, its user, its PATH) applies, and ``env`` adds to it.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

from hilt.core.errors import UserError


@functools.cache
def engine() -> str:
    """``docker`` where a daemon answers, else ``buildah`` (root only).

    Raises:
        UserError: neither can run an image here.
    """
    if shutil.which("docker"):
        try:
            if subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0:
                return "docker"
        except subprocess.TimeoutExpired:
            pass
    if shutil.which("buildah") and os.geteuid() == 0:
        return "buildah"
    raise UserError("--image: no way to run an image here: Docker's daemon does not answer and buildah is not "
                    "installed or not run as root; start Docker, or install buildah (Debian) and run as root")


def image_exists(image: str) -> bool:
    kind = engine()
    command = ["docker", "image", "inspect", image] if kind == "docker" else \
        ["buildah", "inspect", "--type", "image", image]
    return subprocess.run(command, capture_output=True).returncode == 0


def require_image(image: str, flag: str = "--image") -> None:
    """Raises UserError when ``image`` is not a local image (build it, or pull it first)."""
    if not image_exists(image):
        raise UserError(f"{flag} {image}: no such local image ({engine()}); build it with scripts/build-images "
                        "or pull it first")


@contextlib.contextmanager
def image_command(image: str, command: list[str], mounts: dict[Path, str], env: dict[str, str]
                  ) -> Iterator[list[str]]:
    """The argv that runs ``command`` inside ``image`` with ``mounts`` (host path -> container path)
    and ``env``; a buildah working container lives as long as the context."""
    kind = engine()
    volumes = [arg for host, target in mounts.items() for arg in ("-v", f"{Path(host).resolve()}:{target}")]
    if kind == "docker":
        variables = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        yield ["docker", "run", "--rm", "--init", "--network", "host", *volumes, *variables, image, *command]
        return
    container = subprocess.run(["buildah", "from", "--pull-never", image], capture_output=True, text=True)
    if container.returncode != 0:
        raise UserError(f"--image {image}: buildah cannot start it ({container.stderr.strip()[-300:]}); "
                        "build it with scripts/build-images")
    name = container.stdout.strip()
    try:
        variables = [arg for key, value in env.items() for arg in ("--env", f"{key}={value}")]
        yield ["buildah", "run", "--isolation", "chroot", *volumes, *variables, name, "--", *command]
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)


@contextlib.contextmanager
def entry_command(entry: str, image: str | None, base: Path, settings: dict[str, str]
                  ) -> Iterator[tuple[list[str], dict[str, str]]]:
    """``(argv, env)`` that run the ``train`` or ``serve`` entry point over the /opt/ml tree ``base``
    with ``settings`` in its environment: from this environment, or inside ``image`` with ``base``
    mounted at /opt/ml (the image's own environment applies; ``settings`` add to it)."""
    module = {"train": "hilt.training.run.entry", "serve": "hilt.serving.serve"}[entry]
    if image is None:
        yield [sys.executable, "-m", module], {**os.environ, "SAGEMAKER_BASE_DIR": str(base), **settings}
        return
    if entry == "serve":  # the serve image runs unprivileged: the tree (hilt's own temporary copy) must be readable
        for folder, _dirs, files in os.walk(base):
            os.chmod(folder, 0o755)
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, os.stat(path).st_mode | 0o444)
    with image_command(image, [entry], {base: "/opt/ml"}, settings) as argv:
        yield argv, dict(os.environ)


def stop_process(process: subprocess.Popen, grace: float) -> int:
    """SIGTERM to the process group a ``start_new_session`` process leads (a container's process
    included), SIGKILL after ``grace`` seconds; the exit code."""
    if process.poll() is not None:
        return process.returncode
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()
