"""Plain functions the SFT, DPO and KTO trainers share: hardware choices, model, adapter, args.

Hardware decides precision, attention kernel and the distributed backend; the recipe
says "auto" and this module turns "auto" into what the machine has (bf16 and flash
attention on GPUs that support them, fp32 + sdpa + gloo on CPU).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from hilt.training.base.job import Job


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(job: Job) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for mixed precision."""
    wanted = job.recipe.train.precision
    if wanted != "auto":
        return wanted
    import torch

    return "bf16" if has_cuda() and torch.cuda.is_bf16_supported() else "fp32"


def resolve_dtype(job: Job):
    import torch

    wanted = job.recipe.model.dtype
    if wanted == "auto":
        return torch.bfloat16 if resolve_precision(job) == "bf16" else torch.float32
    return getattr(torch, wanted)


def model_class_of(model_path: str):
    """The transformers causal-LM class a saved model loads as (None when unknown)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(model_path))]
    except (KeyError, OSError, ValueError):
        return None


def resolve_attention(job: Job) -> str:
    """The attention kernel for this model on this machine.

    ``auto``: flash attention where it is installed on a GPU and the architecture supports
    it, else sdpa where the architecture supports it, else eager (Gemma 2: sdpa cannot do
    its logit soft-capping). ``model.attn_implementation`` overrides.
    """
    wanted = job.recipe.model.attn_implementation
    if wanted != "auto":
        return wanted
    cls = model_class_of(job.model_path)
    if has_cuda() and importlib.util.find_spec("flash_attn") is not None and getattr(cls, "_supports_flash_attn", True):
        return "flash_attention_2"
    return "sdpa" if getattr(cls, "_supports_sdpa", True) else "eager"


def training_attention(job: Job) -> str:
    """The attention the model trains with: :func:`resolve_attention`, except that packed rows
    (a method whose ``packs_rows`` is set: SFT) on sdpa attend one sequence at a time (``hilt.training.kernels.segment_attention`` over the
    length groups ``hilt.training.data.packing.LengthGroupCollator`` lays out: the same result as
    transformers' block-diagonal mask, without attending over the whole row).
    Not for a sliding window shorter than a row, nor when ``model.attn_implementation`` is set.
    """
    attention = resolve_attention(job)
    recipe = job.recipe
    if (attention != "sdpa" or recipe.model.attn_implementation != "auto" or not job.method.packs_rows
            or not recipe.data.packing or _sliding_window_below(job.model_path, recipe.data.max_length)):
        return attention
    from hilt.training.kernels.segment_attention import register

    return register()


def _sliding_window_below(model_path: str, tokens: int) -> bool:
    """Whether some layer of the model attends over a window shorter than ``tokens``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path).get_text_config()
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0 or window >= tokens:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return "sliding_attention" in layer_types
    return getattr(config, "use_sliding_window", True) is not False


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def prepare_distributed(job: Job) -> dict[str, Any]:
    """Set up the process group before the TrainingArguments exist.

    On CPU, DeepSpeed and DDP both need gloo and accelerate's state built first;
    otherwise Trainer counts one process and DeepSpeed's batch-size check fails
    (train_batch_size 8 != 8 * 1 * 2). Returns extra TrainingArguments kwargs.
    """
    extra: dict[str, Any] = {}
    cpu = not has_cuda()
    if cpu:
        extra["use_cpu"] = True
    ds_config = job.recipe.deepspeed_config_path()
    if ds_config is not None and is_distributed():
        extra["deepspeed"] = str(ds_config)
        if cpu:
            from accelerate import PartialState

            os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
            PartialState(backend="gloo")
            extra["accelerator_config"] = {"use_configured_state": True}
    elif is_distributed() and cpu:
        extra["ddp_backend"] = "gloo"
    return extra


def training_arguments(job: Job) -> dict[str, Any]:
    """Keyword arguments common to SFTConfig and DPOConfig, from the recipe."""
    from hilt.training.base.tracking import report_to_argument

    t = job.recipe.train
    precision = resolve_precision(job)
    has_validation = "validation" in job.channels
    kwargs: dict[str, Any] = dict(
        output_dir=str(job.checkpoint_dir),
        # Per-host checkpoint folders: each node's first process writes the shared files too.
        save_on_each_node=len(job.hosts.hosts) > 1,
        per_device_train_batch_size=t.per_device_batch_size,
        per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        lr_scheduler_type=t.lr_scheduler,
        # transformers 5 folded warmup_ratio into warmup_steps: a value below 1 is a fraction of the steps.
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t.checkpoint_steps,
        save_total_limit=t.checkpoint_limit,
        eval_strategy="steps" if has_validation and t.eval_steps else "no",
        eval_steps=t.eval_steps or None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        gradient_checkpointing=job.recipe.model.gradient_checkpointing,
        include_num_input_tokens_seen="non_padding",
        report_to=report_to_argument(job) or "none",
        save_only_model=False,
    )
    kwargs.update(prepare_distributed(job))
    return kwargs


def load_base_model(job: Job):
    """The base model, loaded after the TrainingArguments (ZeRO-3 shards it while loading)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(dtype=resolve_dtype(job), attn_implementation=training_attention(job))
    if job.recipe.peft.method == "qlora":
        import torch
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.bfloat16,
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(job.model_path, **kwargs)
    except ValueError as err:
        if "attention" not in str(err).lower():
            raise
        from hilt.core.errors import UserError

        raise UserError(f"model.attn_implementation={kwargs['attn_implementation']}: "
                        f"{str(err).splitlines()[0][:160]}; use auto (picks what the model supports) or eager") from None
    model.config.use_cache = False  # the KV cache is useless (and warns) while training
    return model


# Architectures PEFT has no default LoRA targets for; their attention projections, fused or not.
_EXTRA_LORA_TARGETS = {"phi3": ["qkv_proj"], "gemma3": ["q_proj", "v_proj"]}


def default_target_modules(model_path: str) -> list[str]:
    """PEFT's default LoRA targets for the architecture (the attention projections).

    Raises:
        UserError: for an architecture neither PEFT nor hilt has a default for.
    """
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(model_path).model_type
    targets = PEFT_DEFAULTS.get(model_type) or _EXTRA_LORA_TARGETS.get(model_type)
    if not targets:
        from hilt.core.errors import UserError

        raise UserError(f"peft.target_modules=default: no default LoRA targets for model type {model_type}; "
                        "name the modules (e.g. --set 'peft.target_modules=[\"q_proj\",\"v_proj\"]') or use all-linear")
    return list(targets)


def lora_config(job: Job):
    """A PEFT LoraConfig for lora/qlora recipes; None for full fine-tuning."""
    p = job.recipe.peft
    if p.method == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=p.r,
        lora_alpha=p.alpha,
        lora_dropout=p.dropout,
        target_modules=default_target_modules(job.model_path) if p.target_modules == "default" else p.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_tokenizer(job: Job):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe_backend(trainer) -> str:
    """One line naming how this run is distributed, for the job log."""
    import torch.distributed as dist

    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    backend = dist.get_backend() if world > 1 else "none"
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
        return f"[hilt] engine=deepspeed zero_stage={stage} world_size={world} backend={backend}"
    engine = "ddp" if world > 1 else "single"
    return f"[hilt] engine={engine} world_size={world} backend={backend}"
