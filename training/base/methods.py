"""Training methods: one table maps a recipe's ``method`` to everything hilt knows of it.

A ``Method`` entry carries its record kind (what its dataset lines hold), its trainer, its
recipe section (a settings model: ``dpo.beta``), the keys a tuning job searches by default, and
whether its trainer packs sequences into rows (which decides the training attention). Adding a
method (ORPO…) is one trainer module with a ``train_<method>(job)`` function plus, here, its
settings model and one entry; nothing else picks among methods by name (one rule names its
trainer: ``data.self_replay`` is SFT's). The recipe schema
(``hilt.training.base.recipe``) takes its ``method`` choices, their descriptions and the method
sections from this table, so an unknown method or setting is refused with the known ones.

Trainers are named as ``"module:function"`` and imported on use: reading a recipe never imports
a trainer, and a trainer module may import anything of the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from hilt.core.config import StrictSection
from hilt.core.errors import UserError
from hilt.core.refs import Ref, load_ref


class DpoSettings(StrictSection):
    beta: float = Field(0.1, gt=0.0, description="DPO temperature: how far the policy may move from the reference.",
                        json_schema_extra={"tune": [0.01, 1.0]})
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss variant.")


class KtoSettings(StrictSection):
    beta: float = Field(0.1, gt=0.0, description="KTO temperature: how far the policy may move from the reference.",
                        json_schema_extra={"tune": [0.01, 1.0]})
    desirable_weight: float = Field(1.0, gt=0.0, description="Weight of desirable answers' loss (raise it when they "
                                    "are fewer than undesirable ones).")
    undesirable_weight: float = Field(1.0, gt=0.0, description="Weight of undesirable answers' loss.")


@dataclass(frozen=True)
class Method:
    """A training method: its data, its trainer, its settings and the rules that depend on it."""

    name: str
    record_kind: str  # a key of hilt.training.data.records.RECORD_CHECKS: "sft" (messages), "preference" or "unpaired"
    trainer: Ref  # "module:function" (or the function) taking a Job, returning a TrainOutcome; imported on use
    description: str  # what it trains on, for the recipe's `method` field
    settings: type[StrictSection] | None = None  # its recipe section, named after the method (None: no section)
    tune: tuple[str, ...] = ()  # keys of its section a tuning job searches by default (each needs a tune range)
    packs_rows: bool = False  # its trainer packs sequences into rows: sdpa may attend one sequence at a time

    def train(self, job):
        """Run this method's trainer on ``job``; returns its ``TrainOutcome``."""
        return load_ref(self.trainer)(job)

    def tune_keys(self) -> list[str]:
        """The dotted recipe keys of :attr:`tune` (``dpo.beta``)."""
        return [f"{self.name}.{key}" for key in self.tune]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "sft", "hilt.training.trainers.sft:train_sft", "sft on messages records", packs_rows=True),
    Method("dpo", "preference", "hilt.training.trainers.reference:train_dpo", "dpo on preference records",
           DpoSettings, tune=("beta",)),
    Method("kto", "unpaired", "hilt.training.trainers.reference:train_kto",
           "kto on unpaired (prompt, completion, label) records", KtoSettings, tune=("beta",)),
)}


def method_of(name: str) -> Method:
    """The method called ``name``.

    Raises:
        UserError: for a method hilt does not have.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method '{name}' is not known; use one of {', '.join(METHODS)}") from None


def methods_reading(record_kind: str) -> list[str]:
    """The names of the methods that train on ``record_kind`` records."""
    return [m.name for m in METHODS.values() if m.record_kind == record_kind]
