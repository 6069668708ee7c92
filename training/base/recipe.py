"""Recipe schema: one YAML file per run shape, validated strictly.

Every field is documented once, here, in ``Field(description=...)``; the JSON schema
(``hilt recipe schema``), the SageMaker Algorithm's hyperparameter list and the error
messages are generated from it. Unknown keys are errors (``extra="forbid"``), and all
problems of a recipe and its overrides are reported together, each naming the key.

Overrides (``hilt train --set train.learning_rate=1e-4`` or SageMaker hyperparameters,
which always arrive as strings) go through the same schema, so ``"1e-4"`` becomes a float
and ``"lora"`` is checked against the allowed methods.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any, Literal


from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from hilt.training.base.tracking import REPORT_TO
from hilt.core.config import StrictSection, describe_error, read_yaml_mapping
from hilt.core.errors import UserError
from hilt.training.base.methods import METHODS, Method

TASK_METRICS = ("exact_match", "rougeL")  # scored on held-out answers (hilt.training.evaluation.evaluate)

RECIPES_DIR_ENV = "HILT_RECIPES_DIR"
# Bundled recipes sit beside the packages in the source tree (and in the images).
BUNDLED_RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"


_Section = StrictSection


class ModelSection(_Section):
    name_or_path: str | None = Field(
        None,
        description="Base model: a local directory or hub id. Ignored when a `model` channel "
        "is mounted (/opt/ml/input/data/model), which is how jobs run without network.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="Weight dtype when loading; auto = bfloat16 on GPUs that have it, else float32."
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; auto = flash_attention_2 where installed on a GPU, else sdpa."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass to save memory (~30% slower)."
    )


class PeftSection(_Section):
    method: Literal["lora", "qlora", "full"] = Field(
        "lora", description="lora = LoRA adapters; qlora = LoRA on a 4-bit base (CUDA only); full = all weights."
    )
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.", json_schema_extra={"tune": [4, 128]})
    alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r).", json_schema_extra={"tune": [4, 256]})
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.", json_schema_extra={"tune": [0.0, 0.3]})
    target_modules: list[str] | Literal["all-linear", "default"] = Field(
        "all-linear", description="Modules that get adapters: a list of names, all-linear, or default "
        "(PEFT's choice for the architecture, usually the attention projections)."
    )


class DataSection(_Section):
    max_length: int = Field(1024, ge=8, description="Tokens per sequence (per packed row when packing).")
    packing: bool = Field(
        True,
        description="Pack sequences padding-free (best-fit decreasing); attention stays within each "
        "sequence through reset position ids.",
    )
    assistant_turns: Literal["all", "last"] = Field(
        "all", description="SFT with assistant_only_loss: learn every assistant turn of a conversation, or only "
        "the last one."
    )
    assistant_only_loss: bool = Field(
        True, description="SFT: train only on the assistant turns (content and end-of-turn token), found in the "
        "rendered conversation for any chat template; false = every token."
    )
    self_replay: float = Field(
        0.0, ge=0.0, le=1.0, description="SFT: keep the base model's general skills by mixing its own greedy "
        "answers to general prompts (hilt's replay set, never its evaluation set) into training, this many per "
        "training record (0.25 = one per four); generated once per base model and cached. 0 = off."
    )


class OptimizerSection(_Section):
    learning_rate: float = Field(2e-4, gt=0.0, le=1.0, description="Peak learning rate.", json_schema_extra={"tune": [1e-06, 0.01]})
    epochs: float = Field(1.0, gt=0.0, description="Passes over the training data (ignored when max_steps > 0).", json_schema_extra={"tune": [1, 10]})
    max_steps: int = Field(-1, ge=-1, description="Optimizer steps to run; -1 = use epochs.")
    per_device_batch_size: int = Field(4, ge=1, description="Sequences (packed rows) per device per step.")
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="Fraction of steps of linear warm-up.", json_schema_extra={"tune": [0.0, 0.2]})
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay.", json_schema_extra={"tune": [0.0, 0.1]})
    max_grad_norm: float = Field(1.0, ge=0.0, description="Gradient clipping norm; 0 = off.")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="Mixed precision; auto = bf16 where the GPU supports it, else fp32."
    )
    seed: int = Field(42, description="Seed for data order, dropout and adapter init.")
    logging_steps: int = Field(10, ge=1, description="Log train_loss every N steps.")
    eval_steps: int = Field(0, ge=0, description="Evaluate on the validation channel every N steps; 0 = at the end only.")
    checkpoint_steps: int = Field(
        200, ge=1, description="Save a resumable checkpoint to /opt/ml/checkpoints every N steps."
    )
    checkpoint_limit: int = Field(2, ge=1, description="Keep only the newest N checkpoints.")
    report_to: Literal[REPORT_TO] = Field(
        "auto", description="Experiment tracking: auto = TensorBoard events in /opt/ml/output/tensorboard, plus "
        "MLflow when MLFLOW_TRACKING_URI is set; none = off.")


class EvalSection(_Section):
    metric: Literal[TASK_METRICS] = Field(
        "exact_match", description="Headline task metric: exact_match for short fixed answers, rougeL for summaries "
        "(both are always reported)."
    )
    after_training: bool = Field(
        True, description="Score the finished model on the validation channel (loss, perplexity, exact match, "
        "ROUGE-L) into hilt.json; false for models too large to reload in the launching process."
    )
    max_samples: int = Field(200, ge=1, description="Validation records scored after training (the first N).")
    max_new_tokens: int = Field(64, ge=1, description="Cap on each generated answer when scoring.")


class DistributedSection(_Section):
    deepspeed: str | None = Field(
        None,
        description="DeepSpeed JSON config, relative to recipes/ (e.g. deepspeed/zero3.json) or absolute; "
        "null = plain DDP when more than one process runs.",
    )
    processes_per_host: int | Literal["auto"] = Field(
        "auto", description="Worker processes per host; auto = one per GPU (SM_NUM_GPUS), 1 without GPUs."
    )


class Recipe(_Section):
    """One training run shape: model x method x hardware.

    ``method`` and one section per method with settings (``dpo:``, ``kto:``) are added from the
    methods table by :func:`recipe_model`; validate through it (``load_recipe``), not this class.
    """

    name: str = Field(description="Recipe name, recorded in hilt.json and the model card.")
    description: str = Field("", description="One line on what this recipe is for.")
    method: str = "sft"
    model: ModelSection = Field(default_factory=ModelSection, description="Base model and how to load it.")
    peft: PeftSection = Field(default_factory=PeftSection, description="Adapter or full fine-tuning.")
    data: DataSection = Field(default_factory=DataSection, description="Tokenization and packing.")
    train: OptimizerSection = Field(default_factory=OptimizerSection, description="Optimizer and schedule.")
    eval: EvalSection = Field(default_factory=EvalSection, description="Held-out scoring after training.")
    distributed: DistributedSection = Field(
        default_factory=DistributedSection, description="Multi-process and DeepSpeed."
    )

    @model_validator(mode="after")
    def _replay_is_sft(self) -> "Recipe":
        if self.data.self_replay and self.method != "sft":
            raise ValueError(f"data.self_replay mixes answers into SFT records; method {self.method} takes "
                             "none: set data.self_replay=0")
        return self

    def deepspeed_config_path(self) -> Path | None:
        """The resolved DeepSpeed config file, or None when not used."""
        if self.distributed.deepspeed is None:
            return None
        path = Path(self.distributed.deepspeed)
        return path if path.is_absolute() else recipes_dir() / path


def _with_methods(methods: tuple[Method, ...]) -> type[Recipe]:
    choices = Literal[tuple(m.name for m in methods)]  # type: ignore[valid-type]
    method = Field("sft", description="; ".join(m.description for m in methods) + ".")
    sections = {m.name: (m.settings, Field(default_factory=m.settings, description=f"{m.name.upper()} settings "
                                           f"(method: {m.name} only)."))
                for m in methods if m.settings is not None}
    return create_model("Recipe", __base__=Recipe, __doc__=Recipe.__doc__, method=(choices, method), **sections)


_MODELS: dict[tuple[Method, ...], type[Recipe]] = {}


def recipe_model() -> type[Recipe]:
    """The recipe schema for the methods in ``hilt.training.base.methods.METHODS`` now (a method
    registered later gets its choice and its section)."""
    methods = tuple(METHODS.values())
    if methods not in _MODELS:
        _MODELS[methods] = _with_methods(methods)
    return _MODELS[methods]


def recipes_dir() -> Path:
    """Where recipe names are looked up: ``$HILT_RECIPES_DIR`` or the bundled ``recipes/``."""
    return Path(os.environ.get(RECIPES_DIR_ENV) or BUNDLED_RECIPES_DIR)


def resolve_recipe_path(name_or_path: str) -> Path:
    """Turn ``quickstart-tiny-sft`` or ``path/to/x.yaml`` into an existing file.

    Raises:
        UserError: when neither a file nor a bundled recipe of that name exists.
    """
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if path.is_file():
            return path
        if path.is_dir():
            raise UserError(f"recipe {path} is a folder; pass the recipe's .yaml file")
        if path.parent != Path(".") or not (recipes_dir() / path.name).is_file():
            raise UserError(f"recipe file {path}: no such file; check the path, or pass a bundled recipe by name "
                            f"({', '.join(sorted(p.stem for p in recipes_dir().glob('*.yaml')))})")
        path = recipes_dir() / path.name
        return path
    candidate = recipes_dir() / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in recipes_dir().glob("*.yaml"))
    hint = difflib.get_close_matches(name_or_path, known, n=1)
    suggestion = f"did you mean '{hint[0]}'? " if hint else ""
    raise UserError(
        f"recipe '{name_or_path}' not found: not a .yaml file and not in {recipes_dir()}; "
        f"{suggestion}known recipes: {', '.join(known) or 'none'}"
    )


def decode_hyperparameter(value: Any) -> Any:
    """SageMaker passes hyperparameter values as strings; decode JSON where it parses.

    Same rule as sagemaker-training-toolkit: ``"1e-4"`` -> 1e-4, ``"true"`` -> True,
    ``'["q_proj"]'`` -> list, and anything that is not JSON (``lora``) stays a string.
    """
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_set_option(text: str) -> tuple[str, Any]:
    """``train.learning_rate=1e-4`` -> (``train.learning_rate``, 1e-4)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set '{text}' is not KEY=VALUE; write e.g. --set train.learning_rate=1e-4")
    return key.strip(), decode_hyperparameter(value)


def hyperparameter_strings(overrides: dict[str, Any]) -> dict[str, str]:
    """Overrides as SageMaker writes hyperparameters: strings, JSON for anything not a string."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in overrides.items()}


def _apply_override(data: dict, key: str, value: Any, problems: list[str]) -> None:
    node = data
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            problems.append(f"{'.'.join(parts[: depth + 1])}: is a value, not a section; cannot set '{key}'")
            return
        node = child
    node[parts[-1]] = value


def load_recipe(source: str | Path | dict, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe from a name, a YAML file or a dict, apply dotted overrides, validate.

    Args:
        source: bundled recipe name, path to a YAML file, or an already-parsed dict.
        overrides: dotted keys to values (``{"train.learning_rate": "1e-4"}``); string
            values are decoded like SageMaker hyperparameters.

    Returns:
        The validated recipe.

    Raises:
        UserError: listing every problem, each with its key and the fix.
    """
    if isinstance(source, dict):
        data, where = json.loads(json.dumps(source)), "recipe"
    else:
        path = resolve_recipe_path(str(source))
        where = str(path)
        data = read_yaml_mapping(path, "recipe")
    problems: list[str] = []
    for key, value in (overrides or {}).items():
        _apply_override(data, key, decode_hyperparameter(value), problems)
    try:
        recipe = recipe_model().model_validate(data)
    except ValidationError as err:
        problems += [describe_error(e, recipe_model(), "recipe") for e in err.errors()]
        recipe = None
    if recipe is not None and recipe.distributed.deepspeed is not None:
        ds_path = recipe.deepspeed_config_path()
        if not ds_path.is_file():
            problems.append(f"distributed.deepspeed: {ds_path} does not exist; name a file under {recipes_dir()}")
    if problems:
        raise UserError(f"{where}: {len(problems)} problem(s): " + "; ".join(problems))
    return recipe


def recipe_json_schema() -> dict:
    """The recipe's JSON schema, generated from the field descriptions."""
    return recipe_model().model_json_schema()


def tuning_range(field) -> tuple[float, float] | None:
    """The (low, high) a hyperparameter tuning job may search, when the schema gives one."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    tune = extra.get("tune")
    return (tune[0], tune[1]) if tune else None


def flat_fields() -> list[tuple[str, Any]]:
    """Every leaf setting as (dotted key, pydantic FieldInfo): the hyperparameter names."""
    out = []
    for section_name, section_field in recipe_model().model_fields.items():
        annotation = section_field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out += [(f"{section_name}.{name}", f) for name, f in annotation.model_fields.items()]
        else:
            out.append((section_name, section_field))
    return out
