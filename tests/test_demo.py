"""`hilt demo` runs end to end on embedded defaults, and a second run reuses the work."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import run_hilt

pytestmark = [pytest.mark.slow, pytest.mark.studio]


@pytest.mark.timeout(1800)  # three runs: the demo, the Algorithm's certification replayed, the demo again
def test_demo_end_to_end_then_reused(hilt_exe, tmp_path):
    workdir = tmp_path / "demo"
    try:
        first = run_hilt(hilt_exe, "demo", "--model", "tiny", "--workdir", str(workdir), timeout=1200)
        assert first.returncode == 0, (first.stdout + first.stderr)[-4000:]
        assert "hilt demo summary" in first.stdout and "stand-in annotators" in first.stdout
        base, tuned = map(float, re.search(r"exact_match\s+base ([0-9.]+) -> tuned ([0-9.]+)", first.stdout).groups())
        assert tuned >= base + 0.3
        loss_base, loss_tuned = map(float, re.search(r"held-out loss\s+base ([0-9.]+) -> tuned ([0-9.]+)",
                                                     first.stdout).groups())
        assert loss_tuned < loss_base
        # The demo ran the pipeline it wrote: every step once, the human side-by-side its own step.
        run = json.loads((workdir / "pipeline" / "last-run.json").read_text())
        assert [(s["step"], s["status"]) for s in run["steps"]] == [
            ("export", "ran"), ("dataset", "ran"), ("train", "ran"), ("evaluate", "ran"), ("side-by-side", "ran"),
            ("package", "ran"), ("validate", "ran"), ("request", "ran")]
        assert (workdir / "pipeline.yaml").is_file()
        eval_dir = Path(run["evaluate"]["eval_json"]).parent
        evaluation = json.loads((eval_dir / "eval.json").read_text())
        assert evaluation["passed"] and evaluation["gates"][0]["gate"] == "exact_match>=+0.3"
        assert (eval_dir / "report.md").is_file() and (eval_dir / "metrics.png").is_file()
        sbs = evaluation["human_side_by_side"]
        assert sbs["win_rate"] > 0.5 and sbs["win_rate_ci95"][0] > 0.5 and sbs["judgements"] == 2 * (sbs["pairs"] - sbs["ties"]["identical_answers"])
        assert "## Human side-by-side evaluation" in Path(run["request"]["listing"]).read_text()
        before, after = map(float, re.search(r"train loss\s+([0-9.]+) -> ([0-9.]+)", first.stdout).groups())
        assert after < before / 2
        assert re.search(r"validation\s+PASSED on 10 records", first.stdout)

        # Every annotation the stand-ins posted is in the dataset or its rejects.
        manifest = json.loads((workdir / "pipeline" / "datasets" / "v0001" / "manifest.json").read_text())
        posted = json.loads((workdir / "demo-state.json").read_text())["annotations_posted"]
        c = manifest["counts"]
        assert c["annotations"] == posted == c["annotations_in_records"] + c["rejects"]["total"]
        assert set(c["rejects"]["by_reason"]) == {"duplicate"}  # the second annotator agreed
        for path in (run["package"]["model_tar"], run["request"]["request"], run["request"]["listing"],
                     Path(run["validate"]["report"]).parent / "validation-input.jsonl.out"):
            assert Path(path).is_file(), path

        # The deployment watched: traffic captured in SageMaker's format, the drift it was sent tripping the
        # gates, and the reviewers' corrections of the flagged answers exported as the next dataset version.
        assert re.search(r"monitor\s+36 exchanges captured in .*; drift gates FAIL: .*psi_prompt_words", first.stdout)
        drift = json.loads((workdir / "monitor" / "report.json").read_text())
        assert not drift["passed"] and drift["counts"]["exchanges"] == 36
        review = json.loads((workdir / "review-data" / "v0001" / "manifest.json").read_text())
        corrected = int(re.search(r"review\s+project \d+: \d+ flagged \+ \d+ sampled answers; (\d+) corrected",
                                  first.stdout).group(1))
        assert corrected >= 12 and sum(review["counts"]["records"].values()) == corrected  # every drifting prompt
        assert review["template"] == "review" and review["quality"]["verdicts"]["Needs correction"] >= 12

        # The Algorithm request the demo wrote passes Marketplace's certification, replayed offline.
        command = re.search(r"certify algorithm\s+hilt (package validate --algorithm .*)", first.stdout).group(1)
        certify = run_hilt(hilt_exe, *command.split(), timeout=900, env={"HF_HUB_OFFLINE": "1"})
        assert certify.returncode == 0, (certify.stdout + certify.stderr)[-4000:]
        assert "algorithm validation PASSED" in certify.stdout
        steps = json.loads((workdir / "algorithm-validation" / "algorithm-validation.json").read_text())["steps"]
        assert [s["step"] for s in steps] == ["request", "training-job", "model-artifact", "transform-job"]

        second = run_hilt(hilt_exe, "demo", "--model", "tiny", "--workdir", str(workdir), timeout=600)
        assert second.returncode == 0, second.stderr[-3000:]
        reused = re.findall(r"^  (\S.*?) {2,}[^\n]*\(reused\)$", second.stdout, re.M)
        assert reused == ["base model", "annotation", "dataset", "training", "human win rate", "model.tar.gz"]
        assert "stand-in annotators" not in second.stdout
        again = json.loads((workdir / "pipeline" / "last-run.json").read_text())
        assert {s["step"]: s["status"] for s in again["steps"]} == {
            "export": "nothing new", **{name: "reused" for name in ("dataset", "train", "evaluate", "side-by-side",
                                                                     "package", "validate", "request")}}
    finally:
        run_hilt(hilt_exe, "studio", "stop", "--data-dir", str(workdir / "studio"))
