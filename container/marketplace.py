"""CreateModelPackage / CreateAlgorithm requests for AWS Marketplace, and the listing draft.

Requests follow SageMaker's API shapes exactly and are validated strictly (see hilt/core/aws.py)
before they are written. One package per hardware family: a CPU model lists CPU
instance types only. The Algorithm's hyperparameters come from the recipe schema (names,
types, defaults, ranges, tunable flags, descriptions) and its metrics from the regexes
the trainer's log lines are written for.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from hilt.serving.contract import JSON, JSONLINES, METERING_DIMENSION, METERING_UNITS
from hilt.core.errors import UserError
from hilt.core.layout import read_manifest
from hilt.training.trainers.callbacks import METRIC_DEFINITIONS, TUNING_OBJECTIVES
from hilt.training.base.recipe import flat_fields, load_recipe, tuning_range

CONTENT_TYPES = [JSON, JSONLINES]
MODEL_CONTENT_TYPE = "application/octet-stream"
INSTANCE_TYPES = {
    "cpu": {
        "realtime": ["ml.m5.large", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.xlarge", "ml.c5.2xlarge"],
        "transform": ["ml.m5.large", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.xlarge", "ml.c5.2xlarge"],
        "training": ["ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.2xlarge"],
    },
    "gpu": {
        "realtime": ["ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.12xlarge", "ml.g5.48xlarge", "ml.p4d.24xlarge"],
        "transform": ["ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.12xlarge", "ml.g5.48xlarge"],
        "training": ["ml.g5.2xlarge", "ml.g5.12xlarge", "ml.g5.48xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge"],
    },
}


def _inference_specification(image: str, hardware: str, metering_unit: str, model_data_url: str | None) -> dict:
    container: dict[str, Any] = {
        "Image": image,
        # The serve image binds 0.0.0.0; the unit decides what a customer is billed per call.
        "Environment": {"HILT_SERVE_HOST": "0.0.0.0", "HILT_METERING_UNIT": metering_unit},
    }
    if model_data_url:
        container["ModelDataUrl"] = model_data_url
    return {
        "Containers": [container],
        "SupportedContentTypes": CONTENT_TYPES,
        "SupportedResponseMIMETypes": CONTENT_TYPES,
        "SupportedRealtimeInferenceInstanceTypes": INSTANCE_TYPES[hardware]["realtime"],
        "SupportedTransformInstanceTypes": INSTANCE_TYPES[hardware]["transform"],
    }


def _transform_job_definition(input_uri: str, output_uri: str, hardware: str, max_payload_mb: int = 6) -> dict:
    return {
        "MaxConcurrentTransforms": 1,
        "MaxPayloadInMB": max_payload_mb,
        "BatchStrategy": "SingleRecord",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
            "ContentType": JSONLINES,
            "CompressionType": "None",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": output_uri, "Accept": JSONLINES, "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": INSTANCE_TYPES[hardware]["transform"][0], "InstanceCount": 1},
    }


def model_package_request(name: str, image: str, model_data_url: str | None, role_arn: str, validation_input: str,
                          validation_output: str, hardware: str = "cpu", metering_unit: str = "output_tokens",
                          description: str = "", model_in_image: bool = False) -> dict:
    """A CreateModelPackage request certified for Marketplace.

    Raises:
        UserError: without ``model_data_url`` unless the image carries the model itself.
    """
    if not model_data_url and not model_in_image:
        raise UserError("--model-data-url is missing: a Model Package serves weights from an s3://…/model.tar.gz "
                        "(`hilt package build`, then upload it); pass --model-in-image only if the serve image "
                        "already holds the model in /opt/ml/model")
    if model_data_url and not model_data_url.startswith("s3://"):
        raise UserError(f"--model-data-url {model_data_url}: not an s3:// URI; upload model.tar.gz and pass its "
                        "s3://bucket/key")
    return {
        "ModelPackageName": name,
        "ModelPackageDescription": description or f"{name}: fine-tuned with hilt; JSON and JSON Lines in and out.",
        "InferenceSpecification": _inference_specification(image, hardware, metering_unit, model_data_url),
        "ValidationSpecification": {
            "ValidationRole": role_arn,
            "ValidationProfiles": [{
                "ProfileName": "hilt-batch-validation",
                "TransformJobDefinition": _transform_job_definition(validation_input, validation_output, hardware),
            }],
        },
        "CertifyForMarketplace": True,
    }


def _hyperparameter(name: str, field) -> dict:
    """One SupportedHyperParameters entry from a recipe field."""
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    spec: dict[str, Any] = {"Name": name, "Description": (field.description or name)[:170],
                            "IsRequired": False, "IsTunable": False}
    default = field.get_default(call_default_factory=True)
    tune = tuning_range(field)
    if annotation is bool:
        spec["Type"] = "Categorical"
        spec["Range"] = {"CategoricalParameterRangeSpecification": {"Values": ["true", "false"]}}
    elif origin is typing.Literal:
        spec["Type"] = "Categorical"
        spec["Range"] = {"CategoricalParameterRangeSpecification": {"Values": [str(v) for v in typing.get_args(annotation)]}}
    elif annotation in (int, float):
        bounds = {type(m).__name__: m for m in field.metadata}
        low = tune[0] if tune else next((getattr(bounds[k], k.lower()) for k in ("Ge", "Gt") if k in bounds), None)
        high = tune[1] if tune else next((getattr(bounds[k], k.lower()) for k in ("Le", "Lt") if k in bounds), None)
        spec["Type"] = "Integer" if annotation is int else "Continuous"
        if low is not None and high is not None:
            key = "IntegerParameterRangeSpecification" if annotation is int else "ContinuousParameterRangeSpecification"
            cast = (lambda v: str(int(v))) if annotation is int else (lambda v: repr(float(v)))
            spec["Range"] = {key: {"MinValue": cast(low), "MaxValue": cast(high)}}
            spec["IsTunable"] = tune is not None
    else:
        spec["Type"] = "FreeText"
    if default is not None:
        spec["DefaultValue"] = json.dumps(default) if isinstance(default, (list, bool)) else str(default)
        if isinstance(default, bool):
            spec["DefaultValue"] = "true" if default else "false"
    return spec


def supported_hyperparameters(recipe_name: str) -> list[dict]:
    """``recipe`` plus every recipe key, with this recipe's values as defaults."""
    recipe = load_recipe(recipe_name)
    values = recipe.model_dump(mode="json")
    specs = [{"Name": "recipe", "Description": "Recipe name (see recipes/); every other key overrides it.",
              "Type": "FreeText", "IsTunable": False, "IsRequired": True, "DefaultValue": recipe_name}]
    for name, field in flat_fields():
        if name in ("name", "description"):
            continue
        spec = _hyperparameter(name, field)
        section, _, key = name.partition(".")
        value = values[section][key] if key else values[section]
        if value is None:
            spec.pop("DefaultValue", None)
        else:
            spec["DefaultValue"] = ("true" if value else "false") if isinstance(value, bool) else (
                json.dumps(value) if isinstance(value, list) else str(value))
        specs.append(spec)
    return specs


def recipe_hardware(recipe_name: str) -> str:
    """``gpu`` unless the recipe runs on a CPU (fp32 weights, no mixed precision, DeepSpeed or 4-bit)."""
    recipe = load_recipe(recipe_name)
    cpu = (recipe.model.dtype == "float32" and recipe.train.precision in ("auto", "fp32")
           and recipe.distributed.deepspeed is None and recipe.peft.method != "qlora")
    return "cpu" if cpu else "gpu"


def channel_descriptions() -> dict[str, str]:
    """What each TrainingChannel accepts, in the words a buyer reads on the listing."""
    from hilt.training.data.formats import accepted_formats

    data = ("JSON Lines (*.jsonl) or JSON arrays (*.json), one format per file, detected per file. "
            f"SFT recipes: {accepted_formats('sft')}; a template.json (prompt/completion) beside JumpStart "
            f"files names their keys. DPO recipes: {accepted_formats('preference')}. KTO recipes: "
            f"{accepted_formats('unpaired')}.")
    return {
        "train": f"Training records. {data}"[:1024],
        "validation": ("Held-out records, same formats as train; required when tuning on eval_loss, and "
                       "scored (loss, exact match, ROUGE-L) after training."),
        "model": ("Base model weights: a save_pretrained folder (config.json, *.safetensors, tokenizer files) "
                  "of the recipe's architecture. The image is offline (network isolation), so the weights "
                  "arrive as this channel, not from a model hub."),
    }


def algorithm_request(name: str, image: str, role_arn: str, recipe_name: str, *, train_uri: str, model_uri: str,
                      validation_input: str, validation_output: str, training_output: str,
                      validation_uri: str | None = None, hyperparameters: dict[str, str] | None = None,
                      hardware: str | None = None, metering_unit: str = "output_tokens",
                      description: str = "") -> dict:
    """A CreateAlgorithm request: train with hilt's image, serve with the same image family.

    The base weights reach the job as the ``model`` channel (declared, required, and fed in
    the validation profile): the training image holds no weights and runs offline, so one
    image serves every base of the recipe's family and buyers may bring their own.
    ``hardware`` defaults to what the recipe needs (``recipe_hardware``).
    """
    hardware = hardware or recipe_hardware(recipe_name)
    data = {"SupportedContentTypes": [JSONLINES, JSON], "SupportedCompressionTypes": ["None"],
            "SupportedInputModes": ["File"]}
    described = channel_descriptions()

    def channel(channel_name: str, uri: str, content_type: str = JSONLINES) -> dict:
        return {"ChannelName": channel_name, "DataSource": {"S3DataSource": {
            "S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}},
            "ContentType": content_type, "CompressionType": "None"}

    inputs = [channel("train", train_uri)]
    if validation_uri:
        inputs.append(channel("validation", validation_uri))
    inputs.append(channel("model", model_uri, MODEL_CONTENT_TYPE))
    return {
        "AlgorithmName": name,
        "AlgorithmDescription": description or f"{name}: hilt SFT/DPO/KTO recipes ({recipe_name}) on TRL + PEFT + DeepSpeed.",
        "TrainingSpecification": {
            "TrainingImage": image,
            "SupportedHyperParameters": supported_hyperparameters(recipe_name),
            "SupportedTrainingInstanceTypes": INSTANCE_TYPES[hardware]["training"],
            "SupportsDistributedTraining": True,
            "MetricDefinitions": METRIC_DEFINITIONS,
            "TrainingChannels": [
                {"Name": "train", "Description": described["train"], "IsRequired": True, **data},
                {"Name": "validation", "Description": described["validation"], "IsRequired": False, **data},
                {"Name": "model", "Description": described["model"], "IsRequired": True,
                 "SupportedContentTypes": [MODEL_CONTENT_TYPE], "SupportedCompressionTypes": ["None"],
                 "SupportedInputModes": ["File"]},
            ],
            "SupportedTuningJobObjectiveMetrics": TUNING_OBJECTIVES,
        },
        "InferenceSpecification": _inference_specification(image, hardware, metering_unit, None),
        "ValidationSpecification": {
            "ValidationRole": role_arn,
            "ValidationProfiles": [{
                "ProfileName": "hilt-train-and-transform",
                "TrainingJobDefinition": {
                    "TrainingInputMode": "File",
                    "HyperParameters": {"recipe": recipe_name, **(hyperparameters or {})},
                    "InputDataConfig": inputs,
                    "OutputDataConfig": {"S3OutputPath": training_output},
                    "ResourceConfig": {"InstanceType": INSTANCE_TYPES[hardware]["training"][0], "InstanceCount": 1,
                                       "VolumeSizeInGB": 100},
                    "StoppingCondition": {"MaxRuntimeInSeconds": 4 * 3600},
                },
                "TransformJobDefinition": _transform_job_definition(validation_input, validation_output, hardware),
            }],
        },
        "CertifyForMarketplace": True,
    }


def write_listing(model_dir: Path, out: Path, report: dict | None, metering_unit: str) -> Path:
    """LISTING.md: the seller checklist, filled from hilt.json, the dataset and the replay."""
    manifest = read_manifest(model_dir)
    recipe = manifest.get("recipe", {})
    metrics = manifest.get("metrics", {})
    data = manifest.get("dataset", {})
    records = {k: v.get("records") for k, v in data.items()}
    extra: list[str] = []
    evaluation = manifest.get("evaluation")
    if evaluation:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in evaluation["metrics"].items())
        extra += [f"Held-out scoring after training ({evaluation['records']} records, greedy answers): {scores}; "
                  f"headline metric {evaluation['task_metric']}.", ""]
    general = manifest.get("general")
    if general:  # written by `hilt evaluate`: what fine-tuning did to skills outside the task
        g, d = general["models"]["candidate"], general.get("deltas") or {}
        change = (f" (against the base model: loss {d['general_loss']:+.3f}, accuracy {d['general_accuracy']:+.2f})"
                  if d else "")
        extra += [f"General skills outside the task ({general['records']} prompts of facts, arithmetic, instructions "
                  f"and formats): general_loss {g['general_loss']:.3f}, general_accuracy "
                  f"{g['general_accuracy']:.2f}{change}.", ""]
    if manifest.get("human_side_by_side"):
        from hilt.labeling.compare import SECTION, summary_markdown

        extra += [f"<!-- hilt:{SECTION} -->", summary_markdown(manifest["human_side_by_side"]).rstrip(),
                  f"<!-- /hilt:{SECTION} -->", ""]
    lines = [
        f"# {recipe.get('name', model_dir.name)} — Marketplace listing draft",
        "",
        "## What the model does",
        recipe.get("description") or "A chat model fine-tuned with hilt on human-written answers.",
        "",
        "**Target customer:** teams that need an assistant for their internal processes and client work.",
        "**Main use case:** answer employees' process questions politely and accurately; summarize client "
        "conversations for advisors.",
        "",
        "## How it was trained",
        f"- Base model: `{manifest.get('base_model', 'see hilt.json')}`; method {recipe.get('method', 'sft').upper()} "
        f"with {recipe.get('peft', {}).get('method', 'lora')}.",
        f"- Data: {records.get('train', '?')} training and {records.get('validation', 0)} validation records written "
        "and reviewed by annotators in Label Studio (exported by `hilt export`; dataset sha256 "
        f"`{(data.get('train') or {}).get('manifest_sha256') or (data.get('train') or {}).get('sha256', '?')}`).",
        "",
        "## Performance",
        "| metric | value |",
        "| --- | --- |",
        *[f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()],
        "",
        f"Validation data: the held-out split of the same export ({records.get('validation', 0)} records).",
        "",
        *extra,
        "## Input and output",
        f"- MIME types: `{JSON}` (one request) and `{JSONLINES}` (one request per line; batch transform "
        "with SplitType=Line, SingleRecord or MultiRecord).",
        '- Request: `{"inputs": "text" | [{"role", "content"}...], "parameters": {"max_new_tokens": 64, '
        '"temperature": 0.0, "top_p": 1.0, "stop": ["..."]}}`',
        '- Response: `{"generated_text": "...", "finish_reason": "stop", "usage": {"input_tokens": n, '
        '"output_tokens": m}}`',
        '- Chat requests in the OpenAI chat-completions shape (`{"messages": [...], "max_tokens": 64}`) get a '
        "`chat.completion` answer; `\"stream\": true` streams the answer (InvokeEndpointWithResponseStream: "
        "server-sent events or JSON Lines).",
        "- Limits: 6 MB per real-time request; max_new_tokens ≤ 4096.",
        "",
        "## Fine-tuning data (Algorithm)",
        *[f"- `{name}` channel: {text}" for name, text in channel_descriptions().items()],
        "",
    ]
    if report:
        lines += ["## Sample inputs and outputs (from the local validation replay)", ""]
        for sample in report.get("samples", []):
            lines += ["```json", sample["input"].strip(), "```", "→", "```json", sample["output"].strip(), "```",
                      f"Metering: `{json.dumps(sample['metering'])}`", ""]
        latency = report.get("latency_ms", {})
        lines += [f"**Batch validation:** {'passed' if report.get('passed') else 'FAILED'} on {report.get('records')} "
                  f"records; latency on the machine measured: p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms.",
                  ""]
    lines += [
        "## Pricing dimension",
        f"Custom metering: every successful real-time invocation reports `{METERING_DIMENSION}` with ConsumedUnits "
        f"= {metering_unit.replace('_', ' ')} (choices: {', '.join(METERING_UNITS)}). Custom metering bills "
        "real-time inference only; batch transform is billed by instance hours. "
        f"`{METERING_DIMENSION}` is the only dimension.",
        "",
    ]
    from hilt.core.outputs import write_atomic

    return write_atomic(out, "\n".join(lines))


def write_listing_files(model_dir: Path, out: Path, report: dict | None, metering_unit: str) -> tuple[Path, Path]:
    """LISTING.md at ``out`` and, beside it, the buyer's sample notebook (``hilt.serving.notebook``)."""
    from hilt.serving.notebook import NOTEBOOK_FILE, check_notebook_path, write_sample_notebook

    recipe = read_manifest(model_dir).get("recipe", {})
    notebook = out.parent / NOTEBOOK_FILE
    check_notebook_path(notebook)  # before either file is written
    listing = write_listing(model_dir, out, report, metering_unit)
    write_sample_notebook(notebook, recipe.get("name") or Path(model_dir).name,
                          recipe.get("description") or "A chat model fine-tuned with hilt.", metering_unit,
                          (report or {}).get("samples", []))
    return listing, notebook
