"""`hilt monitor report`: captured traffic against the training data, from a folder and from S3."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest

from hilt.serving.capture import capture_record
from hilt.flows.scenario import scenario_prompts
from traffic import capture, drifted_traffic, steady_traffic, write_baseline

def run(hilt_exe, *args, env=None):
    import os

    return subprocess.run([str(hilt_exe), "monitor", "report", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_steady_traffic_passes_and_drifted_traffic_trips_the_gates(hilt_exe, tmp_path):
    baseline = write_baseline(tmp_path / "data")
    steady = capture(tmp_path / "steady", steady_traffic(80))
    ok = run(hilt_exe, "--capture", str(steady), "--baseline", str(baseline), "--out", str(tmp_path / "r1"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["passed"] and report["counts"]["exchanges"] == 80
    assert report["metrics"]["psi_prompt_words"] < 0.2 and report["metrics"]["unseen_vocabulary_rate"] < 0.25
    assert sum(report["traffic_per_hour"].values()) == 80

    drifted = capture(tmp_path / "drifted", drifted_traffic(40))
    bad = run(hilt_exe, "--capture", str(drifted), "--baseline", str(baseline), "--out", str(tmp_path / "r2"))
    assert bad.returncode == 1, bad.stdout + bad.stderr
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    failed = {g["metric"] for g in report["gates"] if not g["passed"]}
    assert {"psi_prompt_words", "unseen_vocabulary_rate", "refusal_rate", "truncated_rate"} <= failed
    assert report["metrics"]["refusal_rate"] == 0.25 and report["metrics"]["truncated_rate"] == 0.75
    assert "psi_prompt_words<=0.2: " in bad.stdout and "FAIL" in bad.stdout
    for png in ("prompt_words.png", "answer_words.png", "traffic.png"):
        assert (tmp_path / "r2" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "**FAIL**" in (tmp_path / "r2" / "report.md").read_text()
    # A looser gate of the user's own passes the same traffic on that metric.
    loose = run(hilt_exe, "--capture", str(drifted), "--baseline", str(baseline), "--out", str(tmp_path / "r3"),
                "--gate", "empty_rate<=0.5")
    assert loose.returncode == 0, loose.stdout + loose.stderr


def test_captures_from_s3_other_encodings_and_containers(hilt_exe, tmp_path, moto_server):
    """A SageMaker endpoint's capture destination on S3: JSON and BASE64 encodings, OpenAI-style chat
    requests and answers, JSON Lines batches and a broken line, read with real boto3 against moto."""
    import boto3

    baseline = write_baseline(tmp_path / "data")
    prompts = steady_traffic(12)
    lines = []
    for i, (prompt, answer, _) in enumerate(prompts):
        if i % 3 == 0:  # SageMaker's default without CaptureContentTypeHeader: base64
            record = capture_record(json.dumps({"inputs": prompt}).encode(), "application/json",
                                    json.dumps([{"generated_text": answer}]).encode(), "application/json", 1.7e9 + i)
            for side in ("endpointInput", "endpointOutput"):
                part = record["captureData"][side]
                part.update(data=base64.b64encode(part["data"].encode()).decode(), encoding="BASE64")
        elif i % 3 == 1:  # an OpenAI-style chat container
            record = capture_record(json.dumps({"messages": [{"role": "user", "content": prompt}]}).encode(),
                                    "application/json", json.dumps({"choices": [{"message": {
                                        "role": "assistant", "content": answer}, "finish_reason": "stop"}]}).encode(),
                                    "application/json", 1.7e9 + i)
        else:  # a JSON Lines batch of two
            request = "".join(json.dumps({"inputs": p}) + "\n" for p in (prompt, prompt + " Thanks."))
            response = "".join(json.dumps({"generated_text": a}) + "\n" for a in (answer, answer))
            record = capture_record(request.encode(), "application/jsonlines", response.encode(),
                                    "application/jsonlines", 1.7e9 + i)
        lines.append(json.dumps(record))
    lines.append("{not json")
    s3 = boto3.client("s3", endpoint_url=moto_server["url"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="captures")
    s3.put_object(Bucket="captures", Key="monitor/ep/AllTraffic/2023/11/14/22/13-20-000-x.jsonl",
                  Body="\n".join(lines).encode())
    s3.put_object(Bucket="captures", Key="monitor/ep/AllTraffic/notes.txt", Body=b"not a capture")
    # Another endpoint's prefix that starts with the same letters is not this capture (issue 33 item 13).
    s3.put_object(Bucket="captures", Key="monitorother/ep/AllTraffic/2023/11/14/22/x.jsonl", Body=lines[0].encode())
    result = run(hilt_exe, "--capture", "s3://captures/monitor", "--baseline", str(baseline), "--out",
                 str(tmp_path / "r"), "--gate", "empty_rate<=0.05", env=moto_server["env"])
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["counts"] == {"files": 1, "lines": 13, "unreadable_lines": 1, "unreadable_files": 0, "events": 12,
                                "events_not_understood": 0, "exchanges": 16}
    since = run(hilt_exe, "--capture", "s3://captures/monitor", "--baseline", str(baseline), "--out",
                str(tmp_path / "r-since"), "--since", "2030-01-01", env=moto_server["env"])
    assert since.returncode == 2 and "none with a request and an answer" in since.stderr


def test_monitor_user_errors_leave_files_alone(hilt_exe, tmp_path):
    baseline = write_baseline(tmp_path / "data")
    steady = capture(tmp_path / "steady", steady_traffic(10))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for args, message in (
            (["--capture", str(steady), "--baseline", str(baseline), "--out", str(mine)], "--out"),
            (["--capture", str(tmp_path / "nowhere"), "--baseline", str(baseline), "--out", str(tmp_path / "x")],
             "no such folder"),
            (["--capture", str(steady), "--baseline", str(tmp_path / "none"), "--out", str(tmp_path / "x")],
             "--baseline"),
            (["--capture", str(steady), "--baseline", str(baseline), "--out", str(tmp_path / "x"), "--gate",
              "loss<=1"], "unknown metric 'loss'"),
            (["--capture", str(steady), "--baseline", str(baseline), "--out", str(tmp_path / "x"), "--since",
              "yesterday"], "--since 'yesterday'")):
        result = run(hilt_exe, *args)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("values, shifted", [([1, 2, 3, 4, 5] * 40, [1, 2, 3, 4, 5] * 40)])
def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift(values, shifted):
    from hilt.flows.monitor import psi

    assert psi(values, shifted) == 0.0
    assert psi(values, [v + 2 for v in shifted]) > 0.2 > psi(values, [1, 2, 3, 4, 5, 5] * 30)


def test_review_selection_takes_every_flagged_exchange_and_samples_each_day():
    import datetime as dt

    from hilt.flows.monitor import Exchange, review_rows, select_for_review

    def exchange(i, day, answer="Fine.", reason="stop", prompt="Please order a laptop for Ana."):
        return Exchange([{"role": "user", "content": prompt}], answer, reason,
                        dt.datetime(2026, 11, day, 10, tzinfo=dt.timezone.utc), f"e{i}")

    traffic = [exchange(i, 20 + i % 3) for i in range(30)]
    traffic += [exchange(100, 20, answer=""), exchange(101, 21, reason="length"),
                exchange(102, 22, prompt="Explain municipal bond taxation across states, mail bob@example.com")]
    baseline = [exchange(200, 1, prompt=p["prompt"]) for p in scenario_prompts(50)]
    picked = select_for_review(traffic, per_day=2, max_tasks=50, baseline=baseline)
    flagged = {e.event_id: why for e, why in picked if why}
    assert flagged == {"e100": ["empty"], "e101": ["truncated"], "e102": ["drifting"]}
    assert len(picked) == 3 + 3 * 2  # two from each of the three days
    assert len(select_for_review(traffic, per_day=2, max_tasks=4, baseline=baseline)) == 4
    rows, scrubbed = review_rows(picked)
    assert scrubbed == {"emails": 1, "phones": 0}
    assert "[EMAIL]" in next(r for r in rows if r["event_id"] == "e102")["messages"][-1]["content"]
    assert rows[0]["flags"] == "flagged: empty" and rows[-1]["flags"].startswith("picked at random")


def test_paths_named_jsonl_that_are_not_files_are_skipped_and_counted(hilt_exe, tmp_path):
    """A FIFO named *.jsonl blocked the report forever; a folder or broken link so named was a traceback;
    --capture FILE said 'no such folder' (issue 33 items 7 and 13, and the tracebacks' list)."""
    import os

    baseline = write_baseline(tmp_path / "data")
    folder = capture(tmp_path / "cap", steady_traffic(80))
    os.mkfifo(folder / "blocked.jsonl")
    (folder / "a-folder.jsonl").mkdir()
    (folder / "broken.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    result = run(hilt_exe, "--capture", str(folder), "--baseline", str(baseline), "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stdout + result.stderr
    counts = json.loads((tmp_path / "r" / "report.json").read_text())["counts"]
    assert counts["unreadable_files"] == 3 and counts["exchanges"] == 80
    assert "3 *.jsonl paths that are not readable files, skipped" in result.stdout
    a_file = next(p for p in sorted(folder.rglob("*.jsonl")) if p.is_file() and not p.is_symlink())
    result = run(hilt_exe, "--capture", str(a_file), "--baseline", str(baseline), "--out", str(tmp_path / "r2"))
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_exchanges_the_review_template_cannot_show_are_skipped_not_fatal():
    """One exchange with a tool turn or an empty turn, which serve accepted, refused the whole capture
    (issue 33 item 8): it is skipped and counted."""
    from hilt.flows.monitor import Exchange, reviewable_exchange

    def Seen(prompt):  # noqa: N802
        return Exchange(prompt=prompt, answer="an answer")

    user = {"role": "user", "content": "Order a laptop."}
    assert reviewable_exchange(Seen([{"role": "system", "content": "Be brief."}, user]))
    assert not reviewable_exchange(Seen([{"role": "tool", "content": "42"}, user]))
    assert not reviewable_exchange(Seen([{"role": "assistant", "content": "  "}, user]))
    assert not reviewable_exchange(Seen([user, {"role": "assistant", "content": "Done."}]))
    assert not reviewable_exchange(Seen([]))


def test_inference_times_with_milliseconds_or_an_offset_are_read():
    """SageMaker's inferenceTime with milliseconds made the event unreadable (issue 33 item 13)."""
    import datetime as dt

    from hilt.serving.capture import parse_capture_line

    record = capture_record(b'{"inputs": "hi"}', "application/json", b'{"generated_text": "hello"}',
                            "application/json", 1.7e9)
    expected = dt.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=dt.timezone.utc)
    for stamp in ("2023-11-14T22:13:20.123Z", "2023-11-14T23:13:20.123+01:00", "2023-11-14T22:13:20.123"):
        record["eventMetadata"]["inferenceTime"] = stamp
        assert parse_capture_line(json.dumps(record), "x:1").time == expected
    record["eventMetadata"]["inferenceTime"] = "2023-11-14T22:13:20Z"
    assert parse_capture_line(json.dumps(record), "x:1").time == expected.replace(microsecond=0)
    record["eventMetadata"]["inferenceTime"] = "yesterday"
    with pytest.raises(ValueError):
        parse_capture_line(json.dumps(record), "x:1")


def test_the_baseline_of_a_kto_dataset_holds_only_its_desirable_answers(tmp_path):
    """Undesirable KTO completions were part of the drift baseline (issue 33 item 13, last part)."""
    from hilt.flows.monitor import read_baseline

    (tmp_path / "train").mkdir()
    records = [{"prompt": [{"role": "user", "content": f"q{i}"}],
                "completion": [{"role": "assistant", "content": f"{'good' if i % 2 else 'bad'} {i}"}],
                "label": bool(i % 2)} for i in range(6)]
    (tmp_path / "train" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert sorted(e.answer for e in read_baseline(tmp_path)) == ["good 1", "good 3", "good 5"]


def test_hostile_captured_lines_are_counted_not_tracebacks(hilt_exe, tmp_path):
    """200k-deep JSON, a streamed frame {"choices": 5} and a message without a role were tracebacks in
    monitor report and review (issue 33, tracebacks)."""
    from hilt.flows.monitor import read_traffic

    baseline = write_baseline(tmp_path / "data")
    folder = capture(tmp_path / "cap", steady_traffic(80))
    hostile = [
        "[" * 200_000 + "]" * 200_000,
        json.dumps(capture_record(json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True}).encode(),
                                  "application/json", b'data: {"choices": 5}\n\ndata: [DONE]\n\n', "text/event-stream",
                                  1.7e9)),
        json.dumps(capture_record(json.dumps({"messages": [{"content": "hi"}]}).encode(), "application/json",
                                  json.dumps({"choices": [{"message": {"role": "assistant", "content": "x"}}]}).encode(),
                                  "application/json", 1.7e9)),
    ]
    (folder / "hostile.jsonl").write_text("\n".join(hostile) + "\n")
    exchanges, counts = read_traffic(str(folder))
    assert len(exchanges) == 80 and counts["unreadable_lines"] == 1 and counts["events_not_understood"] == 2
    result = run(hilt_exe, "--capture", str(folder), "--baseline", str(baseline), "--out", str(tmp_path / "r"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
