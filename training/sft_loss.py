"""SFT's token loss on CPU, where TRL's Triton kernel does not run: only the positions that count.

TRL's SFTTrainer computes the loss through a fused LM head (``trl.trainer.utils
.add_fused_lm_head``). On CUDA and XPU its Triton kernel scores only the positions whose
next-token label counts, a vocabulary tile at a time; hilt leaves it there. On CPU it scores every
position, prompt and padding included, and folds each tile into its online-logsumexp
statistics with ~15 separate torch passes forward and again backward: on the benchmark's
4,096-token step (vocabulary 512) that is ~96 ms of a ~650 ms step, and 2.6 s for 2,048
tokens at a 32,000-token vocabulary.

Here the model's own forward projects only the positions whose next-token label counts
(``logits_to_keep`` with a boolean ``[batch, seq]`` mask, which transformers' causal LMs
take for packed training), so the family's own head code applies (Gemma's final logit
soft-capping, a logit scale), and the loss is one ``log_softmax`` and a gather; entropy and
top-1 accuracy, which TRL logs, come from the same log-probabilities without gradient.
~17 ms for the benchmark's step, 0.95 s for the 32,000-token case. Same loss and gradients
as TRL's head (tested per architecture).

It materialises the counted positions' logits (twice: the logits and their
log-probabilities). Above :data:`MAX_LOGITS` elements, and wherever TRL's loss differs from
plain next-token likelihood (a ``compute_loss_func``, label smoothing, another
``loss_type``, a MoE auxiliary loss, sequence parallelism) or returns outputs (evaluation's
``prediction_step``), TRL's own ``compute_loss`` runs.
"""

from __future__ import annotations

import functools

import torch

# Counted positions x vocabulary above which TRL's chunked head runs instead (its memory
# stays at one tile): 2**27 float32 logits are 512 MiB, and the log-probabilities as much.
MAX_LOGITS = 2**27


def applies(trainer, inputs: dict, vocab_size: int) -> bool:
    """Whether :func:`next_token_loss` computes what TRL's ``compute_loss`` would here."""
    labels = inputs.get("labels")
    if labels is None or labels.device.type != "cpu":
        return False
    if "attention_mask" not in inputs and "position_ids" not in inputs:
        return False  # TRL's compute_loss raises for this (no token count); let it
    parallelism = getattr(trainer.accelerator, "parallelism_config", None)
    if parallelism is not None and getattr(parallelism, "sp_enabled", False):
        return False
    if (trainer.compute_loss_func is not None or trainer.label_smoother is not None
            or getattr(trainer.args, "loss_type", None) != "nll" or getattr(trainer, "aux_loss_enabled", True)):
        return False
    if not all(hasattr(trainer, name) for name in ("_metrics", "_total_train_tokens", "_tp_size")):
        return False  # the metric bookkeeping of another TRL version: its own compute_loss keeps it
    return int((labels[:, 1:] != -100).sum()) * vocab_size <= MAX_LOGITS


def next_token_loss(model, inputs: dict, num_items_in_batch=None):
    """Mean negative log-likelihood of the counted next-token labels, and what TRL logs.

    Returns:
        (loss, counted, entropy_sum, correct): the loss divides by ``num_items_in_batch``
        when given (the Trainer's count over gradient accumulation), else by ``counted``.
    """
    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]
    forward = {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False, "logits_to_keep": keep}
    logits = model(**forward).logits  # [counted, vocab]
    log_probs = logits.float().log_softmax(-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    counted = keep.sum()
    denominator = counted if num_items_in_batch is None else num_items_in_batch
    loss = -picked.sum() / torch.as_tensor(denominator).clamp(min=1)
    with torch.no_grad():
        entropy_sum = -(log_probs.exp() * log_probs).sum()
        correct = (log_probs.argmax(-1) == targets).sum()
    return loss, counted, entropy_sum, correct


def compute_loss(trainer, model, inputs: dict, num_items_in_batch=None):
    """SFTTrainer.compute_loss's loss and metrics by :func:`next_token_loss`."""
    loss, counted, entropy_sum, correct = next_token_loss(model, inputs, num_items_in_batch)
    if trainer.args.average_tokens_across_devices and num_items_in_batch is not None:
        loss = loss * (trainer.accelerator.num_processes // trainer.get_tp_size())
    # The same metrics, gathered the same way, as TRL's compute_loss.
    gather = trainer.accelerator.gather_for_metrics
    mode = "train" if trainer.model.training else "eval"
    valid = gather(counted).sum()
    entropy = gather(entropy_sum).sum()
    hits = gather(correct).sum()
    trainer._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
    trainer._metrics[mode]["mean_token_accuracy"].append((hits / valid).item() if valid > 0 else 0.0)
    if mode == "train":
        if "attention_mask" in inputs:
            tokens = gather(inputs["attention_mask"].sum()).sum().item()
        else:
            position_ids = inputs["position_ids"]
            tokens = gather(torch.tensor(position_ids.size(1), device=position_ids.device)).sum().item()
        trainer._total_train_tokens += tokens // trainer._tp_size
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]
    return loss


@functools.cache
def trainer_class():
    """TRL's SFTTrainer with :func:`compute_loss` wherever :func:`applies` (one class per process)."""
    from trl import SFTTrainer

    class HiltSFTTrainer(SFTTrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weight = self.model.get_output_embeddings().weight
            vocab = getattr(weight, "ds_shape", weight.shape)[0]  # ZeRO-3 partitions hold none of it
            if return_outputs or not applies(self, inputs, vocab):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            return compute_loss(self, model, inputs, num_items_in_batch)

    return HiltSFTTrainer
