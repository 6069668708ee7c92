"""Prompts from JSONL, CSV and saved HF datasets become Label Studio tasks with drafts."""

from __future__ import annotations

import json

import pytest

from hilt.labeling.importing import build_tasks, load_drafts, load_prompts, model_version
from hilt.labeling.templates import parse_label_config, template_xml
from hilt.core.errors import UserError

SFT = parse_label_config(template_xml("sft"))
PREF = parse_label_config(template_xml("preference"))


def test_templates_parse_to_the_expected_controls():
    assert (SFT.kind, SFT.answer_control, SFT.prompt_object) == ("sft", "answer", "prompt")
    assert (PREF.kind, PREF.comparison_control, PREF.left_key, PREF.right_key, PREF.rationale_control) == (
        "preference", "comparison", "answer1", "answer2", "rationale")
    stock = parse_label_config('<View><Text name="prompt" value="$prompt"/>'
                               '<TextArea name="instruction" toName="prompt"/></View>')
    assert stock.answer_control == "instruction"
    with pytest.raises(UserError, match="none of a TextArea"):
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
    tasks = build_tasks(rows, SFT, [("v1", load_drafts(drafts))])
    assert tasks[0]["data"] == {"prompt": "a", "system": "sys", "source_id": "1"}
    assert tasks[0]["predictions"][0] == {
        "model_version": "v1",
        "result": [{"from_name": "answer", "to_name": "prompt", "type": "textarea", "value": {"text": ["by id"]}}],
    }
    assert tasks[1]["predictions"][0]["result"][0]["value"]["text"] == ["by prompt"]
    assert "predictions" not in tasks[2]
    version = model_version(tiny_model_dir)
    assert version.startswith(tiny_model_dir.name + "@") and len(version.split("@")[1]) == 12


CHAT = parse_label_config(template_xml("chat"))
RANK = parse_label_config(template_xml("rank"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_rows_from_messages_and_sharegpt_become_dialogue_tasks(tmp_path):
    assert (CHAT.kind, CHAT.prompt_object, CHAT.prompt_key, CHAT.answer_control) == (
        "chat", "dialogue", "messages", "answer")
    path = write_jsonl(tmp_path / "chats.jsonl", [
        {"id": "c1", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"conversations": [{"from": "human", "value": "Room?"}, {"from": "gpt", "value": "Which day?"},
                           {"from": "human", "value": "Friday"}]},
    ])
    rows = load_prompts(path, "chat")
    assert rows[1]["messages"] == [{"role": "user", "content": "Room?"}, {"role": "assistant", "content": "Which day?"},
                                   {"role": "user", "content": "Friday"}]
    drafts = write_jsonl(tmp_path / "d.jsonl", [{"id": "c1", "draft": "Hello."}, {"prompt": "Friday", "draft": "Done."}])
    tasks = build_tasks(rows, CHAT, [("file:d.jsonl", load_drafts(drafts))])
    assert tasks[0]["data"] == {"messages": rows[0]["messages"], "source_id": "c1"}
    assert [t["predictions"][0]["result"][0]["value"]["text"] for t in tasks] == [["Hello."], ["Done."]]
    assert tasks[1]["predictions"][0]["result"][0]["to_name"] == "dialogue"


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
     "ends with a assistant turn"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, r"messages\[0\] must be"),
    ({"messages": [{"role": "user", "content": "  "}]}, r"messages\[0\] must be"),
    ({"prompt": "no conversation"}, "no 'messages'"),
    ({"conversations": [{"from": "alien", "value": "x"}]}, "from is 'alien'"),
])
def test_bad_chat_rows(tmp_path, row, message):
    with pytest.raises(UserError, match=message):
        load_prompts(write_jsonl(tmp_path / "c.jsonl", [row]), "chat")


def test_rank_answers_from_lists_columns_and_drafts(tmp_path):
    assert (RANK.kind, RANK.ranker_control, RANK.answers_object, RANK.rationale_control) == (
        "rank", "rank", "answers", "rationale")
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"id": "a", "prompt": "Greet", "answers": ["Hi.", {"text": "Hello there.", "source": "gpt-x"}, "hi. "]},
        {"id": "b", "prompt": "Part", "answer1": "Bye.", "answer2": "See you.", "answer3": ""},
        {"id": "c", "prompt": "Thank"},
    ])
    rows = load_prompts(path, "rank")
    assert rows[1]["answers"] == [{"text": "Bye.", "source": "file"}, {"text": "See you.", "source": "file"}]
    drafts = [("file:d.jsonl", {"c": "Thanks!", "a": "Hey."}), ("m@123", {"c": "Thank you.", "b": "Bye."})]
    tasks = build_tasks(rows, RANK, drafts)
    texts = [sorted(i["body"] for i in t["data"]["answers"]) for t in tasks]
    # "hi. " repeats "Hi." and the model's "Bye." repeats the file's: each kept once.
    assert texts == [["Hello there.", "Hey.", "Hi."], ["Bye.", "See you."], ["Thank you.", "Thanks!"]]
    first = tasks[0]["data"]
    assert [i["id"] for i in first["answers"]] == ["1", "2", "3"] and first["answers"][0]["title"] == "Answer 1"
    by_text = {i["body"]: first["answer_sources"][i["id"]] for i in first["answers"]}
    assert by_text == {"Hi.": "file", "Hello there.": "gpt-x", "Hey.": "file:d.jsonl"}
    assert build_tasks(rows, RANK, drafts) == tasks  # the shown order is the same on every run
    with pytest.raises(UserError, match="prompt 3 .c.: 0 distinct answer"):
        build_tasks(rows, RANK, [])


def test_rank_bad_answers(tmp_path):
    with pytest.raises(UserError, match="'answers' must be a list"):
        load_prompts(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "answers": "one string"}]), "rank")
    with pytest.raises(UserError, match=r"answers\[1\] is not text"):
        load_prompts(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "answers": ["a", 3]}]), "rank")


def test_unreadable_prompt_and_draft_files(tmp_path):
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8 text"):
        load_prompts(tmp_path / "latin1.jsonl", "sft")
    (tmp_path / "d.jsonl").write_text("[1, 2]\n")
    with pytest.raises(UserError, match="a draft row needs"):
        load_drafts(tmp_path / "d.jsonl")
    with pytest.raises(UserError, match="no such file"):
        load_drafts(tmp_path / "missing.jsonl")


def test_label_create_refuses_drafts_a_template_cannot_take(hilt_exe, tmp_path):
    import subprocess

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "answer1": "a", "answer2": "b"}])
    drafts = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "p", "draft": "x"}])
    for template, flags, message in (
            ("preference", ["--drafts", str(drafts)], "do not apply to the preference template"),
            ("sft", ["--drafts", str(drafts), "--drafts", str(drafts)], "takes one draft per prompt"),
            ("rank", ["--drafts-from", str(tmp_path)], "no config.json")):
        result = subprocess.run([str(hilt_exe), "label", "create", "--template", template, "--prompts", str(prompts),
                                 *flags], capture_output=True, text=True, timeout=120,
                                env={"PATH": "/usr/bin:/bin", "LABEL_STUDIO_URL": "http://127.0.0.1:9"})
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
