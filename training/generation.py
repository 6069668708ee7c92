"""Greedy answers from a saved model, for evaluation, tests and the demo."""

from __future__ import annotations

from pathlib import Path


def greedy_answers(model_dir: str | Path, conversations: list[list[dict]], max_new_tokens: int = 32,
                   batch_size: int = 32) -> list[str]:
    """Answer each conversation (messages up to the user's turn) with greedy decoding.

    Args:
        model_dir: a ``save_pretrained`` directory with a chat template.
        conversations: message lists ending with the turn to answer.
        max_new_tokens: cap on each answer.
        batch_size: prompts per ``generate`` call (left-padded).

    Returns:
        The decoded answers, without special tokens, in input order.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.eval()
    answers: list[str] = []
    for start in range(0, len(conversations), batch_size):
        chunk = conversations[start : start + batch_size]
        prompts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
        inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        new = output[:, inputs["input_ids"].shape[1]:]
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return answers
