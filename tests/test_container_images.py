"""The Dockerfiles: no Docker engine here, so parse them and check what they refer to."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("image, command", [("train", "train"), ("serve", "serve")])
def test_dockerfile_copies_existing_sources_and_runs_an_installed_script(image, command):
    parser = DockerfileParser(fileobj=(ROOT / "container" / f"Dockerfile.{image}").open("rb"))
    assert "pytorch/pytorch" in parser.baseimage and "cuda" in parser.baseimage
    copies = [i["value"].split() for i in parser.structure if i["instruction"] == "COPY"]
    assert copies
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} missing"
    # Everything the installed package needs is copied in.
    copied = {s for *sources, _ in copies for s in sources}
    assert {"pyproject.toml", "hilt", "hil", "training", "container", "recipes"} <= {c.strip("./") for c in copied}
    cmd = [i["value"] for i in parser.structure if i["instruction"] in ("CMD", "ENTRYPOINT")]
    assert cmd == [f'["{command}"]']
    assert command in SCRIPTS  # a console script of the distribution...
    assert (Path(sys.executable).parent / command).exists()  # ...installed in the environment
    run = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
    assert "pyproject.toml" in run and "--no-deps -e ." in run
    env = parser.envs
    if image == "serve":
        assert env["HILT_SERVE_HOST"] == "0.0.0.0" and env["SAGEMAKER_BIND_TO_PORT"] == "8080"
        assert "8080" in [i["value"] for i in parser.structure if i["instruction"] == "EXPOSE"]
        # SageMaker passes SAGEMAKER_BIND_TO_PORT only to images carrying this label.
        assert parser.labels.get("com.amazonaws.sagemaker.capabilities.accept-bind-to-port") == "true"
    assert env["HF_HUB_OFFLINE"] == "1"
