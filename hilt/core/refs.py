"""``"module:function"`` references: how a table entry names code it must not import when the table is
read (a trainer, an exporter), so that reading the table stays light and free of import cycles."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any, Union

Ref = Union[str, Callable[..., Any]]  # "package.module:function", or the function itself


def load_ref(ref: Ref) -> Callable[..., Any]:
    """The function ``ref`` names (a callable is returned as it is)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)
