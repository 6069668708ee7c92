"""A throw-away training method, registered from this one module with one ``Method`` entry, works end
to end: its recipe section is validated and documented, its tuning key is searched by default, its
trainer trains a model through ``hilt train``, and its attention rule holds.

The method, ``scaled``, is SFT at a fraction of the recipe's learning rate (``scaled.factor``).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from pydantic import Field

from hilt.core.config import StrictSection
from hilt.core.layout import LOG_HISTORY_FILE
from hilt.core.errors import UserError
from hilt.training.base import methods
from hilt.training.launch import default_tune_keys, parameter_ranges
from hilt.training.base.recipe import flat_fields, load_recipe, recipe_json_schema


class ScaledSettings(StrictSection):
    factor: float = Field(0.5, gt=0.0, le=1.0, description="Fraction of train.learning_rate to train at.",
                          json_schema_extra={"tune": [0.1, 1.0]})


def train_scaled(job):
    """SFT's trainer at ``scaled.factor`` times the learning rate."""
    from hilt.training.trainers.sft import train_sft

    train = job.recipe.train.model_copy(update={"learning_rate": job.recipe.train.learning_rate * job.recipe.scaled.factor})
    return train_sft(dataclasses.replace(job, recipe=job.recipe.model_copy(update={"train": train})))


SCALED = methods.Method("scaled", "sft", f"{__name__}:train_scaled", "scaled: sft at a fraction of the learning rate",
                        ScaledSettings, tune=("factor",), packs_rows=True)


@pytest.fixture()
def scaled(monkeypatch):
    monkeypatch.setitem(methods.METHODS, "scaled", SCALED)
    return SCALED


def test_the_entry_gives_the_recipe_its_choice_section_and_tuning_key(scaled):
    recipe = load_recipe("quickstart-tiny-sft", {"method": "scaled", "scaled.factor": "0.25"})
    assert recipe.method == "scaled" and recipe.scaled.factor == 0.25
    assert recipe.dpo.beta == 0.1  # the other methods' sections stay
    with pytest.raises(UserError, match=r"scaled\.factor.*less than or equal to 1"):
        load_recipe("quickstart-tiny-sft", {"method": "scaled", "scaled.factor": "3"})
    with pytest.raises(UserError, match=r"scaled\.speed"):
        load_recipe("quickstart-tiny-sft", {"scaled.speed": "1"})
    schema = recipe_json_schema()
    assert "scaled: sft at a fraction of the learning rate" in schema["properties"]["method"]["description"]
    assert "factor" in schema["$defs"]["ScaledSettings"]["properties"]
    assert "scaled.factor" in dict(flat_fields())  # the Algorithm's hyperparameters
    assert "scaled.factor" in default_tune_keys(recipe)
    ranges = parameter_ranges(["scaled.factor"])["ContinuousParameterRanges"]
    assert ranges == [{"Name": "scaled.factor", "MinValue": "0.1", "MaxValue": "1.0", "ScalingType": "Auto"}]


def test_without_the_entry_the_method_is_refused():
    with pytest.raises(UserError, match="method: .*'sft', 'dpo' or 'kto'|method.*sft.*dpo.*kto"):
        load_recipe("quickstart-tiny-sft", {"method": "scaled"})


@pytest.mark.slow
def test_the_method_trains_through_hilt_train(scaled, tiny_model_dir, dataset_dir, tmp_path, capsys):
    from hilt.cli import main

    out = tmp_path / "job"
    rc = main(["train", "quickstart-tiny-sft", "--model", str(tiny_model_dir), "--data", str(dataset_dir),
               "--output", str(out), "--set", "method=scaled", "--set", "scaled.factor=0.25",
               "--set", "train.max_steps=4", "--set", "train.logging_steps=1",
               "--set", "train.lr_scheduler=constant", "--set", "train.learning_rate=1e-3"])
    log = capsys.readouterr().out
    assert rc == 0, log[-3000:]
    assert "method=scaled" in log
    assert "attention=hilt_segments" in log  # packs_rows: packed rows attend one sequence at a time
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert manifest["recipe"]["method"] == "scaled" and manifest["recipe"]["scaled"] == {"factor": 0.25}
    assert (out / "model" / "adapter" / "adapter_model.safetensors").is_file()
    history = json.loads((out / "output" / "data" / LOG_HISTORY_FILE).read_text())
    rates = {round(entry["learning_rate"], 8) for entry in history if "learning_rate" in entry}
    assert rates == {0.00025}  # the trainer ran at the method's factor
