"""hilt/cli: one module per top-level command, named after it."""

from __future__ import annotations

import argparse
import importlib
import pkgutil

import pytest

import hilt.cli

COMMAND_MODULES = sorted(m.name for m in pkgutil.iter_modules(hilt.cli.__path__) if m.name != "_common")


@pytest.mark.parametrize("name", COMMAND_MODULES)
def test_each_module_registers_one_command_named_after_it(name):
    module = importlib.import_module(f"hilt.cli.{name}")
    sub = argparse.ArgumentParser(prog="hilt").add_subparsers()
    module.register(sub)
    assert list(sub.choices) == [name.replace("_", "-")]


def test_the_command_line_is_the_modules_and_version():
    (sub,) = [a for a in hilt.cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert sorted(sub.choices) == sorted(["version", *(name.replace("_", "-") for name in COMMAND_MODULES)])


def test_compare_report_is_under_label(capsys):
    parser = hilt.cli.build_parser()
    args = parser.parse_args(["label", "compare-report", "--project", "3"])
    assert args.func.__module__ == "hilt.cli.label" and args.compare_dir == "compare"
    with pytest.raises(SystemExit) as raised:
        parser.parse_args(["compare-report", "--project", "3"])
    assert raised.value.code == 2 and "invalid choice: 'compare-report'" in capsys.readouterr().err
