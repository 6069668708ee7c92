"""Hostile and careless input, command by command: nothing lost, nothing wedged, one line per user error.

Each test here reproduces something that, before the fix, deleted a user's files, trained on
the wrong data, wedged the server, leaked disk or secrets, or ended in a traceback.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import run_hilt
from hilt.cli import main as hilt_main
from hilt.core.errors import UserError
from tasks import write_uppercase_dataset
from test_hil_export import SFT, sft_annotation, task


def hilt(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``hilt`` in this process: (exit code, stdout, stderr)."""
    code = hilt_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("hilt: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def export_file(tmp_path) -> Path:
    tasks = [task(i, [sft_annotation(i, f"answer {i}")]) for i in range(1, 6)]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    return path


# ------------------------------------------------------------------ export: output folders


def test_export_into_a_folder_that_is_not_a_dataset_deletes_nothing(capsys, tmp_path, export_file):
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    (folder / "export.json").write_bytes(export_file.read_bytes())
    (folder / "NOTES.md").write_text("x\n")
    (folder / "sub" / "keep.txt").write_text("keep\n")
    before = snapshot(folder)
    code, _, err = hilt(capsys, "export", "--from-file", str(folder / "export.json"), "--template", "sft",
                        "--out", str(folder))
    assert code == 2
    line = one_line_error(err)
    assert str(folder) in line and "NOTES.md" in line and "nothing was changed" in line
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "export.json"]  # no staging dirs left


def test_export_out_dot_refuses_the_working_directory(capsys, tmp_path, export_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = hilt(capsys, "export", "--from-file", "export.json", "--template", "sft", "--out", ".")
    assert code == 2 and "--out ." in one_line_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json"]


def test_export_out_that_is_a_file_is_refused(capsys, tmp_path, export_file):
    target = tmp_path / "data.jsonl"
    target.write_text("mine\n")
    for extra in ([], ["--since-last"]):
        args = ["export", "--from-file", str(export_file), "--template", "sft", "--out", str(target), *extra]
        if extra:
            args = ["export", "--project", "1", "--out", str(target), *extra]
        code, _, err = hilt(capsys, *args)
        assert code == 2 and "is a file" in one_line_error(err)
    assert target.read_text() == "mine\n"


def test_rerunning_an_export_replaces_it_but_never_a_file_it_did_not_write(capsys, tmp_path, export_file):
    out = tmp_path / "data"
    assert hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft", "--out", str(out))[0] == 0
    first = snapshot(out)
    assert hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft", "--out", str(out))[0] == 0
    assert snapshot(out) == first  # re-running is safe and byte-identical
    (out / "train" / "my-notes.txt").write_text("mine\n")
    code, _, err = hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft", "--out", str(out))
    assert code == 2 and "train/my-notes.txt" in one_line_error(err)
    assert (out / "train" / "my-notes.txt").read_text() == "mine\n"


def test_an_empty_existing_folder_is_filled_in_place(capsys, tmp_path, export_file):
    out = tmp_path / "empty"
    out.mkdir()
    inode = out.stat().st_ino
    assert hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft", "--out", str(out))[0] == 0
    assert out.stat().st_ino == inode and (out / "manifest.json").is_file()


def test_dataset_folders_get_the_users_umask_permissions(capsys, tmp_path, export_file):
    old = os.umask(0o022)
    try:
        out = tmp_path / "data"
        assert hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft", "--out", str(out))[0] == 0
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert (out / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_leaves_nothing_half_written(tmp_path, monkeypatch):
    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions

    tasks = [task(i, [sft_annotation(i, f"answer {i}")]) for i in range(1, 4)]
    out = tmp_path / "data"
    export_to_dataset(tasks, SFT, ExportOptions(), {"type": "file"}, out)
    before = snapshot(out)
    real = Path.write_bytes

    def full(self, data):
        if "rejects" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    tasks.append(task(9, [sft_annotation(9, "new")]))
    with pytest.raises(UserError, match="no space left"):
        export_to_dataset(tasks, SFT, ExportOptions(), {"type": "file"}, out)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ------------------------------------------------------------------ export: hostile files


def _task_json(**override) -> dict:
    return {**task(1, [sft_annotation(1, "fine")]), **override}


HOSTILE_EXPORTS = {
    "lone surrogate": (b'[{"id": 1, "data": {"prompt": "\\ud800"}, "annotations": []}]', "lone surrogate"),
    "invalid utf-8": (b'[{"id": 1,\n "data": {"prompt": "caf\xe9"}}]', "export.json:2: not UTF-8"),
    "result a string": (json.dumps([_task_json(annotations=[{**sft_annotation(1, "x"), "result": "oops"}])]).encode(),
                        "'result' must be a list"),
    "annotations a dict": (json.dumps([_task_json(annotations={"id": 1})]).encode(), "'annotations' is a dict"),
    "data a list": (json.dumps([_task_json(data=["prompt"])]).encode(), "'data' is a list"),
    "mixed ids": (json.dumps([task(1, []), {**task(2, []), "id": "2"}]).encode(), "non-integer id"),
    "not json": (b"[{", "export.json:1: not valid JSON"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "a dict": (b'{"tasks": []}', "expected a list of tasks"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_EXPORTS))
def test_hostile_export_files_are_one_line_errors(capsys, tmp_path, name):
    raw, expected = HOSTILE_EXPORTS[name]
    source = tmp_path / "export.json"
    source.write_bytes(raw)
    for command in (["export", "--out", str(tmp_path / "out")], ["quality"]):
        code, _, err = hilt(capsys, *command, "--from-file", str(source), "--template", "sft")
        assert code == 2, err
        line = one_line_error(err)
        assert expected in line and "export.json" in line
    assert not (tmp_path / "out").exists()


def test_missing_or_binary_label_config_is_a_one_line_error(capsys, tmp_path, export_file):
    for config, expected in ((tmp_path / "nope.xml", "no such file"), (tmp_path / "bin.xml", "not UTF-8")):
        if config.name == "bin.xml":
            config.write_bytes(b"<View>\xff\xfe</View>")
        code, _, err = hilt(capsys, "export", "--from-file", str(export_file), "--template", "sft",
                            "--label-config", str(config), "--out", str(tmp_path / "out"))
        assert code == 2 and expected in one_line_error(err) and "--label-config" in err


def test_without_a_config_only_the_textarea_on_the_prompt_makes_a_record():
    from hilt.labeling.export import ExportOptions, export_annotations

    on_prompt = sft_annotation(1, "kept", from_name="my_answer")
    choices = {**sft_annotation(2, "dropped"), "result": [
        {"from_name": "answer", "to_name": "prompt", "type": "textarea", "value": {"text": ["dropped"]}},
        {"from_name": "sentiment", "to_name": "prompt", "type": "choices", "value": {"choices": ["ok"]}}]}
    elsewhere = {**sft_annotation(3, "x"), "result": [
        {"from_name": "note", "to_name": "context", "type": "textarea", "value": {"text": ["x"]}}]}
    two = {**sft_annotation(4, "x"), "result": [
        {"from_name": n, "to_name": "prompt", "type": "textarea", "value": {"text": [n]}} for n in ("a", "b")]}
    tasks = [task(1, [on_prompt]), task(2, [choices]), task(3, [elsewhere]), task(4, [two])]
    result = export_annotations(tasks, SFT, ExportOptions(validation_fraction=0.0))
    assert [r["messages"][-1]["content"] for r in result.records["train"]] == ["kept"]
    assert {r["annotation_id"]: r["reason"] for r in result.rejects} == {
        2: "unknown_control", 3: "unknown_control", 4: "unknown_control"}


def test_nul_bytes_in_answers_are_rejected_with_a_reason():
    from hilt.labeling.export import ExportOptions, export_annotations
    from hilt.labeling.results import NUL_BYTES

    result = export_annotations([task(1, [sft_annotation(1, "bad\x00answer")]), task(2, [sft_annotation(2, "ok")])],
                                SFT, ExportOptions(validation_fraction=0.0))
    assert [r["reason"] for r in result.rejects] == [NUL_BYTES]
    assert result.counts["annotations_in_records"] + result.counts["rejects"]["total"] == 2


# ------------------------------------------------------------------ --since-last and edits


def test_an_edited_annotation_is_exported_again_and_supersedes_its_old_record(tmp_path):
    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions
    from hilt.flows.pipeline import _merge_versions

    opts = ExportOptions(validation_fraction=0.0)
    tasks = [task(i, [sft_annotation(i, f"first {i}")]) for i in range(1, 4)]
    root = tmp_path / "datasets"
    v1, _ = export_to_dataset(tasks, SFT, opts, {"type": "file"}, root, since_last=True)
    assert export_to_dataset(tasks, SFT, opts, {"type": "file"}, root, since_last=True) == (None, None)

    # What PATCH /api/annotations/2/ does: new text, newer updated_at, same id.
    edited = sft_annotation(2, "edited 2")
    edited["updated_at"] = "2026-02-01T00:00:00Z"
    tasks[1]["annotations"] = [edited]
    v2, manifest = export_to_dataset(tasks, SFT, opts, {"type": "file"}, root, since_last=True)
    assert v2.name == "v0002" and manifest["counts"]["annotations"] == 1
    assert [json.loads(line)["messages"][-1]["content"] for line in
            (v2 / "train" / "data.jsonl").read_text().splitlines()] == ["edited 2"]
    assert export_to_dataset(tasks, SFT, opts, {"type": "file"}, root, since_last=True) == (None, None)

    merged = tmp_path / "merged"
    summary = _merge_versions(root, ["v0001", "v0002"], merged)
    answers = sorted(json.loads(line)["messages"][-1]["content"]
                     for line in (merged / "train" / "data.jsonl").read_text().splitlines())
    assert answers == ["edited 2", "first 1", "first 3"]  # nothing doubled, the edit wins
    assert summary["records"]["train"] == 3
    assert summary["superseded"] == [{"version": "v0001", "split": "train", "annotation_ids": [2]}]


def test_annotation_ids_supersede_only_within_their_own_source(tmp_path):
    """A review project's corrections (annotation ids 2 and 4) were dropped as 'superseded' by a file
    source's re-export that has annotations 2 and 4 of its own (issue 33 item 4)."""
    from hilt.flows.pipeline import _merge_versions
    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions

    opts = ExportOptions(validation_fraction=0.0)
    root = tmp_path / "datasets"
    from_file = {"type": "file", "name": "export.json", "sha256": "a"}
    review = {"type": "project", "project_id": 7, "url": "http://127.0.0.1:8080"}
    export_to_dataset([task(i, [sft_annotation(i, f"file {i}")]) for i in range(1, 6)], SFT, opts, from_file, root,
                      since_last=True)
    # The review project's annotations have ids the file's have too: not already exported, not edits.
    v2, manifest = export_to_dataset([task(i, [sft_annotation(i, f"correction {i}")]) for i in (2, 4)], SFT, opts,
                                     review, root, since_last=True)
    assert v2.name == "v0002" and manifest["counts"]["annotations"] == 2
    # The same file exported again (edited: a new sha256, annotation 3 changed) is the same source.
    edited = sft_annotation(3, "file 3, edited")
    edited["updated_at"] = "2026-02-01T00:00:00Z"
    tasks = [task(i, [sft_annotation(i, f"file {i}")]) for i in range(1, 6)]
    tasks[2]["annotations"] = [edited]
    v3, _ = export_to_dataset(tasks, SFT, opts, {**from_file, "sha256": "b"}, root, since_last=True)
    summary = _merge_versions(root, ["v0001", "v0002", "v0003"], tmp_path / "merged")
    answers = sorted(json.loads(line)["messages"][-1]["content"]
                     for line in (tmp_path / "merged" / "train" / "data.jsonl").read_text().splitlines())
    assert answers == ["correction 2", "correction 4", "file 1", "file 2", "file 3, edited", "file 4", "file 5"]
    assert summary["superseded"] == [{"version": "v0001", "split": "train", "annotation_ids": [3]}]


# ------------------------------------------------------------------ recipes and records


def test_recipe_and_record_files_that_are_not_text(capsys, tmp_path):
    code, _, err = hilt(capsys, "recipe", "check", str(tmp_path / "rec" / "missing.yaml"))
    assert code == 2 and "no such file" in one_line_error(err) and "not a .yaml" not in err
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"name: x\ndescription: \xff\xfe\n")
    code, _, err = hilt(capsys, "recipe", "check", str(binary))
    assert code == 2 and "not UTF-8" in one_line_error(err)
    code, _, err = hilt(capsys, "recipe", "check", "quickstart-tiny-sft", "--set", "train.max_steps=true")
    assert code == 2 and "train.max_steps" in one_line_error(err) and "boolean" in err

    from hilt.training.data.records import read_records

    channel = tmp_path / "train"
    channel.mkdir()
    good = json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]})
    (channel / "data.jsonl").write_bytes(good.encode() + b'\n{"messages": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"data.jsonl:2: not UTF-8"):
        read_records(channel, "sft")


# ------------------------------------------------------------------ training: output and provenance


def test_train_refuses_an_output_folder_it_did_not_lay_out(capsys, tmp_path, tiny_model_dir):
    data = write_uppercase_dataset(tmp_path / "data", n_train=4, n_validation=2)
    out = tmp_path / "mine"
    (out / "input" / "data" / "train").mkdir(parents=True)
    (out / "input" / "data" / "train" / "precious.jsonl").write_text("{}\n")
    before = snapshot(out)
    code, _, err = hilt(capsys, "train", "quickstart-tiny-sft", "--model", str(tiny_model_dir), "--data", str(data),
                        "--output", str(out))
    assert code == 2 and "--output" in one_line_error(err)
    assert snapshot(out) == before


def _raw_train(opt_ml_base: Path) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run([str(Path(sys.executable).parent / "train")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SAGEMAKER_BASE_DIR": str(opt_ml_base)})


@pytest.mark.parametrize("config, expected", [
    ({"resourceconfig.json": {"hosts": "algo-1", "current_host": "algo-1"}}, "needs 'hosts' (a list"),
    ({"inputdataconfig.json": [1]}, "expected an object of channel name"),
    ({"hyperparameters.json": {"recipe": "quickstart-tiny-sft", "model.name_or_path": "meta-llama/Meta-Llama-3-8B"}},
     "not in the local cache"),
    ({"hyperparameters.json": {"recipe": "quickstart-tiny-sft", "model.name_or_path": "/no/such/model"}},
     "no such directory"),
])
def test_raw_train_with_malformed_config_fails_in_one_line(opt_ml, config, expected):
    write_uppercase_dataset(opt_ml.input_data_dir, n_train=2, n_validation=1)
    opt_ml.hyperparameters_file.write_text(json.dumps({"recipe": "quickstart-tiny-sft"}))
    for name, content in config.items():
        (opt_ml.input_config_dir / name).write_text(json.dumps(content))
    started = time.monotonic()
    result = _raw_train(opt_ml.base)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    failure = opt_ml.failure_file.read_text()
    assert expected in failure and failure.count("\n") == 1
    print(f"failed in {elapsed:.1f}s: {failure.strip()}")


def test_write_failure_survives_a_read_only_output(opt_ml, monkeypatch, capsys):
    from hilt.training.base.job import write_failure

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    write_failure(opt_ml, "the reason")  # must not raise
    assert "could not write" in capsys.readouterr().err


@pytest.mark.slow
def test_a_rerun_on_other_data_never_resumes_the_old_checkpoints(hilt_exe, warm_base_dir, tmp_path):
    data_a = write_uppercase_dataset(tmp_path / "a", n_train=16, n_validation=2, seed=1)
    data_b = write_uppercase_dataset(tmp_path / "b", n_train=16, n_validation=2, seed=2)
    out = tmp_path / "job"
    args = ["--output", str(out), "--model", str(warm_base_dir), "--set", "train.max_steps=4",
            "--set", "train.checkpoint_steps=2", "--set", "eval.after_training=false"]
    first = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--data", str(data_a), *args)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest_a = (out / "model" / "hilt.json").read_bytes()

    second = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--data", str(data_b), *args)
    assert second.returncode == 2, second.stdout[-2000:]
    line = one_line_error(second.stderr)
    assert "train data sha256" in line and "--fresh" in line
    assert (out / "model" / "hilt.json").read_bytes() == manifest_a  # no claim about data B

    changed = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--data", str(data_a), *args,
                       "--set", "train.learning_rate=0.001")
    assert changed.returncode == 2 and "train.learning_rate" in changed.stderr

    fresh = run_hilt(hilt_exe, "train", "quickstart-tiny-sft", "--data", str(data_b), *args, "--fresh")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert "resumed at" not in fresh.stdout
    from hilt.training.data.records import dataset_fingerprint

    shipped = json.loads((out / "model" / "hilt.json").read_text())
    assert shipped["dataset"]["train"]["sha256"] == dataset_fingerprint(data_b / "train")["sha256"]
    assert shipped["metrics"]["global_step"] == 4


def test_shipped_files_carry_no_local_paths(lora_run, warm_base_dir):
    out, _ = lora_run
    for name in ("hilt.json", "README.md"):
        text = (out / "model" / name).read_text()
        assert str(warm_base_dir) not in text and str(out) not in text, name
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert manifest["base_model"] == warm_base_dir.name
    assert manifest["hyperparameters"]["recipe"] == "quickstart-tiny-sft.yaml"


# ------------------------------------------------------------------ package


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_package_verification_refuses_unlisted_missing_and_bad_manifests(tiny_model_dir, tmp_path):
    from hilt.serving.package import PACKAGE_MANIFEST, build_model_tar, extract_model_tar

    build_model_tar(tiny_model_dir, tmp_path / "good.tar.gz")
    with tarfile.open(tmp_path / "good.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    cases = {
        "backdoor": ({**members, "backdoor.py": b"import os\n"}, "backdoor.py is not listed"),
        "no manifest": ({k: v for k, v in members.items() if k != PACKAGE_MANIFEST}, "no hilt-package.json inside"),
        "bad manifest": ({**members, PACKAGE_MANIFEST: b"not json"}, "is not a hilt package manifest"),
    }
    for name, (content, expected) in cases.items():
        archive = _tar(tmp_path / f"{name}.tar.gz", content)
        with pytest.raises(UserError, match=expected):
            extract_model_tar(archive, tmp_path / name)
        assert not (tmp_path / name / "backdoor.py").exists()


def test_a_decompression_bomb_is_refused_before_extraction(tmp_path):
    from hilt.serving.package import extract_model_tar

    bomb = tmp_path / "bomb.tar.gz"
    size = 200 * 1024 * 1024
    with gzip.open(bomb, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = tarfile.TarInfo("model.safetensors")
        info.size = size

        class Zeros:
            left = size

            def read(self, n=-1):
                n = self.left if n is None or n < 0 else min(n, self.left)
                self.left -= n
                return bytes(n)

        tar.addfile(info, Zeros())
    assert bomb.stat().st_size < size / 100
    with pytest.raises(UserError, match="unpacks to 209715200 bytes, over the limit"):
        extract_model_tar(bomb, tmp_path / "out", require_manifest=False, max_unpacked_bytes=100 * 1024 * 1024)
    assert not (tmp_path / "out").exists()


def test_package_build_never_packs_its_own_output_and_leaves_no_tmp(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from hilt.serving.package import build_model_tar

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = build_model_tar(model, model / "model.tar.gz")
    second = build_model_tar(model, model / "model.tar.gz")
    assert "model.tar.gz" not in second["files"] and first["archive_sha256"] == second["archive_sha256"]
    with pytest.raises(UserError, match="is a folder"):
        build_model_tar(model, tmp_path)

    real_open = Path.open

    def full(self, mode="r", *args, **kwargs):
        if self.name.endswith(".tmp") and "w" in mode:
            handle = real_open(self, mode, *args, **kwargs)
            handle.write(b"partial")
            handle.close()
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(UserError, match="no space left"):
        build_model_tar(model, tmp_path / "out" / "model.tar.gz")
    assert list((tmp_path / "out").iterdir()) == []


def test_package_validate_removes_its_extracted_model(hilt_exe, tiny_model_dir, tmp_path):
    from hilt.serving.package import build_model_tar

    build_model_tar(tiny_model_dir, tmp_path / "model.tar.gz")
    requests = tmp_path / "input.jsonl"
    requests.write_text(json.dumps({"inputs": "hi", "parameters": {"max_new_tokens": 3}}) + "\n")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ok = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tmp_path / "model.tar.gz"), "--input",
                  str(requests), "--output", str(tmp_path / "report"), env={"TMPDIR": str(scratch)})
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = _tar(tmp_path / "bad.tar.gz", {"config.json": b"{}"})
    failed = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(bad), "--input", str(requests),
                      env={"TMPDIR": str(scratch)})
    assert failed.returncode == 2 and "no hilt-package.json" in one_line_error(failed.stderr)
    assert not list(scratch.glob("hilt-validate-opt-ml-*"))


# ------------------------------------------------------------------ secrets


@pytest.mark.studio
def test_studio_secrets_are_owner_only(studio):
    state_file = studio["data_dir"] / "hilt-studio.json"
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert studio["data_dir"].stat().st_mode & 0o077 == 0


# ------------------------------------------------------------------ pipeline watch


@pytest.fixture()
def webhook_server():
    from http.server import ThreadingHTTPServer

    from hilt.flows.watch import Inbox, make_handler

    inbox = Inbox()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(inbox, "s3cret", 1))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", inbox
    server.shutdown()


def _raw_post(url: str, headers: dict, body: bytes = b"") -> tuple[int, dict]:
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    connection.putrequest("POST", "/webhook")
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    if body:
        connection.send(body)
    response = connection.getresponse()
    payload = json.loads(response.read() or b"{}")
    connection.close()
    return response.status, payload


def test_webhook_checks_the_secret_before_reading_and_caps_the_body(webhook_server):
    from hilt.flows.watch import PATH

    url, inbox = webhook_server
    assert PATH == "/webhook"
    huge = {"Content-Length": str(20 * 1024**3), "Content-Type": "application/json"}
    assert _raw_post(url, huge)[0] == 403  # answered without reading 20 GB
    assert _raw_post(url, {**huge, "X-Hilt-Secret": "s3cret"})[0] == 413
    authed = {"X-Hilt-Secret": "s3cret", "Content-Type": "application/json"}
    for body in (b"[1, 2]", b'{"action": "ANNOTATION_CREATED", "annotation": {"id": "x"}}', b"{", b"\xff\xfe",
                 b'{"action": "ANNOTATION_CREATED", "project": "1", "annotations": 5}'):
        status, answer = _raw_post(url, {**authed, "Content-Length": str(len(body))}, body)
        assert status in (200, 400) and isinstance(answer, dict), (body, status)
    ok = json.dumps({"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 7}}).encode()
    assert _raw_post(url, {**authed, "Content-Length": str(len(ok))}, ok) == (200, {"counted": [7]})
    assert inbox.count() == 1


# ------------------------------------------------------------------ serve


@pytest.fixture(scope="module")
def long_model_dir(tmp_path_factory) -> Path:
    """A tiny model with an 8k context, so one request can keep it busy for many seconds."""
    from hilt.training.models.tiny_model import TinyModelSpec, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long-model"), TinyModelSpec(max_positions=8192))


def _serve(model_dir: Path, base: Path, **env):
    from test_container_serve import start_server

    return start_server(model_dir, base, {k: str(v) for k, v in env.items()})


def _post(url: str, body, content_type: str = "application/json", timeout: float = 120):
    from test_container_serve import post

    return post(url, body, content_type, timeout=timeout)


LONG = {"inputs": "go", "parameters": {"max_new_tokens": 4096, "do_sample": True, "seed": 1}}


def test_serve_answers_hostile_requests_with_400_json(tiny_model_dir, tmp_path):
    proc, url = _serve(tiny_model_dir, tmp_path / "opt-ml")
    try:
        cases = [
            ({"inputs": "hello " * 900_000}, "context of 512 tokens"),
            ({"inputs": "hello " * 2000}, "the model's context is 512 tokens"),
            ({"inputs": "hi", "parameters": {"seed": 10**23}}, "seed must be an integer"),
            (b'{"inputs": "\\ud800"}', "lone surrogate"),
            (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
            ({"inputs": "hi", "params": {"max_new_tokens": 5}}, "unknown key(s) ['params']"),
        ]
        for body, expected in cases:
            status, _, answer = _post(url, body)
            assert status == 400 and expected in json.loads(answer)["error"], (str(body)[:60], answer[:300])
        status, _, answer = _post(url, b'{"inputs": "a"}\n\n{"inputs": \n', "application/jsonlines")
        assert status == 400 and json.loads(answer)["error"].startswith("line 3:")
        status, _, answer = _post(url, {"inputs": "hello " * 2000, "parameters": {"truncate": 100, "max_new_tokens": 3}})
        assert status == 200 and json.loads(answer)["usage"]["input_tokens"] == 100
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as response:
            assert response.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
def test_serve_budget_disconnect_and_sigterm(long_model_dir, tmp_path):
    proc, url = _serve(long_model_dir, tmp_path / "a", HILT_GENERATION_TIMEOUT=0.5)
    try:
        for request in (LONG, {"inputs": "go", "parameters": {"max_new_tokens": 4096}}):  # exact lane, batch
            status, _, answer = _post(url, request)
            assert status == 200 and json.loads(answer)["finish_reason"] == "time_limit", answer
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    proc, url = _serve(long_model_dir, tmp_path / "b")
    try:
        # A client that gives up: its generation is cancelled, and the next request is served.
        # Two sampled requests (the exact lane) and one greedy (the continuous batch).
        greedy = {"inputs": "go", "parameters": {"max_new_tokens": 4096}}
        three = ("\n".join(json.dumps(r) for r in (LONG, greedy, LONG)) + "\n").encode()
        with pytest.raises((TimeoutError, urllib.error.URLError, OSError)):
            _post(url, three, "application/jsonlines", timeout=1.0)
        status, _, answer = _post(url, {"inputs": "hi", "parameters": {"max_new_tokens": 3}}, timeout=60)
        assert status == 200

        # SIGTERM while a long request runs: the server stops within seconds, not after it.
        threading.Thread(target=lambda: _post(url, three, "application/jsonlines", timeout=120), daemon=True).start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        log = proc.stdout.read()
        assert "cancelled" in log and "client disconnected" in log and "shutting down" in log, log[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.studio
@pytest.mark.slow
def test_an_answer_edited_in_label_studio_reaches_the_next_version(hilt_exe, studio, tmp_path):
    from hilt.labeling.client import StudioClient
    from test_hil_studio import all_records, create_project, textarea

    client = StudioClient(studio["url"], studio["token"])
    project = create_project(hilt_exe, studio, tmp_path, "sft", [{"prompt": f"Book room {i}"} for i in range(3)])
    tasks = sorted(t["id"] for t in client.export_tasks(project))
    ids = [client.create_annotation(t, textarea(f"Room {t} is booked.")) for t in tasks]
    out = tmp_path / "versions"
    args = ("export", "--project", str(project), "--out", str(out), "--since-last")
    assert run_hilt(hilt_exe, *args, env=studio["env"]).returncode == 0

    time.sleep(1.1)  # updated_at has second resolution in some exports
    client.sdk.annotations.update(ids[1], result=textarea(f"Room {tasks[1]} is booked for 10:00."))
    edited = run_hilt(hilt_exe, *args, env=studio["env"])
    assert edited.returncode == 0 and "nothing new" not in edited.stdout, edited.stdout + edited.stderr
    v2 = all_records(out / "v0002")
    assert [(r["meta"]["annotation_id"], r["messages"][-1]["content"]) for r in v2] == [
        (ids[1], f"Room {tasks[1]} is booked for 10:00.")]
    again = run_hilt(hilt_exe, *args, env=studio["env"])
    assert again.returncode == 0 and "nothing new" in again.stdout


# ------------------------------------------------------------------ single-file outputs hilt did not write


def test_request_outputs_never_replace_a_file_hilt_did_not_write(capsys, tmp_path):
    """`package request --out base/train/data.jsonl` replaced training data (issue 33 item 5)."""
    data = tmp_path / "train" / "data.jsonl"
    data.parent.mkdir()
    data.write_text('{"messages": []}\n')
    args = ["package", "request", "model-package", "--name", "hilt-assistant", "--image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:1", "--role",
            "arn:aws:iam::123456789012:role/SageMaker", "--model-data-url", "s3://b/model.tar.gz",
            "--validation-input", "s3://b/in.jsonl", "--validation-output", "s3://b/out"]
    code, _, err = hilt(capsys, *args, "--out", str(data))
    assert code == 2 and "already exists and is not a CreateModelPackage or CreateAlgorithm request" in one_line_error(err)
    assert data.read_text() == '{"messages": []}\n'
    code, _, err = hilt(capsys, *args, "--out", str(tmp_path))
    assert code == 2 and "is a folder" in one_line_error(err)
    # Its own earlier request is replaced, as before.
    own = tmp_path / "request.json"
    assert hilt(capsys, *args, "--out", str(own))[0] == 0
    assert hilt(capsys, *args, "--out", str(own))[0] == 0 and json.loads(own.read_text())["ModelPackageName"]


def test_sagemaker_pipeline_export_never_replaces_a_file_it_did_not_write(tmp_path):
    from hilt.flows.sagemaker_pipeline import export

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}\n')
    with pytest.raises(UserError, match="already exists and is not a SageMaker Pipeline definition"):
        export(tmp_path / "missing-pipeline.yaml", notes)
    assert notes.read_text() == '{"mine": true}\n'


def test_monitor_and_pipeline_folders_are_recognised_by_content_not_by_a_file_name(tmp_path):
    from hilt.flows.monitor import is_monitor_report_dir
    from hilt.flows.pipeline import is_pipeline_workdir

    folder = tmp_path / "mine"
    (folder / "steps").mkdir(parents=True)
    (folder / "report.json").write_text('{"quarter": "Q3"}')
    (folder / "last-run.json").write_text("[]")
    assert not is_monitor_report_dir(folder) and not is_pipeline_workdir(folder)
    (folder / "report.json").write_text('{"capture": "c", "counts": {}, "gates": []}')
    (folder / "last-run.json").write_text('{"pipeline": "p", "steps": []}')
    assert is_monitor_report_dir(folder) and is_pipeline_workdir(folder)


def test_monitor_report_leaves_a_folder_with_someone_elses_report_json_alone(hilt_exe, tmp_path):
    from traffic import capture, steady_traffic, write_baseline

    folder = tmp_path / "quarterly"
    folder.mkdir()
    (folder / "report.json").write_text('{"quarter": "Q3"}')
    cap = capture(tmp_path / "cap", steady_traffic(10))
    result = run_hilt(hilt_exe, "monitor", "report", "--capture", str(cap), "--baseline",
                      str(write_baseline(tmp_path / "data")), "--out", str(folder))
    assert result.returncode == 2 and "already holds files hilt did not write" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]
    assert (folder / "report.json").read_text() == '{"quarter": "Q3"}'


@pytest.mark.parametrize("manifest, message", [
    (b'{"recipe": {"name": "r"', "not readable JSON"),
    (b"", "not readable JSON"),
    (b"\xff\xfe{}", "not readable JSON"),
    (b"[1, 2]", "holds a list"),
    (b'{"metrics": [1, 2]}', "'metrics' is a list"),
])
def test_register_with_a_broken_hilt_json_is_one_line(capsys, tiny_model_dir, tmp_path, manifest, message):
    """Each of these was a traceback in `package register` (issue 33, tracebacks)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "hilt.json").write_bytes(manifest)
    args = ["package", "register", "--group", "hilt-assistant", "--model-dir", str(model), "--image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:1", "--model-data-url", "s3://b/model.tar.gz",
            "--out", str(tmp_path / "register.json")]
    code, _, err = hilt(capsys, *args)
    assert code == 2 and message in one_line_error(err)
    assert not (tmp_path / "register.json").exists()


@pytest.mark.parametrize("evaluation, message", [(b"[]", "holds a list"), (b"{", "not readable JSON")])
def test_register_with_a_broken_eval_json_is_one_line(capsys, tiny_model_dir, tmp_path, evaluation, message):
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "eval.json").write_bytes(evaluation)
    args = ["package", "register", "--group", "hilt-assistant", "--model-dir", str(tiny_model_dir), "--image",
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:1", "--model-data-url", "s3://b/model.tar.gz",
            "--eval-dir", str(tmp_path / "eval"), "--out", str(tmp_path / "register.json")]
    code, _, err = hilt(capsys, *args)
    assert code == 2 and message in one_line_error(err)


# ------------------------------------------------------------------ data capture under faults (issue 33 items 1-3)


def _events(folder: Path) -> list:
    from hilt.serving.capture import read_capture

    return read_capture(str(folder))[0]


def _until(predicate, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _body(i: int, size: int = 0) -> bytes:
    return json.dumps({"inputs": f"request {i} " + "x" * size}).encode()


def test_capture_writer_survives_write_errors_and_holds_events_until_the_disk_is_back(tmp_path, monkeypatch, capsys):
    """One ENOSPC killed the writer thread for good: every later event lost, nothing logged (issue 33 item 1)."""
    from hilt.serving import capture as capture_module

    real_write, full = capture_module.os.write, threading.Event()

    def write(fd, data):
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(capture_module.os, "write", write)
    writer = capture_module.DataCapture(tmp_path / "cap", rotate_seconds=0.3)
    for i in range(3):
        writer.record(_body(i), "application/json", b'{"generated_text": "ok"}', "application/json")
    _until(lambda: writer.status()["captured"] == 3)
    full.set()
    for i in range(3, 8):
        writer.record(_body(i), "application/json", b'{"generated_text": "ok"}', "application/json")
    _until(lambda: writer.status()["held"] == 5 and writer.status()["failing"])
    assert "No space left on device" in writer.status()["failing"]
    assert "data capture: cannot write under" in capsys.readouterr().err  # logged, once
    full.clear()
    _until(lambda: writer.status()["held"] == 0)
    for i in range(8, 10):
        writer.record(_body(i), "application/json", b'{"generated_text": "ok"}', "application/json")
    writer.close()
    assert writer.status() == {"captured": 10, "dropped": 0, "held": 0, "recovered": 0, "failing": None}
    assert "writing again" in capsys.readouterr().err
    assert sorted(json.loads(e.request)["inputs"] for e in _events(tmp_path / "cap")) == sorted(
        f"request {i} " for i in range(10))


def test_capture_keeps_the_lines_of_a_file_whose_folder_was_removed_while_serving(tmp_path):
    """Removing the hour folder under an open capture file lost it at rename, then stopped the writer."""
    import shutil

    from hilt.serving.capture import DataCapture

    writer = DataCapture(tmp_path / "cap", rotate_seconds=3600)
    for i in range(3):
        writer.record(_body(i), "application/json", b"{}", "application/json")
    _until(lambda: list((tmp_path / "cap").rglob(".*.part")) and writer.status()["held"] == 0)
    (hour,) = {p.parent for p in (tmp_path / "cap").rglob(".*.part")}
    shutil.rmtree(hour)
    for i in range(3, 5):
        writer.record(_body(i), "application/json", b"{}", "application/json")
    writer.close()
    assert writer.status()["captured"] == 5 and writer.status()["dropped"] == 0
    assert len(_events(tmp_path / "cap")) == 5 and not list((tmp_path / "cap").rglob(".*.part"))


def test_capture_on_a_real_full_disk_resumes_when_space_returns(tmp_path):
    """The issue's repro: a 64 KiB tmpfs fills; after it is grown, capture goes on and nothing is lost."""
    from hilt.serving.capture import DataCapture

    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        writer = DataCapture(mount / "cap", rotate_seconds=0.5)
        for i in range(40):
            writer.record(_body(i, 4500), "application/json", b'{"generated_text": "ok"}', "application/json")
        _until(lambda: writer.status()["failing"] is not None)
        assert "No space left on device" in writer.status()["failing"]
        subprocess.run(["mount", "-o", "remount,size=10m", str(mount)], check=True)
        for i in range(40, 60):
            writer.record(_body(i, 4500), "application/json", b'{"generated_text": "ok"}', "application/json")
        writer.close(timeout=120)
        assert writer.status()["failing"] is None and writer.status()["dropped"] == 0
        events = _events(mount / "cap")
        assert sorted(int(json.loads(e.request)["inputs"].split()[1]) for e in events) == list(range(60))
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def test_an_unwritable_capture_folder_is_refused_at_start(tmp_path, monkeypatch):
    from hilt.serving.capture import DataCapture

    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "hilt-serve").write_text("not a folder")  # the endpoint's folder cannot be made
    monkeypatch.setenv("HILT_DATA_CAPTURE_DIR", str(blocked))
    with pytest.raises(UserError, match=r"HILT_DATA_CAPTURE_DIR=.*: cannot write .*; choose a writable folder"):
        DataCapture.from_env()
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    if os.geteuid() != 0:
        readonly.chmod(0o500)
    elif subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(readonly)],
                        capture_output=True).returncode != 0:
        return  # root without mount: permissions do not bind root
    try:
        monkeypatch.setenv("HILT_DATA_CAPTURE_DIR", str(readonly))
        with pytest.raises(UserError, match="cannot write"):
            DataCapture.from_env()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(readonly)])


KILLED_WRITER = """
import os, signal, sys, time
from hilt.serving.capture import DataCapture
writer = DataCapture(sys.argv[1], rotate_seconds=3600)
for i in range(10):
    writer.record(('{"inputs": "request %d"}' % i).encode(), "application/json", b"{}", "application/json")
while writer.status()["held"] or writer._queue.qsize():
    time.sleep(0.05)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_capture_of_a_killed_server_is_readable_and_published_by_the_next(tmp_path):
    """kill -9 hid up to a minute of capture in a .part file nothing read (issue 33 item 2)."""
    import sys

    from hilt.serving.capture import DataCapture, read_capture

    cap = tmp_path / "cap"
    result = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(cap)], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    (part,) = cap.rglob(".*.jsonl.part")
    with part.open("ab") as handle:  # killed in the middle of a line
        handle.write(b'{"captureData": {"endpointInput": {"da')
    events, counts = read_capture(str(cap))  # monitor report reads it before any restart
    assert len(events) == 10 and counts["unreadable_lines"] == 0
    writer = DataCapture(cap)  # the next server publishes it, cut after its last whole line
    writer.close()
    assert writer.status()["recovered"] == 10
    assert not list(cap.rglob(".*.part")) and len(list(cap.rglob("*.jsonl"))) == 1
    assert sorted(json.loads(e.request)["inputs"] for e in _events(cap)) == sorted(f"request {i}" for i in range(10))


def test_capture_recovery_leaves_a_live_servers_file_alone(tmp_path):
    from hilt.serving.capture import DataCapture

    live = DataCapture(tmp_path / "cap", rotate_seconds=3600)
    live.record(_body(1), "application/json", b"{}", "application/json")
    _until(lambda: list((tmp_path / "cap").rglob(".*.part")) and live.status()["held"] == 0)
    second = DataCapture(tmp_path / "cap")
    second.close()
    assert second.status()["recovered"] == 0 and list((tmp_path / "cap").rglob(".*.part"))
    live.close()
    assert len(_events(tmp_path / "cap")) == 1 and not list((tmp_path / "cap").rglob(".*.part"))


@pytest.mark.slow
def test_streams_whose_client_left_are_captured_and_a_shutdown_says_why_it_cut(long_model_dir, tmp_path):
    """A dropped stream was billed (its metering header had gone out) but never captured (issue 33 item 3);
    a stream cut by SIGTERM ended with finish_reason "length", blaming the request."""
    import http.client
    from urllib.parse import urlparse

    cap = tmp_path / "cap"
    proc, url = _serve(long_model_dir, tmp_path / "ml", HILT_DATA_CAPTURE_DIR=cap)
    target = urlparse(url)

    def open_stream(body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
        connection.request("POST", "/invocations", body=json.dumps(body),
                           headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
        return connection, connection.getresponse()

    chat = {"messages": [{"role": "user", "content": "go"}], "max_tokens": 4000, "stream": True}
    try:
        for i in range(5):
            connection, response = open_stream({**chat, "seed": i})
            assert response.status == 200 and "inference.count" in response.getheader("X-Amzn-Inference-Metering")
            for _ in range(4):
                response.readline()
            connection.sock.close()  # the client leaves mid-stream
            connection.close()
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as answer:
            assert json.loads(answer.read())["data_capture"]["failing"] is None
        _until(lambda: len(_events(cap)) == 5, 30)  # readable while serving (the open file's whole lines)
        connection, response = open_stream(chat)
        response.readline()
        proc.send_signal(signal.SIGTERM)
        rest = response.read().decode()
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    frames = [json.loads(line[6:]) for line in rest.splitlines() if line.startswith("data: {")]
    assert frames[-1]["error"]["type"] == "server_shutdown" and "[DONE]" not in rest
    assert not any(c["finish_reason"] for f in frames[:-1] for c in f.get("choices", []))
    events = _events(cap)
    assert len(events) == 6 and all(e.response_type == "text/event-stream" for e in events)
    assert all('"role": "assistant"' in e.response for e in events)


# ------------------------------------------------------------------ training jobs: removed folders, named files


def test_a_job_folder_removed_while_it_runs_is_not_made_again_for_its_failure(tiny_model_dir, tmp_path):
    """A step folder removed mid-run got back a lone output/failure without the tree's marker, and every
    rerun was refused until the folder was removed by hand (issue 33 item 7)."""
    import shutil

    from hilt.training.run.entry import prepare_local_tree, run_job

    data = write_uppercase_dataset(tmp_path / "data", 8, 2)
    job = tmp_path / "steps" / "train-0123" / "job"
    opt_ml = prepare_local_tree(job, "quickstart-tiny-sft", data, tiny_model_dir, {"train.max_steps": "1"})
    shutil.rmtree(tmp_path / "steps" / "train-0123")
    assert run_job(opt_ml) == 2
    assert not job.exists()  # nothing made again for the failure
    again = prepare_local_tree(job, "quickstart-tiny-sft", data, tiny_model_dir, {"train.max_steps": "1"})
    assert again.hyperparameters_file.is_file()


def test_train_data_errors_name_the_file_given_to_data_not_the_jobs_link(capsys, tiny_model_dir, tmp_path):
    """`hilt train` named OUTPUT/input/data/train/data.jsonl, a link the user never made (issue 33 item 10)."""
    data = write_uppercase_dataset(tmp_path / "data", 8, 2)
    with (data / "train" / "data.jsonl").open("a") as handle:
        handle.write("{not json\n")
    code, _, err = hilt(capsys, "train", "quickstart-tiny-sft", "--data", str(data), "--model", str(tiny_model_dir),
                        "--output", str(tmp_path / "run"), "--set", "train.max_steps=1")
    line = one_line_error(err)
    assert code == 2 and f"{(data / 'train' / 'data.jsonl').resolve()}:9: not valid JSON" in line, err[-600:]
    assert "input/data" not in line
