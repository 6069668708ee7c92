"""Buyer data in the formats buyers have: detected per file, read into hilt's records, trained on."""

from __future__ import annotations

import json
import random
import re

import pytest
from safetensors.torch import load_file

from conftest import run_hilt
from hilt.core.errors import UserError
from tasks import LETTERS

SYSTEM = "Answer in capitals."


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(4))


# Each format's record for the "upper: word -> WORD" task, and the conversation hilt must read from it.
def _in_format(name: str, word: str) -> dict:
    prompt, answer = f"upper: {word}", word.upper()
    return {
        "messages": {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
                                  {"role": "assistant", "content": answer, "weight": 1}], "weight": 1.0,
                     "meta": {"source": "openai"}},
        "bedrock-conversation": {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": SYSTEM}],
                                 "messages": [{"role": "user", "content": [{"text": prompt}]},
                                              {"role": "assistant", "content": [{"text": answer}]}]},
        "sharegpt": {"conversations": [{"from": "system", "value": SYSTEM}, {"from": "human", "value": prompt},
                                       {"from": "gpt", "value": answer}]},
        "alpaca": {"instruction": "upper:", "input": word, "output": answer, "system": SYSTEM},
        "jumpstart": {"instruction": "upper:", "context": word, "response": answer},
        "prompt-completion": {"prompt": prompt, "completion": answer},
    }[name]


EXPECTED_USER = {"alpaca": "upper:\n\n{w}", "jumpstart": "upper:\n\n{w}"}
SFT_FORMATS = ["messages", "bedrock-conversation", "sharegpt", "alpaca", "jumpstart", "prompt-completion"]


def _write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("name", SFT_FORMATS)
def test_each_sft_format_is_detected_and_read_as_the_conversation(tmp_path, name):
    from hilt.training.data.records import read_channel

    channel = tmp_path / "train"
    _write(channel / f"{name}.jsonl", [_in_format(name, "abcd"), _in_format(name, "wxyz")])
    records, files = read_channel(channel, "sft")
    assert files == [{"file": f"{name}.jsonl", "format": name, "records": 2}]
    messages = records[1]["messages"]
    assert messages[-1] == {"role": "assistant", "content": "WXYZ"}
    assert messages[-2] == {"role": "user", "content": EXPECTED_USER.get(name, "upper: {w}").format(w="wxyz")}
    has_system = name not in ("jumpstart", "prompt-completion")
    assert (messages[0] == {"role": "system", "content": SYSTEM}) is has_system
    assert set(records[1]) == {"messages"}  # meta and record-level extras stay on disk


def test_jumpstart_template_json_and_json_arrays(tmp_path):
    from hilt.training.data.records import read_channel

    channel = tmp_path / "train"
    channel.mkdir()
    (channel / "template.json").write_text(json.dumps(
        {"prompt": "Question: {question}\nFacts: {facts}\n", "completion": "{answer}"}))
    (channel / "data.json").write_text(json.dumps([{"question": "upper?", "facts": "abcd", "answer": "ABCD"}]))
    records, files = read_channel(channel, "sft")
    assert files == [{"file": "data.json", "format": "jumpstart", "records": 1}]
    assert records[0]["messages"] == [{"role": "user", "content": "Question: upper?\nFacts: abcd\n"},
                                      {"role": "assistant", "content": "ABCD"}]
    (channel / "template.json").write_text(json.dumps({"prompt": "{question}"}))
    with pytest.raises(UserError, match="template.json: needs string 'prompt' and 'completion'"):
        read_channel(channel, "sft")


@pytest.mark.parametrize("record, prompt, chosen", [
    ({"prompt": "upper: ab", "chosen": "AB", "rejected": "ab"},
     [{"role": "user", "content": "upper: ab"}], [{"role": "assistant", "content": "AB"}]),
    ({"prompt": [{"role": "user", "content": "upper: ab"}], "chosen": [{"role": "assistant", "content": "AB"}],
      "rejected": [{"role": "assistant", "content": "ab"}]},
     [{"role": "user", "content": "upper: ab"}], [{"role": "assistant", "content": "AB"}]),
    ({"chosen": [{"role": "user", "content": "upper: ab"}, {"role": "assistant", "content": "AB"}],
      "rejected": [{"role": "user", "content": "upper: ab"}, {"role": "assistant", "content": "ab"}]},
     [{"role": "user", "content": "upper: ab"}], [{"role": "assistant", "content": "AB"}]),
], ids=["strings", "messages", "implicit-prompt"])
def test_preference_strings_messages_and_implicit_prompt(tmp_path, record, prompt, chosen):
    from hilt.training.data.records import read_channel

    _write(tmp_path / "train" / "prefs.jsonl", [record])
    records, files = read_channel(tmp_path / "train", "dpo")
    assert files[0]["format"] == "preference"
    assert records[0]["prompt"] == prompt and records[0]["chosen"] == chosen
    assert records[0]["rejected"][-1]["content"] == "ab"


def test_mixed_unknown_and_wrong_kind_files_are_one_line_errors(tmp_path):
    from hilt.training.data.records import read_channel

    channel = tmp_path / "train"
    _write(channel / "mixed.jsonl", [_in_format("alpaca", "abcd"), _in_format("sharegpt", "abcd")])
    with pytest.raises(UserError, match=r"mixed.jsonl:2: a sharegpt record in a file of alpaca records \(from "
                                        r".*mixed.jsonl:1\); keep one format per file: preference"):
        read_channel(channel, "sft")
    _write(channel / "mixed.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(UserError, match=r"mixed.jsonl:1: not a dataset format hilt reads \(keys: answer, question\); "
                                        r"accepted formats: .*alpaca \(instruction/input/output\)") as err:
        read_channel(channel, "sft")
    assert "\n" not in str(err.value)
    _write(channel / "mixed.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    with pytest.raises(UserError, match="is preference data; this recipe reads sft records: use a dpo recipe"):
        read_channel(channel, "sft")
    _write(channel / "mixed.jsonl", [{"conversations": [{"from": "robot", "value": "x"}]}])
    with pytest.raises(UserError, match=r"conversations\[0\].from is 'robot'"):
        read_channel(channel, "sft")
    (channel / "mixed.jsonl").unlink()
    (channel / "data.json").write_bytes(b'[{"prompt": "caf\xe9"}]')
    with pytest.raises(UserError, match="data.json: not UTF-8"):
        read_channel(channel, "sft")


def test_openai_weight_zero_turns_are_context_not_loss(tiny_model_dir):
    from transformers import AutoTokenizer

    from hilt.training.data.chat_masks import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "SKIPPED", "weight": 0},
                {"role": "user", "content": "second"}, {"role": "assistant", "content": "LEARNED"}]
    encoded = encode_conversation(tokenizer, messages, 512)
    learned = tokenizer.decode([i for i, m in zip(encoded.input_ids, encoded.mask) if m])
    assert "LEARNED" in learned and "SKIPPED" not in learned


def test_sdk_json_encoded_hyperparameters_decode(opt_ml, tiny_model_dir, dataset_dir):
    from hilt.training.run.entry import _link
    from hilt.training.base.job import read_job

    opt_ml.hyperparameters_file.write_text(json.dumps({
        "recipe": '"quickstart-tiny-sft"', "train.max_steps": "3", "train.learning_rate": '"2e-4"',
        "peft.method": '"lora"', "data.packing": "false", "sagemaker_program": '"train.py"'}))
    _link(dataset_dir / "train", opt_ml.channel_dir("train"))
    _link(tiny_model_dir, opt_ml.channel_dir("model"))
    job = read_job(opt_ml)
    assert job.recipe.name == "quickstart-tiny-sft"
    assert job.recipe.train.max_steps == 3 and job.recipe.train.learning_rate == 2e-4
    assert job.recipe.peft.method == "lora" and job.recipe.data.packing is False
    raw = json.loads(opt_ml.hyperparameters_file.read_text())
    opt_ml.hyperparameters_file.write_text(json.dumps({**raw, "_tuning_objective_metric": '"eval_loss"'}))
    with pytest.raises(UserError, match="tuning objective is eval_loss but the job has no 'validation' channel"):
        read_job(opt_ml)


@pytest.mark.slow
def test_a_channel_of_every_sft_format_trains(hilt_exe, warm_base_dir, tmp_path):
    rng = random.Random(0)
    data = tmp_path / "buyer"
    for name in SFT_FORMATS:
        _write(data / "train" / f"{name}.jsonl", [_in_format(name, _word(rng)) for _ in range(24)])
    result = run_hilt(hilt_exe, "inspect-data", "quickstart-tiny-sft", "--data", str(data), "--model",
                      str(warm_base_dir), "--samples", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in SFT_FORMATS:
        assert f"{name}.jsonl: format {name}, 24 records" in result.stdout
    out = tmp_path / "job"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(warm_base_dir), "--data", str(data),
                      "--output", str(out), "--set", "train.max_steps=30", "--set", "train.logging_steps=5",
                      "--set", "train.checkpoint_steps=100")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "alpaca.jsonl (alpaca, 24 records)" in result.stdout
    losses = [float(x) for x in re.findall(r"train_loss=([0-9.e+-]+)", result.stdout)]
    assert losses[-1] < losses[0] * 0.7
    adapter = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)


@pytest.mark.parametrize("record", [
    {"prompt": "upper: ab", "completion": "AB", "label": True},
    {"prompt": [{"role": "user", "content": "upper: ab"}], "completion": [{"role": "assistant", "content": "AB"}],
     "label": True},
], ids=["strings", "messages"])
def test_unpaired_kto_records(tmp_path, record):
    from hilt.training.data.records import read_channel

    _write(tmp_path / "train" / "kto.jsonl", [record, {**record, "label": False}])
    records, files = read_channel(tmp_path / "train", "kto")
    assert files[0]["format"] == "unpaired"
    assert records[0] == {"prompt": [{"role": "user", "content": "upper: ab"}],
                          "completion": [{"role": "assistant", "content": "AB"}], "label": True}
    assert records[1]["label"] is False
    _write(tmp_path / "train" / "kto.jsonl", [{**record, "label": "yes"}])
    with pytest.raises(UserError, match="needs 'label': true"):
        read_channel(tmp_path / "train", "kto")
