"""What every method's trainer module does around its TRL trainer: ``make_trainer`` builds it with hilt's
callbacks, LoRA config and fused kernels; ``train_and_save`` runs ``trainer.train()`` (resuming from the
newest complete checkpoint) and saves the weights and the log history in the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hilt.core.layout import ADAPTER_DIR, LOG_HISTORY_FILE
from hilt.training.base.job import Job



@dataclass(frozen=True)
class TrainOutcome:
    """How training ended, as the launcher and the artifact writer need to know."""

    stopped_early: bool
    global_step: int
    resumed_from: Path | None


def make_trainer(job: Job, trainer_class, args, train_ds, eval_ds, tokenizer, **extra):
    """A TRL trainer for ``job`` with hilt's callbacks (metric lines, SIGTERM) and its LoRA config.

    Returns:
        (trainer, stopper): the stopper turns SIGTERM into a checkpoint at the step's end.
    """
    from hilt.training.trainers import build
    from hilt.training.base import stopping
    from hilt.training.trainers.callbacks import MetricsLogger, StopOnSigterm
    from hilt.training.kernels.host_memory import keep_freed_memory
    from hilt.training.base.tracking import tracking_callbacks

    # CPU steps reuse freed activations instead of faulting in fresh pages (host_memory.py).
    kept = not build.has_cuda() and keep_freed_memory()
    stopping.enter("model")
    model = build.load_base_model(job)
    stopper = StopOnSigterm()
    trainer = trainer_class(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=build.lora_config(job),
                            callbacks=[MetricsLogger(), stopper, *tracking_callbacks(job)], **extra)
    from hilt.training.kernels import fast_lora, fast_norm, fast_rope

    fused = fast_lora.install(trainer.model)  # PEFT LoRA linears as one autograd function each
    norms = fast_norm.install(trainer.model)  # RMSNorms likewise
    rotary = fast_rope.install(trainer.model)  # and rotary embeddings
    if trainer.is_world_process_zero():
        if fused:
            print(f"[hilt] lora=fused modules={fused}", flush=True)
        if norms:
            print(f"[hilt] rmsnorm=fused modules={norms}", flush=True)
        if rotary:
            print(f"[hilt] rotary=fused in={','.join(rotary)}", flush=True)
        if kept:
            print("[hilt] host_memory=kept (malloc keeps freed blocks: no page faults per step)", flush=True)
    return trainer, stopper


def train_and_save(job: Job, trainer, tokenizer, stopper) -> TrainOutcome:
    """Train (resuming from the newest complete checkpoint) and save: SFT, DPO and KTO alike."""
    from hilt.training.trainers.build import describe_backend
    from hilt.training.trainers.callbacks import latest_checkpoint

    from hilt.training.base import stopping

    if trainer.is_world_process_zero():
        print(describe_backend(trainer), flush=True)
    resume = latest_checkpoint(job.checkpoint_dir)
    with stopping.protected("train"):  # SIGTERM: checkpoint at the end of the step, then stop
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return save_trained(job, trainer, tokenizer, stopper, resumed_from=resume)


def save_trained(job: Job, trainer, tokenizer, stopper, resumed_from: Path | None) -> TrainOutcome:
    """Save the trained weights (every rank must take part) and the log history.

    LoRA runs save the adapter to ``/opt/ml/model/adapter``; full fine-tuning saves the
    weights at the root of ``/opt/ml/model``. A run stopped by SIGTERM saves them too (from
    the step it stopped at, beside that step's checkpoint, which a rerun resumes from);
    the entry point then marks the model partial. The weights are saved before the
    held-out evaluation, so a stop during evaluation still leaves them.
    """
    from hilt.training.base import stopping

    with stopping.protected("save"):
        target = job.opt_ml.model_dir
        if job.recipe.peft.method != "full":
            target = target / ADAPTER_DIR
        trainer.save_model(str(target))
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(str(target))
            _write_history(job, trainer)
    if stopper.stopped_at is not None:
        if trainer.is_world_process_zero():
            print(f"[hilt] stopped by SIGTERM at step={stopper.stopped_at}; checkpoint saved in "
                  f"{job.checkpoint_dir} (run again to resume), weights of that step in "
                  f"{job.opt_ml.model_dir}", flush=True)
        return TrainOutcome(True, stopper.stopped_at, resumed_from)
    if "validation" in job.channels:
        stopping.enter("evaluate")
        trainer.evaluate()
        if trainer.is_world_process_zero():
            with stopping.protected():
                _write_history(job, trainer)
    return TrainOutcome(False, trainer.state.global_step, resumed_from)


def _write_history(job: Job, trainer) -> None:
    job.opt_ml.output_data_dir.mkdir(parents=True, exist_ok=True)
    history = job.opt_ml.output_data_dir / LOG_HISTORY_FILE
    tmp = history.with_name(f".{history.name}.tmp")
    tmp.write_text(json.dumps(trainer.state.log_history, indent=1))
    tmp.replace(history)
