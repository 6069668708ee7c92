"""A throw-away labeling template, registered from this one module with one ``Template`` entry, works end
to end: its labeling config is recognised, its prompts become Label Studio tasks, its annotations
become a dataset (records, rejects, agreement, card) that training reads.

The template, ``judge``, shows a prompt and an answer with a Good / Bad choice on the answer: each
judged answer is an unpaired (KTO) record.
"""

from __future__ import annotations

import json

import pytest

from hilt.core.errors import UserError
from hilt.labeling import templates
from hilt.labeling.dataset import export_to_dataset, read_export_source
from hilt.labeling.export import ExportOptions
from hilt.labeling.export_files import check_template_matches
from hilt.labeling.export import base_meta, prompt_messages, reject, split_of, usable_results
from hilt.labeling.importing import build_tasks, load_prompts
from hilt.labeling.results import NO_SELECTION, choice_of, sorted_annotations
from hilt.labeling.templates import LabelingSpec, parse_label_config
from hilt.training.data.records import read_channel

CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <Text name="answer" value="$answer"/>
  <Choices name="verdict" toName="answer" choice="single" required="true">
    <Choice value="Good"/><Choice value="Bad"/>
  </Choices>
</View>"""


def match_judge(view: templates.ConfigView) -> LabelingSpec | None:
    """A Choices on the answer's Text, and no Rating."""
    choices = view.first("Choices")
    if choices is None or view.first("Rating") is not None or view.prompt_object is None \
            or choices.get("toName") in (None, view.prompt_object) or choices.get("toName") not in view.objects:
        return None
    target = choices.get("toName")
    return LabelingSpec(kind="judge", prompt_object=view.prompt_object, prompt_key=view.objects[view.prompt_object],
                        answer_object=target, answer_key=view.objects[target], verdict_control=choices.get("name"),
                        **view.common)


def judge_task(row, key, index, spec, drafts):
    return {"data": {"prompt": str(row["prompt"]), "answer": str(row["answer"])}}


def export_judge(tasks, spec, options, scrub, out):
    for task in tasks:
        prompt = prompt_messages(task, spec, scrub)
        answer = (task.get("data") or {}).get(spec.answer_key)
        for annotation in sorted_annotations(task):
            results = usable_results(task, annotation, spec, prompt, None if isinstance(answer, str) else "no answer",
                                     out)
            if results is None:
                continue
            verdict = choice_of(results, spec.verdict_control)
            if verdict not in ("Good", "Bad"):
                out.rejects.append(reject(task, annotation, NO_SELECTION, "no Good/Bad choice"))
                continue
            out.records[split_of(task.get("id"), options.validation_fraction)].append({
                "prompt": prompt, "completion": [{"role": "assistant", "content": scrub(answer)}],
                "label": verdict == "Good", "meta": base_meta(task, annotation)})
            out.counts["annotations_in_records"] += 1


def judge_label(results, spec, task):
    return choice_of(results, spec.verdict_control)


@pytest.fixture()
def judge(monkeypatch, tmp_path):
    config = tmp_path / "judge.xml"
    config.write_text(CONFIG)
    entry = templates.Template(
        "judge", ("prompt", "answer"), frozenset({"choices"}), "none",
        '`{"prompt": [...], "completion": [assistant], "label": true|false, "meta": {...}}`', "quickstart-tiny-kto",
        "unpaired", match_judge, 6, export_judge, judge_label, judge_task, notes_on="answer", config=config)
    monkeypatch.setitem(templates.TEMPLATES, "judge", entry)
    return entry


def _annotation(ident: int, who: int, verdict: str | None) -> dict:
    result = [] if verdict is None else [{"from_name": "verdict", "to_name": "answer", "type": "choices",
                                          "value": {"choices": [verdict]}}]
    return {"id": ident, "completed_by": who, "lead_time": 3.0, "result": result,
            "created_at": "2026-12-07T00:00:00Z", "updated_at": "2026-12-07T00:00:00Z"}


def test_a_template_from_one_entry_goes_from_prompts_to_a_dataset_training_reads(judge, tmp_path):
    assert parse_label_config(templates.template_xml("judge")).kind == "judge"
    assert parse_label_config(templates.template_xml("rate")).kind == "rate"  # the others still match first
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                               for i in range(6)))
    spec = parse_label_config(CONFIG)
    tasks = build_tasks(load_prompts(prompts, "judge"), spec)
    assert tasks[0] == {"data": {"prompt": "What is 0 + 0?", "answer": "0"}}
    with pytest.raises(UserError, match="missing answer"):
        (tmp_path / "bad.jsonl").write_text('{"prompt": "hi"}\n')
        load_prompts(tmp_path / "bad.jsonl", "judge")

    # What Label Studio exports once two annotators judged the answers (one left a task unjudged).
    for i, task in enumerate(tasks):
        task["id"] = i + 1
        task["annotations"] = [_annotation(10 * i + 1, 1, "Good" if i % 2 == 0 else "Bad")]
    tasks[0]["annotations"].append(_annotation(100, 2, "Good"))
    tasks[1]["annotations"].append(_annotation(101, 2, "Good"))
    tasks[2]["annotations"].append(_annotation(102, 2, None))
    export_file = tmp_path / "export.json"
    export_file.write_text(json.dumps(tasks))

    # What `hilt export --from-file export.json --template judge --label-config judge.xml --out DIR` runs.
    read, read_spec, source, where = read_export_source(None, export_file, "judge", judge.config)
    check_template_matches(read, read_spec, where)
    out, manifest = export_to_dataset(read, read_spec, ExportOptions(validation_fraction=0.0), source,
                                      tmp_path / "dataset")
    counts = manifest["counts"]
    assert counts["annotations"] == 9 and counts["records"]["train"] == 8
    assert counts["rejects"]["by_reason"] == {NO_SELECTION: 1}
    assert manifest["quality"]["percent_agreement"] == 0.5  # task 1 agreed, task 2 did not
    assert "quickstart-tiny-kto" in (out / "README.md").read_text()  # the card names the entry's recipe
    records, files = read_channel(out / "train", "unpaired")  # what a KTO recipe trains on
    assert len(records) == 8 and [r["label"] for r in records[:3]] == [True, True, False]
    assert records[0]["completion"] == [{"role": "assistant", "content": "0"}]

    # And through the command itself: `hilt export` takes the registered template's name.
    from hilt.cli import main

    rc = main(["export", "--from-file", str(export_file), "--template", "judge", "--label-config", str(judge.config),
               "--validation-fraction", "0", "--out", str(tmp_path / "by-command")])
    assert rc == 0
    assert (tmp_path / "by-command" / "train" / "data.jsonl").read_bytes() == (out / "train" / "data.jsonl").read_bytes()


def test_without_the_entry_the_template_is_unknown():
    with pytest.raises(UserError, match="unknown template 'judge'"):
        templates.template("judge")
