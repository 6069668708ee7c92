"""The images hilt ships, read as a Dockerfile and then built (scripts/build-images) and run the way
SageMaker runs them: ``train`` and ``serve`` inside the image over a mounted /opt/ml tree."""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def stages() -> dict[str, dict]:
    """Each stage of container/Dockerfile: its base and its instructions (comments left out)."""
    parser = DockerfileParser(fileobj=(ROOT / "container" / "Dockerfile").open("rb"))
    found: dict[str, dict] = {}
    current = None
    for item in parser.structure:
        if item["instruction"] == "FROM":
            base, _, name = item["value"].partition(" AS ")
            current = found.setdefault(name.strip(), {"base": base.strip(), "steps": []})
        elif current is not None and item["instruction"] != "COMMENT":
            current["steps"].append((item["instruction"], item["value"]))
    return found


def image(target: str) -> list[tuple[str, str]]:
    """The instructions that build ``target``: its base stages' first, then its own."""
    all_stages = stages()
    chain = [target]
    while all_stages[chain[-1]]["base"] in all_stages:
        chain.append(all_stages[chain[-1]]["base"])
    return [step for name in reversed(chain) for step in all_stages[name]["steps"]]


def env_of(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(pair.split("=", 1) for kind, value in steps if kind == "ENV" for pair in shlex.split(value))


@pytest.mark.parametrize("target, command", [("train", "train"), ("serve", "serve")])
def test_each_image_installs_the_wheel_offline_at_the_locked_versions(target, command):
    steps = image(target)
    assert stages()["hilt"]["base"] == "${BASE_IMAGE}"
    run = " ".join(value for kind, value in steps if kind == "RUN")
    # hilt's wheel, not an editable checkout; nothing from an index; the tested versions.
    assert "hilt-*.whl" in run and " -e " not in run and "--no-index" in run and "-c /wheelhouse/constraints.txt" in run
    # The wheels are mounted for the install, never copied into a layer; their stamps key the layer cache.
    assert all("wheel" not in value for kind, value in steps if kind in ("COPY", "ADD"))
    assert "${DEPS_STAMP}" in run and "${HILT_STAMP}" in run
    for *sources, _dest in (value.split() for kind, value in steps if kind == "COPY"):
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} missing"
    assert [value for kind, value in steps if kind in ("CMD", "ENTRYPOINT")] == [f'["{command}"]']
    assert command in SCRIPTS  # a console script of the distribution
    env = env_of(steps)
    assert env["HF_HUB_OFFLINE"] == "1" and env["PATH"].startswith("/opt/hilt/venv/bin:")
    if target == "serve":
        assert env["HILT_SERVE_HOST"] == "0.0.0.0" and env["SAGEMAKER_BIND_TO_PORT"] == "8080"
        assert ("EXPOSE", "8080") in steps and ("USER", "1000:1000") in steps
        # SageMaker passes SAGEMAKER_BIND_TO_PORT only to images carrying this label.
        assert any("com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in value
                   for kind, value in steps if kind == "LABEL")
        assert "deepspeed" not in run  # the inference image carries no training-only packages
    else:
        assert "deepspeed" in run and env["HILT_RECIPES_DIR"] == "/opt/hilt/recipes"


# ------------------------------------------------------------------ built and run


def _job_tree(root: Path, model: Path, data: Path, hyperparameters: dict) -> Path:
    """An /opt/ml tree as SageMaker lays it out: files copied in (a link would point outside the container)."""
    tree = root / "opt-ml"
    (tree / "input" / "config").mkdir(parents=True)
    (tree / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channels = {"train": data / "train", "model": model}
    (tree / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels}))
    for name, source in channels.items():
        shutil.copytree(source, tree / "input" / "data" / name)
    return tree


@pytest.mark.slow
def test_train_runs_inside_the_train_image(built_images, warm_base_dir, dataset_dir, tmp_path):
    """`train` in hilt-train over a mounted /opt/ml: the model, SageMaker's metric lines, and on a bad
    hyperparameter the FailureReason in output/failure."""
    from hilt.serving.image import image_command

    tree = _job_tree(tmp_path / "ok", warm_base_dir, dataset_dir,
                     {"recipe": "quickstart-tiny-sft", "train.max_steps": "4", "train.logging_steps": "2"})
    with image_command(built_images["train"], ["train"], {tree: "/opt/ml"}, {"TRAINING_JOB_NAME": "in-image"}) as argv:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "[hilt] step=2 train_loss=" in result.stdout and "[hilt] model written to /opt/ml/model" in result.stdout
    manifest = json.loads((tree / "model" / "hilt.json").read_text())
    assert manifest["metrics"]["global_step"] == 4
    assert (tree / "model" / "adapter" / "adapter_model.safetensors").is_file()

    bad = _job_tree(tmp_path / "bad", warm_base_dir, dataset_dir,
                    {"recipe": "quickstart-tiny-sft", "train.learning_rate": "fast"})
    with image_command(built_images["train"], ["train"], {bad: "/opt/ml"}, {}) as argv:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, (result.stdout + result.stderr)[-3000:]
    failure = (bad / "output" / "failure").read_text()
    assert "train.learning_rate" in failure and "Traceback" not in result.stderr


@contextlib.contextmanager
def serving(image: str, model_dir: Path, tmp_path: Path, **settings):
    """``serve`` inside ``image`` over a copy of ``model_dir`` as /opt/ml/model, until it answers /ping
    200; yields (url, log lines so far: filled in when the context ends)."""
    from conftest import _free_port
    from hilt.serving.image import image_command, stop_process

    tree = tmp_path / "opt-ml"
    shutil.copytree(model_dir, tree / "model")
    subprocess.run(["chmod", "-R", "a+rX", str(tree)], check=True)  # as SageMaker extracts it: readable by all
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    mounts = {tree: "/opt/ml", **settings.pop("mounts", {})}
    log: list[str] = []
    env = {"SAGEMAKER_BIND_TO_PORT": str(port), "HILT_SERVE_HOST": "127.0.0.1", **settings}
    with image_command(image, ["serve"], mounts, env) as argv:
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 240
            while True:
                assert server.poll() is None, server.stdout.read()[-3000:]
                assert time.monotonic() < deadline, "serve in the image did not answer /ping in 240 s"
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                        if response.status == 200:
                            break
                except urllib.error.HTTPError as err:
                    assert err.code == 503, err.read()  # loading; anything else is a model that will not load
                    time.sleep(1)
                except OSError:
                    time.sleep(1)
            yield url, log
        finally:
            stop_process(server, 30)
            log += server.stdout.read().splitlines()


@pytest.mark.slow
def test_serve_runs_inside_the_serve_image_without_network(built_images, tiny_model_dir, tmp_path):
    """`serve` in hilt-serve (as an unprivileged user) with /opt/ml/model mounted: /ping, both request
    schemas, the metering header, and not one outbound socket operation."""
    audit = tmp_path / "audit"
    audit.mkdir()
    audit.chmod(0o777)
    answers = {}
    with serving(built_images["serve"], tiny_model_dir, tmp_path, mounts={audit: "/audit"},
                 HILT_AUDIT_NETWORK="/audit/network.jsonl") as (url, log):
        for name, body in (("generate", {"inputs": "Book room 4", "parameters": {"max_new_tokens": 4}}),
                           ("chat", {"messages": [{"role": "user", "content": "Book room 4"}], "max_tokens": 4})):
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=60) as response:
                answers[name] = (response.status, json.loads(response.headers["X-Amzn-Inference-Metering"]),
                                 json.loads(response.read()))
    assert answers["generate"][0] == 200 and "generated_text" in answers["generate"][2]
    assert answers["chat"][2]["object"] == "chat.completion"
    for _, metering, _ in answers.values():
        assert metering["Dimension"] == "inference.count" and metering["ConsumedUnits"] >= 1
    assert any("model loaded from /opt/ml/model" in line for line in log), log[-20:]
    events = (audit / "network.jsonl").read_text().splitlines() if (audit / "network.jsonl").exists() else []
    assert events == [], events[:5]


@pytest.mark.slow
def test_the_buyers_sample_notebook_runs(built_images, hilt_exe, lora_run, tmp_path, monkeypatch, capsys):
    """`hilt package listing` writes sample-notebook.ipynb: valid nbformat; its SageMaker cells run against
    moto (all but streaming, which moto does not implement) and its container cells against hilt-serve."""
    import contextlib as _contextlib
    import io

    import nbformat
    from moto import mock_aws

    from conftest import run_hilt

    out, _ = lora_run
    listing = tmp_path / "listing" / "LISTING.md"
    result = run_hilt(hilt_exe, "package", "listing", "--model-dir", str(out / "model"), "--out", str(listing))
    assert result.returncode == 0, result.stderr
    notebook = nbformat.read(listing.parent / "sample-notebook.ipynb", as_version=4)
    nbformat.validate(notebook)
    code = [(cell.source, set(cell.metadata.get("tags", []))) for cell in notebook.cells if cell.cell_type == "code"]
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                       "INSTANCE_TYPE": "ml.m5.xlarge", "TRANSFORM_INSTANCE_TYPE": "ml.m5.xlarge"}.items():
        monkeypatch.setenv(key, value)
    namespace: dict = {}
    ran = []
    with mock_aws():
        for source, tags in code:
            if "sagemaker" in tags and "streaming" not in tags:
                exec(source, namespace)
                ran.append(source.splitlines()[0])
    assert any("create_endpoint" in source for source, tags in code if "sagemaker" in tags)
    assert len(ran) == len([1 for _, tags in code if "sagemaker" in tags]) - 1
    with serving(built_images["serve"], out / "model", tmp_path) as (url, _log):
        monkeypatch.setenv("CONTAINER_URL", url)
        printed = io.StringIO()
        with _contextlib.redirect_stdout(printed):
            for source, tags in code:
                if "container" in tags:
                    exec(source, namespace)
    lines = printed.getvalue().splitlines()
    assert lines[-1] == "data: [DONE]" and "'Dimension': 'inference.count'" in lines[0], lines
    # A second listing rewrites its own notebook; a notebook hilt did not write is left alone.
    assert run_hilt(hilt_exe, "package", "listing", "--model-dir", str(out / "model"), "--out",
                    str(listing)).returncode == 0
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sample-notebook.ipynb").write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    result = run_hilt(hilt_exe, "package", "listing", "--model-dir", str(out / "model"), "--out",
                      str(theirs / "LISTING.md"))
    assert result.returncode == 2 and "is not a sample notebook hilt wrote" in result.stderr
    assert (theirs / "sample-notebook.ipynb").read_text().startswith('{"cells": []')
    assert not (theirs / "LISTING.md").exists()  # refused before anything was written


@pytest.mark.slow
def test_package_validate_replays_against_the_serve_image(built_images, hilt_exe, lora_run, tmp_path):
    """`hilt package validate --image`: SageMaker's validation transform against the image's `serve`."""
    from conftest import run_hilt

    out, _ = lora_run
    tar = tmp_path / "model.tar.gz"
    assert run_hilt(hilt_exe, "package", "build", "--model-dir", str(out / "model"), "--out", str(tar)).returncode == 0
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"inputs": [{"role": "user", "content": f"upper: {w}"}], "parameters": {"max_new_tokens": 6}})
        + "\n" for w in ("abcd", "wxyz", "room")))
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tar), "--input", str(tmp_path / "in.jsonl"),
                      "--image", built_images["serve"], "--output", str(tmp_path / "validation"))
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "validation" / "validation-report.json").read_text())
    assert report["passed"] and report["image"] == built_images["serve"] and report["records"] == 3
    assert len((tmp_path / "validation" / "in.jsonl.out").read_text().splitlines()) == 3
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tar), "--input", str(tmp_path / "in.jsonl"),
                      "--image", "hilt-no-such-image:1")
    assert result.returncode == 2 and "--image hilt-no-such-image:1: no such local image" in result.stderr


def test_build_images_refuses_what_it_cannot_do(tmp_path):
    """No root: one line saying so, before anything is installed or written."""
    import os

    script = ROOT / "scripts" / "build-images"
    result = subprocess.run([str(script), "--bogus"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "unknown argument --bogus" in result.stderr
    if os.geteuid() == 0 and shutil.which("setpriv"):
        result = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and "need root" in result.stderr, result.stderr


@pytest.mark.slow
def test_serve_with_vllm_runs_inside_its_image(real_model_dir, tmp_path):
    """hilt-serve-vllm (scripts/build-images --vllm): serve in front, vLLM from /opt/vllm generating,
    as an unprivileged user over /opt/ml/model; both schemas, streaming and the metering header."""
    from hilt.serving.image import image_exists

    if shutil.which("buildah") is None or not image_exists("hilt-serve-vllm:latest"):
        pytest.skip("hilt-serve-vllm is built by `scripts/build-images --vllm` (3.5 GB more; CI builds only "
                    "hilt-serve and hilt-train)")
    with serving("hilt-serve-vllm:latest", real_model_dir, tmp_path, VLLM_CPU_KVCACHE_SPACE="1") as (url, log):
        answers = {}
        for name, body in (("generate", {"inputs": "What is the capital of France?",
                                         "parameters": {"max_new_tokens": 16}}),
                           ("chat", {"messages": [{"role": "user", "content": "What is the capital of France?"}],
                                     "max_tokens": 16})):
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"}, method="POST")
            with urllib.request.urlopen(request, timeout=120) as response:
                answers[name] = (json.loads(response.headers["X-Amzn-Inference-Metering"]), json.loads(response.read()))
    assert "Paris" in answers["generate"][1]["generated_text"]
    assert answers["chat"][1]["choices"][0]["message"]["content"] == answers["generate"][1]["generated_text"]
    assert all(metering["ConsumedUnits"] >= 1 for metering, _ in answers.values())
    assert any("model loaded from /opt/ml/model (backend vllm)" in line for line in log), log[-20:]
