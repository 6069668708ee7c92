"""``hilt model tiny``: a tiny Llama + local tokenizer that load offline and generate."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from hilt.training.models.tiny_model import TinyModelSpec, build_tiny_model


def file_hashes(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def test_cli_builds_model_that_loads_and_generates(hilt_exe, tmp_path):
    out = tmp_path / "tiny"
    result = subprocess.run(
        [str(hilt_exe), "model", "tiny", "--out", str(out), "--layers", "2", "--hidden", "32"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    inputs = tokenizer("please order a laptop", return_tensors="pt")
    generated = model.generate(
        **inputs, max_new_tokens=8, min_new_tokens=8, do_sample=False
    )
    assert generated.shape[1] == inputs["input_ids"].shape[1] + 8


def test_tokenizer_round_trips_and_has_chatml_specials(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Book a Desk on FLOOR 3, please! émoji ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tokenizer(special)["input_ids"]) == 1, special
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token is not None
    # BPE trained on chat text: role names are single tokens, not spelled out.
    assert len(tokenizer("assistant")["input_ids"]) == 1


def test_chat_template_marks_assistant_tokens(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [
        {"role": "system", "content": "Be polite."},
        {"role": "user", "content": "reverse abc"},
        {"role": "assistant", "content": "cba"},
    ]
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = encoded["input_ids"], encoded["assistant_masks"]
    marked = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    # The assistant's content and its end-of-turn token are trained on; nothing else.
    assert marked == "cba<|im_end|>"
    prompt = tokenizer.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_build_is_deterministic_for_a_seed(tmp_path):
    spec = TinyModelSpec(hidden=32, seed=7)
    a = file_hashes(build_tiny_model(tmp_path / "a", spec))
    b = file_hashes(build_tiny_model(tmp_path / "b", spec))
    c = file_hashes(build_tiny_model(tmp_path / "c", TinyModelSpec(hidden=32, seed=8)))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]


def test_loading_needs_no_network(tiny_model_dir, monkeypatch):
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir)
    assert isinstance(model.model.embed_tokens.weight, torch.nn.Parameter)


@pytest.mark.parametrize("flags", [["--hidden", "64", "--heads", "3"], ["--heads", "4", "--kv-heads", "3"]])
def test_bad_shapes_are_user_errors(hilt_exe, tmp_path, flags):
    result = subprocess.run(
        [str(hilt_exe), "model", "tiny", "--out", str(tmp_path / "m"), *flags],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
