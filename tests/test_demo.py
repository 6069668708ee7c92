"""`hilt demo` runs end to end on embedded defaults, and a second run reuses the work."""

from __future__ import annotations

import re

import pytest

from conftest import run_hilt

pytestmark = pytest.mark.slow


def test_demo_end_to_end_then_reused(hilt_exe, tmp_path):
    first = run_hilt(hilt_exe, "demo", "--workdir", str(tmp_path / "demo"), timeout=900)
    assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
    assert "hilt demo summary" in first.stdout
    base, tuned = map(float, re.search(r"exact match\s+base ([0-9.]+) -> tuned ([0-9.]+)", first.stdout).groups())
    assert tuned >= base + 0.3
    before, after = map(float, re.search(r"train loss\s+([0-9.]+) -> ([0-9.]+)", first.stdout).groups())
    assert after < before / 2
    assert (tmp_path / "demo" / "train-job" / "model" / "hilt.json").is_file()

    second = run_hilt(hilt_exe, "demo", "--workdir", str(tmp_path / "demo"), timeout=300)
    assert second.returncode == 0
    assert second.stdout.count("(reused)") == 2
