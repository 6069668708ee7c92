"""Evaluation: text metrics, gates, the blinding of side-by-side projects, the win-rate report.

The tiny-model tests score the shared LoRA run (trained on the uppercase task) against its
warmed-up base with `hilt evaluate`; gates must pass and fail as written.
"""

from __future__ import annotations

import json
import math
import random

import pytest

from conftest import run_hilt
from hilt.core.errors import UserError
from hilt.labeling.compare import blind_pairs, compare_report, wilson_interval, winner_of
from hilt.core.layout import upsert_section
from hilt.training.evaluation.evaluate import parse_gate
from hilt.training.evaluation.scoring import exact_match, rouge_l

# ---------------------------------------------------------------- text metrics and gates


def test_rouge_l_and_exact_match():
    # LCS of "the cat sat on the mat" / "the cat is on the mat" = 5 words of 6 each.
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    assert rouge_l("Mrs. Lee asked about fees", "mrs lee asked about fees") == 1.0  # case and punctuation
    assert rouge_l("a b", "c d") == 0.0
    assert rouge_l("", "") == 1.0 and rouge_l("", "x") == 0.0
    assert exact_match(" ABCD \n", "ABCD") == 1.0
    assert exact_match("abcd", "ABCD") == 0.0


def test_gates_relative_and_absolute():
    candidate, baseline = {"rougeL": 0.60, "loss": 1.0, "exact_match": 0.5}, {"rougeL": 0.50, "loss": 1.5, "exact_match": 0.5}
    relative = parse_gate("rougeL>=+0.05")
    assert relative.relative and relative.threshold == 0.05
    assert relative.check(candidate, baseline)["passed"]
    assert not parse_gate("rougeL>=+0.2").check(candidate, baseline)["passed"]
    assert parse_gate("loss<=-0.3").check(candidate, baseline)["passed"]  # loss fell by 0.5
    assert not parse_gate("loss<=-0.6").check(candidate, baseline)["passed"]
    absolute = parse_gate("exact_match >= 0.6")
    assert not absolute.relative and not absolute.check(candidate, None)["passed"]
    assert parse_gate("exact_match>0.4").check(candidate, None)["passed"]
    with pytest.raises(UserError, match="unknown metric 'bleu'"):
        parse_gate("bleu>=+0.1")
    with pytest.raises(UserError, match="not METRIC OP NUMBER"):
        parse_gate("rougeL improves")


def test_wilson_interval_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) is None


def test_heldout_records_from_sft_and_preference_files(tmp_path):
    from hilt.training.evaluation.evaluate import read_eval_records

    sft = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello"}], "meta": {"kind": "greeting"}}
    pref = {"prompt": [{"role": "user", "content": "upper: ab"}], "chosen": [{"role": "assistant", "content": "AB"}],
            "rejected": [{"role": "assistant", "content": "ab"}]}
    (tmp_path / "validation").mkdir()
    (tmp_path / "validation" / "data.jsonl").write_text(json.dumps(sft) + "\n\n" + json.dumps(pref) + "\n")
    records, _ = read_eval_records(tmp_path)
    assert records == [
        {"prompt": sft["messages"][:2], "reference": "hello", "kind": "greeting"},
        {"prompt": pref["prompt"], "reference": "AB", "kind": None},
    ]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl:1: SFT record has no assistant message"):
        read_eval_records(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match="broken.jsonl:1: not valid JSON"):
        read_eval_records(tmp_path / "broken.jsonl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no validation/\*\.jsonl"):
        read_eval_records(tmp_path / "empty")


# ---------------------------------------------------------------- blinding


def _rows(n):
    return [{"id": i, "prompt": f"upper: w{i}"} for i in range(n)]


def test_blinding_is_random_but_reproducible_and_hidden_from_task_data():
    rows = _rows(40)
    cand = [f"W{i}" for i in range(40)]
    base = [f"w{i}" for i in range(40)]
    tasks, pairs = blind_pairs(rows, cand, base, seed=7)
    again, _ = blind_pairs(rows, cand, base, seed=7)
    other, _ = blind_pairs(rows, cand, base, seed=8)
    assert tasks == again
    assert tasks != other
    sides = [p["candidate"] for p in pairs.values()]
    assert 10 <= sides.count("answer1") <= 30  # both orders, roughly half each
    for task in tasks:
        assert set(task["data"]) == {"prompt", "pair_id", "answer1", "answer2"}
        blob = json.dumps(task)
        assert "candidate" not in blob and "baseline" not in blob
        at = pairs[task["data"]["pair_id"]]["candidate"]
        assert task["data"][at].isupper()  # the mapping points at the candidate's text


def _export(tasks, pick, annotators=("a@x", "b@x")):
    """A Label Studio export where each annotator picks side pick(task, who) in {'left','right'}."""
    out = []
    for n, task in enumerate(tasks):
        annotations = [{"id": n * 10 + k, "completed_by": {"email": who}, "was_cancelled": False,
                        "result": [{"from_name": "comparison", "to_name": ["answer1", "answer2"], "type": "pairwise",
                                    "value": {"selected": pick(task, who)}}]}
                       for k, who in enumerate(annotators)]
        out.append({"id": 100 + n, "data": task["data"], "annotations": annotations})
    return out


def test_mapping_is_applied_in_both_directions():
    rows = _rows(30)
    cand, base = [f"W{i}" for i in range(30)], [f"w{i}" for i in range(30)]
    tasks, pairs = blind_pairs(rows, cand, base, seed=1)
    mapping = {"project": 1, "pairs": pairs, "candidate": {"path": "c"}, "baseline": {"path": "b"}}

    def left_if(pred):
        return lambda task, who: "left" if pred(task["data"]["answer1"]) else "right"

    always_candidate = compare_report(_export(tasks, left_if(str.isupper)), mapping)
    assert (always_candidate["wins"], always_candidate["losses"]) == (30, 0)
    always_baseline = compare_report(_export(tasks, left_if(str.islower)), mapping)
    assert (always_baseline["wins"], always_baseline["losses"]) == (0, 30)
    always_left = compare_report(_export(tasks, lambda t, w: "left"), mapping)
    n_first = sum(p["candidate"] == "answer1" for p in pairs.values())
    assert always_left["wins"] == n_first and always_left["losses"] == 30 - n_first
    for pid, pair in pairs.items():
        assert winner_of("left", pair["candidate"]) == ("candidate" if pair["candidate"] == "answer1" else "baseline")
        assert winner_of("right", pair["candidate"]) != winner_of("left", pair["candidate"])


def test_report_ties_agreement_and_wrong_mapping():
    rows = _rows(12)
    cand = [f"W{i}" for i in range(12)]
    base = [f"w{i}" for i in range(10)] + ["W10", "W11"]  # last two answered identically
    tasks, pairs = blind_pairs(rows, cand, base, seed=3)
    assert len(tasks) == 10 and sum(p.get("identical", False) for p in pairs.values()) == 2
    mapping = {"project": 5, "pairs": pairs, "candidate": {"path": "c"}, "baseline": {"path": "b"}}
    index = {t["data"]["pair_id"]: i for i, t in enumerate(tasks)}

    def pick(task, who):
        upper_side = "left" if task["data"]["answer1"].isupper() else "right"
        lower_side = "right" if upper_side == "left" else "left"
        i = index[task["data"]["pair_id"]]
        if who == "a@x":
            return upper_side  # always the candidate
        return upper_side if i < 6 else lower_side  # b agrees on 6 pairs, disagrees on 4

    report = compare_report(_export(tasks, pick), mapping)
    assert (report["wins"], report["losses"]) == (6, 0)
    assert report["ties"] == {"split_votes": 4, "identical_answers": 2, "total": 6}
    assert report["win_rate"] == 1.0 and report["win_rate_ci95"][0] == pytest.approx(0.6097, abs=1e-4)
    assert report["win_rate_ties_as_half"] == pytest.approx((6 + 3) / 12)
    assert report["annotators"]["a@x"]["agreement_with_others"] == 0.6
    assert report["annotators"]["b@x"]["candidate_preferred"] == 0.6
    assert report["percent_agreement"] == 0.6
    foreign = {"project": 9, "pairs": {}, "candidate": {"path": "c"}, "baseline": {"path": "b"}}
    with pytest.raises(UserError, match="not in the mapping of project 9"):
        compare_report(_export(tasks, pick), foreign)


def test_upsert_section_replaces_in_place(tmp_path):
    card = tmp_path / "README.md"
    card.write_text("# Model\n\nintro\n")
    upsert_section(card, "## Human\n\none", "human")
    upsert_section(card, "## Human\n\ntwo", "human")
    text = card.read_text()
    assert text.count("## Human") == 1 and "two" in text and "one" not in text and text.startswith("# Model")


# ---------------------------------------------------------------- tiny models


@pytest.mark.slow
def test_evaluate_tuned_vs_base_with_gates(hilt_exe, lora_run, warm_base_dir, dataset_dir, tmp_path):
    out, _ = lora_run
    model = out / "model"
    common = ["evaluate", "--model", str(model), "--baseline", str(warm_base_dir), "--data", str(dataset_dir),
              "--max-new-tokens", "8"]
    result = run_hilt(hilt_exe, *common, "--out", str(tmp_path / "pass"),
                      "--gate", "exact_match>=+0.3", "--gate", "loss<=-0.5", "--gate", "rougeL>=0.5")
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    report = json.loads((tmp_path / "pass" / "eval.json").read_text())
    cand, base = report["models"]["candidate"]["metrics"], report["models"]["baseline"]["metrics"]
    assert cand["exact_match"] >= base["exact_match"] + 0.3
    assert cand["loss"] < base["loss"] and cand["perplexity"] == pytest.approx(math.exp(cand["loss"]), rel=1e-4)
    assert report["data"]["records"] == 32 and all(g["passed"] for g in report["gates"])
    samples = [json.loads(l) for l in (tmp_path / "pass" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 32 and {"candidate", "baseline", "reference", "prompt"} <= set(samples[0])
    assert sum(s["candidate"] == s["reference"] for s in samples) / 32 == pytest.approx(cand["exact_match"])
    assert (tmp_path / "pass" / "metrics.png").stat().st_size > 5000
    assert "| exact_match |" in (tmp_path / "pass" / "report.md").read_text()
    # Both models on the general set too (did it forget?): in eval.json, the report, the model card.
    general = report["general"]
    assert general["records"] == 50 and len(general["samples"]) == 50
    for name in ("candidate", "baseline"):
        scores = general["models"][name]
        assert scores["general_loss"] > 0 and 0 <= scores["general_accuracy"] <= 1
        assert set(scores["by_category"]) == {"facts", "arithmetic", "instructions", "formats"}
    assert general["deltas"]["general_loss"] == pytest.approx(
        general["models"]["candidate"]["general_loss"] - general["models"]["baseline"]["general_loss"], abs=1e-5)
    assert "## General skills (did it forget?)" in (tmp_path / "pass" / "report.md").read_text()
    assert "## General skills (did it forget?)" in (model / "README.md").read_text()
    assert json.loads((model / "hilt.json").read_text())["general"]["sha256"] == general["sha256"]
    assert "general (50 prompts outside the task" in result.stdout

    own = tmp_path / "general.jsonl"
    own.write_text(json.dumps({"prompt": "upper: abcd", "reference": "ABCD", "accept": ["(?-i:ABCD)"]}) + "\n"
                   + json.dumps({"messages": [{"role": "user", "content": "upper: qrst"},
                                              {"role": "assistant", "content": "QRST"}]}) + "\n")

    # The same models, a bar they do not clear: exit 1, the failing gate named.
    result = run_hilt(hilt_exe, *common, "--out", str(tmp_path / "fail"), "--gate", "exact_match>=+0.3",
                      "--gate", "rougeL>=+1.5", "--gate", "general_loss<=-5", "--general", str(own))
    assert result.returncode == 1
    assert "gate rougeL>=+1.5" in result.stdout and "FAIL" in result.stdout
    failed = json.loads((tmp_path / "fail" / "eval.json").read_text())
    assert [g["passed"] for g in failed["gates"]] == [True, False, False] and failed["passed"] is False
    assert failed["general"]["records"] == 2 and failed["general"]["set"] == own.name
    assert failed["general"]["path"] == str(own) and str(tmp_path) not in (model / "README.md").read_text()
    assert "path" not in json.loads((model / "hilt.json").read_text())["general"]

    # What a SageMaker processing job receives of a training job: a folder holding model.tar.gz.
    from hilt.serving.package import build_model_tar

    (tmp_path / "artifacts").mkdir()
    build_model_tar(model, tmp_path / "artifacts" / "model.tar.gz")
    result = run_hilt(hilt_exe, "evaluate", "--model", str(tmp_path / "artifacts"), "--data", str(dataset_dir),
                      "--out", str(tmp_path / "archived"), "--max-new-tokens", "8", "--max-samples", "4")
    assert result.returncode == 0 and "unpacking" in result.stdout, result.stderr[-2000:]
    archived = [json.loads(l) for l in (tmp_path / "archived" / "samples.jsonl").read_text().splitlines()]
    assert [s["candidate"] for s in archived] == [s["candidate"] for s in samples[:4]]
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["model.tar.gz"]

    # --no-general: the task metrics only, and a general gate is then a user error.
    result = run_hilt(hilt_exe, "evaluate", "--model", str(model), "--data", str(dataset_dir), "--out",
                      str(tmp_path / "task-only"), "--max-new-tokens", "8", "--max-samples", "4", "--no-general")
    assert result.returncode == 0 and "general" not in json.loads((tmp_path / "task-only" / "eval.json").read_text())
    result = run_hilt(hilt_exe, "evaluate", "--model", str(model), "--data", str(dataset_dir), "--out",
                      str(tmp_path / "y"), "--no-general", "--gate", "general_accuracy>=0.5")
    assert result.returncode == 2 and "needs the general set" in result.stderr

    # A relative gate needs a baseline: a one-line user error, exit 2.
    result = run_hilt(hilt_exe, "evaluate", "--model", str(model), "--data", str(dataset_dir), "--out",
                      str(tmp_path / "x"), "--gate", "rougeL>=+0.05")
    assert result.returncode == 2 and "pass --baseline" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_training_writes_heldout_scores_into_hilt_json(lora_run, dataset_dir):
    out, log = lora_run
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    evaluation = manifest["evaluation"]
    assert evaluation["records"] == 32 and evaluation["task_metric"] == "exact_match"
    m = evaluation["metrics"]
    assert set(m) == {"loss", "perplexity", "exact_match", "rougeL"} and m["exact_match"] >= 0.5
    # Measured independently of the trainer, the held-out loss equals its eval_loss (assistant tokens).
    assert m["loss"] == pytest.approx(manifest["metrics"]["eval_loss"], rel=1e-4)
    assert f"eval_exact_match={m['exact_match']:.6g}" in log
    card = (out / "model" / "README.md").read_text()
    assert "## Held-out evaluation" in card


# ---------------------------------------------------------------- with Label Studio


@pytest.mark.slow
@pytest.mark.studio
def test_side_by_side_in_label_studio(hilt_exe, studio, lora_run, warm_base_dir, tmp_path):
    import shutil

    from hilt.labeling.client import StudioClient

    candidate = tmp_path / "candidate"
    shutil.copytree(lora_run[0] / "model", candidate)
    rng = random.Random(99)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4)) for _ in range(24)]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"upper: {w}"}) + "\n" for i, w in enumerate(words)))
    reference = {f"upper: {w}": w.upper() for w in words}
    compare_dir = tmp_path / "compare"
    args = ["label", "compare", "--baseline", str(warm_base_dir), "--candidate", str(candidate),
            "--prompts", str(prompts), "--seed", "11", "--max-new-tokens", "8", "--out", str(compare_dir)]
    result = run_hilt(hilt_exe, *args, env=studio["env"])
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    project = int(result.stdout.strip().splitlines()[-1])
    mapping = json.loads((compare_dir / f"project-{project}.json").read_text())

    client = StudioClient(studio["url"], studio["token"])
    tasks = client.export_tasks(project)
    assert len(tasks) == sum("candidate" in p for p in mapping["pairs"].values()) >= 10
    # What annotators see carries no hint of which model wrote which answer.
    for task in tasks:
        assert set(task["data"]) == {"prompt", "pair_id", "answer1", "answer2"}
    sides = {p["candidate"] for p in mapping["pairs"].values() if "candidate" in p}
    assert sides == {"answer1", "answer2"}

    # Stand-in annotators prefer the correct answer (the second one errs on every 4th task),
    # reading only what the UI shows.
    second = client.create_user("judge-2", f"judge-2-{project}@hilt.local")
    for n, task in enumerate(tasks):
        d = task["data"]
        correct = "left" if d["answer1"] == reference[d["prompt"]] else (
            "right" if d["answer2"] == reference[d["prompt"]] else rng.choice(["left", "right"]))
        wrong = "right" if correct == "left" else "left"
        for who, side in ((None, correct), (second, wrong if n % 4 == 0 else correct)):
            result_ = [{"from_name": "comparison", "to_name": "answer1", "type": "pairwise",
                        "value": {"selected": side}}]
            client.create_annotation(task["id"], result_, completed_by=who, lead_time=5.0)

    listing = tmp_path / "LISTING.md"
    listing.write_text("# draft\n")
    result = run_hilt(hilt_exe, "label", "compare-report", "--project", str(project),
                      "--compare-dir", str(compare_dir), "--listing", str(listing), env=studio["env"])
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    report = json.loads((compare_dir / "eval.json").read_text())["human_side_by_side"]
    assert report["judgements"] == 2 * len(tasks)
    assert report["win_rate"] > 0.5 and report["win_rate_ci95"][0] > 0.5  # the tuned model wins
    assert report["wins"] + report["losses"] + report["ties"]["split_votes"] == len(tasks)
    assert report["annotators"][str(second)]["agreement_with_others"] < 1.0
    assert json.loads((candidate / "hilt.json").read_text())["human_side_by_side"] == report
    for doc in (candidate / "README.md", listing):
        assert "## Human side-by-side evaluation" in doc.read_text()

    # The same judgements are DPO records for the next round: chosen = the correct answer.
    data = tmp_path / "dpo"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--template", "preference",
                      "--validation-fraction", "0", "--out", str(data), env=studio["env"])
    assert result.returncode == 0, result.stderr
    records = [json.loads(l) for l in (data / "train" / "data.jsonl").read_text().splitlines()]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["counts"]["annotations"] == 2 * len(tasks)
    decided = [r for r in records if r["meta"]["votes"]["left"] != r["meta"]["votes"]["right"]]
    assert len(records) == len(decided) > 0
    graded = [r for r in records if reference[r["prompt"][-1]["content"]]
              in (r["chosen"][0]["content"], r["rejected"][0]["content"])]
    assert len(graded) >= len(records) // 2
    for r in graded:
        assert r["chosen"][0]["content"] == reference[r["prompt"][-1]["content"]]


def test_headline_metric_comes_from_the_models_recipe(tmp_path):
    from hilt.training.evaluation.evaluate import task_metric_of
    from hilt.training.base.recipe import load_recipe

    recipe = load_recipe("quickstart-tiny-sft", {"eval.metric": "rougeL"}).model_dump(mode="json")
    (tmp_path / "hilt.json").write_text(json.dumps({"recipe": recipe}))
    assert task_metric_of(tmp_path) == "rougeL"
    assert task_metric_of(tmp_path / "no-such-model") == "exact_match"
    with pytest.raises(UserError, match="eval.metric"):
        load_recipe("quickstart-tiny-sft", {"eval.metric": "bleu"})
