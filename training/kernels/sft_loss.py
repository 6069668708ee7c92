"""SFT's token loss on CPU, where TRL's Triton kernel does not run: only the positions that count,
and the LM head a tile of rows at a time.

TRL's SFTTrainer computes the loss through a fused LM head (``trl.trainer.utils
.add_fused_lm_head``). On CUDA and XPU its Triton kernel scores only the positions whose
next-token label counts, a vocabulary tile at a time; hilt leaves it there. On CPU it scores every
position, prompt and padding included, and folds each tile into its online-logsumexp
statistics with ~15 separate torch passes forward and again backward: on the benchmark's
4,096-token step (vocabulary 512) that is ~96 ms of a ~650 ms step, and 2.6 s for 2,048
tokens at a 32,000-token vocabulary.

Here the model's own forward runs with ``logits_to_keep`` as a boolean ``[batch, seq]`` mask of the
positions whose next-token label counts (transformers' causal LMs take it for packed training),
so only those rows reach the LM head. A pre-hook on the head takes those rows and lets the head
project just :data:`PROBE_ROWS` of them; :class:`TiledHeadLoss` scores all of them a tile of rows
at a time (:data:`TILE_ELEMENTS` logits, under 32 MiB), making the gradients in the same pass, so no
``[tokens, vocabulary]`` tensor ever exists, forward or backward: at SmolLM2's vocabulary of
49,152 one full float32 tile of 4,096 tokens was 805 MB, mapped and faulted in afresh each
step. The probe rows check the tiled logits against the family's own head code every step;
where they differ (a head that does more than a linear layer and Gemma 2's soft-capping, which
is tiled too), the counted rows' logits are materialised through the model's own head instead,
up to :data:`MAX_LOGITS` elements. Entropy and top-1 accuracy, which TRL logs, come from the
same tiles. Same loss and gradients as TRL's head (tested per architecture).

Wherever TRL's loss differs from plain next-token likelihood (a ``compute_loss_func``, label
smoothing, another ``loss_type``, a MoE auxiliary loss, sequence parallelism), returns outputs
(evaluation's ``prediction_step``), or the head's weight is partitioned (DeepSpeed ZeRO-3), TRL's
own ``compute_loss`` runs.
"""

from __future__ import annotations

import functools
import weakref

import torch

# Counted positions x vocabulary above which a head that cannot be tiled leaves the loss to TRL's
# chunked head: 2**27 float32 logits are 512 MiB, and the log-probabilities as much.
MAX_LOGITS = 2**27
# Logits in one tile: just under 32 MiB of float32, glibc's largest mmap threshold, so a tile's memory
# comes back from the heap each time instead of being mapped and faulted in. Not smaller: the head's
# matmul of a tile runs at ~85 GFLOP/s with 85 rows of SmolLM2's 49,152 entries, ~125 with 170.
TILE_ELEMENTS = 2**23 - 2**16
# Rows the model's own head still projects each step, to check the tiled logits against.
PROBE_ROWS = 2
# Heads found to do more than (weight, bias, soft-cap): their logits are materialised.
_UNTILED: weakref.WeakSet = weakref.WeakSet()


class HeadNotTiled(Exception):
    """The head cannot be tiled and its logits are over :data:`MAX_LOGITS`: TRL's loss runs."""


def _unwrapped(model):
    """The model inside DistributedDataParallel or a DeepSpeed engine (which forward, but do not
    expose the model's attributes)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def tiled_head(model) -> torch.nn.Linear | None:
    """The model's output layer when :class:`TiledHeadLoss` can take its place, else None."""
    head = _unwrapped(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear or head in _UNTILED:  # a LoRA- or otherwise wrapped head: its own code
        return None
    if hasattr(head.weight, "ds_shape"):  # ZeRO-3: the weight is whole only inside the head's own forward
        return None
    return head


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
    if tiled_head(trainer.model) is not None:
        return True
    return int((labels[:, 1:] != -100).sum()) * vocab_size <= MAX_LOGITS


def _head_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 softcap: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float32 logits of ``hidden`` rows, and (soft-capped heads) the tanh the backward needs."""
    logits = hidden @ weight.T
    if bias is not None:
        logits += bias
    logits = logits.float()
    if not softcap:
        return logits, None
    squashed = torch.tanh(logits / softcap)
    return squashed * softcap, squashed


class TiledHeadLoss(torch.autograd.Function):
    """Summed negative log-likelihood of ``targets`` under ``hidden @ weight.T + bias`` (soft-capped
    when ``softcap``), a tile of rows at a time, with the entropy sum and top-1 hits TRL logs.

    The gradients are made in the forward pass, tile by tile, while the tile's probabilities
    are at hand (Liger's fused linear cross-entropy does the same on GPU): the backward only
    scales them, so nothing is recomputed and no ``[rows, vocabulary]`` tensor ever exists.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, softcap):
        rows, vocab = hidden.shape[0], weight.shape[0]
        tile = max(1, TILE_ELEMENTS // vocab)
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        want_bias = bias is not None and ctx.needs_input_grad[2]
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if want_weight else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32) if want_bias else None
        nll = torch.zeros((), dtype=torch.float64)
        entropy = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.long)
        for start in range(0, rows, tile):
            h, t = hidden[start:start + tile], targets[start:start + tile]
            logits, squashed = _head_logits(h, weight, bias, softcap)
            top, best = logits.max(-1, keepdim=True)  # the row maximum and top-1 in one pass
            correct += (best.squeeze(1) == t).sum()
            shifted = logits.sub_(top)  # in place: z - max, the tile's one logits buffer
            probs = shifted.exp()
            total = probs.sum(-1, keepdim=True)
            log_total = total.log()
            # log p[target] = (z - max)[target] - log(sum exp(z - max))
            nll -= (shifted.gather(1, t.unsqueeze(1)) - log_total).sum(dtype=torch.float64)
            probs.div_(total)
            # entropy = -sum p log p = sum over rows of log(total) - sum p (z - max)
            entropy += log_total.sum(dtype=torch.float64) - torch.dot(probs.view(-1), shifted.view(-1)).double()
            if not (want_hidden or want_weight or want_bias):
                continue
            grad = probs  # d(-log p[target]) / d logits = softmax - one-hot
            grad[torch.arange(len(t)), t] -= 1
            if squashed is not None:  # through softcap * tanh(logits / softcap)
                grad.mul_(1 - squashed * squashed)
            if want_hidden:
                grad_hidden[start:start + tile] = grad.to(weight.dtype) @ weight
            if want_weight:
                grad_weight.addmm_(grad.T, h.float())
            if want_bias:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(entropy, correct)
        return nll.float(), entropy.float(), correct

    @staticmethod
    def backward(ctx, grad_nll, _entropy, _correct):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype = ctx.dtypes
        return (None if grad_hidden is None else grad_hidden * grad_nll.to(grad_hidden.dtype),
                None if grad_weight is None else (grad_weight * grad_nll).to(weight_dtype),
                None if grad_bias is None else (grad_bias * grad_nll).to(bias_dtype),
                None, None)


def _tiled(model, config, head: torch.nn.Linear, forward: dict, targets: torch.Tensor):
    """(summed NLL, entropy sum, hits) by :class:`TiledHeadLoss`, or None where the probe rows show
    the family's head computes other logits (the head is then remembered as untiled). ``model`` is
    what the trainer forwards through (DDP included), ``config`` the model's own."""
    captured = {}

    def take_rows(_module, args):
        captured["hidden"] = args[0]
        return (args[0][..., :PROBE_ROWS, :],)  # the head itself projects only the probe rows

    handle = head.register_forward_pre_hook(take_rows)
    try:
        probe = model(**forward).logits
    finally:
        handle.remove()
    hidden = captured["hidden"]
    hidden = hidden.reshape(-1, hidden.shape[-1])
    softcap = getattr(config, "final_logit_softcapping", None)
    if hidden.shape[0] == targets.numel():
        with torch.no_grad():
            ours, _ = _head_logits(hidden[:PROBE_ROWS], head.weight, head.bias, softcap)
        theirs = probe.detach().reshape(-1, probe.shape[-1]).float()
        if theirs.shape == ours.shape and torch.allclose(ours, theirs, rtol=1e-3, atol=1e-3):
            return TiledHeadLoss.apply(hidden, head.weight, head.bias, targets, softcap)
    _UNTILED.add(head)
    print(f"[hilt] loss=materialized logits: the {config.model_type} LM head computes more than a linear layer, "
          "so its logits are not tiled", flush=True)
    return None


def next_token_loss(model, inputs: dict, num_items_in_batch=None):
    """Mean negative log-likelihood of the counted next-token labels, and what TRL logs.

    Returns:
        (loss, counted, entropy_sum, correct): the loss divides by ``num_items_in_batch``
        when given (the Trainer's count over gradient accumulation), else by ``counted``.

    Raises:
        HeadNotTiled: the head cannot be tiled and its logits would be over :data:`MAX_LOGITS`.
    """
    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    targets = labels[:, 1:][keep[:, :-1]]
    counted = keep.sum()
    denominator = torch.as_tensor(counted if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
    forward = {**{k: v for k, v in inputs.items() if k != "labels"}, "use_cache": False, "logits_to_keep": keep}
    inner = _unwrapped(model)
    head = tiled_head(inner)
    if head is not None:
        scored = _tiled(model, inner.config, head, forward, targets)
        if scored is not None:
            nll, entropy_sum, correct = scored
            return nll / denominator, counted, entropy_sum, correct
    if int(counted) * inner.get_output_embeddings().weight.shape[0] > MAX_LOGITS:
        raise HeadNotTiled
    logits = model(**forward).logits  # [counted, vocab]
    log_probs = logits.float().log_softmax(-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    loss = -picked.sum() / denominator
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
            try:
                return compute_loss(self, model, inputs, num_items_in_batch)
            except HeadNotTiled:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return HiltSFTTrainer
