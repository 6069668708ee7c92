"""Chat templates of the model families sellers tune, and tiny random models of their architectures.

The templates are written here, in each family's published format, without
``{% generation %}`` markers (none of the real ones has them): Llama 3, Mistral ``[INST]``
(system merged into the first user turn, ``</s>`` after each answer), Gemma (role
``model``, system merged into the first user turn, content trimmed), Phi-3, and ChatML
(Qwen) without markers, beside the tiny model's own marker template. Each goes onto the
tiny tokenizer with its special tokens added and the embeddings resized, and the result is
saved with ``save_pretrained`` and loaded back with ``from_pretrained`` like a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Family:
    name: str
    template: str | None  # None: the tiny model's own marker template
    special: tuple[str, ...] = ()
    bos: str | None = None
    eos: str | None = None  # the end-of-turn token generation stops at
    end_of_turn: str = ""  # what must be learned after each answer


LLAMA3 = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set system = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
GEMMA = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
PHI3 = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- else %}{{- eos_token }}{%- endif %}"
)
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

FAMILIES = {
    "llama3": Family("llama3", LLAMA3, ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                     bos="<|begin_of_text|>", eos="<|eot_id|>", end_of_turn="<|eot_id|>"),
    "mistral": Family("mistral", MISTRAL, ("<s>", "</s>", "[INST]", "[/INST]"), bos="<s>", eos="</s>",
                      end_of_turn="</s>"),
    "gemma": Family("gemma", GEMMA, ("<bos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>", eos="<end_of_turn>",
                    end_of_turn="<end_of_turn>"),
    "phi3": Family("phi3", PHI3, ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>"), eos="<|end|>",
                   end_of_turn="<|end|>"),
    "chatml": Family("chatml", CHATML, eos="<|im_end|>", end_of_turn="<|im_end|>"),
    "markers": Family("markers", None, eos="<|im_end|>", end_of_turn="<|im_end|>"),
}


def put_family_template(model_dir: Path, family: Family, out: Path) -> Path:
    """Copy a saved model with ``family``'s chat template and special tokens on its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if family.template is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": list(family.special)})
        tokenizer.chat_template = family.template
        if family.bos:
            tokenizer.bos_token = family.bos
        if family.eos:
            tokenizer.eos_token = family.eos
        model.resize_token_embeddings(len(tokenizer))
        eos_id = tokenizer.convert_tokens_to_ids(family.eos)
        model.config.eos_token_id = eos_id
        model.generation_config.eos_token_id = eos_id
        if family.bos:
            model.config.bos_token_id = model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


ARCHITECTURES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3_text", "phi3")


def build_architecture(model_type: str, tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A tiny random model of ``model_type`` from ``AutoConfig`` with the tiny tokenizer, saved."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False)
    if model_type.startswith("gemma"):
        config.sliding_window = 64  # gemma layers alternate global and sliding attention
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def loss_step(model, ids):
    """One forward and backward on ``ids`` as their own labels: (logits, loss, {name: grad})."""
    model.zero_grad()
    output = model(input_ids=ids, labels=ids)
    output.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return output.logits.detach(), output.loss.detach(), grads


def count_calls(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` with a wrapper that records each call; returns the record."""
    calls = []
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *args: calls.append(1) or original(*args))
    return calls
