"""Prompts from JSONL, CSV and saved HF datasets become Label Studio tasks with drafts."""

from __future__ import annotations

import json

import pytest

from hil.importing import build_tasks, load_drafts, load_prompts, model_version
from hil.templates import parse_label_config, template_xml
from hilt.errors import UserError

SFT = parse_label_config(template_xml("sft"))
PREF = parse_label_config(template_xml("preference"))


def test_templates_parse_to_the_expected_controls():
    assert (SFT.kind, SFT.answer_control, SFT.prompt_object) == ("sft", "answer", "prompt")
    assert (PREF.kind, PREF.comparison_control, PREF.left_key, PREF.right_key, PREF.rationale_control) == (
        "preference", "comparison", "answer1", "answer2", "rationale")
    stock = parse_label_config('<View><Text name="prompt" value="$prompt"/>'
                               '<TextArea name="instruction" toName="prompt"/></View>')
    assert stock.answer_control == "instruction"
    with pytest.raises(UserError, match="neither a TextArea"):
        parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t"/></View>')
    with pytest.raises(UserError, match="not valid XML"):
        parse_label_config("<View>")


def test_jsonl_csv_and_hf_dataset(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"id": 1, "prompt": "a", "system": "s"}) + "\n\n" + json.dumps({"prompt": "b"}) + "\n")
    assert [r["prompt"] for r in load_prompts(jsonl, "sft")] == ["a", "b"]

    csv_file = tmp_path / "p.csv"
    csv_file.write_text('prompt,answer1,answer2\n"Hi, there",x,y\n')
    assert load_prompts(csv_file, "preference") == [{"prompt": "Hi, there", "answer1": "x", "answer2": "y"}]

    from datasets import Dataset

    Dataset.from_list([{"prompt": "from hf", "system": ""}]).save_to_disk(str(tmp_path / "hf"))
    assert load_prompts(tmp_path / "hf", "sft")[0]["prompt"] == "from hf"


@pytest.mark.parametrize(
    "content, kind, message",
    [
        ('{"prompt": "a"}\n{"system": "no prompt"}\n', "sft", "record 2: missing prompt"),
        ('{"prompt": "a", "answer1": "x"}\n', "preference", "missing answer2"),
        ("{broken\n", "sft", ":1: not valid JSON"),
        ("", "sft", "no prompts"),
    ],
)
def test_bad_prompt_files(tmp_path, content, kind, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(path, kind)


def test_drafts_become_predictions(tmp_path, tiny_model_dir):
    drafts = tmp_path / "d.jsonl"
    drafts.write_text(json.dumps({"id": 1, "draft": "by id"}) + "\n" + json.dumps({"prompt": "b", "draft": "by prompt"}) + "\n")
    rows = [{"id": 1, "prompt": "a", "system": "sys"}, {"prompt": "b"}, {"prompt": "c"}]
    tasks = build_tasks(rows, SFT, load_drafts(drafts), "v1")
    assert tasks[0]["data"] == {"prompt": "a", "system": "sys", "source_id": "1"}
    assert tasks[0]["predictions"][0] == {
        "model_version": "v1",
        "result": [{"from_name": "answer", "to_name": "prompt", "type": "textarea", "value": {"text": ["by id"]}}],
    }
    assert tasks[1]["predictions"][0]["result"][0]["value"]["text"] == ["by prompt"]
    assert "predictions" not in tasks[2]
    version = model_version(tiny_model_dir)
    assert version.startswith(tiny_model_dir.name + "@") and len(version.split("@")[1]) == 12
