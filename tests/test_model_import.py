"""`hilt model import`: what it refuses, in one line and exit 2, leaving nothing behind.

The conversion itself is tested on the real model (tests/test_real_model.py); here each bad
source is a small GGUF written with the gguf package's own writer, or not a GGUF at all.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import run_hilt


def write_gguf(path: Path, arch: str = "llama") -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def refused(hilt_exe, src: Path, out: Path, match: str):
    result = run_hilt(hilt_exe, "model", "import", str(src), "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert match in lines[0], lines[0]
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, leftovers  # no staging folder left beside --out
    return lines[0]


def test_not_a_gguf_file(hilt_exe, tmp_path):
    src = tmp_path / "model.gguf"
    src.write_text("this is not a model\n")
    refused(hilt_exe, src, tmp_path / "out", "not a GGUF file")
    assert not (tmp_path / "out").exists()


def test_truncated_gguf(hilt_exe, tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size - 4000])
    refused(hilt_exe, cut, tmp_path / "out", "truncated")
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(whole.read_bytes()[:40])
    refused(hilt_exe, header_only, tmp_path / "out", "truncated or corrupt")


def test_architecture_transformers_cannot_read(hilt_exe, tmp_path):
    src = write_gguf(tmp_path / "rwkv.gguf", arch="rwkv6")
    line = refused(hilt_exe, src, tmp_path / "out", "architecture 'rwkv6' cannot be loaded from GGUF")
    assert "llama" in line  # says what can be read


def test_out_holding_other_files_is_left_alone(hilt_exe, tmp_path):
    src = write_gguf(tmp_path / "m.gguf")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(hilt_exe, src, out, "already holds files hilt did not write")
    assert (out / "notes.txt").read_text() == "mine" and [p.name for p in out.iterdir()] == ["notes.txt"]


def test_sources_with_no_or_several_ggufs(hilt_exe, tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    write_gguf(folder / "a.gguf")
    write_gguf(folder / "b.gguf")
    refused(hilt_exe, folder, tmp_path / "out", "holds 2 .gguf files")
    wheel = tmp_path / "empty-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("empty/__init__.py", "")
    refused(hilt_exe, wheel, tmp_path / "out", "holds no .gguf file")
    refused(hilt_exe, tmp_path / "missing.gguf", tmp_path / "out", "no such file or folder")


def test_gguf_reader_sees_what_the_writer_wrote(tmp_path):
    from hilt.training.models.model_import import read_gguf_header

    header = read_gguf_header(write_gguf(tmp_path / "m.gguf", "qwen2"), "m.gguf")
    assert header["architecture"] == "qwen2" and header["tensors"] == 1
    assert header["file_type"] == "ALL_F32" and header["tensor_types"] == {"F32": 1}


def test_a_full_disk_while_saving_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from hilt.core.errors import UserError
    from hilt.training.models import model_import

    def full_disk(*args, **kwargs):  # what safetensors raises when the device fills up mid-write
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(model_import, "convert", full_disk)
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no space left on the device"):
        model_import.import_gguf(write_gguf(tmp_path / "m.gguf"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]  # no --out, no staging folder
