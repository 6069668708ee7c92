"""Methods that train against a frozen reference model: DPO (pairs) and KTO (single answers
marked desirable or not), on TRL's DPOTrainer and KTOTrainer.

With LoRA the reference model is the base with the adapter switched off, so only one copy
of the weights is in memory. Same shape as sft.py: data -> arguments -> model -> train
(resuming) -> save; the two methods differ only in their record kind and their trainer.
"""

from __future__ import annotations

from hilt.training.trainers import build
from hilt.training.base import stopping
from hilt.training.data.records import load_dataset
from hilt.training.base.job import Job
from hilt.training.trainers.trainer import TrainOutcome, make_trainer, train_and_save


def _train(job: Job, config_class, trainer_class, **method_args) -> TrainOutcome:
    recipe = job.recipe
    kind = job.method.record_kind
    stopping.enter("data")
    train_ds = load_dataset(job.channels["train"], kind)
    eval_ds = load_dataset(job.channels["validation"], kind, "validation") if "validation" in job.channels else None
    args = config_class(
        **build.training_arguments(job),
        max_length=recipe.data.max_length,
        dataset_num_proc=None,
        **method_args,
    )
    tokenizer = build.load_tokenizer(job)
    trainer, stopper = make_trainer(job, trainer_class, args, train_ds, eval_ds, tokenizer)
    return train_and_save(job, trainer, tokenizer, stopper)


def train_dpo(job: Job) -> TrainOutcome:
    """DPO on preference records (prompt / chosen / rejected)."""
    from trl import DPOConfig, DPOTrainer

    return _train(job, DPOConfig, DPOTrainer, beta=job.recipe.dpo.beta, loss_type=[job.recipe.dpo.loss_type])


def train_kto(job: Job) -> TrainOutcome:
    """KTO on unpaired records (prompt / completion / label: desirable or not)."""
    from trl import KTOConfig, KTOTrainer

    k = job.recipe.kto
    return _train(job, KTOConfig, KTOTrainer, beta=k.beta, desirable_weight=k.desirable_weight,
                  undesirable_weight=k.undesirable_weight)
