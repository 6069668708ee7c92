"""A tiny Llama-shaped causal LM and a locally trained tokenizer.

Nothing can be downloaded from a model hub here, so tests and the demo build a small
model that has the same shape and files as a real one (``config.json``,
``model.safetensors``, ``tokenizer.json``, a chat template) and load it with the very
same ``from_pretrained`` code that loads Llama-3-8B.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on chat-formatted text, so
role names and the ChatML markers are single tokens. Its chat template wraps each
assistant turn, ``<|im_end|>`` included, in ``{% generation %}`` markers: TRL needs them
for assistant-only loss (``return_assistant_tokens_mask``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# ChatML with generation markers around the assistant content *and* its <|im_end|>, so
# the model learns to stop; the newline after <|im_end|> stays outside the loss.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Words for the synthetic tokenizer corpus: everyday English plus the vocabulary of the
# demo scenario (an internal-process assistant at a financial firm), so BPE merges
# cover the text the demo trains on.
_WORDS = (
    "the a an and or of to in on for with by from at as is are was be been it this that "
    "you your we our they their i me my he she his her can could would should will please "
    "thank thanks hello hi help need want order laptop desk office room book booking "
    "meeting floor building badge access request ticket form manager approve approval "
    "client account advisor summary summarize conversation call notes portfolio risk "
    "fund bond equity market rate fee review policy process step first then next finally "
    "submit open close date time week day today tomorrow monday friday team it service "
    "portal system password reset travel expense report payment invoice question answer "
    "yes no not how what when where why which who upper lower reverse copy word letter "
    "text short long polite accurate internal external compliance document send email "
    "happy course problem use self-service sign again get calendar invite request room desk "
    "keyboard monitor docking station headset phone board called asked about follow-up up "
    "fees new insurance HR CRM trading app tool Ana Ben Chen Dara Eli Farah Gus Hana Lee Park "
    "Diaz Khan Novak Mrs. Mr. Ms. Dr. Of No Happy Open Book Use Please Can I"
).split()
_ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model. Defaults give ~0.1 M parameters that train in seconds."""

    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 128
    vocab_size: int = 512
    max_positions: int = 512
    seed: int = 0


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    """Chat-formatted synthetic text plus every printable ASCII character."""
    rng = random.Random(seed)
    texts = []
    for _ in range(lines):
        parts = []
        for role in _ROLES:
            content = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
            if rng.random() < 0.3:
                content = content.upper() if rng.random() < 0.5 else content.capitalize()
            if rng.random() < 0.3:
                content += rng.choice([".", "?", "!", ","])
            parts.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        texts.append("".join(parts))
    texts.append("".join(chr(c) for c in range(32, 127)))
    return texts


def build_tokenizer(spec: TinyModelSpec):
    """Train a byte-level BPE on the synthetic corpus and wrap it for ``transformers``.

    Args:
        spec: model shape; ``vocab_size`` and ``seed`` are used here.

    Returns:
        A ``PreTrainedTokenizerFast`` with ChatML special tokens and chat template.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_positions,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Build and ``save_pretrained`` a tiny Llama causal LM and its tokenizer.

    The result is deterministic for a given spec (same seed, same bytes) and loads
    offline with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Args:
        out_dir: directory to write; created if missing.
        spec: the model's shape and seed.

    Returns:
        The output directory.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec)
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)
    bos_id = tokenizer.convert_tokens_to_ids(BOS_TOKEN)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def copy_task_example(rng: random.Random, length: int = 4) -> list[dict]:
    """One chat turn of the warm-up task: repeat a random mixed-case word or a phrase.

    Letters teach character-level copying; phrases of corpus words make every common
    token something the model has learned to emit, so adapters can teach new tasks.
    """
    if rng.random() < 0.5:
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(length))
    else:
        text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))
        text = text[0].upper() + text[1:] + rng.choice([".", ",", ";", "?", ""])
    return [{"role": "user", "content": f"copy: {text}"}, {"role": "assistant", "content": text}]


def warm_up(model_dir: str | Path, steps: int, batch_size: int = 128, lr: float = 3e-3, seed: int = 0) -> float:
    """Give a random-init tiny model a little full fine-tuning on a copy task, in place.

    LoRA on a randomly initialised base does not learn: frozen random embeddings and
    head cap the logits. A short full fine-tune on copying words makes the base a
    "pretrained" model that adapters can then teach new tasks (uppercase, reverse),
    the way LoRA is used on real models.

    Returns:
        The final training loss.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    loss_value = float("nan")
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="warm-up (copy task)", unit="step"):
        batch = [
            tokenizer.apply_chat_template(
                copy_task_example(rng), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            for _ in range(batch_size)
        ]
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        attention = torch.zeros((batch_size, width), dtype=torch.long)
        for row, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[row, :n] = torch.tensor(b["input_ids"])
            attention[row, :n] = 1
            mask = torch.tensor(b["assistant_masks"], dtype=torch.bool)
            labels[row, :n] = torch.where(mask, ids[row, :n], torch.tensor(-100))
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
    model.save_pretrained(model_dir)
    return loss_value
