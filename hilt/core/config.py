"""The YAML + pydantic loader behind recipes and pipelines: a file read as a UTF-8 YAML mapping,
and a schema's validation errors each told as ``key: what is wrong; the fix``."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import typing

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from hilt.core.errors import UserError


class StrictSection(BaseModel):
    """A section of a YAML file hilt reads (a recipe, a pipeline): unknown keys are refused, and
    a boolean is refused where a number belongs (pydantic's lax mode reads ``true`` as 1:
    ``--set train.max_steps=true`` would run one step)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool):
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(typing.get_args(annotation)) or {annotation}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError("expected a number, got a boolean")
        return value


def read_yaml_mapping(path: Path, kind: str) -> dict:
    """The YAML mapping in ``path`` (empty file: ``{}``).

    Raises:
        UserError: a file that cannot be read, is not UTF-8, is not YAML, or is not a mapping.
    """
    import yaml

    from hilt.core.outputs import read_text_file

    text = read_text_file(Path(path), kind)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a {kind} is a YAML mapping of sections, got {type(data).__name__}")
    return data


def describe_error(error: dict, model: type[BaseModel], kind: str = "file") -> str:
    """One pydantic error as ``key: what is wrong; the fix`` (any strict hilt schema)."""
    loc = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        # Suggest the nearest real key of the same section.
        section: Any = model
        for part in error["loc"][:-1]:
            field = section.model_fields.get(part) if isinstance(section, type) else None
            section = field.annotation if field is not None else None
        known = list(section.model_fields) if isinstance(section, type) and issubclass(section, BaseModel) else []
        hint = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        fix = f"did you mean '{'.'.join([*map(str, error['loc'][:-1]), hint[0]])}'?" if hint else (
            f"allowed here: {', '.join(known)}" if known else "remove it"
        )
        return f"{loc}: unknown key; {fix}"
    if error["type"] == "missing":
        return f"{loc}: required; add it to the {kind}"
    return f"{loc}: {error['msg']} (got {error.get('input')!r})"
