"""Direct preference optimisation on TRL's DPOTrainer, from hil's preference records.

With LoRA the reference model is the base with the adapter switched off, so only one
copy of the weights is in memory. Same shape as sft.py: data -> arguments -> model ->
train (resuming) -> save.
"""

from __future__ import annotations

from training import build, stopping
from training.callbacks import MetricsLogger, StopOnSigterm
from training.data import load_dataset
from training.job import Job
from training.trained import TrainOutcome, train_and_save


def train_dpo(job: Job) -> TrainOutcome:
    from trl import DPOConfig, DPOTrainer

    recipe = job.recipe
    stopping.enter("data")
    train_ds = load_dataset(job.channels["train"], "dpo")
    eval_ds = load_dataset(job.channels["validation"], "dpo") if "validation" in job.channels else None

    args = DPOConfig(
        **build.training_arguments(job),
        max_length=recipe.data.max_length,
        beta=recipe.dpo.beta,
        loss_type=[recipe.dpo.loss_type],
        dataset_num_proc=None,
    )
    tokenizer = build.load_tokenizer(job)
    stopping.enter("model")
    model = build.load_model(job)

    stopper = StopOnSigterm()
    trainer = DPOTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=build.lora_config(job),
        callbacks=[MetricsLogger(), stopper],
    )
    return train_and_save(job, trainer, tokenizer, stopper)
