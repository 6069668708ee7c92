"""``hilt studio start|stop|status``: a local Label Studio server, no prompts.

The server runs from its own environment (``.venv-studio``; Label Studio pins Django,
pytz, pyarrow... that must not meet hilt's), bound to 127.0.0.1, with SQLite and its
media under the data dir. The admin user and a known API token are created on the first
start; they are kept in ``<data dir>/hilt-studio.json`` so restarts reuse them.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hilt.core.errors import UserError

DIR_ENV = "HILT_STUDIO_DIR"
BIN_ENV = "HILT_STUDIO_BIN"
DEFAULT_DIR = Path(".hilt") / "studio"
STATE_FILE = "hilt-studio.json"
ADMIN_EMAIL = "admin@hilt.local"
REPO_ROOT = Path(__file__).resolve().parent.parent


def studio_dir(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir or os.environ.get(DIR_ENV) or DEFAULT_DIR).resolve()


def studio_executable() -> Path:
    exe = Path(os.environ.get(BIN_ENV) or REPO_ROOT / ".venv-studio" / "bin" / "label-studio")
    if not exe.is_file():
        raise UserError(f"Label Studio server not installed at {exe}: run ./scripts/setup (or set {BIN_ENV})")
    return exe


def read_state(data_dir: str | Path | None = None) -> dict | None:
    path = studio_dir(data_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_private(path: Path, text: str) -> None:
    """Write a secret-bearing file readable by its owner only (0600), also when it existed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def studio_env(data_dir: Path, state: dict) -> dict[str, str]:
    """Environment for a headless, offline, non-interactive Label Studio."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        DJANGO_DB="sqlite",
        LABEL_STUDIO_USERNAME=state["user"],
        LABEL_STUDIO_PASSWORD=state["password"],
        LABEL_STUDIO_USER_TOKEN=state["token"],
        # The known token only works if legacy tokens are on at the *first* start.
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        # No calls out: version check, analytics and Sentry are off.
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        # Webhooks to 127.0.0.1 (hilt pipeline watch) are refused without this.
        USE_DEFAULT_BANNED_SUBNETS="false",
    )
    return env


def start(port: int = 8080, data_dir: str | Path | None = None, timeout: float = 600.0) -> dict:
    """Start the server (or find it running) and wait until ``/health`` answers.

    Returns:
        The state: url, user, password, token, pid, data dir, log file.

    Raises:
        UserError: when the port is taken by something else or the server does not come up.
    """
    directory = studio_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    # The folder holds the admin password, the API token and the database: owner only.
    directory.chmod(0o700)
    state = read_state(directory)
    if state and _alive(state["pid"]) and healthy(state["url"]):
        return {**state, "already_running": True}
    state = {
        "user": (state or {}).get("user", ADMIN_EMAIL),
        "password": (state or {}).get("password") or secrets.token_urlsafe(12),
        "token": (state or {}).get("token") or secrets.token_hex(20),
    }
    if not _port_free(port):
        raise UserError(f"port {port} on 127.0.0.1 is in use; pass --port with a free port or stop what uses it")
    log_path = directory / "label-studio.log"
    log = log_path.open("ab")
    command = [str(studio_executable()), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            env=studio_env(directory, state), cwd=directory, start_new_session=True)
    state.update(pid=proc.pid, port=port, url=f"http://127.0.0.1:{port}", data_dir=str(directory), log=str(log_path))
    write_private(directory / STATE_FILE, json.dumps(state, indent=2))
    started = time.monotonic()
    last_report = 0.0
    while not healthy(state["url"]):
        waited = time.monotonic() - started
        if proc.poll() is not None:
            raise UserError(f"Label Studio exited with code {proc.returncode} while starting; see {log_path}")
        if waited > timeout:
            stop(directory)
            raise UserError(f"Label Studio did not answer /health within {timeout:.0f}s; see {log_path}")
        if waited - last_report >= 10:
            print(f"waiting for Label Studio on {state['url']} (first start runs migrations)... {waited:.0f}s",
                  file=sys.stderr, flush=True)
            last_report = waited
        time.sleep(0.5)
    return {**state, "already_running": False, "seconds": round(time.monotonic() - started, 1)}


def stop(data_dir: str | Path | None = None, timeout: float = 30.0) -> bool:
    """Stop the server started from this data dir. Returns whether one was running."""
    state = read_state(data_dir)
    if not state or not _alive(state["pid"]):
        return False
    try:
        os.killpg(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while _alive(state["pid"]) and time.monotonic() < deadline:
        try:
            os.waitpid(state["pid"], os.WNOHANG)  # reap it when it is our child
        except ChildProcessError:
            pass
        time.sleep(0.2)
    if _alive(state["pid"]):
        os.killpg(state["pid"], signal.SIGKILL)
    return True


def status(data_dir: str | Path | None = None) -> dict:
    state = read_state(data_dir)
    if not state:
        return {"running": False, "data_dir": str(studio_dir(data_dir))}
    return {**state, "running": _alive(state["pid"]) and healthy(state["url"])}
