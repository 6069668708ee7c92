"""Real model families: their chat templates (no generation markers) and their architectures.

Templates of Llama 3, Mistral, Gemma, Phi-3 and ChatML-without-markers, written in
``families.py`` in each family's format and put on the tiny tokenizer, must give a loss
mask over exactly each assistant answer and its end-of-turn token, and train with the
default recipe (loss above 0 and falling). Tiny random models of each architecture go
through ``hilt train`` -> merge -> ``package build`` -> ``package validate`` (``serve``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_hilt
from families import ARCHITECTURES, FAMILIES, build_architecture, put_family_template
from hilt.core.errors import UserError
from tasks import write_uppercase_dataset

CONVERSATION = [
    {"role": "system", "content": "Answer in capitals."},
    {"role": "user", "content": "upper: abcd"},
    {"role": "assistant", "content": "ABCD"},
    {"role": "user", "content": "and upper: wxyz please"},
    {"role": "assistant", "content": "WXYZ"},
]


def learned_segments(tokenizer, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded runs of consecutive tokens in the loss."""
    segments, current = [], []
    for token_id, bit in zip(ids, mask):
        if bit:
            current.append(token_id)
        elif current:
            segments.append(tokenizer.decode(current).strip())
            current = []
    if current:
        segments.append(tokenizer.decode(current).strip())
    return segments


@pytest.fixture(scope="module")
def family_models(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {name: put_family_template(tiny_model_dir, family, root / name) for name, family in FAMILIES.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_mask_is_each_answer_and_its_end_of_turn(family_models, name):
    from transformers import AutoTokenizer

    from hilt.training.data.chat_masks import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(family_models[name])
    eot = FAMILIES[name].end_of_turn
    encoded = encode_conversation(tokenizer, CONVERSATION, max_length=512)
    # Every assistant turn, its end-of-turn token included; no header, no user or system text.
    assert learned_segments(tokenizer, encoded.input_ids, encoded.mask) == [f"ABCD{eot}", f"WXYZ{eot}"]
    last = encode_conversation(tokenizer, CONVERSATION, max_length=512, last_turn_only=True)
    assert learned_segments(tokenizer, last.input_ids, last.mask) == [f"WXYZ{eot}"]
    everything = encode_conversation(tokenizer, CONVERSATION, max_length=512, assistant_only=False)
    assert sum(everything.mask) == len(everything.input_ids) > sum(encoded.mask)
    short = encode_conversation(tokenizer, CONVERSATION, max_length=4)
    assert len(short.input_ids) == 4 and sum(short.mask) == 0 and short.learnable_before_truncation > 0


def test_a_user_quoting_the_answer_does_not_move_the_mask(family_models):
    from transformers import AutoTokenizer

    from hilt.training.data.chat_masks import encode_conversation

    tokenizer = AutoTokenizer.from_pretrained(family_models["llama3"])
    quoted = [{"role": "user", "content": "Say OK and nothing else. OK?"}, {"role": "assistant", "content": "OK"}]
    encoded = encode_conversation(tokenizer, quoted, max_length=512)
    text = tokenizer.decode(encoded.input_ids)
    first_learned = encoded.mask.index(1)
    assert tokenizer.decode(encoded.input_ids[:first_learned]).endswith("<|end_header_id|>\n\n")
    assert learned_segments(tokenizer, encoded.input_ids, encoded.mask) == ["OK<|eot_id|>"], text


def test_inspect_data_shows_the_masks_training_uses(family_models, tmp_path, capsys):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hilt.training.data.inspect_data import loss_mask
    from hilt.training.data.packing import tokenize_conversations
    from hilt.training.base.recipe import load_recipe

    recipe = load_recipe("quickstart-tiny-sft")
    tokenizer = AutoTokenizer.from_pretrained(family_models["gemma"])
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    tokenized = tokenize_conversations(Dataset.from_list(records), tokenizer, recipe.data.max_length, True)
    for record, ids, mask in zip(records, tokenized["input_ids"], tokenized["loss_mask"]):
        assert loss_mask(tokenizer, record, recipe) == (ids, mask)


def test_records_with_nothing_to_learn_are_refused_with_the_cause(family_models, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hilt.training.data.packing import tokenize_conversations

    tokenizer = AutoTokenizer.from_pretrained(family_models["llama3"])
    records = [{"messages": CONVERSATION[1:3]}] * 3
    with pytest.raises(UserError, match=r"train data: 3 of 3 records have no tokens to learn - the run would learn "
                                        r"nothing: 3 whose answer starts after token 8"):
        tokenize_conversations(Dataset.from_list(records), tokenizer, 8, True)
    tokenizer.chat_template = tokenizer.chat_template.replace("message['content'] | trim", "message['content'] | lower")
    with pytest.raises(UserError, match="3 where the chat template marks no assistant tokens"):
        tokenize_conversations(Dataset.from_list(records), tokenizer, 512, True)


def test_a_zero_loss_with_no_gradient_stops_the_run():
    from hilt.training.trainers.callbacks import check_first_loss

    check_first_loss(5, {"loss": 0.4, "grad_norm": 0.0})
    with pytest.raises(UserError, match="train_loss is 0 and grad_norm is 0 at step 5"):
        check_first_loss(5, {"loss": 0.0, "grad_norm": 0.0})


def _losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"\] step=\d+ train_loss=([0-9.]+)", stdout)]


@pytest.fixture(scope="module")
def upper_data(tmp_path_factory) -> Path:
    return write_uppercase_dataset(tmp_path_factory.mktemp("family-data"), n_train=64, n_validation=4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_template_trains_with_the_default_recipe(hilt_exe, warm_base_dir, upper_data, tmp_path, name):
    model = put_family_template(warm_base_dir, FAMILIES[name], tmp_path / "base")
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(model), "--data", str(upper_data),
                      "--output", str(tmp_path / "job"), "--set", "train.max_steps=30", "--set",
                      "train.logging_steps=5", "--set", "eval.after_training=false")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(result.stdout)
    assert len(losses) >= 4 and min(losses) > 0, losses
    assert losses[-1] < losses[0], losses


def test_gemma2_gets_eager_attention_and_an_override_is_checked(tiny_model_dir, tmp_path):
    from hilt.training.trainers.build import model_class_of, resolve_attention

    model = build_architecture("gemma2", tiny_model_dir, tmp_path / "gemma2")
    assert model_class_of(str(model)).__name__ == "Gemma2ForCausalLM"

    class FakeJob:
        model_path = str(model)

        class recipe:  # noqa: N801
            class model:  # noqa: N801
                attn_implementation = "auto"

    assert resolve_attention(FakeJob) == "eager"
    FakeJob.model_path = str(tiny_model_dir)
    assert resolve_attention(FakeJob) == "sdpa"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_architecture_trains_merges_serves_and_validates(hilt_exe, tiny_model_dir, upper_data, tmp_path, arch):
    model = build_architecture(arch, tiny_model_dir, tmp_path / arch)
    job = tmp_path / "job"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(model), "--data", str(upper_data),
                      "--output", str(job), "--set", "train.max_steps=6", "--set", "train.logging_steps=2",
                      "--set", "eval.after_training=false")
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(result.stdout)
    assert losses and min(losses) > 0 and losses[-1] < losses[0], losses
    manifest = json.loads((job / "model" / "hilt.json").read_text())
    assert manifest["recipe"]["peft"]["target_modules"] == "all-linear"

    archive = tmp_path / "model.tar.gz"
    assert run_hilt(hilt_exe, "package", "build", "--model-dir", str(job / "model"), "--out", str(archive)).returncode == 0
    requests = tmp_path / "in.jsonl"
    requests.write_text("".join(json.dumps({"inputs": f"upper: {w}", "parameters": {"max_new_tokens": 4}}) + "\n"
                                for w in ("abcd", "wxyz")))
    validated = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(archive), "--input", str(requests),
                         "--output", str(tmp_path / "validation"))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    report = json.loads((tmp_path / "validation" / "validation-report.json").read_text())
    assert report["passed"] and report["package_verified"] and report["records"] == 2

    # PEFT's default targets for the architecture (the attention projections), too.
    default = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(model), "--data", str(upper_data),
                       "--output", str(tmp_path / "job-default"), "--set", "train.max_steps=2", "--set",
                       "peft.target_modules=default", "--set", "eval.after_training=false")
    assert default.returncode == 0, default.stderr[-3000:]
    trainable = int(re.search(r"trainable_parameters=(\d+)", default.stdout).group(1))
    assert 0 < trainable < int(re.search(r"trainable_parameters=(\d+)", result.stdout).group(1))


@pytest.mark.slow
def test_hilt_train_refuses_data_with_nothing_to_learn(hilt_exe, tiny_model_dir, upper_data, tmp_path):
    job = tmp_path / "job"
    result = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--model", str(tiny_model_dir), "--data",
                      str(upper_data), "--output", str(job), "--set", "data.max_length=8")
    assert result.returncode == 2, result.stdout[-2000:]
    failure = (job / "output" / "failure").read_text()
    assert "train data: 64 of 64 records have no tokens to learn" in failure
    assert "answer starts after token 8" in failure and failure.count("\n") == 1
    assert "Traceback" not in result.stderr and not (job / "model" / "hilt.json").exists()
