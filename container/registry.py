"""SageMaker Model Registry: a trained model as a version of a model package group, and an
approved version promoted to the (unversioned, certified) Marketplace Model Package request.

``register_request`` builds a versioned CreateModelPackage request: the serve image and the
model's ``model.tar.gz``, ``ModelApprovalStatus`` (``PendingManualApproval`` by default), the
model's quality as ``ModelMetrics`` (a JSON document of the evaluation and the human
side-by-side, at an S3 URI), and the recipe, method, base model and dataset hash as
``CustomerMetadataProperties``. ``promote_request`` reads an approved version back and writes
today's Marketplace request from its inference specification.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from hilt.serving.marketplace import INSTANCE_TYPES, _inference_specification, model_package_request
from hilt import __version__
from hilt.core.aws import APPROVAL_STATUSES
from hilt.core.errors import UserError
from hilt.core.layout import read_json_object, read_manifest, require_model_dir

# CustomerMetadataProperties keys and values: letters, digits, spaces and _ . : / = + - @ only.
_NOT_ALLOWED = re.compile(r"[^\w\s.:/=+\-@]", re.UNICODE)


def metadata_value(value: Any) -> str:
    text = _NOT_ALLOWED.sub("-", str(value))
    return text[:256] or "-"


def model_quality(manifest: dict, eval_dir: Path | None = None) -> dict:
    """What the registry shows as the model's quality: the job's own evaluation, ``hilt evaluate``'s
    result (with its baseline and gates) when given, and the human side-by-side; ``manifest`` is the
    model's ``hilt.json``."""
    quality: dict[str, Any] = {"generated_by": f"hilt {__version__}",
                               "job_evaluation": manifest.get("evaluation"),
                               "training": {k: manifest.get("metrics", {}).get(k)
                                            for k in ("train_loss_first", "train_loss_last", "eval_loss", "global_step")}}
    if eval_dir is not None:
        eval_file = Path(eval_dir) / "eval.json"
        if not eval_file.is_file():
            raise UserError(f"--eval-dir {eval_dir}: no eval.json; pass the --out of `hilt evaluate`")
        evaluation = read_json_object(eval_file, "run `hilt evaluate` again", "--eval-dir")
        quality["evaluation"] = {k: evaluation.get(k) for k in ("data", "task_metric", "models", "deltas", "gates",
                                                                "passed")}
    sbs = manifest.get("human_side_by_side") or {}
    if sbs:
        quality["human_side_by_side"] = {k: sbs.get(k) for k in ("win_rate", "win_rate_ci95", "wins", "losses", "ties",
                                                                 "judgements", "percent_agreement")}
    return quality


def customer_metadata(manifest: dict, quality: dict) -> dict[str, str]:
    """Recipe, method, base model, dataset hash and headline metrics as CustomerMetadataProperties."""
    recipe = manifest.get("recipe") or {}
    dataset = (manifest.get("dataset") or {}).get("train") or {}
    found = {
        "hilt:recipe": recipe.get("name") or recipe.get("description"),
        "hilt:method": recipe.get("method"),
        "hilt:base-model": manifest.get("base_model"),
        "hilt:base-model-sha256": manifest.get("base_model_fingerprint"),
        "hilt:dataset-sha256": dataset.get("manifest_sha256") or dataset.get("sha256"),
        "hilt:train-records": dataset.get("records"),
        "hilt:precision": manifest.get("precision"),
    }
    metrics = ((quality.get("evaluation") or {}).get("models") or {}).get("candidate", {}).get("metrics") \
        or (quality.get("job_evaluation") or {}).get("metrics") or {}
    found.update({f"hilt:eval-{name}": round(value, 4) for name, value in metrics.items()
                  if isinstance(value, (int, float))})
    sbs = quality.get("human_side_by_side") or {}
    if sbs.get("win_rate") is not None:
        found["hilt:human-win-rate"] = sbs["win_rate"]
    return {key: metadata_value(value) for key, value in found.items() if value is not None}


def register_request(group: str, model_dir: Path, image: str, model_data_url: str, *, metrics_uri: str | None = None,
                     eval_dir: Path | None = None, approval: str = "PendingManualApproval", hardware: str = "cpu",
                     metering_unit: str = "output_tokens", description: str = "") -> tuple[dict, dict]:
    """(the versioned CreateModelPackage request, the model-quality document its ModelMetrics points at).

    Raises:
        UserError: no model in ``model_dir``, a ModelDataUrl or metrics URI that is not on S3, a bad
            approval status.
    """
    require_model_dir(model_dir, "--model-dir", hint="pass a trained model directory (a job's model/)")
    if not model_data_url.startswith("s3://"):
        raise UserError(f"--model-data-url {model_data_url}: not an s3:// URI; upload model.tar.gz (`hilt package "
                        "build`) and pass its s3://bucket/key")
    if metrics_uri is not None and not metrics_uri.startswith("s3://"):
        raise UserError(f"--metrics-uri {metrics_uri}: not an s3:// URI; ModelMetrics are read from S3")
    if approval not in APPROVAL_STATUSES:
        raise UserError(f"--approval {approval}: use one of {', '.join(APPROVAL_STATUSES)}")
    manifest = read_manifest(model_dir)
    for key in ("recipe", "metrics", "dataset", "evaluation", "human_side_by_side", "general"):
        if manifest.get(key) is not None and not isinstance(manifest[key], dict):
            raise UserError(f"{model_dir}/hilt.json: '{key}' is a {type(manifest[key]).__name__}, not the object "
                            "training writes; take the job's model/ again")
    quality = model_quality(manifest, eval_dir)
    request: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelPackageDescription": description or f"{group}: fine-tuned with hilt; JSON and JSON Lines in and out.",
        "InferenceSpecification": _inference_specification(image, hardware, metering_unit, model_data_url),
        "ModelApprovalStatus": approval,
        "MetadataProperties": {"GeneratedBy": f"hilt {__version__}"},
        "CustomerMetadataProperties": customer_metadata(manifest, quality),
        "Domain": "NATURAL_LANGUAGE_PROCESSING",
        "Task": "OTHER",
    }
    if metrics_uri:
        request["ModelMetrics"] = {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                                   "S3Uri": metrics_uri}}}
    return request, quality


def find_version(sagemaker, reference: str) -> dict:
    """``GROUP/VERSION`` (or a model package ARN) described.

    Raises:
        UserError: a reference of another shape, or no such version.
    """
    if reference.startswith("arn:"):
        arn = reference
    else:
        group, _, version = reference.rpartition("/")
        if not group or not version.isdigit():
            raise UserError(f"{reference}: expected GROUP/VERSION (e.g. hilt-assistant/3) or a model package ARN")
        pages = sagemaker.get_paginator("list_model_packages").paginate(ModelPackageGroupName=group)
        arn = next((p["ModelPackageArn"] for page in pages for p in page["ModelPackageSummaryList"]
                    if p.get("ModelPackageVersion") == int(version)), None)
        if arn is None:
            raise UserError(f"{reference}: model package group {group} has no version {version}; "
                            f"list them with `aws sagemaker list-model-packages --model-package-group-name {group}`")
    return sagemaker.describe_model_package(ModelPackageName=arn)


def promote_request(described: dict, name: str, role_arn: str, validation_input: str, validation_output: str,
                    description: str = "") -> dict:
    """The Marketplace Model Package request (unversioned, certified) of an approved registry version.

    Raises:
        UserError: a version that is not approved, or one without a model hilt's serve image can read.
    """
    where = f"{described.get('ModelPackageGroupName')}/{described.get('ModelPackageVersion')}"
    status = described.get("ModelApprovalStatus")
    if status != "Approved":
        raise UserError(f"{where} is {status}, not Approved; approve it first (aws sagemaker update-model-package "
                        f"--model-package-arn {described.get('ModelPackageArn')} --model-approval-status Approved)")
    (container,) = described["InferenceSpecification"]["Containers"][:1]
    realtime = described["InferenceSpecification"].get("SupportedRealtimeInferenceInstanceTypes") or []
    hardware = "gpu" if any(t in INSTANCE_TYPES["gpu"]["realtime"] for t in realtime) else "cpu"
    unit = (container.get("Environment") or {}).get("HILT_METERING_UNIT", "output_tokens")
    return model_package_request(name, container["Image"], container.get("ModelDataUrl"), role_arn, validation_input,
                                 validation_output, hardware, unit,
                                 description or described.get("ModelPackageDescription", ""),
                                 model_in_image=not container.get("ModelDataUrl"))
