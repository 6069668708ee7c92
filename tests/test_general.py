"""The general set (did fine-tuning make the model forget?) and self-replay's settings."""

from __future__ import annotations

import json
import re

import pytest

from hilt.core.errors import UserError
from hilt.training.evaluation.evaluate import parse_gate
from hilt.training.evaluation.general import answer_passes, read_general_set, replay_count, replay_prompts


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def test_bundled_set_is_whole_and_disjoint_from_the_replay_prompts():
    items, sha = read_general_set()
    assert len(items) == 50 and len({i["id"] for i in items}) == 50 and len(sha) == 64
    assert {i["category"] for i in items} == {"facts", "arithmetic", "instructions", "formats"}
    for item in items:  # the reference answer is a correct answer
        assert answer_passes(item["reference"], item), item["id"]
    replay = replay_prompts()
    assert len(replay) == 120
    evaluated = {_words(i["prompt"][-1]["content"]) for i in items}
    assert not evaluated & {_words(r["prompt"]) for r in replay}  # replay never trains on the evaluation set


def test_answers_are_checked_by_the_items_patterns_or_rouge():
    items, _ = read_general_set()
    multiply = next(i for i in items if "7 times 8" in i["prompt"][-1]["content"])
    assert answer_passes("7 times 8 is 56.", multiply)
    assert not answer_passes('{"team": "Statistics", "priority": "low"}', multiply)
    assert not answer_passes("It is 560.", multiply)
    free = {"prompt": [], "reference": "The sky is blue on a clear day.", "accept": []}
    assert answer_passes("On a clear day the sky is blue.", free) and not answer_passes("Paris.", free)


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    (json.dumps({"prompt": "Hi?"}), "'reference' must be"),
    (json.dumps({"prompt": 3, "reference": "x"}), "'prompt' must be"),
    (json.dumps({"prompt": "Hi?", "reference": "Hello.", "accept": ["("]}), "not a valid regex"),
    (json.dumps({"messages": [{"role": "user", "content": "Hi?"}]}), "must end with the assistant"),
])
def test_a_bad_general_file_names_the_line(tmp_path, line, message):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1 plus 1?", "reference": "2"}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=re.escape(f"{path}:2") + ".*" + re.escape(message)):
        read_general_set(path)


def test_own_general_file_in_either_shape(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "What is 1 plus 1?", "reference": "2", "accept": [r"\b2\b"]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Say hi."},
                                               {"role": "assistant", "content": "Hi!"}], "category": "chat"}) + "\n")
    items, _ = read_general_set(path)
    assert [i["category"] for i in items] == ["general", "chat"] and items[1]["reference"] == "Hi!"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(UserError, match="not UTF-8"):
        read_general_set(path)
    with pytest.raises(UserError, match="no such file"):
        read_general_set(tmp_path / "missing.jsonl")


def test_general_gates_parse_and_replay_counts():
    gate = parse_gate("general_loss<=+0.15")
    assert gate.metric == "general_loss" and gate.relative and gate.check({"general_loss": 1.2}, {"general_loss": 1.1})["passed"]
    assert not gate.check({"general_loss": 1.3}, {"general_loss": 1.1})["passed"]
    assert replay_count(0.0, 100) == 0 and replay_count(0.25, 100) == 25 and replay_count(0.01, 10) == 1
    assert replay_count(1.0, 10_000) == 120  # the pool's size at most


def test_self_replay_is_an_sft_setting():
    from hilt.training.base.recipe import load_recipe

    with pytest.raises(UserError, match="data.self_replay"):
        load_recipe("smollm2-135m-dpo-lora", {"data.self_replay": "0.25"})
    assert load_recipe("smollm2-135m-sft-lora", {"data.self_replay": "0.25"}).data.self_replay == 0.25
    with pytest.raises(UserError, match="self_replay"):
        load_recipe("smollm2-135m-sft-lora", {"data.self_replay": "2"})


def test_a_tiny_models_learning_rate_on_a_real_model_is_warned_about(capsys):
    from hilt.training.trainers.callbacks import warn_learning_rate

    warn_learning_rate(5e-3, 134_515_008, adapter=True)
    assert "train.learning_rate=0.005 is a tiny random model's setting" in capsys.readouterr().out
    for args in ((5e-4, 134_515_008, True), (5e-3, 120_000, True), (5e-3, 134_515_008, False)):
        warn_learning_rate(*args)
        assert capsys.readouterr().out == ""


def test_the_scenario_says_how_many_prompts_it_has():
    from hilt.flows.scenario import DISTINCT_PROMPTS, scenario_prompts

    assert len({p["prompt"] for p in scenario_prompts(DISTINCT_PROMPTS)}) == DISTINCT_PROMPTS
    with pytest.raises(ValueError, match=f"has {DISTINCT_PROMPTS} distinct prompts"):
        scenario_prompts(DISTINCT_PROMPTS + 1)  # it used to loop forever


def test_sagemaker_gates_read_general_metrics_where_eval_json_holds_them():
    from hilt.flows.sagemaker_pipeline import gate_json_path

    eval_json = {"deltas": {"loss": -1.0}, "models": {"candidate": {"metrics": {"rougeL": 0.9}}},
                 "general": {"deltas": {"general_loss": 0.1}, "models": {"candidate": {"general_accuracy": 0.5}}}}

    def read(path: str):
        value = eval_json
        for key in path.split("."):
            value = value[key]
        return value

    for text, expected in (("general_loss<=+0.15", 0.1), ("general_accuracy>=0.4", 0.5), ("loss<=-0.1", -1.0),
                           ("rougeL>=0.5", 0.9)):
        assert read(gate_json_path(parse_gate(text))) == expected


def test_the_listing_quotes_the_general_scores(tmp_path):
    from hilt.serving.marketplace import write_listing

    model = tmp_path / "model"
    model.mkdir()
    general = {"records": 50, "models": {"candidate": {"general_loss": 1.25, "general_accuracy": 0.58}},
               "deltas": {"general_loss": 0.132, "general_accuracy": 0.08}}
    (model / "hilt.json").write_text(json.dumps({"recipe": {"name": "r"}, "general": general}))
    text = write_listing(model, tmp_path / "LISTING.md", None, "output_tokens").read_text()
    assert ("general_loss 1.250, general_accuracy 0.58 (against the base model: loss +0.132, accuracy +0.08)"
            in text)


def test_the_side_by_side_section_names_the_baseline_not_the_sellers_path():
    from hilt.labeling.compare import summary_markdown

    report = {"win_rate": 0.8, "win_rate_ci95": [0.5, 0.95], "pairs": 10, "project": 3, "wins": 8, "losses": 2,
              "ties": {"total": 0, "split_votes": 0, "identical_answers": 0}, "unjudged_pairs": 0,
              "judgements": 20, "annotators": ["a", "b"], "percent_agreement": 1.0,
              "baseline": {"path": "/home/seller/work/.hilt-demo/base-model", "version": "base-model@0123456789ab"}}
    text = summary_markdown(report)
    assert "base-model@0123456789ab" in text and "/home/seller" not in text


def test_an_empty_validation_split_is_a_job_without_held_out_evaluation(opt_ml, capsys):
    """`hilt export` leaving no held-out record writes an empty validation/data.jsonl (issue 33 item 10)."""
    from hilt.training.base.job import read_channels

    for channel, text in (("train", '{"messages": []}\n'), ("validation", "\n")):
        opt_ml.channel_dir(channel).mkdir(parents=True)
        (opt_ml.channel_dir(channel) / "data.jsonl").write_text(text)
    assert set(read_channels(opt_ml)) == {"train"}
    assert "holds no records: training without held-out evaluation" in capsys.readouterr().out
    (opt_ml.channel_dir("validation") / "data.jsonl").write_text('{"messages": []}\n')
    assert set(read_channels(opt_ml)) == {"train", "validation"}
    (opt_ml.channel_dir("validation") / "data.jsonl").unlink()
    (opt_ml.channel_dir("validation") / "notes.csv").write_text("a,b\n")  # not records: still refused later
    assert set(read_channels(opt_ml)) == {"train", "validation"}


def test_a_pair_whose_answers_are_the_same_is_refused_before_training():
    """DPO on chosen == rejected trains at log 2 with zero gradient (issue 33 item 12)."""
    from hilt.training.data.records import check_record

    prompt = [{"role": "user", "content": "Hi?"}]
    same = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Hello."}]}
    with pytest.raises(UserError, match="data.jsonl:3: 'chosen' and 'rejected' are the same answer"):
        check_record(same, "dpo", "data.jsonl:3")
    assert check_record({**same, "rejected": [{"role": "assistant", "content": "Go away."}]}, "dpo", "x")


def test_a_model_package_group_is_a_name_or_its_arn_never_an_arn_as_a_name():
    """An ARN given as --group created a group named by the ARN (issue 33, cosmetic)."""
    from hilt.core.aws import model_package_group_name

    assert model_package_group_name("hilt-assistant") == "hilt-assistant"
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package-group/hilt-assistant"
    assert model_package_group_name(arn) == "hilt-assistant"
    for bad in ("-starts-with-hyphen", "has space", "a" * 64, "arn:aws:sagemaker:us-east-1:1:model-package-group/x"):
        with pytest.raises(UserError, match="a model package group name is 1-63"):
            model_package_group_name(bad)
