"""Supervised fine-tuning on TRL's SFTTrainer: LoRA, QLoRA or full weights.

Reads top to bottom: data -> arguments -> model -> train (resuming) -> save. Runs in
every worker process; artifacts.py finishes the model directory afterwards.
"""

from __future__ import annotations

from training import build
from training.callbacks import MetricsLogger, StopOnSigterm, latest_checkpoint
from training.data import load_dataset
from training.job import Job
from training.trained import TrainOutcome, save_trained


def train_sft(job: Job) -> TrainOutcome:
    from trl import SFTConfig, SFTTrainer

    recipe = job.recipe
    # Data: conversational records; TRL applies the chat template and builds the
    # assistant mask from its {% generation %} markers.
    train_ds = load_dataset(job.channels["train"], "sft")
    eval_ds = load_dataset(job.channels["validation"], "sft") if "validation" in job.channels else None

    # Arguments before the model: with ZeRO-3 they decide how the weights are loaded.
    args = SFTConfig(
        **build.training_arguments(job),
        max_length=recipe.data.max_length,
        packing=recipe.data.packing,
        # Best-fit-decreasing packing is padding-free: one row per pack, position ids
        # restart at each sequence so attention never crosses a boundary.
        packing_strategy="bfd",
        padding_free=recipe.data.packing,
        assistant_only_loss=recipe.data.assistant_only_loss,
        eval_packing=False,
        dataset_num_proc=None,
    )
    tokenizer = build.load_tokenizer(job)
    model = build.load_model(job)

    stopper = StopOnSigterm()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=build.lora_config(job),
        callbacks=[MetricsLogger(), stopper],
    )
    if trainer.is_world_process_zero():
        print(build.describe_backend(trainer), flush=True)
    resume = latest_checkpoint(job.opt_ml.checkpoint_dir)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return save_trained(job, trainer, tokenizer, stopper, resumed_from=resume)
