"""``hilt inspect-data``: see exactly which tokens a recipe trains on.

Like axolotl's ``preprocess --debug``: each sample is tokenized with the model's chat
template and printed token by token; tokens that count toward the loss are shown in
``[[double brackets]]`` (and green on a terminal), the rest plain.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hilt.core.errors import UserError
from hilt.training.data.records import read_channel
from hilt.training.base.methods import method_of
from hilt.training.base.recipe import Recipe


def loss_mask(tokenizer, record: dict, recipe: Recipe) -> tuple[list[int], list[int]]:
    """Token ids of one record and a 0/1 mask of the tokens in the loss (the same masks training uses)."""
    if method_of(recipe.method).record_kind == "sft":
        from hilt.training.data.chat_masks import encode_conversation

        encoded = encode_conversation(tokenizer, record["messages"], recipe.data.max_length,
                                      recipe.data.assistant_only_loss, recipe.data.assistant_turns == "last")
        return encoded.input_ids, encoded.mask
    answer = record["chosen"] if "chosen" in record else record["completion"]  # preference / unpaired
    prompt = tokenizer.apply_chat_template(record["prompt"], tokenize=True, add_generation_prompt=True, return_dict=True)
    full = tokenizer.apply_chat_template(record["prompt"] + answer, tokenize=True, return_dict=True)
    ids, n_prompt = list(full["input_ids"]), len(prompt["input_ids"])
    return ids, [0] * n_prompt + [1] * (len(ids) - n_prompt)


def render(tokenizer, ids: list[int], mask: list[int], color: bool) -> str:
    pieces = []
    for token_id, in_loss in zip(ids, mask):
        text = tokenizer.decode([token_id])
        if in_loss:
            pieces.append(f"\033[92m[[{text}]]\033[0m" if color else f"[[{text}]]")
        else:
            pieces.append(text)
    return "".join(pieces)


def inspect_data(recipe: Recipe, data: Path, model: Path | None, samples: int) -> None:
    """Print ``samples`` tokenized records of the train channel with loss tokens marked."""
    from transformers import AutoTokenizer

    source = str(model) if model else recipe.model.name_or_path
    if not source:
        raise UserError("no tokenizer: pass --model DIR or set model.name_or_path in the recipe")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if not tokenizer.chat_template:
        raise UserError(f"{source}: the tokenizer has no chat template; save one with the model "
                        "(tokenizer.chat_template) so conversations can be rendered")
    train = data / "train" if (data / "train").is_dir() else data
    records, files = read_channel(train, recipe.method)
    for info in files:
        print(f"--- {info['file']}: format {info['format']}, {info['records']} records ---")
    color = sys.stdout.isatty()
    total = counted = 0
    for index, record in enumerate(records[:samples]):
        ids, mask = loss_mask(tokenizer, record, recipe)
        total, counted = total + len(ids), counted + sum(mask)
        print(f"--- sample {index}: {len(ids)} tokens, {sum(mask)} in the loss ---")
        print(render(tokenizer, ids, mask, color))
    print(f"--- {counted} of {total} tokens ({counted / max(total, 1):.1%}) count toward the loss; "
          f"{len(records)} records in {train} ---")
