"""Trainer callbacks: SageMaker-readable metric lines, and spot-safe stopping.

Metric lines look like ``[hilt] step=20 train_loss=1.2345 learning_rate=2.000e-04
tokens_per_second=812.3``. SageMaker reads metrics out of the job's log with regexes
(MetricDefinitions); ``METRIC_DEFINITIONS`` below are those regexes, kept next to the
code that prints the lines so the two cannot drift apart. The Algorithm and launch
requests import them from here.
"""

from __future__ import annotations

import time
from pathlib import Path

from transformers import TrainerCallback

_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
METRIC_DEFINITIONS = [
    {"Name": "train_loss", "Regex": rf"train_loss={_NUMBER}"},
    {"Name": "eval_loss", "Regex": rf"eval_loss={_NUMBER}"},
    {"Name": "learning_rate", "Regex": rf"learning_rate={_NUMBER}"},
    {"Name": "tokens_per_second", "Regex": rf"tokens_per_second={_NUMBER}"},
    {"Name": "epoch", "Regex": rf"epoch={_NUMBER}"},
    # Printed once after training, from the held-out scoring (hilt.training.evaluation.evaluate).
    {"Name": "eval_perplexity", "Regex": rf"eval_perplexity={_NUMBER}"},
    {"Name": "eval_exact_match", "Regex": rf"eval_exact_match={_NUMBER}"},
    {"Name": "eval_rougeL", "Regex": rf"eval_rougeL={_NUMBER}"},
]
# Metrics a tuning job may optimise, with their direction.
TUNING_OBJECTIVES = [
    {"Type": "Minimize", "MetricName": "eval_loss"},
    {"Type": "Minimize", "MetricName": "train_loss"},
]


def format_metrics(step: int, values: dict[str, float]) -> str:
    """One log line of ``name=value`` pairs that METRIC_DEFINITIONS parse back."""
    parts = [f"step={step}"]
    for name, value in values.items():
        parts.append(f"{name}={value:.6g}" if name != "learning_rate" else f"{name}={value:.3e}")
    return "[hilt] " + " ".join(parts)


def check_first_loss(step: int, logs: dict) -> None:
    """Stop a run whose first logged loss is exactly 0 with no gradient: it learns nothing.

    Raises:
        UserError: naming the step and the likely causes.
    """
    from hilt.core.errors import UserError

    loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
    if loss is not None and float(loss) == 0.0 and grad_norm is not None and float(grad_norm) == 0.0:
        raise UserError(f"train_loss is 0 and grad_norm is 0 at step {step}: no token is in the loss, so the model "
                        "learns nothing; check the loss mask with `hilt inspect-data` (chat template, "
                        "data.max_length, data.assistant_only_loss)")


# A pretrained base of this size or more is not a toy: a tiny model's learning rate ruins it.
PRETRAINED_PARAMETERS = 50_000_000
ADAPTER_LR_CEILING = 2e-3


def warn_learning_rate(learning_rate: float, frozen: int, adapter: bool) -> None:
    """One warning line when an adapter's learning rate is one made for the tiny random model
    (the quickstart's 5e-3) but the base is a real pretrained model: it learns the task by
    forgetting what it knew."""
    if adapter and frozen >= PRETRAINED_PARAMETERS and learning_rate >= ADAPTER_LR_CEILING:
        print(f"[hilt] warning: train.learning_rate={learning_rate:g} is a tiny random model's setting; this base has "
              f"{frozen / 1e6:.0f}M pretrained parameters, and LoRA on those wants 1e-4 to 5e-4 (the "
              "smollm2-135m-sft-lora recipe uses 5e-4), or it forgets what it knew: set --set "
              "train.learning_rate=5e-4", flush=True)


class MetricsLogger(TrainerCallback):
    """Print train/eval metrics in the MetricDefinitions format, on the main process only."""

    def __init__(self) -> None:
        self._last_time: float | None = None
        self._last_tokens = 0
        self._checked_first_loss = False

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = state.num_input_tokens_seen
        if state.is_world_process_zero and model is not None:
            checkpointing = getattr(model, "is_activation_checkpointing", None)
            if checkpointing is None:
                checkpointing = getattr(model, "is_gradient_checkpointing", False)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            print(f"[hilt] trainable_parameters={trainable} of {total} "
                  f"gradient_checkpointing={'on' if checkpointing else 'off'}", flush=True)
            warn_learning_rate(args.learning_rate, total - trainable, trainable < total)
        if state.is_world_process_zero and state.global_step:
            print(f"[hilt] resumed at step={state.global_step} of max_steps={state.max_steps}", flush=True)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs:
            return
        if "loss" in logs and not self._checked_first_loss:
            self._checked_first_loss = True
            check_first_loss(state.global_step, logs)
        if not state.is_world_process_zero:
            return
        values: dict[str, float] = {}
        if "loss" in logs:
            values["train_loss"] = float(logs["loss"])
            if "learning_rate" in logs:
                values["learning_rate"] = float(logs["learning_rate"])
            now = time.perf_counter()
            tokens = state.num_input_tokens_seen
            if self._last_time is not None and now > self._last_time and tokens > self._last_tokens:
                values["tokens_per_second"] = (tokens - self._last_tokens) / (now - self._last_time)
            self._last_time, self._last_tokens = now, tokens
        if "eval_loss" in logs:
            values["eval_loss"] = float(logs["eval_loss"])
        if values:
            values["epoch"] = float(state.epoch or 0.0)
            print(format_metrics(state.global_step, values), flush=True)


class StopOnSigterm(TrainerCallback):
    """On SIGTERM (spot interruption, StopTrainingJob): checkpoint at the next step and stop.

    The signal handler (hilt.training.base.stopping, installed when the job starts) only records
    the request while the loop runs; here, at the end of the step, every rank learns of it
    together and the checkpoint is written by all of them (a rank saving alone would hang
    the others in a collective).
    """

    def __init__(self) -> None:
        self.stopped_at: int | None = None

    @staticmethod
    def _any_rank_requested() -> bool:
        import torch
        import torch.distributed as dist

        from hilt.training.base import stopping

        if not (dist.is_available() and dist.is_initialized()):
            return stopping.requested()
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([1 if stopping.requested() else 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item():
            stopping.note_request()
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_requested():
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest *complete* ``checkpoint-N`` under the dir, or None.

    A checkpoint counts as complete once ``trainer_state.json`` in it parses: the Trainer
    writes that file after the weights and optimizer state, and not atomically, so a job
    killed while saving leaves a directory without it or with a truncated one (seen: an
    empty file after SIGKILL). Such a directory is skipped; training resumes from the one
    before and saves that step again.
    """
    import json

    if not checkpoint_dir.is_dir():
        return None
    complete = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        suffix = path.name.removeprefix("checkpoint-")
        if not suffix.isdigit():
            continue
        try:
            state = json.loads((path / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and "global_step" in state:
            complete.append((int(suffix), path))
    return max(complete)[1] if complete else None
