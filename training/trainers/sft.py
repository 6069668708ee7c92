"""Supervised fine-tuning on TRL's SFTTrainer: LoRA, QLoRA or full weights.

Reads top to bottom: data -> arguments -> model -> train (resuming) -> save. Runs in
every worker process; artifacts.py finishes the model directory afterwards.
"""

from __future__ import annotations

from hilt.training.trainers import build
from hilt.training.base import stopping
from hilt.training.data.records import load_dataset
from hilt.training.base.job import Job
from hilt.training.trainers.trainer import TrainOutcome, make_trainer, train_and_save


def with_self_replay(job: Job, train_ds):
    """The training records plus the base model's own answers to general prompts (``data.self_replay``),
    also written to output/data/self-replay.jsonl so hilt.json can say what was mixed in."""
    import json

    from datasets import Dataset

    from hilt.training.evaluation.general import REPLAY_FILE, replay_count, self_replay_records

    count = replay_count(job.recipe.data.self_replay, len(train_ds))
    records, origin = self_replay_records(job.model_path, count)
    print(f"[hilt] self_replay={len(records)} base-model answers to general prompts ({origin}) mixed into "
          f"{len(train_ds)} training records", flush=True)
    out = job.opt_ml.output_data_dir / REPLAY_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return Dataset.from_list(train_ds.to_list() + records) if records else train_ds


def build_sft_trainer(job: Job):
    """The SFTTrainer hilt runs for a job (also used by scripts/bench_train.py).

    Returns:
        (trainer, tokenizer, stopper): the stopper turns SIGTERM into a checkpoint.
    """
    from trl import SFTConfig

    from hilt.training.kernels import sft_loss

    recipe = job.recipe
    # Data: conversational records, chat-templated here with the model's own template; the
    # loss mask covers every assistant turn and its end-of-turn token, for templates with
    # or without {% generation %} markers (training/data/chat_masks.py). A record with nothing
    # to learn is a user error before the first step.
    stopping.enter("data")
    train_ds = load_dataset(job.channels["train"], "sft")
    if recipe.data.self_replay:
        train_ds = with_self_replay(job, train_ds)
    eval_ds = load_dataset(job.channels["validation"], "sft", "validation") if "validation" in job.channels else None
    tokenizer = build.load_tokenizer(job)

    from hilt.training.data.packing import LengthGroupCollator, PackedRowCollator, pack_rows, tokenize_conversations

    def tokenize(dataset, split):
        return tokenize_conversations(dataset, tokenizer, recipe.data.max_length, recipe.data.assistant_only_loss,
                                      split, last_turn_only=recipe.data.assistant_turns == "last")

    train_ds = tokenize(train_ds, "train")
    eval_ds = tokenize(eval_ds, "validation") if eval_ds is not None else None

    # Packing: flash attention reads sequence boundaries from cu_seq_lens, so TRL's
    # padding-free batches suit it; kernels without varlen support get packed rows instead
    # (training/data/packing.py). On sdpa a step's sequences are laid out as length groups and
    # attended one group at a time (training/kernels/segment_attention.py); on eager the rows keep
    # per-row block-diagonal masks.
    packing = recipe.data.packing
    varlen = build.resolve_attention(job) == "flash_attention_2"
    attention = build.training_attention(job)  # reads the model's config: once
    rows = packing and not varlen
    collator = None
    if rows:
        train_ds = pack_rows(train_ds, recipe.data.max_length)
        eval_ds = pack_rows(eval_ds, recipe.data.max_length) if eval_ds is not None else None
        grouped = attention == "hilt_segments"
        collator = (LengthGroupCollator if grouped else PackedRowCollator)(tokenizer.pad_token_id)
    else:
        # TRL builds labels from an "assistant_masks" column of a tokenized dataset.
        train_ds = train_ds.rename_column("loss_mask", "assistant_masks")
        eval_ds = eval_ds.rename_column("loss_mask", "assistant_masks") if eval_ds is not None else None

    # Arguments before the model: with ZeRO-3 they decide how the weights are loaded.
    args = SFTConfig(
        **build.training_arguments(job),
        max_length=recipe.data.max_length,
        packing=packing and varlen,
        packing_strategy="bfd",
        padding_free=packing and varlen,
        # The masks are ours (any template); TRL must not swap in its own template.
        assistant_only_loss=False,
        eval_packing=packing and varlen,
        dataset_num_proc=None,
        # Packed rows arrive tokenized, with columns the model does not take by name.
        dataset_kwargs={"skip_prepare_dataset": True} if rows else None,
        remove_unused_columns=not rows,
        # Rows of similar length share a batch, so the few short rows BFD leaves over
        # do not pad full ones.
        train_sampling_strategy="group_by_length" if rows else "random",
    )
    # SFTTrainer with hilt's loss on CPU (training/kernels/sft_loss.py), TRL's elsewhere.
    trainer, stopper = make_trainer(job, sft_loss.trainer_class(), args, train_ds, eval_ds, tokenizer,
                                    data_collator=collator)
    if trainer.is_world_process_zero():
        mode = ("padding-free (varlen)" if varlen else "off") if not rows else (
            "rows (length groups, one sequence at a time)" if attention == "hilt_segments"
            else "rows (per-row block-diagonal masks)")
        loss = "tiled head on counted positions (hilt)" if trainer.args.device.type == "cpu" else "fused head (TRL)"
        print(f"[hilt] packing={mode} attention={attention} loss={loss} "
              f"train_rows={len(train_ds)}", flush=True)
    return trainer, tokenizer, stopper


def train_sft(job: Job) -> TrainOutcome:
    """Train, resuming from the newest complete checkpoint, and save the result."""
    return train_and_save(job, *build_sft_trainer(job))
