"""Loading a saved model for inference, and greedy answers from it.

``load_model`` is the one loader of a model to answer with: evaluation, drafts for
annotators, the human side-by-side and the inference server (``hilt.serving.backend``) all
use it, so a model is evaluated in the dtype and on the device it is served with.
"""

from __future__ import annotations

from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.layout import require_model_dir


def inference_dtype():
    """bfloat16 on a GPU that has it, else float32 (a bf16 checkpoint on CPU is upcast: CPU bf16
    matmuls are slow and less exact)."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def load_model(model_dir: str | Path, require_chat_template: bool = True):
    """(model, tokenizer) from a ``save_pretrained`` dir, in eval mode, on the GPU when there is one.

    Args:
        require_chat_template: refuse a tokenizer without one (prompts are rendered with it);
            the server answers such a model with the plain text of the messages instead.

    Raises:
        UserError: when the dir holds no model, or (if required) its tokenizer has no chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    require_model_dir(model_dir, hint="pass a save_pretrained model directory (a job's model/)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if require_chat_template and tokenizer.chat_template is None:
        raise UserError(f"{model_dir}: the tokenizer has no chat template; prompts are rendered with it")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=inference_dtype())
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, tokenizer


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
    model, tokenizer = load_model(model_dir)
    return generate_answers(model, tokenizer, conversations, max_new_tokens, batch_size)


def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16,
                     desc: str = "generating") -> list[str]:
    """Greedy answers, left-padded batches, special tokens dropped."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch", leave=False):
        chunk = prompts[start:start + batch_size]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chunk]
        inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id)
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip()
                    for row in output[:, inputs["input_ids"].shape[1]:]]
    return answers
