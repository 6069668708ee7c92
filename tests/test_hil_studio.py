"""HIL against a real Label Studio server: create, import with drafts, annotate, export.

Annotations are posted through the API as stand-ins for annotators (two of them on some
tasks); each exported record must equal what was annotated.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_hilt
from hilt.labeling.client import StudioClient

pytestmark = [pytest.mark.studio, pytest.mark.slow]


def textarea(text, name="answer"):
    return [{"from_name": name, "to_name": "prompt", "type": "textarea", "value": {"text": [text]}}]


def pairwise(selected):
    return [{"from_name": "comparison", "to_name": "answer1,answer2", "type": "pairwise", "value": {"selected": selected}}]


def records(path):
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def all_records(out):
    return records(out / "train" / "data.jsonl") + records(out / "validation" / "data.jsonl")


@pytest.fixture(scope="module")
def client(studio):
    return StudioClient(studio["url"], studio["token"])


@pytest.fixture(scope="module")
def second_annotator(client):
    return client.create_user("annotator2", "annotator2@hilt.local")


def create_project(hilt_exe, studio, tmp_path, template, rows, *extra):
    prompts = tmp_path / f"{template}-prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_hilt(hilt_exe, "label", "create", "--template", template, "--prompts", str(prompts), *extra,
                      env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    return int(result.stdout.strip().splitlines()[-1])


def test_studio_start_prints_credentials_and_is_idempotent(hilt_exe, studio):
    assert studio["url"] in studio["start_output"] and studio["token"] in studio["start_output"]
    again = run_hilt(hilt_exe, "studio", "start", "--port", str(studio["port"]), "--data-dir", str(studio["data_dir"]))
    assert again.returncode == 0 and "already running" in again.stdout
    status = run_hilt(hilt_exe, "studio", "status", "--data-dir", str(studio["data_dir"]))
    assert status.returncode == 0 and json.loads(status.stdout)["running"] is True


def test_sft_project_with_drafts_exports_what_annotators_wrote(hilt_exe, studio, client, second_annotator, tmp_path):
    rows = [{"id": f"p{i}", "prompt": f"How do I book room {i}?", "system": "Be polite."} for i in range(6)]
    drafts = tmp_path / "drafts.jsonl"
    drafts.write_text("".join(json.dumps({"id": f"p{i}", "draft": f"Draft {i}"}) + "\n" for i in range(4)))
    project = create_project(hilt_exe, studio, tmp_path, "sft", rows, "--drafts", str(drafts), "--title", "SFT test")

    tasks = {t["data"]["source_id"]: t for t in client.export_tasks(project)}
    assert len(tasks) == 6
    (draft,) = client.task_predictions(tasks["p0"]["id"])
    assert draft["result"][0]["value"]["text"] == ["Draft 0"] and draft["model_version"] == "file:drafts.jsonl"
    assert not client.task_predictions(tasks["p5"]["id"])

    # The first annotator edits the draft (as the UI records it: parent_prediction).
    edited = client.create_annotation(tasks["p0"]["id"], textarea("Draft 0, edited."), parent_prediction=draft["id"])
    written = {edited: "Draft 0, edited."}
    for i in range(1, 5):
        text = f"Open the office portal and book room {i}."
        written[client.create_annotation(tasks[f"p{i}"]["id"], textarea(text), lead_time=3.0 + i)] = text
    # A second annotator on two tasks: one different answer, one identical (a duplicate).
    other = client.create_annotation(tasks["p0"]["id"], textarea("Use the portal, room 0."), completed_by=second_annotator)
    written[other] = "Use the portal, room 0."
    duplicate = client.create_annotation(tasks["p1"]["id"], textarea("Open the office portal and book room 1."),
                                         completed_by=second_annotator)
    skipped = client.create_annotation(tasks["p5"]["id"], [], was_cancelled=True)
    empty = client.create_annotation(tasks["p2"]["id"], textarea("   "), completed_by=second_annotator)

    out = tmp_path / "sft-dataset"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    exported = {r["meta"]["annotation_id"]: r for r in all_records(out)}
    assert set(exported) == set(written)
    for annotation_id, text in written.items():
        messages = exported[annotation_id]["messages"]
        assert messages[-1] == {"role": "assistant", "content": text}
        assert messages[0] == {"role": "system", "content": "Be polite."}
    assert exported[other]["meta"]["annotator"] == second_annotator
    assert exported[edited]["meta"]["draft_model_version"] == "file:drafts.jsonl"
    assert exported[edited]["meta"]["draft_edited"] is True
    rejects = {r["annotation_id"]: r["reason"] for r in records(out / "rejects.jsonl")}
    assert rejects == {duplicate: "duplicate", skipped: "cancelled", empty: "empty_answer"}
    manifest = json.loads((out / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["tasks"] == 6 and c["annotations"] == 9
    assert c["annotations_in_records"] + c["rejects"]["total"] == c["annotations"]
    assert manifest["source"] == {"type": "project", "project_id": project, "url": studio["url"]}
    assert manifest["quality"]["tasks_with_2plus_annotations"] == 3

    # Exporting again gives byte-identical files.
    again = tmp_path / "sft-dataset-again"
    run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(again), env=studio["env"])
    for rel in ("train/data.jsonl", "validation/data.jsonl", "rejects.jsonl", "manifest.json"):
        assert (out / rel).read_bytes() == (again / rel).read_bytes()

    quality = run_hilt(hilt_exe, "quality", "--project", str(project), env=studio["env"])
    assert quality.returncode == 0
    assert json.loads(quality.stdout)["quality"]["annotators"][str(second_annotator)]["annotations"] == 3


def test_preference_project_majority_and_ties(hilt_exe, studio, client, second_annotator, tmp_path):
    rows = [{"prompt": f"Summarize call {i}", "answer1": f"Short summary {i}", "answer2": f"Wrong summary {i}"}
            for i in range(3)]
    project = create_project(hilt_exe, studio, tmp_path, "preference", rows)
    tasks = sorted(client.export_tasks(project), key=lambda t: t["id"])
    client.create_annotation(tasks[0]["id"], pairwise("left"))
    client.create_annotation(tasks[0]["id"], pairwise("left"), completed_by=second_annotator)
    client.create_annotation(tasks[1]["id"], pairwise("right") + [
        {"from_name": "rationale", "to_name": "prompt", "type": "textarea", "value": {"text": ["clearer"]}}])
    client.create_annotation(tasks[2]["id"], pairwise("left"))
    client.create_annotation(tasks[2]["id"], pairwise("right"), completed_by=second_annotator)

    out = tmp_path / "prefs"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--template", "preference", "--out", str(out),
                      env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    by_task = {r["meta"]["task_id"]: r for r in all_records(out)}
    assert by_task[tasks[0]["id"]]["chosen"][0]["content"] == "Short summary 0"
    assert by_task[tasks[0]["id"]]["meta"]["votes"] == {"left": 2, "right": 0}
    assert by_task[tasks[1]["id"]]["chosen"][0]["content"] == "Wrong summary 1"
    assert by_task[tasks[1]["id"]]["rejected"][0]["content"] == "Short summary 1"
    assert by_task[tasks[1]["id"]]["meta"]["rationales"] == ["clearer"]
    assert tasks[2]["id"] not in by_task
    assert [r["reason"] for r in records(out / "rejects.jsonl")] == ["conflicting_preference"] * 2

    wrong = run_hilt(hilt_exe, "export", "--project", str(project), "--template", "sft", "--out", str(tmp_path / "x"),
                     env=studio["env"])
    assert wrong.returncode == 2 and "is a preference project" in wrong.stderr
    assert not (tmp_path / "x").exists()


def test_stock_label_studio_template_exports_unchanged(hilt_exe, studio, client, tmp_path):
    stock = """<View><Text name="prompt" value="$prompt"/>
      <TextArea name="instruction" toName="prompt" maxSubmissions="1" required="true" rows="10"/></View>"""
    project = client.create_project("stock SFT", stock)
    (task_id,) = client.import_tasks(project, [{"data": {"prompt": "stock prompt"}}])
    annotation = client.create_annotation(task_id, textarea("stock answer", name="instruction"))
    out = tmp_path / "stock"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), env=studio["env"])
    assert result.returncode == 0, result.stderr
    (record,) = all_records(out)
    assert record["messages"][-1]["content"] == "stock answer" and record["meta"]["annotation_id"] == annotation


def test_since_last_across_a_server_restart(hilt_exe, studio, client, tmp_path):
    rows = [{"prompt": f"Order a laptop for user {i}"} for i in range(8)]
    project = create_project(hilt_exe, studio, tmp_path, "sft", rows)
    task_ids = sorted(t["id"] for t in client.export_tasks(project))
    first_batch = [client.create_annotation(t, textarea(f"answer {t}")) for t in task_ids[:4]]
    out = tmp_path / "versions"
    args = ("export", "--project", str(project), "--out", str(out), "--since-last")
    assert run_hilt(hilt_exe, *args, env=studio["env"]).returncode == 0

    # Restart the server between the two exports.
    assert run_hilt(hilt_exe, "studio", "stop", "--data-dir", str(studio["data_dir"])).returncode == 0
    restarted = run_hilt(hilt_exe, "studio", "start", "--port", str(studio["port"]), "--data-dir",
                         str(studio["data_dir"]), timeout=600)
    assert restarted.returncode == 0 and "started" in restarted.stdout
    second_batch = [client.create_annotation(t, textarea(f"second answer {t}")) for t in task_ids[3:]]
    assert run_hilt(hilt_exe, *args, env=studio["env"]).returncode == 0
    nothing = run_hilt(hilt_exe, *args, env=studio["env"])
    assert nothing.returncode == 0 and "nothing new" in nothing.stdout

    assert sorted(p.name for p in out.iterdir()) == ["v0001", "v0002"]
    v1 = {r["meta"]["annotation_id"] for r in all_records(out / "v0001")}
    v2 = {r["meta"]["annotation_id"] for r in all_records(out / "v0002")}
    assert v1 == set(first_batch) and v2 == set(second_batch)  # none missed, none twice


def test_drafts_from_a_local_model(hilt_exe, studio, client, tiny_model_dir, tmp_path):
    project = create_project(hilt_exe, studio, tmp_path, "sft", [{"prompt": "Book desk 7 on Monday"}],
                             "--drafts-from", str(tiny_model_dir))
    (task,) = client.export_tasks(project)
    (prediction,) = client.task_predictions(task["id"])
    assert prediction["model_version"].startswith(tiny_model_dir.name + "@")
    assert isinstance(prediction["result"][0]["value"]["text"][0], str)


def test_user_errors_against_the_server(hilt_exe, studio, tmp_path):
    bad_token = {**studio["env"], "LABEL_STUDIO_API_KEY": "0" * 40}
    result = run_hilt(hilt_exe, "export", "--project", "1", "--out", str(tmp_path / "x"), env=bad_token)
    assert result.returncode == 2 and "rejected the API token (401)" in result.stderr
    result = run_hilt(hilt_exe, "export", "--project", "99999", "--out", str(tmp_path / "x"), env=studio["env"])
    assert result.returncode == 2 and "project 99999 not found" in result.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("template", ["sft", "chat", "preference", "rank", "rate", "review"])
def test_templates_render_in_label_studio_ui(hilt_exe, studio, client, tmp_path, template):
    """Open the labeling page of one task in headless Chromium, check its text, save a screenshot."""
    from browser import Chromium, login_cookies

    if template == "sft":
        rows = [{"id": "s1", "prompt": "How do I order a new laptop?"}]
        drafts = tmp_path / "d.jsonl"
        drafts.write_text(json.dumps({"id": "s1", "draft": "Open the IT portal and request one."}) + "\n")
        project = create_project(hilt_exe, studio, tmp_path, "sft", rows, "--drafts", str(drafts))
        expected = ["Write the ideal answer", "How do I order a new laptop?", "Open the IT portal and request one.",
                    "Submit"]
    elif template == "chat":
        rows = [{"id": "c1", "messages": [{"role": "user", "content": "I need a laptop."},
                                          {"role": "assistant", "content": "Which model?"},
                                          {"role": "user", "content": "The 14-inch one."}]}]
        drafts = tmp_path / "d.jsonl"
        drafts.write_text(json.dumps({"id": "c1", "draft": "Request it in the IT portal."}) + "\n")
        project = create_project(hilt_exe, studio, tmp_path, "chat", rows, "--drafts", str(drafts))
        expected = ["Conversation so far", "I need a laptop.", "Which model?", "The 14-inch one.",
                    "Write the assistant's next turn", "Request it in the IT portal.", "Submit"]
    elif template == "rank":
        rows = [{"prompt": "How do I order a new laptop?",
                 "answers": ["Ask someone.", "Open the IT portal and request one.", "Buy one yourself."]}]
        project = create_project(hilt_exe, studio, tmp_path, "rank", rows)
        expected = ["Drag the answers into order", "How do I order a new laptop?", "Ask someone.",
                    "Open the IT portal and request one.", "Buy one yourself.", "Answer 1", "Answer 3", "Submit"]
    elif template == "review":
        rows = [{"messages": [{"role": "user", "content": "How do I order a new laptop?"}],
                 "answer": "I'm sorry, I cannot help with that.", "flags": "flagged: refusal"}]
        project = create_project(hilt_exe, studio, tmp_path, "review", rows)
        expected = ["Conversation", "How do I order a new laptop?", "The deployed model answered",
                    "flagged: refusal", "Needs correction", "Fine as is", "Corrected answer", "Submit"]
    elif template == "rate":
        rows = [{"prompt": "How do I order a new laptop?", "answer": "Ask someone."}]
        project = create_project(hilt_exe, studio, tmp_path, "rate", rows)
        expected = ["Answer to grade", "How do I order a new laptop?", "Ask someone.", "How good is this answer?",
                    "Corrected answer (optional)", "Submit"]
    else:
        rows = [{"prompt": "Summarize the client call", "answer1": "Client wants a bond review.",
                 "answer2": "Client called."}]
        project = create_project(hilt_exe, studio, tmp_path, "preference", rows)
        expected = ["Answer 1", "Answer 2", "Why? (optional)", "Summarize the client call",
                    "Client wants a bond review.", "Client called.", "Submit"]
    (task,) = client.export_tasks(project)
    browser = Chromium()
    try:
        cookies = login_cookies(studio["url"], studio["user"], studio["password"])
        browser.open(f"{studio['url']}/projects/{project}/data?task={task['id']}", cookies, expected)
        shot = browser.screenshot(studio["data_dir"] / f"labeling-{template}.png", must_show=expected)
    finally:
        browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_every_export_format_gives_records_or_one_line(hilt_exe, studio, client, tmp_path):
    """JSON and JSON-MIN give the same records; CSV and TSV are refused in one line; an export
    that gives no record is never written as an empty dataset."""
    sft = create_project(hilt_exe, studio, tmp_path, "sft",
                         [{"id": f"q{i}", "prompt": f"Where is office {i}?"} for i in range(4)], "--title", "formats")
    tasks = sorted(client.export_tasks(sft), key=lambda t: t["id"])
    for i, task in enumerate(tasks[:3]):
        client.create_annotation(task["id"], textarea(f"Office {i} is on floor {i}."))
    client.create_annotation(tasks[3]["id"], [], was_cancelled=True)
    pref = create_project(hilt_exe, studio, tmp_path, "preference",
                          [{"id": "r0", "prompt": "Greet", "answer1": "Hi.", "answer2": "Good morning, how can I help?"}],
                          "--title", "formats-pref")
    (ptask,) = client.export_tasks(pref)
    client.create_annotation(ptask["id"], pairwise("right"))

    def export(project, fmt, template, *extra):
        path = tmp_path / f"{project}-{fmt}.export"
        path.write_bytes(client.download_export(project, fmt))
        out = tmp_path / f"{project}-{fmt}-data"
        return run_hilt(hilt_exe, "export", "--from-file", str(path), "--template", template, "--out", str(out),
                        *extra), out

    for project, template in ((sft, "sft"), (pref, "preference")):
        full, full_out = export(project, "JSON", template)
        assert full.returncode == 0, full.stderr
        (tmp_path / template).mkdir()
        export_every_format(hilt_exe, client, project, template, tmp_path / template, all_records(full_out))
        min_out = tmp_path / template / f"{template}-JSON_MIN-data"
        assert all_records(min_out)
        source = json.loads((min_out / "manifest.json").read_text())["source"]
        assert source["format"] == "JSON_MIN" and "cancelled annotations" in source["not_carried"]
        for fmt in ("CSV", "TSV"):
            refused, out = export(project, fmt, template)
            assert refused.returncode == 2 and f"a {fmt} export" in refused.stderr
            assert refused.stderr.count("\n") == 1 and not out.exists()

    # Results of a control no exporter reads: refused with the control named, nothing written.
    config = tmp_path / "rating.xml"
    config.write_text('<View><Text name="prompt" value="$prompt"/><TextArea name="answer" toName="prompt"/>'
                      '<Rating name="stars" toName="prompt" maxRating="5"/></View>')
    rated = client.create_project("formats-rating", config.read_text())
    client.import_tasks(rated, [{"data": {"prompt": "Rate me"}}])
    (rtask,) = client.export_tasks(rated)
    client.create_annotation(rtask["id"], [{"from_name": "stars", "to_name": "prompt", "type": "rating",
                                            "value": {"rating": 4}}])
    refused, out = export(rated, "JSON", "sft", "--label-config", str(config))
    assert refused.returncode == 2 and "1 annotations gave 0 records" in refused.stderr
    assert "stars (rating)" in refused.stderr and not out.exists()
    # And tasks nobody annotated yet.
    empty = create_project(hilt_exe, studio, tmp_path, "sft", [{"id": "e", "prompt": "?"}], "--title", "formats-empty")
    refused, out = export(empty, "JSON", "sft")
    assert refused.returncode == 2 and "1 tasks but no annotations to export" in refused.stderr and not out.exists()


def test_rate_project_exports_kto_records_and_corrections(hilt_exe, studio, client, second_annotator, tmp_path):
    """A rating project on the real server: answers from the file and from drafts, graded by two
    annotators through the API; the export equals what they rated and wrote."""
    rows = [{"id": "r0", "prompt": "How do I book room 1?", "answer": "Open the portal and book it."},
            {"id": "r1", "prompt": "Who approves travel?", "answer": "Nobody."},
            {"id": "r2", "prompt": "Where is the cafeteria?"}]
    drafts = tmp_path / "rate-drafts.jsonl"
    drafts.write_text(json.dumps({"id": "r2", "draft": "Floor 3."}) + "\n")
    project = create_project(hilt_exe, studio, tmp_path, "rate", rows, "--drafts", str(drafts), "--title", "rate")
    tasks = {t["data"]["source_id"]: t for t in client.export_tasks(project)}
    assert tasks["r2"]["data"]["answer"] == "Floor 3."  # the draft is the answer to grade

    def grade(stars, critique=None, corrected=None):
        result = [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": stars}}]
        for name, text in (("critique", critique), ("corrected", corrected)):
            if text:
                result.append({"from_name": name, "to_name": "answer", "type": "textarea", "value": {"text": [text]}})
        return result

    a = client.create_annotation(tasks["r0"]["id"], grade(5))
    b = client.create_annotation(tasks["r0"]["id"], grade(4), completed_by=second_annotator)
    c = client.create_annotation(tasks["r1"]["id"], grade(1, "Wrong: managers approve.",
                                                          "Your manager approves travel in the HR portal."))
    d = client.create_annotation(tasks["r2"]["id"], grade(3))
    out = tmp_path / "rate-data"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    by_task = {r["prompt"][-1]["content"]: r for r in all_records(out)}
    assert by_task["How do I book room 1?"]["label"] is True
    assert by_task["How do I book room 1?"]["meta"]["annotation_ids"] == [a, b]
    assert by_task["How do I book room 1?"]["meta"]["ratings"] == [5, 4]
    assert by_task["Who approves travel?"]["label"] is False
    assert by_task["Who approves travel?"]["meta"]["critiques"] == ["Wrong: managers approve."]
    assert by_task["Where is the cafeteria?"]["completion"] == [{"role": "assistant", "content": "Floor 3."}]
    assert by_task["Where is the cafeteria?"]["label"] is False and by_task["Where is the cafeteria?"]["meta"][
        "annotation_ids"] == [d]
    corrections = records(out / "corrections" / "sft" / "train" / "data.jsonl") + records(
        out / "corrections" / "sft" / "validation" / "data.jsonl")
    assert [r["messages"][-1]["content"] for r in corrections] == ["Your manager approves travel in the HR portal."]
    assert corrections[0]["meta"]["annotation_id"] == c
    pairs = records(out / "corrections" / "preference" / "train" / "data.jsonl") + records(
        out / "corrections" / "preference" / "validation" / "data.jsonl")
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "Nobody."}]
    # A stricter threshold turns the 4.5 mean undesirable; quality compares the two ratings.
    strict = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(tmp_path / "strict"),
                      "--rating-threshold", "5", env=studio["env"])
    assert strict.returncode == 0
    assert all(r["label"] is False for r in all_records(tmp_path / "strict"))
    quality = json.loads(run_hilt(hilt_exe, "quality", "--project", str(project), env=studio["env"]).stdout)
    assert quality["quality"]["tasks_with_2plus_annotations"] == 1 and quality["quality"]["percent_agreement"] == 0.0
    assert quality["quality"]["ratings"] == {"1": 1, "3": 1, "4": 1, "5": 1}
    export_every_format(hilt_exe, client, project, "rate", tmp_path, all_records(out))


def download(client, project, fmt, path):
    path.write_bytes(client.download_export(project, fmt))
    return path


def strip_meta(recs):
    return [{k: v for k, v in r.items() if k != "meta"} for r in recs]


def export_every_format(hilt_exe, client, project, template, tmp_path, expected):
    """Each export format the server offers for the project: JSON and JSON-MIN give the ``expected``
    records (meta aside), any other is refused in one line with nothing written."""
    formats = client.export_formats(project)
    assert {"JSON", "JSON_MIN", "CSV", "TSV"} <= set(formats), formats
    for fmt in formats:
        out = tmp_path / f"{template}-{fmt}-data"
        done = run_hilt(hilt_exe, "export", "--from-file", str(download(client, project, fmt, tmp_path / f"{fmt}.x")),
                        "--template", template, "--out", str(out))
        if fmt in ("JSON", "JSON_MIN"):
            assert done.returncode == 0, (fmt, done.stderr)
            assert strip_meta(all_records(out)) == strip_meta(expected), fmt
        else:
            assert done.returncode == 2 and done.stderr.count("\n") == 1 and not out.exists(), (fmt, done.stderr)
    return formats


def test_chat_project_exports_the_conversation_plus_the_written_turn(hilt_exe, studio, client, second_annotator,
                                                                    tmp_path):
    """Conversations from messages and ShareGPT rows, drafts as predictions, two annotators; JSON and
    JSON-MIN exports give the same records; CSV is refused."""
    rows = [{"id": "c0", "messages": [{"role": "system", "content": "You book rooms."},
                                      {"role": "user", "content": "I need a room."},
                                      {"role": "assistant", "content": "For which day?"},
                                      {"role": "user", "content": "Friday, for 6 people."}]},
            {"id": "c1", "conversations": [{"from": "human", "value": "Where is the cafeteria?"}]},
            {"id": "c2", "messages": [{"role": "user", "content": "Who approves travel?"}]}]
    drafts = tmp_path / "chat-drafts.jsonl"
    drafts.write_text(json.dumps({"id": "c0", "draft": "Room 4 is free on Friday."}) + "\n")
    project = create_project(hilt_exe, studio, tmp_path, "chat", rows, "--drafts", str(drafts), "--title", "chat")
    tasks = {t["data"]["source_id"]: t for t in client.export_tasks(project)}
    assert tasks["c1"]["data"]["messages"] == [{"role": "user", "content": "Where is the cafeteria?"}]
    (draft,) = client.task_predictions(tasks["c0"]["id"])

    def turn(text):
        return [{"from_name": "answer", "to_name": "dialogue", "type": "textarea", "value": {"text": [text]}}]

    written = {
        client.create_annotation(tasks["c0"]["id"], turn("Room 4 is free on Friday; I booked it."),
                                 parent_prediction=draft["id"]): ("c0", "Room 4 is free on Friday; I booked it."),
        client.create_annotation(tasks["c1"]["id"], turn("Floor 3, next to the lifts.")):
            ("c1", "Floor 3, next to the lifts."),
        client.create_annotation(tasks["c1"]["id"], turn("On floor 3."), completed_by=second_annotator):
            ("c1", "On floor 3."),
    }
    empty = client.create_annotation(tasks["c2"]["id"], turn("  "), completed_by=second_annotator)
    skipped = client.create_annotation(tasks["c2"]["id"], [], was_cancelled=True)
    out = tmp_path / "chat-data"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    exported = {r["meta"]["annotation_id"]: r for r in all_records(out)}
    assert set(exported) == set(written)
    for annotation_id, (source, text) in written.items():
        conversation = [m for m in tasks[source]["data"]["messages"]]
        assert exported[annotation_id]["messages"] == [*conversation, {"role": "assistant", "content": text}]
    assert exported[next(iter(written))]["meta"]["draft_edited"] is True
    rejects = {r["annotation_id"]: r["reason"] for r in records(out / "rejects.jsonl")}
    assert rejects == {empty: "empty_answer", skipped: "cancelled"}

    # The records train as chat: every assistant turn is read, the earlier ones as context of the new one.
    from hilt.training.data.records import read_channel

    read = [read_channel(out / split, "sft") for split in ("train", "validation") if records(out / split / "data.jsonl")]
    assert sum(len(records) for records, _ in read) == 3
    assert {f["format"] for _, files in read for f in files} == {"messages"}

    formats = export_every_format(hilt_exe, client, project, "chat", tmp_path, all_records(out))
    print(f"chat project export formats: {formats}")


def test_rank_project_exports_pairs_by_policy_and_agreement(hilt_exe, studio, client, second_annotator,
                                                             warm_base_dir, tmp_path):
    """Answers from the file, a drafts file and a local model; two annotators drag them into order
    through the API; the pairs follow the mean rank; ties and incomplete rankings are rejects; JSON
    and JSON-MIN give the same pairs; quality reports Kendall's W."""
    rows = [{"id": "k0", "prompt": "How do I book a room?",
             "answers": ["Use the booking portal.", "Ask reception to book it for you."]},
            {"id": "k1", "prompt": "Who approves travel?", "answer1": "Your manager, in the HR portal.",
             "answer2": "Nobody."},
            {"id": "k2", "prompt": "Where is the cafeteria?", "answers": ["Floor 3.", "Floor 9."]}]
    drafts = tmp_path / "rank-drafts.jsonl"
    drafts.write_text("".join(json.dumps({"id": f"k{i}", "draft": f"I do not know ({i})."}) + "\n" for i in range(3)))
    project = create_project(hilt_exe, studio, tmp_path, "rank", rows, "--drafts", str(drafts),
                             "--drafts-from", str(warm_base_dir), "--title", "rank")
    tasks = {t["data"]["source_id"]: t for t in client.export_tasks(project)}
    sources = set(tasks["k0"]["data"]["answer_sources"].values())
    assert {"file", "file:rank-drafts.jsonl"} <= sources and any(s.startswith(warm_base_dir.name + "@") for s in sources)

    def ids(source, *texts):
        by_text = {i["body"]: i["id"] for i in tasks[source]["data"]["answers"]}
        return [by_text[t] for t in texts]

    def others(source, *first):
        return [i["id"] for i in tasks[source]["data"]["answers"] if i["id"] not in first]

    def ranking(order):
        return [{"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": order}}}]

    best0 = ids("k0", "Use the booking portal.")
    a = client.create_annotation(tasks["k0"]["id"], ranking(best0 + others("k0", *best0)))
    b = client.create_annotation(tasks["k0"]["id"], ranking(best0 + others("k0", *best0)[::-1]),
                                 completed_by=second_annotator)
    best1 = ids("k1", "Your manager, in the HR portal.")
    c = client.create_annotation(tasks["k1"]["id"], ranking(best1 + others("k1", *best1)) + [
        {"from_name": "rationale", "to_name": "prompt", "type": "textarea", "value": {"text": ["it is right"]}}])
    incomplete = client.create_annotation(tasks["k2"]["id"], ranking(ids("k2", "Floor 3.")))
    out = tmp_path / "rank-data"
    result = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), env=studio["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    by_prompt: dict[str, list] = {}
    for r in all_records(out):
        by_prompt.setdefault(r["prompt"][-1]["content"], []).append(r)
    room = by_prompt.get("How do I book a room?", records(out / "rejects.jsonl"))
    n_room = len(tasks["k0"]["data"]["answers"])
    assert len(room) == n_room - 1 and "chosen" in room[0], room
    assert all(r["chosen"][0]["content"] == "Use the booking portal." for r in room)
    assert room[0]["meta"]["annotation_ids"] == [a, b] and room[0]["meta"]["policy"] == "best-vs-rest"
    travel = by_prompt["Who approves travel?"]
    assert {r["rejected"][0]["content"] for r in travel} == {i["body"] for i in tasks["k1"]["data"]["answers"]} - {
        "Your manager, in the HR portal."}
    assert travel[0]["meta"]["rationales"] == ["it is right"] and travel[0]["meta"]["annotation_ids"] == [c]
    rejects = {r["annotation_id"]: r["reason"] for r in records(out / "rejects.jsonl")}
    assert rejects == {incomplete: "incomplete_ranking"}

    # all-pairs on the same annotations: every answer over each one below it in the mean ranking.
    everything = run_hilt(hilt_exe, "export", "--project", str(project), "--rank-policy", "all-pairs", "--out",
                          str(tmp_path / "all-pairs"), env=studio["env"])
    assert everything.returncode == 0
    n_travel = len(tasks["k1"]["data"]["answers"])
    # k0: the two annotators agree on the best only, the rest tie at the same mean rank.
    assert len(all_records(tmp_path / "all-pairs")) == (n_room - 1) + n_travel * (n_travel - 1) // 2

    quality = json.loads(run_hilt(hilt_exe, "quality", "--project", str(project), env=studio["env"]).stdout)
    assert quality["quality"]["complete_rankings"] == 3 and quality["quality"]["kendall_w"] is not None
    assert quality["quality"]["kendall_tau"]

    formats = export_every_format(hilt_exe, client, project, "rank", tmp_path, all_records(out))
    print(f"rank project export formats: {formats}")

    from hilt.training.data.records import read_channel

    split = next(s for s in ("train", "validation") if records(out / s / "data.jsonl"))
    pairs, files = read_channel(out / split, "dpo")  # the pairs read as DPO's preference records
    assert pairs and {f["format"] for f in files} == {"preference"}


def test_monitor_review_turns_reviewed_live_answers_into_the_next_dataset(hilt_exe, studio, client, tmp_path):
    """Captured traffic -> a review project (flagged answers first, PII scrubbed) -> reviewers rate and
    correct through the API -> `hilt export --since-last` gives SFT records and preference pairs equal to
    the corrections, the ratings in the manifest."""
    from traffic import capture, drifted_traffic, steady_traffic, write_baseline

    baseline = write_baseline(tmp_path / "data")
    traffic = steady_traffic(6) + drifted_traffic(4)
    traffic[0] = (traffic[0][0] + " Reply to ana@example.com.", traffic[0][1], traffic[0][2])
    captures = capture(tmp_path / "capture", traffic)
    made = run_hilt(hilt_exe, "monitor", "review", "--capture", str(captures), "--project-title", "live review",
                    "--baseline", str(baseline), "--per-day", "3", env=studio["env"])
    assert made.returncode == 0, made.stderr[-3000:]
    project = int(made.stdout.strip().splitlines()[-1])
    assert "'emails': 1" in made.stdout
    tasks = client.export_tasks(project)
    assert len(tasks) == 4 + 3  # the 4 drifted ones are flagged, then 3 of the day's others
    assert all("ana@example.com" not in json.dumps(t["data"]) for t in tasks)
    flagged = [t for t in tasks if t["data"]["flags"].startswith("flagged")]
    assert len(flagged) == 4 and all("drifting" in t["data"]["flags"] for t in flagged)
    (prediction,) = client.task_predictions(flagged[0]["id"])
    assert prediction["result"][0]["value"]["text"] == [flagged[0]["data"]["answer"]]

    def review(stars, verdict, corrected):
        return [{"from_name": "rating", "to_name": "answer", "type": "rating", "value": {"rating": stars}},
                {"from_name": "verdict", "to_name": "answer", "type": "choices", "value": {"choices": [verdict]}},
                {"from_name": "corrected", "to_name": "answer", "type": "textarea", "value": {"text": [corrected]}}]

    corrections = {}
    for i, task in enumerate(flagged[:3]):
        text = f"Here is the memo you asked for, part {i}: the rules, deadlines and forms."
        corrections[client.create_annotation(task["id"], review(1, "Needs correction", text))] = (task, text)
    fine = next(t for t in tasks if not t["data"]["flags"].startswith("flagged"))
    kept = client.create_annotation(fine["id"], review(5, "Fine as is", fine["data"]["answer"]))
    out = tmp_path / "versions"
    exported = run_hilt(hilt_exe, "export", "--project", str(project), "--out", str(out), "--since-last",
                        env=studio["env"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    version = out / "v0001"
    records_by_id = {r["meta"]["annotation_id"]: r for r in all_records(version)}
    assert set(records_by_id) == set(corrections)
    for annotation_id, (task, text) in corrections.items():
        assert records_by_id[annotation_id]["messages"] == [*task["data"]["messages"],
                                                            {"role": "assistant", "content": text}]
        assert records_by_id[annotation_id]["meta"]["original"] == task["data"]["answer"]
    pairs = [r for split in ("train", "validation")
             for r in records(version / "corrections" / "preference" / split / "data.jsonl")]
    assert sorted(p["chosen"][0]["content"] for p in pairs) == sorted(text for _, text in corrections.values())
    assert {r["annotation_id"]: r["reason"] for r in records(version / "rejects.jsonl")} == {kept: "not_corrected"}
    quality = json.loads((version / "manifest.json").read_text())["quality"]
    assert quality["ratings"] == {"1": 3, "5": 1} and quality["verdicts"]["Needs correction"] == 3
    export_every_format(hilt_exe, client, project, "review", tmp_path, all_records(version))
