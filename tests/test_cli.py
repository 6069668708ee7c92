"""The ``hilt`` command: help, version, user errors."""

from __future__ import annotations

import subprocess
import sys

from hilt import __version__


def run(*args: str, exe) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands(hilt_exe):
    result = run("--help", exe=hilt_exe)
    assert result.returncode == 0
    for command in ("version", "model", "demo", "evaluate", "label", "launch", "pipeline"):
        assert command in result.stdout
    result = run("label", "--help", exe=hilt_exe)
    assert result.returncode == 0 and "compare-report" in result.stdout


def test_version(hilt_exe):
    result = run("version", exe=hilt_exe)
    assert result.returncode == 0
    assert result.stdout.strip() == f"hilt {__version__}"
    assert __version__ == "0.1.0"


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys, hilt.cli; hilt.cli.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_user_error_is_one_line_exit_2(hilt_exe, tmp_path):
    result = run("model", "tiny", "--out", str(tmp_path / "m"), "--hidden", "63", exe=hilt_exe)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "--hidden 63" in lines[0] and "--heads 4" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_missing_subcommand_is_usage_error(hilt_exe):
    result = run(exe=hilt_exe)
    assert result.returncode == 2
    assert "usage: hilt" in result.stderr
