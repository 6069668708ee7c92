"""``HILT_SERVE_BACKEND=vllm``: vLLM generates; ``serve`` keeps the SageMaker contract.

vLLM pins a transformers older than hilt's, so the engine runs in a Python environment of its
own (``scripts/setup`` makes ``.venv-vllm`` beside ``.venv``; an image puts it in
``/opt/vllm``), as a process of its own: vLLM's OpenAI-compatible server on a Unix socket,
started by ``serve`` and stopped with it (``vllm_engine.py`` watches for ``serve`` dying).
AWS's LMI containers front their vLLM the same way.

What stays in ``serve``: the request schemas and their limits, the chat template and the
tokenizing (the engine gets token ids, so it sees exactly the prompt the ``hf`` backend sees),
the invocation's budget, stop sequences, cancelling on disconnect or SIGTERM, metering and
data capture. What vLLM does: scheduling, the paged KV cache, sampling. Each request goes to
``/v1/completions`` as prompt token ids and is streamed back as token ids
(``return_token_ids``); a request that ends early (client gone, budget spent, shutdown) closes
its connection, and vLLM aborts it.

Settings (environment of ``serve``):

- ``HILT_VLLM_PYTHON``: the vLLM environment's python (default: ``/opt/vllm/bin/python``,
  else ``.venv-vllm/bin/python`` beside hilt's environment).
- ``HILT_VLLM_ARGS``: more ``vllm serve`` arguments, e.g. ``--tensor-parallel-size 4``.
- ``HILT_VLLM_START_TIMEOUT``: seconds the engine may take to start (600).
- ``VLLM_CPU_KVCACHE_SPACE``: GiB of KV cache on a CPU (vLLM's own; 2 unless set).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from hilt.core.env import env_number
from hilt.core.errors import UserError
from hilt.serving.backend import Backend, bounded
from hilt.serving.image import stop_process

PYTHON_ENV = "HILT_VLLM_PYTHON"
ARGS_ENV = "HILT_VLLM_ARGS"
START_TIMEOUT_ENV = "HILT_VLLM_START_TIMEOUT"
IMAGE_PYTHON = Path("/opt/vllm/bin/python")
ENGINE_SCRIPT = Path(__file__).with_name("vllm_engine.py")
SERVED_NAME = "hilt"
DEFAULT_CPU_KV_GIB = "2"
# What model.generate samples with when neither the request nor the model's generation config says
# (transformers' GenerationConfig._get_default_generation_params); vLLM's own top_k default is none.
HF_SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "top_k": 50}
LOG_LINES = 40  # the engine's last lines, quoted when it fails


def vllm_python() -> Path:
    """The vLLM environment's interpreter.

    Raises:
        UserError: when none is found.
    """
    if os.environ.get(PYTHON_ENV):
        path = Path(os.environ[PYTHON_ENV])
        if not os.access(path, os.X_OK):
            raise UserError(f"{PYTHON_ENV}={path}: not an executable; point it at the python of an environment "
                            "with vLLM installed")
        return path
    beside = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    for path in (IMAGE_PYTHON, beside):
        if os.access(path, os.X_OK):
            return path
    raise UserError(f"HILT_SERVE_BACKEND=vllm: no vLLM environment at {IMAGE_PYTHON} or {beside}; run "
                    f"./scripts/setup (it makes .venv-vllm) or set {PYTHON_ENV} to a python with vLLM installed")


def on_gpu() -> bool:
    return Path("/dev/nvidiactl").exists()


class VLLMBackend(Backend):
    """vLLM's engine in a process of its own, reached over a Unix socket."""

    name = "vllm"
    concurrent_transforms = 16  # vLLM's scheduler batches many requests; keep it fed

    def load(self, model_dir):
        """The tokenizer and configs only: the weights are the engine's."""
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from hilt.core.layout import require_model_dir

        require_model_dir(Path(model_dir), hint="pass a save_pretrained model directory (a job's model/)")
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        config = AutoConfig.from_pretrained(model_dir)
        try:
            generation = GenerationConfig.from_pretrained(model_dir)
        except OSError:  # no generation_config.json: the model config's tokens
            generation = GenerationConfig.from_model_config(config)
        return tokenizer, config, generation

    def __init__(self, model_dir):
        super().__init__(model_dir)
        self.closing = threading.Event()
        self.exit_message: str | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=LOG_LINES)
        self.folder = Path(tempfile.mkdtemp(prefix="hilt-vllm-"))
        self.socket = self.folder / "engine.sock"
        self.clients: dict[int, object] = {}  # one HTTP client per event loop
        self.process = self._start()
        try:
            self._wait_ready(env_number(START_TIMEOUT_ENV, 600.0))
        except BaseException:
            self._stop_engine()
            raise
        threading.Thread(target=self._watch, name="vllm-watch", daemon=True).start()

    # -- the engine process -----------------------------------------------------------------

    def command(self) -> list[str]:
        dtype = "auto" if on_gpu() else "float32"  # float32 on a CPU, as the hf backend loads it there
        try:
            extra = shlex.split(os.environ.get(ARGS_ENV, ""))
        except ValueError as err:
            raise UserError(f"{ARGS_ENV}={os.environ[ARGS_ENV]!r}: {err}; write it as shell words, e.g. "
                            "'--tensor-parallel-size 4'") from None
        return [str(vllm_python()), str(ENGINE_SCRIPT), "--model", str(Path(self.model_dir).resolve()),
                "--served-model-name", SERVED_NAME, "--uds", str(self.socket), "--max-model-len", str(self.context),
                "--dtype", dtype, "--disable-uvicorn-access-log", *extra]

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}
        if not on_gpu():
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KV_GIB)
        argv = self.command()
        print(f"[serve] starting vLLM: {shlex.join(argv)}", flush=True)
        # Its own process group (it starts workers of its own; all stop together); stdin is the
        # pipe whose end tells it serve is gone.
        process = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder)
        threading.Thread(target=self._relay, args=(process.stdout,), name="vllm-log", daemon=True).start()
        return process

    def _relay(self, stream) -> None:
        """The engine's log, on serve's stderr with a prefix, its last lines kept for errors."""
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.log.append(line)
            print(f"[vllm] {line}", file=sys.stderr, flush=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM engine exited with code {self.process.returncode} while starting: "
                                   f"{self._last_lines()}")
            if self.shutdown.is_set():
                raise RuntimeError("the server was stopped while the vLLM engine started")
            if self._healthy():
                return
            time.sleep(0.5)
        raise RuntimeError(f"the vLLM engine did not answer /health within {timeout:.0f} s "
                           f"(raise {START_TIMEOUT_ENV}): {self._last_lines()}")

    def _healthy(self) -> bool:
        try:
            with _unix_opener(self.socket).open("http://engine/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def _last_lines(self, count: int = 6) -> str:
        lines = [line for line in self.log if line.strip()][-count:]
        return " | ".join(lines) or "(it printed nothing)"

    def _watch(self) -> None:
        """An engine that exits on its own makes the backend unhealthy (/ping 500)."""
        code = self.process.wait()
        if not self.closing.is_set():
            self.exit_message = (f"the vLLM engine exited with code {code}; this server cannot generate any more "
                                 f"(last lines: {self._last_lines(3)})")
            print(f"[serve] {self.exit_message}", file=sys.stderr, flush=True)

    def failure(self) -> str | None:
        if self.exit_message is None and not self.closing.is_set() and self.process.poll() is not None:
            return f"the vLLM engine exited with code {self.process.returncode}"
        return self.exit_message

    def close(self) -> None:
        super().close()
        self._stop_engine()

    def _stop_engine(self) -> None:
        self.closing.set()
        stop_process(self.process, 10)  # its process group: the engine's workers too
        with contextlib.suppress(OSError):  # already gone
            self.process.stdin.close()
        with contextlib.suppress(OSError):  # already gone
            self.socket.unlink(missing_ok=True)
            self.folder.rmdir()

    # -- generation -------------------------------------------------------------------------

    def request_body(self, ids: list[int], kwargs: dict) -> dict:
        """vLLM's completion request for a prepared request: every option hilt accepts, mapped."""
        body = {"model": SERVED_NAME, "prompt": ids, "max_tokens": kwargs["max_new_tokens"], "stream": True,
                "return_token_ids": True, "stop_token_ids": sorted(self.eos_ids), "skip_special_tokens": False}
        if kwargs.get("do_sample"):
            # Unset: what model.generate would take, the model's generation config over transformers'
            # defaults (top_k 50 among them; vLLM's own default is no top-k).
            for name, default in HF_SAMPLING_DEFAULTS.items():
                value = kwargs.get(name, getattr(self.generation_config, name, None))
                body[name] = default if value is None else value
        else:
            body.update(temperature=0.0, top_p=1.0, top_k=0)
        if "seed" in kwargs:
            body["seed"] = kwargs["seed"]
        if "repetition_penalty" in kwargs:
            body["repetition_penalty"] = kwargs["repetition_penalty"]
        if kwargs.get("stop"):  # kept in the output: hilt cuts the text before it, as for hf
            body.update(stop=kwargs["stop"], include_stop_str_in_output=True)
        return body

    def _client(self):
        import httpx

        loop = asyncio.get_running_loop()
        client = self.clients.get(id(loop))
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=str(self.socket))
            client = httpx.AsyncClient(transport=transport, base_url="http://engine",
                                       timeout=httpx.Timeout(None, connect=10.0),
                                       limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))
            self.clients[id(loop)] = client
        return client

    def _tokens(self, ids, kwargs, deadline, events, text):
        return bounded(self._streamed(ids, kwargs, text), deadline, events)

    async def _streamed(self, ids: list[int], kwargs: dict, text):
        """The generated token ids so far, after each chunk vLLM streams."""
        import httpx

        tokens: list[int] = []
        try:
            async with self._client().stream("POST", "/v1/completions", json=self.request_body(ids, kwargs)) as reply:
                if reply.status_code != 200:
                    detail = (await reply.aread()).decode("utf-8", "replace")[:500]
                    raise RuntimeError(f"the vLLM engine refused the request ({reply.status_code}): {detail}")
                async for line in reply.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        return
                    chunk = json.loads(data)
                    if "error" in chunk:
                        raise RuntimeError(f"the vLLM engine failed: {chunk['error']}")
                    for choice in chunk.get("choices", []):
                        tokens.extend(choice.get("token_ids") or [])
                    yield list(tokens)
                    if text.done:
                        return
        except httpx.HTTPError as err:
            raise RuntimeError(f"lost the vLLM engine mid-request ({type(err).__name__}: {err}); "
                               f"{self.failure() or 'it is still running'}") from None


def _unix_opener(path: Path) -> urllib.request.OpenerDirector:
    """A urllib opener whose HTTP connections go to the Unix socket ``path``."""
    import http.client
    import socket

    class Connection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(str(path))

    class Handler(urllib.request.HTTPHandler):
        def http_open(self, request):
            return self.do_open(Connection, request)

    return urllib.request.build_opener(Handler)
