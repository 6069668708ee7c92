"""``hilt demo``: the main job end to end on embedded defaults.

Stages are added here as they land (Label Studio -> export -> train -> evaluate ->
package -> validate). Each step reuses what an earlier run already produced, so a
second run is fast.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(workdir: Path) -> int:
    """Run every stage that exists so far and print a summary table.

    Args:
        workdir: folder for the demo's files; reused across runs.

    Returns:
        The process exit code (0 on success).
    """
    from training.tiny_model import build_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str]] = []

    # 1. Base model: built locally, since nothing can be downloaded from a hub.
    model_dir = workdir / "base-model"
    started = time.perf_counter()
    if (model_dir / "config.json").exists():
        status = "reused"
    else:
        build_tiny_model(model_dir)
        status = "built"
    rows.append(("base model", f"{model_dir} ({status}, {time.perf_counter() - started:.1f}s)"))

    # 2. Load it back with the same code that loads a real model, and generate.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    messages = [{"role": "user", "content": "How do I order a new laptop?"}]
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1]:]
    rows.append(("parameters", f"{sum(p.numel() for p in model.parameters()):,}"))
    rows.append(("generated tokens", str(len(new_tokens))))
    rows.append(("sample (untrained)", repr(tokenizer.decode(new_tokens))[:60]))

    width = max(len(name) for name, _ in rows)
    print("\nhilt demo summary")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0
