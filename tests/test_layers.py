"""The import contracts (pyproject's [tool.importlinter]): imports go downward only, every module of
hilt sits in a layer, so a new package cannot slip past the contract, and no package's modules or
subpackages import each other in a cycle."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_imports_go_downward_only():
    exe = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(exe), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 kept, 0 broken" in result.stdout


def test_every_module_is_in_a_layer_and_no_bare_stage_package_is_installed():
    import importlib.metadata

    import grimp

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    graph = grimp.build_graph(config["root_package"])  # hilt's own modules only
    outside = sorted(m for m in graph.modules if m != "hilt" and not any(m == x or m.startswith(x + ".")
                                                                         for x in layers))
    assert outside == []
    assert {"hilt.labeling.export", "hilt.training.run.entry", "hilt.serving.serve", "hilt.core.errors",
            "hilt.flows.pipeline", "hilt.cli"} <= graph.modules
    # The design's folders are import names only under hilt: hilt is the one top-level package.
    assert importlib.metadata.distribution("hilt").read_text("top_level.txt").split() == ["hilt"]


def test_no_import_cycle_inside_a_stage_is_a_contract_over_every_stage():
    """pyproject's acyclic_siblings contract (run by lint-imports above) fails on a cycle among the
    modules and subpackages of any package of hilt, imports inside functions included; it covers
    every stage."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    acyclic = next(c for c in config["contracts"] if c["type"] == "acyclic_siblings")
    assert set(acyclic["ancestors"]) == set(layers)
