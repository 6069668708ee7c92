"""The images hilt ships, read as a Dockerfile and then built (scripts/build-images) and run the way
SageMaker runs them: ``train`` and ``serve`` inside the image over a mounted /opt/ml tree."""

from __future__ import annotations

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


@pytest.mark.slow
def test_serve_runs_inside_the_serve_image_without_network(built_images, tiny_model_dir, tmp_path):
    """`serve` in hilt-serve (as an unprivileged user) with /opt/ml/model mounted: /ping, both request
    schemas, the metering header, and not one outbound socket operation."""
    from conftest import _free_port
    from hilt.serving.image import image_command, stop_process

    tree = tmp_path / "opt-ml"
    shutil.copytree(tiny_model_dir, tree / "model")
    subprocess.run(["chmod", "-R", "a+rX", str(tree)], check=True)  # as SageMaker extracts it: readable by all
    audit = tmp_path / "audit"
    audit.mkdir(mode=0o777)
    audit.chmod(0o777)
    port = _free_port()
    settings = {"SAGEMAKER_BIND_TO_PORT": str(port), "HILT_SERVE_HOST": "127.0.0.1",
                "HILT_AUDIT_NETWORK": "/audit/network.jsonl"}
    url = f"http://127.0.0.1:{port}"
    with image_command(built_images["serve"], ["serve"], {tree: "/opt/ml", audit: "/audit"}, settings) as argv:
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
            answers = {}
            for name, body in (("generate", {"inputs": "Book room 4", "parameters": {"max_new_tokens": 4}}),
                               ("chat", {"messages": [{"role": "user", "content": "Book room 4"}],
                                         "max_tokens": 4})):
                request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                                 headers={"Content-Type": "application/json"}, method="POST")
                with urllib.request.urlopen(request, timeout=60) as response:
                    answers[name] = (response.status, json.loads(response.headers["X-Amzn-Inference-Metering"]),
                                     json.loads(response.read()))
        finally:
            log = ""
            stop_process(server, 30)
            log = server.stdout.read()
    assert answers["generate"][0] == 200 and "generated_text" in answers["generate"][2]
    assert answers["chat"][2]["object"] == "chat.completion"
    for _, metering, _ in answers.values():
        assert metering["Dimension"] == "inference.count" and metering["ConsumedUnits"] >= 1
    assert "model loaded from /opt/ml/model" in log
    events = (audit / "network.jsonl").read_text().splitlines() if (audit / "network.jsonl").exists() else []
    assert events == [], events[:5]


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
