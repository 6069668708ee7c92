"""The layers contract (pyproject's [tool.importlinter]): imports go downward only, and every
module of hilt sits in a layer, so a new package cannot slip past the contract."""

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
    assert "2 kept, 0 broken" in result.stdout


def test_every_module_is_in_a_layer_and_no_bare_stage_package_is_installed():
    import importlib.metadata

    import grimp

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    graph = grimp.build_graph(config["root_package"])  # hilt's own modules only
    outside = sorted(m for m in graph.modules if m != "hilt" and not any(m == x or m.startswith(x + ".")
                                                                         for x in layers))
    assert outside == []
    assert {"hilt.labeling.export", "hilt.training.contract.entry", "hilt.serving.serve", "hilt.core.errors",
            "hilt.flows.pipeline", "hilt.cli"} <= graph.modules
    # The design's folders are import names only under hilt: hilt is the one top-level package.
    assert importlib.metadata.distribution("hilt").read_text("top_level.txt").split() == ["hilt"]


def cycles_within_stages() -> list[list[str]]:
    """Import cycles among the modules of one stage (hilt.training, hilt.serving, ...), imports inside
    functions included: a cycle closed by a function-level import is a cycle all the same."""
    import grimp

    graph = grimp.build_graph("hilt")
    found = []
    for stage in sorted(m for m in graph.modules if m.count(".") == 1):
        members = {m for m in graph.modules if m.startswith(stage + ".")}
        edges = {m: sorted(graph.find_modules_directly_imported_by(m) & members) for m in members}
        # Tarjan's strongly connected components: any with more than one module is a cycle.
        index, low, stack, on_stack, counter = {}, {}, [], set(), [0]

        def visit(node: str) -> None:
            index[node] = low[node] = counter[0]
            counter[0] += 1
            stack.append(node)
            on_stack.add(node)
            for target in edges[node]:
                if target not in index:
                    visit(target)
                    low[node] = min(low[node], low[target])
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for module in sorted(members):
            if module not in index:
                visit(module)
    return found


def test_no_import_cycle_inside_a_stage():
    assert cycles_within_stages() == []
