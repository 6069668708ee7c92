"""Recipes: every shipped file validates; mistakes are all reported with their keys."""

from __future__ import annotations

import json
import typing
import subprocess

import pytest

from hilt.core.errors import UserError
from hilt.training.base.recipe import (
    BUNDLED_RECIPES_DIR,
    decode_hyperparameter,
    flat_fields,
    load_recipe,
    parse_set_option,
    recipe_json_schema,
)

RECIPE_FILES = sorted(BUNDLED_RECIPES_DIR.glob("*.yaml"))


def test_required_recipes_are_shipped():
    names = {p.stem for p in RECIPE_FILES}
    assert {
        "quickstart-tiny-sft",
        "llama3-8b-sft-lora",
        "llama3-8b-sft-qlora",
        "llama3-70b-sft-lora-zero3",
        "llama3-8b-dpo-lora",
    } <= names
    for ds in ("zero2", "zero3", "zero3_offload"):
        config = json.loads((BUNDLED_RECIPES_DIR / "deepspeed" / f"{ds}.json").read_text())
        assert config["zero_optimization"]["stage"] == (2 if ds == "zero2" else 3)


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    # Each recipe's header comment says how to run it.
    assert path.read_text().startswith("#") and "hilt " in path.read_text().split("\nname:")[0]
    if recipe.distributed.deepspeed:
        assert recipe.deepspeed_config_path().is_file()


def test_shapes_of_the_big_recipes():
    assert load_recipe("llama3-70b-sft-lora-zero3").distributed.deepspeed == "deepspeed/zero3.json"
    assert load_recipe("llama3-8b-sft-qlora").peft.method == "qlora"
    dpo = load_recipe("llama3-8b-dpo-lora")
    assert dpo.method == "dpo" and dpo.dpo.beta == 0.1


def test_hyperparameter_strings_are_coerced_through_the_schema():
    recipe = load_recipe(
        "quickstart-tiny-sft",
        {
            "train.learning_rate": "1e-4",
            "train.max_steps": "7",
            "data.packing": "false",
            "peft.method": "full",
            "peft.target_modules": '["q_proj", "v_proj"]',
        },
    )
    assert recipe.train.learning_rate == 1e-4
    assert recipe.train.max_steps == 7
    assert recipe.data.packing is False
    assert recipe.peft.method == "full"
    assert recipe.peft.target_modules == ["q_proj", "v_proj"]
    assert decode_hyperparameter("lora") == "lora"
    assert parse_set_option("train.seed=3") == ("train.seed", 3)


def test_all_problems_reported_together_with_keys_and_fixes():
    with pytest.raises(UserError) as caught:
        load_recipe(
            "quickstart-tiny-sft",
            {
                "train.learnig_rate": "1e-4",
                "train.max_steps": "many",
                "peft.method": "lorra",
                "bogus": "1",
            },
        )
    message = str(caught.value)
    assert "4 problem(s)" in message
    assert "train.learnig_rate: unknown key; did you mean 'train.learning_rate'?" in message
    assert "train.max_steps" in message and "'many'" in message
    assert "peft.method" in message and "'lorra'" in message
    assert "bogus: unknown key" in message
    assert "\n" not in message


def test_unknown_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="did you mean 'quickstart-tiny-sft'"):
        load_recipe("quickstart-tiny-stf")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntrain: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(bad)
    missing_ds = tmp_path / "ds.yaml"
    missing_ds.write_text("name: ds\ndistributed:\n  deepspeed: deepspeed/zero9.json\n")
    with pytest.raises(UserError, match="distributed.deepspeed: .*zero9.json does not exist"):
        load_recipe(missing_ds)


def test_json_schema_documents_every_field():
    schema = recipe_json_schema()
    assert schema["additionalProperties"] is False
    for key, field in flat_fields():
        assert field.description, f"{key} has no description"
    assert len(flat_fields()) > 30


def test_recipe_schema_and_check_commands(hilt_exe):
    result = subprocess.run([str(hilt_exe), "recipe", "schema"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "learning_rate" in json.loads(result.stdout)["$defs"]["OptimizerSection"]["properties"]
    result = subprocess.run(
        [str(hilt_exe), "recipe", "check", "quickstart-tiny-sft", "--set", "train.epochs=zero"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "train.epochs" in result.stderr


def test_methods_and_templates_are_looked_up_in_one_table_each():
    from hilt.core.refs import load_ref
    from hilt.labeling.templates import TEMPLATE_NAMES, TEMPLATES, template_xml
    from hilt.training.data.records import RECORD_CHECKS, check_record
    from hilt.training.base.methods import METHODS, method_of
    from hilt.training.base.recipe import recipe_model

    assert set(typing.get_args(recipe_model().model_fields["method"].annotation)) == set(METHODS)
    assert all(m.record_kind in RECORD_CHECKS for m in METHODS.values())
    assert set(TEMPLATES) == set(TEMPLATE_NAMES)
    refs = [ref for t in TEMPLATES.values() for ref in (t.exporter, t.labels, t.task_builder, t.agreement, t.row_reader)
            if ref is not None]
    assert all(callable(load_ref(ref)) for ref in refs)  # every function an entry names exists
    assert all(callable(load_ref(m.trainer)) for m in METHODS.values())
    assert all(template_xml(name) for name in TEMPLATES)  # each has its XML
    assert all(t.record_kind in RECORD_CHECKS for t in TEMPLATES.values())
    with pytest.raises(UserError, match="method 'orpo' is not known"):
        method_of("orpo")
    with pytest.raises(UserError, match="neither a record kind"):
        check_record({"messages": []}, "orpo", "x:1")
    # KTO reads its own kind: a preference pair is not an unpaired record.
    with pytest.raises(UserError, match="unpaired record has no 'completion'"):
        check_record({"prompt": [{"role": "user", "content": "a"}], "chosen": []}, "kto", "x:1")
    # A DPO recipe checks preference records: an SFT line is refused with the hint.
    with pytest.raises(UserError, match="preference record has no 'prompt'.*use an sft recipe"):
        check_record({"messages": [{"role": "user", "content": "a"}]}, "dpo", "x:1")
