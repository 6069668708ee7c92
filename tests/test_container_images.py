"""The Dockerfile: no Docker engine here, so parse it and check what each image refers to."""

from __future__ import annotations

import shlex
import sys
import tomllib
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
def test_each_image_copies_existing_sources_and_runs_an_installed_script(target, command):
    steps = image(target)
    assert "pytorch/pytorch" in stages()["hilt"]["base"] and "cuda" in stages()["hilt"]["base"]
    copies = [value.split() for kind, value in steps if kind == "COPY"]
    for *sources, _dest in copies:
        for source in sources:
            assert (ROOT / source).exists(), f"COPY source {source} missing"
    # Everything the installed package needs is copied in.
    copied = {s for *sources, _ in copies for s in sources}
    assert {"pyproject.toml", "hilt", "hil", "training", "container", "recipes"} <= {c.strip("./") for c in copied}
    assert [value for kind, value in steps if kind in ("CMD", "ENTRYPOINT")] == [f'["{command}"]']
    assert command in SCRIPTS  # a console script of the distribution...
    assert (Path(sys.executable).parent / command).exists()  # ...installed in the environment
    run = " ".join(value for kind, value in steps if kind == "RUN")
    assert "pyproject.toml" in run and "--no-deps -e ." in run
    env = env_of(steps)
    assert env["HF_HUB_OFFLINE"] == "1"
    if target == "serve":
        assert env["HILT_SERVE_HOST"] == "0.0.0.0" and env["SAGEMAKER_BIND_TO_PORT"] == "8080"
        assert ("EXPOSE", "8080") in steps
        # SageMaker passes SAGEMAKER_BIND_TO_PORT only to images carrying this label.
        assert ("LABEL", "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true") in steps
        assert "deepspeed" not in run  # the inference image carries no training-only packages
    else:
        assert "deepspeed==" in run and env["HILT_RECIPES_DIR"] == "/opt/hilt/recipes"
