"""Numbers from the environment: defaults, ranges, and one line naming the variable when wrong."""

from __future__ import annotations

import pytest

from hilt.core.env import env_number
from hilt.core.errors import UserError


def test_unset_or_empty_gives_the_default(monkeypatch):
    monkeypatch.delenv("HILT_TEST_NUMBER", raising=False)
    assert env_number("HILT_TEST_NUMBER", 55.0) == 55.0
    monkeypatch.setenv("HILT_TEST_NUMBER", "  ")
    assert env_number("HILT_TEST_NUMBER", 7, kind=int) == 7


def test_values_in_range_are_read_as_their_kind(monkeypatch):
    monkeypatch.setenv("HILT_TEST_NUMBER", "2.5")
    assert env_number("HILT_TEST_NUMBER", 1.0) == 2.5
    monkeypatch.setenv("HILT_TEST_NUMBER", "0")
    assert env_number("HILT_TEST_NUMBER", 6, kind=int, low=0, allow_low=True, high=100) == 0


@pytest.mark.parametrize("raw, kwargs, message", [
    ("half", {}, "HILT_TEST_NUMBER='half': not a number above 0; set e.g. 60"),
    ("0", {}, "HILT_TEST_NUMBER='0': not a number above 0; set e.g. 60"),
    ("nan", {}, "not a number above 0"),
    ("1.5", {"kind": int}, "not a whole number above 0"),
    ("101", {"low": 0, "high": 100, "allow_low": True}, "not a number from 0 to 100"),
    ("150", {"high": 100, "wanted": "a percentage", "hint": "set 0 to 100"},
     "HILT_TEST_NUMBER='150': not a percentage; set 0 to 100"),
])
def test_bad_values_are_one_line_naming_the_variable(monkeypatch, raw, kwargs, message):
    monkeypatch.setenv("HILT_TEST_NUMBER", raw)
    with pytest.raises(UserError) as raised:
        env_number("HILT_TEST_NUMBER", 60, **kwargs)
    assert message in str(raised.value) and "\n" not in str(raised.value)
