"""Training methods: one table maps a recipe's ``method`` to its trainer and record kind.

Adding a method (KTO, ORPO…) is one module with a ``train_<method>(job)`` function plus one
entry here; nothing else picks among methods with an ``if sft … else``. An unknown method
is refused by the recipe schema, whose choices come from this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

from hilt.core.errors import UserError


@dataclass(frozen=True)
class Method:
    """A training method: what its dataset lines hold and which function trains a job."""

    name: str
    record_kind: str  # a key of hilt.training.data.RECORD_CHECKS: "sft" (messages), "preference" or "unpaired"
    trainer: str  # "module:function" taking a Job and returning a TrainOutcome; imported on use

    def train(self, job):
        module, _, function = self.trainer.partition(":")
        return getattr(import_module(module), function)(job)


METHODS: dict[str, Method] = {
    "sft": Method("sft", "sft", "hilt.training.sft:train_sft"),
    "dpo": Method("dpo", "preference", "hilt.training.reference:train_dpo"),
    "kto": Method("kto", "unpaired", "hilt.training.reference:train_kto"),
}


def method_of(name: str) -> Method:
    """The method called ``name``.

    Raises:
        UserError: for a method hilt does not have.
    """
    try:
        return METHODS[name]
    except KeyError:
        raise UserError(f"method '{name}' is not known; use one of {', '.join(METHODS)}") from None
