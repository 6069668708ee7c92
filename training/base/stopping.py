"""SIGTERM in any phase of a training job: stop within SageMaker's 120 s, leaving what there is.

SageMaker sends SIGTERM (spot interruption, StopTrainingJob, MaxRuntimeInSeconds) and
kills the container 120 s later; whatever is in /opt/ml/model then is uploaded. The
handler is installed when the job starts, before anything is read, and what it does
depends on the phase the job is in:

- inside a *protected* phase (the training loop, saving weights, writing hilt.json) it
  only records the request: the loop checkpoints at the end of the current step and
  stops (every rank together), a save finishes its file;
- anywhere else (reading data, tokenizing, loading the model, evaluating, merging,
  scoring) it raises ``JobStopped`` at once, a ``BaseException`` so that no library's
  ``except Exception`` swallows it.

The entry point then writes what the job has: the adapter if training produced one, the
merged model if the merge fits in the time left, and hilt.json marked ``partial``
(``hilt.training.run.artifacts.finish_partial_model_dir``).

``HILT_FAILPOINT=<phase>`` holds a job at the start of that phase until it is stopped
(at most a minute): tests use it to deliver SIGTERM inside a phase that lasts
milliseconds on a tiny model.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

GRACE_SECONDS = 120.0  # SIGTERM -> SIGKILL on SageMaker
FAILPOINT_ENV = "HILT_FAILPOINT"


class JobStopped(BaseException):
    """SIGTERM arrived in a phase that can be abandoned."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"stopped by SIGTERM during {phase}")
        self.phase = phase


class _State:
    requested_at: float | None = None
    phase = "start"
    protected = 0


_state = _State()


def _on_sigterm(signum, frame) -> None:
    first = _state.requested_at is None
    if first:
        _state.requested_at = time.monotonic()
        print(f"[hilt] SIGTERM during {_state.phase}: stopping (SageMaker kills the job in "
              f"{GRACE_SECONDS:.0f} s)", flush=True)
    if _state.protected == 0 and first:
        raise JobStopped(_state.phase)


def install():
    """Handle SIGTERM from now on in this process (the main thread's job); returns the handler
    it replaces, for ``uninstall``."""
    reset()
    return signal.signal(signal.SIGTERM, _on_sigterm)


def uninstall(previous) -> None:
    """Put back the handler ``install`` replaced (a job run inside a longer process: the demo)."""
    signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def note_request() -> None:
    """Record a stop that another handler received (the launcher forwarding it to workers)."""
    if _state.requested_at is None:
        _state.requested_at = time.monotonic()


def requested() -> bool:
    return _state.requested_at is not None


def seconds_left() -> float:
    """Seconds until SageMaker's SIGKILL (the full grace when no stop was asked for)."""
    if _state.requested_at is None:
        return GRACE_SECONDS
    return GRACE_SECONDS - (time.monotonic() - _state.requested_at)


def enter(phase: str) -> None:
    """Mark the start of ``phase``; a stop already asked for ends the job here."""
    _state.phase = phase
    print(f"[hilt] phase={phase}", flush=True)
    if _state.requested_at is not None and _state.protected == 0:
        raise JobStopped(phase)
    _failpoint(phase)


@contextlib.contextmanager
def protected(phase: str | None = None):
    """A section SIGTERM must not cut in half: the request is recorded and acted on after it."""
    previous = _state.phase
    if phase:
        _state.phase = phase
        print(f"[hilt] phase={phase}", flush=True)
    _state.protected += 1
    try:
        if phase:
            _failpoint(phase)
        yield
    finally:
        _state.protected -= 1
        if phase:
            _state.phase = previous


def _failpoint(phase: str) -> None:
    if os.environ.get(FAILPOINT_ENV) != phase:
        return
    print(f"[hilt] failpoint: holding in {phase} until SIGTERM", flush=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _state.requested_at is None:
        time.sleep(0.05)


def reset() -> None:
    """Forget an earlier job's stop (a process that runs several jobs)."""
    _state.requested_at, _state.phase, _state.protected = None, "start", 0
