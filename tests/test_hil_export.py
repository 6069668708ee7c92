"""Export rules on hand-written Label Studio export files: one test per reject reason."""

from __future__ import annotations

import json
import subprocess

import pytest

from hilt.labeling.dataset import build_files, export_to_dataset
from hilt.labeling.export import ExportOptions, export_annotations, split_of
from hilt.labeling.templates import default_spec, parse_label_config, template_xml


def sft_annotation(aid, text, who=1, **extra):
    result = [] if text is None else [{"from_name": extra.pop("from_name", "answer"), "to_name": "prompt",
                                       "type": "textarea", "value": {"text": [text]}}]
    return {"id": aid, "completed_by": who, "result": result, "was_cancelled": False, "ground_truth": False,
            "created_at": f"2026-01-01T00:00:{aid:02d}Z", "updated_at": f"2026-01-01T00:00:{aid:02d}Z",
            "lead_time": 10.0 + aid, **extra}


def pref_annotation(aid, selected, who=1, **extra):
    result = [] if selected is None else [{"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise",
                                           "value": {"selected": selected}}]
    if "rationale" in extra:
        result.append({"from_name": "rationale", "to_name": "prompt", "type": "textarea",
                       "value": {"text": [extra.pop("rationale")]}})
    return {"id": aid, "completed_by": who, "result": result, "was_cancelled": False, "ground_truth": False,
            "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", "lead_time": 5.0, **extra}


def task(tid, annotations, **data):
    return {"id": tid, "data": {"prompt": f"question {tid}", **data}, "annotations": annotations, "predictions": []}


def reasons(result):
    return [r["reason"] for r in result.rejects]


SFT = default_spec("sft")
PREF = default_spec("preference")


def test_sft_record_equals_the_annotation():
    tasks = [task(7, [sft_annotation(1, "  The answer.  ", who=3)], system="Be brief.")]
    result = export_annotations(tasks, SFT, ExportOptions(validation_fraction=0.0))
    (record,) = result.records["train"]
    assert record["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question 7"},
        {"role": "assistant", "content": "The answer."},
    ]
    assert record["meta"]["task_id"] == 7 and record["meta"]["annotation_id"] == 1
    assert record["meta"]["annotator"] == 3 and record["meta"]["lead_time"] == 11.0


def test_stock_template_instruction_textarea_exports_unchanged():
    tasks = [task(1, [sft_annotation(1, "stock answer", from_name="instruction")])]
    result = export_annotations(tasks, SFT, ExportOptions(validation_fraction=0.0))
    assert result.records["train"][0]["messages"][-1]["content"] == "stock answer"


@pytest.mark.parametrize(
    "annotation, data, reason",
    [
        (sft_annotation(1, "x", was_cancelled=True), {}, "cancelled"),
        (sft_annotation(1, None), {}, "no_answer"),
        (sft_annotation(1, "   \n "), {}, "empty_answer"),
        (sft_annotation(1, "y" * 101), {}, "too_long"),
        (sft_annotation(1, "fine"), {"prompt": "  "}, "missing_prompt"),
    ],
)
def test_sft_reject_rules(annotation, data, reason):
    result = export_annotations([task(1, [annotation], **data)], SFT, ExportOptions(max_chars=100))
    assert reasons(result) == [reason]
    assert result.counts["rejects"]["by_reason"] == {reason: 1}
    assert result.rejects[0]["annotation_id"] == 1 and result.rejects[0]["task_id"] == 1


def test_sft_duplicates_and_policies():
    tasks = [
        task(1, [sft_annotation(1, "Same answer", who=1), sft_annotation(2, "same   ANSWER", who=2),
                 sft_annotation(3, "Other answer", who=3)]),
    ]
    distinct = export_annotations(tasks, SFT, ExportOptions(validation_fraction=0.0))
    assert [r["meta"]["annotation_id"] for r in distinct.records["train"]] == [1, 3]
    assert reasons(distinct) == ["duplicate"]
    everything = export_annotations(tasks, SFT, ExportOptions(policy="all", validation_fraction=0.0))
    assert len(everything.records["train"]) == 3 and not everything.rejects
    latest = export_annotations(tasks, SFT, ExportOptions(policy="latest", validation_fraction=0.0))
    assert [r["meta"]["annotation_id"] for r in latest.records["train"]] == [3]
    assert reasons(latest) == ["superseded", "superseded"]
    tasks[0]["annotations"][1]["ground_truth"] = True
    gold = export_annotations(tasks, SFT, ExportOptions(policy="ground-truth-first", validation_fraction=0.0))
    assert [r["meta"]["annotation_id"] for r in gold.records["train"]] == [2]


def test_unknown_control_needs_the_config():
    spec = parse_label_config(template_xml("sft"))
    tasks = [task(1, [sft_annotation(1, "ok"), sft_annotation(2, "ghost", from_name="removed_control")])]
    result = export_annotations(tasks, spec, ExportOptions(validation_fraction=0.0))
    assert reasons(result) == ["unknown_control"]
    assert len(result.records["train"]) == 1


def test_preference_majority_and_mapping():
    tasks = [task(1, [pref_annotation(1, "right", who=1, rationale="more polite"), pref_annotation(2, "right", who=2),
                      pref_annotation(3, "left", who=3)], answer1="A one", answer2="B two")]
    result = export_annotations(tasks, PREF, ExportOptions(validation_fraction=0.0))
    (record,) = result.records["train"]
    assert record["prompt"] == [{"role": "user", "content": "question 1"}]
    assert record["chosen"] == [{"role": "assistant", "content": "B two"}]
    assert record["rejected"] == [{"role": "assistant", "content": "A one"}]
    assert record["meta"]["votes"] == {"left": 1, "right": 2}
    assert record["meta"]["annotation_ids"] == [1, 2, 3] and record["meta"]["rationales"] == ["more polite"]
    assert result.counts["annotations_in_records"] == 3 and not result.rejects


@pytest.mark.parametrize(
    "annotations, data, expected",
    [
        ([pref_annotation(1, "left"), pref_annotation(2, "right")], {}, ["conflicting_preference"] * 2),
        ([pref_annotation(1, None)], {}, ["no_selection"]),
        ([pref_annotation(1, "left", was_cancelled=True)], {}, ["cancelled"]),
        ([pref_annotation(1, "left")], {"answer2": ""}, ["missing_answers"]),
        ([pref_annotation(1, "left")], {"answer2": "a  ONE"}, ["identical_answers"]),
    ],
)
def test_preference_reject_rules(annotations, data, expected):
    result = export_annotations([task(1, annotations, **{"answer1": "a one", "answer2": "b two", **data})],
                                PREF, ExportOptions())
    assert reasons(result) == expected


def test_preference_duplicate_pair_across_tasks():
    tasks = [task(1, [pref_annotation(1, "left")], answer1="x", answer2="y"),
             task(2, [pref_annotation(2, "left")], answer1="x", answer2="y", prompt="question 1")]
    result = export_annotations(tasks, PREF, ExportOptions())
    assert reasons(result) == ["duplicate"]


def test_counts_add_up_and_split_is_stable():
    tasks = [task(i, [sft_annotation(i, f"answer {i}")]) for i in range(1, 200)]
    tasks.append(task(500, [sft_annotation(500, "", was_cancelled=True)]))
    result = export_annotations(tasks, SFT, ExportOptions(validation_fraction=0.2))
    c = result.counts
    assert c["annotations"] == c["annotations_in_records"] + c["rejects"]["total"] == 200
    assert 20 < c["records"]["validation"] < 60
    # A task's split depends only on its id: adding tasks moves none of the old ones.
    more = export_annotations(tasks + [task(900, [sft_annotation(900, "new")])], SFT, ExportOptions(validation_fraction=0.2))
    old_val = {r["meta"]["task_id"] for r in result.records["validation"]}
    new_val = {r["meta"]["task_id"] for r in more.records["validation"]} - {900}
    assert old_val == new_val
    assert all(split_of(t, 0.2) == "validation" for t in old_val)


def test_quality_report():
    tasks = [
        task(1, [pref_annotation(1, "left", who=1), pref_annotation(2, "left", who=2)], answer1="a", answer2="b"),
        task(2, [pref_annotation(3, "right", who=1), pref_annotation(4, "left", who=2)], answer1="c", answer2="d"),
        task(3, [pref_annotation(5, "right", who=1), pref_annotation(6, "right", who=2)], answer1="e", answer2="f"),
        task(4, [pref_annotation(7, "left", who=9, ground_truth=True), pref_annotation(8, "left", who=1),
                 pref_annotation(9, "right", who=2)], answer1="g", answer2="h"),
    ]
    q = export_annotations(tasks, PREF, ExportOptions()).quality
    assert q["annotators"]["1"]["annotations"] == 4 and q["annotators"]["1"]["median_lead_time_s"] == 5.0
    assert q["tasks_with_2plus_annotations"] == 4
    assert q["percent_agreement"] == 0.5
    assert q["gold_accuracy"] == 0.5 and q["gold_annotations_checked"] == 2
    assert q["cohen_kappa"]["1~2"] == 0.0
    # Half the pairs agree and both labels are equally common: agreement is at chance.
    assert q["fleiss_kappa"] == 0.0


def test_pii_scrub_counts():
    tasks = [task(1, [sft_annotation(1, "Mail ana@example.com or call +1 415 555 0100.")])]
    result = export_annotations(tasks, SFT, ExportOptions(scrub_pii=True, validation_fraction=0.0))
    assert result.records["train"][0]["messages"][-1]["content"] == "Mail [EMAIL] or call [PHONE]."
    assert result.pii == {"emails": 1, "phones": 1}


def test_files_are_byte_identical_and_manifest_hashes(tmp_path):
    tasks = [task(i, [sft_annotation(i, f"answer {i}")]) for i in range(1, 30)]
    source = {"type": "file", "name": "x.json"}
    out_a, manifest = export_to_dataset(tasks, SFT, ExportOptions(), source, tmp_path / "a")
    out_b, _ = export_to_dataset(list(reversed(tasks)), SFT, ExportOptions(), source, tmp_path / "b")
    for rel in ("train/data.jsonl", "validation/data.jsonl", "rejects.jsonl", "README.md", "manifest.json"):
        assert (out_a / rel).read_bytes() == (out_b / rel).read_bytes(), rel
    import hashlib

    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((out_a / rel).read_bytes()).hexdigest() == digest
    # Provenance: every option that can change the records is in the manifest.
    import dataclasses

    options = ExportOptions(rank_policy="all-pairs", rating_threshold=3.5)
    _, manifest = export_to_dataset(tasks, SFT, options, source, tmp_path / "c")
    assert manifest["options"] == dataclasses.asdict(options)
    assert {"rank_policy": "all-pairs", "rating_threshold": 3.5}.items() <= manifest["options"].items()
    # Re-running over an existing export replaces it whole.
    export_to_dataset(tasks[:5], SFT, ExportOptions(), source, tmp_path / "a")
    assert json.loads((out_a / "manifest.json").read_text())["counts"]["annotations"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    import hilt.labeling.dataset as dataset

    tasks = [task(1, [sft_annotation(1, "a")])]
    files, manifest = build_files(export_annotations(tasks, SFT, ExportOptions()), {"type": "file"}, ExportOptions())
    files["train/data.jsonl"] = object()  # write_bytes fails half-way through
    with pytest.raises(TypeError):
        dataset.write_dataset(tmp_path / "out", files, manifest)
    assert list(tmp_path.iterdir()) == []


def write_export(path, tasks):
    path.write_text(json.dumps(tasks))
    return path


def run(hilt_exe, *args):
    return subprocess.run([str(hilt_exe), *args], capture_output=True, text=True, timeout=120)


def test_cli_from_file_and_bad_inputs(hilt_exe, tmp_path):
    export = write_export(tmp_path / "export.json", [task(1, [sft_annotation(1, "hello")])])
    ok = run(hilt_exe, "export", "--from-file", str(export), "--template", "sft", "--out", str(tmp_path / "ds"))
    assert ok.returncode == 0, ok.stderr
    assert {p.name for p in (tmp_path / "ds").iterdir()} == {"train", "validation", "rejects.jsonl", "manifest.json", "README.md"}

    (tmp_path / "bad.json").write_text("{not json")
    bad_inputs = [
        (["--from-file", str(tmp_path / "bad.json"), "--template", "sft"], "not valid JSON"),
        (["--from-file", str(tmp_path / "missing.json"), "--template", "sft"], "no such file"),
        (["--from-file", str(export)], "needs --template"),
        (["--from-file", str(export), "--template", "preference"], "use --template sft"),
    ]
    for flags, message in bad_inputs:
        result = run(hilt_exe, "export", *flags, "--out", str(tmp_path / "never"))
        assert result.returncode == 2, flags
        assert message in result.stderr and result.stderr.count("\n") == 1
        assert not (tmp_path / "never").exists()


def test_cli_unreachable_server_and_bad_token(hilt_exe, tmp_path):
    import os

    env = {**os.environ, "LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x"}
    result = subprocess.run([str(hilt_exe), "export", "--project", "1", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "cannot reach Label Studio at http://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "x").exists()


def test_since_last_needs_project(capsys):
    from hilt.cli import main

    assert main(["export", "--from-file", "x.json", "--since-last", "--out", "y"]) == 2
    assert "--since-last needs --project" in capsys.readouterr().err


def test_rate_template_gives_kto_records_and_corrections():
    """Ratings -> one KTO record per task by mean rating; a written correction -> an SFT record and a
    (corrected over original) preference pair; no rating -> a reject with its reason."""
    from hilt.labeling.dataset import build_files
    from hilt.labeling.export import ExportOptions, export_annotations
    from hilt.labeling.templates import parse_label_config, template_xml

    spec = parse_label_config(template_xml("rate"))
    assert (spec.kind, spec.rating_control, spec.critique_control, spec.correction_control, spec.answer_key) == (
        "rate", "rating", "critique", "corrected", "answer")

    def graded(aid, stars, critique="", corrected="", who=1):
        result = [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": stars}}]
        if critique:
            result.append({"from_name": "critique", "to_name": "answer", "type": "textarea",
                           "value": {"text": [critique]}})
        if corrected:
            result.append({"from_name": "corrected", "to_name": "answer", "type": "textarea",
                           "value": {"text": [corrected]}})
        return {"id": aid, "completed_by": who, "result": result}

    tasks = [
        {"id": 1, "data": {"prompt": "Book a room?", "answer": "Use the portal."},
         "annotations": [graded(11, 5), graded(12, 4, who=2)]},
        {"id": 2, "data": {"prompt": "Reset password?", "answer": "No idea."},
         "annotations": [graded(21, 1, "Unhelpful.", "Open the IT portal and click Reset.")]},
        {"id": 3, "data": {"prompt": "Lunch?", "answer": "At noon."},
         "annotations": [{"id": 31, "completed_by": 1, "result": []}]},
    ]
    result = export_annotations(tasks, spec, ExportOptions(validation_fraction=0.0))
    kto = {r["meta"]["annotation_ids"][0]: r for r in result.records["train"]}
    assert kto[11]["label"] is True and kto[11]["meta"]["ratings"] == [5, 4] and kto[11]["meta"]["mean_rating"] == 4.5
    assert kto[21]["label"] is False and kto[21]["meta"]["critiques"] == ["Unhelpful."]
    assert kto[21]["completion"] == [{"role": "assistant", "content": "No idea."}]
    assert kto[21]["prompt"] == [{"role": "user", "content": "Reset password?"}]
    assert [(r["annotation_id"], r["reason"]) for r in result.rejects] == [(31, "no_selection")]
    c = result.counts
    assert c["annotations"] == 4 == c["annotations_in_records"] + c["rejects"]["total"]
    (sft,) = result.extra["corrections/sft"]["train"]
    assert sft["messages"][-1] == {"role": "assistant", "content": "Open the IT portal and click Reset."}
    (pair,) = result.extra["corrections/preference"]["train"]
    assert pair["chosen"][0]["content"].startswith("Open the IT") and pair["rejected"][0]["content"] == "No idea."
    files, manifest = build_files(result, {"type": "file"}, ExportOptions())
    assert "corrections/sft/train/data.jsonl" in files and manifest["extra_records"]["corrections/sft"]["train"] == 1
    assert "hilt train quickstart-tiny-kto" in files["README.md"].decode()


# ------------------------------------------------------------------ chat: the next assistant turn

CHAT = default_spec("chat")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I need a room."},
                {"role": "assistant", "content": "Which day?"}, {"role": "user", "content": "Friday."}]


def chat_task(tid, annotations, messages=CONVERSATION):
    return {"id": tid, "data": {"messages": messages}, "annotations": annotations, "predictions": []}


def chat_annotation(aid, text, who=1, **extra):
    return {**sft_annotation(aid, None, who, **extra),
            "result": [] if text is None else [{"from_name": "answer", "to_name": "dialogue", "type": "textarea",
                                                 "value": {"text": [text]}}]}


def test_chat_record_is_the_conversation_plus_the_new_turn():
    tasks = [chat_task(1, [chat_annotation(1, " Booked room 4 for Friday. ")])]
    result = export_annotations(tasks, CHAT, ExportOptions(validation_fraction=0.0))
    (record,) = result.records["train"]
    assert record["messages"] == [*CONVERSATION, {"role": "assistant", "content": "Booked room 4 for Friday."}]
    assert record["meta"]["annotation_id"] == 1


@pytest.mark.parametrize("annotation, messages, reason", [
    (chat_annotation(1, "x", was_cancelled=True), CONVERSATION, "cancelled"),
    (chat_annotation(1, None), CONVERSATION, "no_answer"),
    (chat_annotation(1, "  "), CONVERSATION, "empty_answer"),
    (chat_annotation(1, "y" * 101), CONVERSATION, "too_long"),
    (chat_annotation(1, "fine"), CONVERSATION[:3], "missing_prompt"),  # ends with the assistant
    (chat_annotation(1, "fine"), "not a list", "missing_prompt"),
])
def test_chat_reject_rules_are_the_sft_ones(annotation, messages, reason):
    result = export_annotations([chat_task(1, [annotation], messages)], CHAT, ExportOptions(max_chars=100))
    assert reasons(result) == [reason]


def test_chat_duplicates_look_at_the_whole_conversation():
    other = [*CONVERSATION[:3], {"role": "user", "content": "Saturday."}]
    tasks = [chat_task(1, [chat_annotation(1, "Done.")]), chat_task(2, [chat_annotation(2, "Done.")], other),
             chat_task(3, [chat_annotation(3, "done. ")])]
    result = export_annotations(tasks, CHAT, ExportOptions(validation_fraction=0.0))
    assert len(result.records["train"]) == 2 and reasons(result) == ["duplicate"]


# ------------------------------------------------------------------ rank: N answers in order

RANK = default_spec("rank")
ITEMS = [{"id": str(i), "title": f"Answer {i}", "body": text} for i, text in enumerate(("red", "green", "blue", "gray"), 1)]


def rank_annotation(aid, order, who=1, name="rank", **extra):
    value = order if isinstance(order, dict) else {name: order}
    return {**sft_annotation(aid, None, who, **extra),
            "result": [{"from_name": name, "to_name": "answers", "type": "ranker", "value": {"ranker": value}}]}


def rank_task(tid, annotations, items=ITEMS):
    return {"id": tid, "data": {"prompt": f"question {tid}", "answers": items,
                                "answer_sources": {"1": "m1@a", "2": "m2@b", "3": "file", "4": "file"}},
            "annotations": annotations}


def pairs(result):
    return [(r["meta"]["chosen_id"], r["meta"]["rejected_id"]) for r in result.records["train"]]


@pytest.mark.parametrize("policy, expected", [
    ("best-vs-rest", [("2", "1"), ("2", "3"), ("2", "4")]),
    ("adjacent", [("2", "1"), ("1", "3"), ("3", "4")]),
    ("all-pairs", [("2", "1"), ("2", "3"), ("2", "4"), ("1", "3"), ("1", "4"), ("3", "4")]),
])
def test_rank_policies_give_the_pairs_of_the_order(policy, expected):
    result = export_annotations([rank_task(1, [rank_annotation(1, ["2", "1", "3", "4"])])], RANK,
                                ExportOptions(validation_fraction=0.0, rank_policy=policy))
    assert pairs(result) == expected
    texts = {i["id"]: i["body"] for i in ITEMS}
    for record, (chosen, rejected) in zip(result.records["train"], expected):
        assert record["prompt"] == [{"role": "user", "content": "question 1"}]
        assert record["chosen"] == [{"role": "assistant", "content": texts[chosen]}]
        assert record["rejected"] == [{"role": "assistant", "content": texts[rejected]}]
    meta = result.records["train"][0]["meta"]
    assert meta["rankings"] == ["2>1>3>4"] and meta["policy"] == policy
    assert (meta["chosen_source"], meta["rejected_source"]) == ("m2@b", "m1@a")


@pytest.mark.parametrize("annotation, reason", [
    (rank_annotation(1, ["2", "1", "3"]), "incomplete_ranking"),
    (rank_annotation(1, ["2", "1", "3", "9"]), "invalid_ranking"),
    (rank_annotation(1, ["2", "2", "1", "3", "4"]), "invalid_ranking"),
    ({**rank_annotation(1, []), "result": []}, "no_selection"),
    (rank_annotation(1, ["1", "2", "3", "4"], was_cancelled=True), "cancelled"),
])
def test_rank_reject_rules(annotation, reason):
    result = export_annotations([rank_task(1, [annotation])], RANK, ExportOptions())
    assert reasons(result) == [reason] and not result.records["train"] + result.records["validation"]


def test_rank_mean_of_several_annotators_and_ties():
    # Two annotators swap 1 and 2: they tie for best, so best-vs-rest has no best; all-pairs still pairs
    # them with the answers both put below.
    annotations = [rank_annotation(1, ["1", "2", "3", "4"]), rank_annotation(2, ["2", "1", "3", "4"], who=2)]
    tied = export_annotations([rank_task(1, annotations)], RANK, ExportOptions(validation_fraction=0.0))
    assert reasons(tied) == ["tied_ranking", "tied_ranking"] and "tie for best" in tied.rejects[0]["detail"]
    full = export_annotations([rank_task(1, annotations)], RANK,
                              ExportOptions(validation_fraction=0.0, rank_policy="all-pairs"))
    assert sorted(pairs(full)) == [("1", "3"), ("1", "4"), ("2", "3"), ("2", "4"), ("3", "4")]
    assert full.records["train"][0]["meta"]["mean_ranks"] == {"1": 1.5, "2": 1.5, "3": 3.0, "4": 4.0}
    assert full.counts["annotations_in_records"] == 2
    # A third annotator breaks the tie: mean ranks decide.
    third = export_annotations([rank_task(1, [*annotations, rank_annotation(3, ["2", "3", "1", "4"], who=3)])],
                               RANK, ExportOptions(validation_fraction=0.0))
    assert pairs(third) == [("2", "1"), ("2", "3"), ("2", "4")]
    quality = third.quality
    assert quality["complete_rankings"] == 3 and 0 < quality["kendall_w"] < 1
    assert quality["kendall_tau"]["1~2"] == pytest.approx(0.6667) and quality["rankings_in_shown_order"] == 0.3333


def test_rank_buckets_of_the_stock_llm_ranker_are_tiers():
    config = ('<View><Text name="prompt" value="$prompt"/><List name="answers" value="$items"/>'
              '<Ranker name="rank" toName="answers"><Bucket name="good" title="Good"/><Bucket name="bad" title="Bad"/>'
              '</Ranker></View>')
    spec = parse_label_config(config)
    assert (spec.kind, spec.buckets, spec.answers_key) == ("rank", ("good", "bad"), "items")
    items_task = lambda annotations: {**rank_task(1, annotations), "data": {"prompt": "q", "items": ITEMS}}  # noqa: E731
    result = export_annotations([items_task([rank_annotation(1, {"good": ["3", "1"], "bad": ["2", "4"]})])], spec,
                                ExportOptions(validation_fraction=0.0, rank_policy="all-pairs"))
    assert sorted(pairs(result)) == [("1", "2"), ("1", "4"), ("3", "2"), ("3", "4")]
    left = export_annotations([items_task([rank_annotation(1, {"good": ["3"], "bad": [], "_": ["1", "2", "4"]})])],
                              spec, ExportOptions())
    assert reasons(left) == ["incomplete_ranking"]


def test_rank_identical_and_duplicate_pairs():
    same = [{**ITEMS[0]}, {**ITEMS[1], "body": " RED "}]
    result = export_annotations([rank_task(1, [rank_annotation(1, ["1", "2"])], same)], RANK, ExportOptions())
    assert reasons(result) == ["identical_answers"]
    twice = [rank_task(1, [rank_annotation(1, ["2", "1", "3", "4"])]),
             {**rank_task(2, [rank_annotation(2, ["2", "1", "3", "4"])]), "data": rank_task(1, [])["data"]}]
    result = export_annotations(twice, RANK, ExportOptions(validation_fraction=0.0))
    assert len(pairs(result)) == 3 and reasons(result) == ["duplicate"]


def test_rank_task_whose_answer_ids_repeat_is_rejected_not_half_read():
    """Two List items with one id silently kept the last text (issue 33 item 12, second half)."""
    repeated = [ITEMS[0], ITEMS[1], {**ITEMS[2], "id": ITEMS[1]["id"]}, ITEMS[3]]
    result = export_annotations([rank_task(1, [rank_annotation(1, ["2", "1", "3", "4"])], repeated)], RANK,
                                ExportOptions())
    assert not pairs(result) and reasons(result) == ["missing_answers"]
    assert f"answer id(s) {ITEMS[1]['id']} appear more than once" in result.rejects[0]["detail"]


def test_rank_from_a_file_needs_its_template(hilt_exe, tmp_path):
    export = write_export(tmp_path / "ranked.json", [rank_task(1, [rank_annotation(1, ["2", "1", "3", "4"])])])
    wrong = run(hilt_exe, "export", "--from-file", str(export), "--template", "preference", "--out", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "use --template rank" in wrong.stderr and not (tmp_path / "x").exists()
    ok = run(hilt_exe, "export", "--from-file", str(export), "--template", "rank", "--rank-policy", "adjacent",
             "--out", str(tmp_path / "ds"))
    assert ok.returncode == 0, ok.stderr
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["template"] == "rank" and sum(manifest["counts"]["records"].values()) == 3
    assert "llama3-8b-dpo-lora" in (tmp_path / "ds" / "README.md").read_text()


# ------------------------------------------------------------------ review: corrections of live answers

REVIEW = default_spec("review")


def review_annotation(aid, stars, verdict=None, corrected=None, who=1):
    result = [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": stars}}]
    if verdict:
        result.append({"from_name": "verdict", "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}})
    if corrected is not None:
        result.append({"from_name": "corrected", "to_name": "answer", "type": "textarea",
                       "value": {"text": [corrected]}})
    return {**sft_annotation(aid, None, who), "result": result}


def test_review_corrections_become_sft_records_and_pairs():
    data = {"messages": CONVERSATION, "answer": "Which day?", "flags": "flagged: drifting", "event_id": "e-1"}
    tasks = [{"id": 1, "data": data, "annotations": [
        review_annotation(1, 2, "Needs correction", "Room 4 is free on Friday."),
        review_annotation(2, 5, "Fine as is", "Which day?", who=2),
        review_annotation(3, 3, "Needs correction", " Which  day? ", who=3)]}]
    result = export_annotations(tasks, REVIEW, ExportOptions(validation_fraction=0.0))
    (record,) = result.records["train"]
    assert record["messages"] == [*CONVERSATION, {"role": "assistant", "content": "Room 4 is free on Friday."}]
    assert record["meta"]["rating"] == 2 and record["meta"]["original"] == "Which day?"
    assert record["meta"]["event_id"] == "e-1" and record["meta"]["flags"] == "flagged: drifting"
    (pair,) = result.extra["corrections/preference"]["train"]
    assert pair["rejected"] == [{"role": "assistant", "content": "Which day?"}] and pair["chosen"] == record["messages"][-1:]
    assert reasons(result) == ["not_corrected", "not_corrected"]
    assert "marked 'Needs correction' but not edited" in result.rejects[1]["detail"]
    assert result.quality["ratings"] == {"2": 1, "3": 1, "5": 1} and result.quality["mean_rating"] == 3.333
    assert result.quality["verdicts"] == {"Fine as is": 1, "Needs correction": 2}
    # A fix of case alone is a correction (white space alone is not).
    cased = export_annotations([{"id": 2, "data": {**data, "answer": "friday."},
                                 "annotations": [review_annotation(4, 2, "Needs correction", "Friday.")]}],
                               REVIEW, ExportOptions(validation_fraction=0.0))
    assert [r["messages"][-1]["content"] for r in cased.records["train"]] == ["Friday."]


def test_versions_of_one_folder_hold_one_record_kind(tmp_path):
    from hilt.labeling.dataset import export_to_dataset
    from hilt.core.errors import UserError

    tasks = [task(1, [sft_annotation(1, "hello")])]
    root = tmp_path / "versions"
    assert export_to_dataset(tasks, SFT, ExportOptions(), {"type": "file"}, root, since_last=True)[0].name == "v0001"
    review = [{"id": 2, "data": {"messages": CONVERSATION, "answer": "Which day?"},
               "annotations": [review_annotation(2, 1, "Needs correction", "Friday works.")]}]
    # A review project's corrections are SFT records: the next version of the same dataset.
    assert export_to_dataset(review, REVIEW, ExportOptions(), {"type": "file"}, root, since_last=True)[0].name == "v0002"
    pairs = [task(3, [pref_annotation(3, "left")], answer1="a", answer2="b")]
    with pytest.raises(UserError, match="v0001 holds sft records .a sft export. and this preference export gives "
                                        "preference records"):
        export_to_dataset(pairs, PREF, ExportOptions(), {"type": "file"}, root, since_last=True)
    assert sorted(p.name for p in root.iterdir()) == ["v0001", "v0002"]


def test_ratings_that_are_not_whole_stars_within_the_scale_are_rejected_with_the_reason():
    """6 of 5 was a desirable KTO record, 3.5 became 3, NaN was a traceback (issue 33 item 11)."""
    from hilt.labeling.export import ExportOptions, export_annotations
    from hilt.labeling.templates import parse_label_config, template_xml

    def graded(aid, stars):
        return {"id": aid, "completed_by": 1, "result": [
            {"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": stars}}]}

    spec = parse_label_config(template_xml("rate"))
    assert spec.max_rating == 5
    stars = [5, 4.0, 6, 0, 3.5, float("nan"), float("inf"), "4", True, None]
    tasks = [{"id": i, "data": {"prompt": f"q{i}", "answer": "a"}, "annotations": [graded(10 + i, s)]}
             for i, s in enumerate(stars)]
    result = export_annotations(tasks, spec, ExportOptions(validation_fraction=0.0))
    assert sorted(r["meta"]["ratings"][0] for r in result.records["train"]) == [4, 5]
    details = {r["annotation_id"]: (r["reason"], r.get("detail", "")) for r in result.rejects}
    assert details[12] == ("invalid_rating", "rating 6 is outside 1-5")
    assert details[13] == ("invalid_rating", "rating 0 is outside 1-5")
    assert details[14] == ("invalid_rating", "rating 3.5 is not a whole number of stars")
    assert details[15][0] == details[16][0] == details[17][0] == details[18][0] == "invalid_rating"
    assert details[19][0] == "no_selection"
    c = result.counts
    assert c["annotations"] == 10 == c["annotations_in_records"] + c["rejects"]["total"]
    # A Rating with maxRating="10" takes 6 as a rating.
    ten = parse_label_config(template_xml("rate").replace('maxRating="5"', 'maxRating="10"'))
    result = export_annotations(tasks[2:3], ten, ExportOptions(validation_fraction=0.0))
    assert ten.max_rating == 10 and result.records["train"][0]["meta"]["ratings"] == [6]
