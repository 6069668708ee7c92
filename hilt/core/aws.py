"""Every botocore/boto3 call hilt makes: strict offline validation, and submission.

Shared by the training launcher (``hilt launch``) and the Marketplace requests
(``hilt package``), so it sits in the glue package that every stage may import.

botocore's own ``ParamValidator`` checks required keys and types against SageMaker's
service model, but not enums, patterns or length/value bounds (``SplitType: "Lines"``,
a malformed role ARN or a 200-character name all pass it). ``validate_request`` runs it
and then walks the same shapes for that metadata, so a request that validates here is
one SageMaker's API would accept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError

SERVICE = "sagemaker"
# SageMaker's ModelApprovalStatus values (a model package version's state in the Model Registry).
APPROVAL_STATUSES = ("PendingManualApproval", "Approved", "Rejected")


def _service_model():
    import botocore.session

    return botocore.session.get_session().get_service_model(SERVICE)


def _walk(value: Any, shape, path: str, problems: list[str]) -> None:
    import regex  # supports the \p{L}-style classes AWS patterns use

    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                _walk(value[name], member, f"{path}.{name}", problems)
    elif kind == "list" and isinstance(value, list):
        if "min" in meta and len(value) < meta["min"]:
            problems.append(f"{path}: needs at least {meta['min']} item(s), has {len(value)}")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: at most {meta['max']} item(s), has {len(value)}")
        for i, item in enumerate(value):
            _walk(item, shape.member, f"{path}[{i}]", problems)
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: at most {meta['max']} entries, has {len(value)}")
        for key, item in value.items():
            _walk(key, shape.key, f"{path}.<key {key!r}>", problems)
            _walk(item, shape.value, f"{path}[{key!r}]", problems)
    elif kind == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            allowed = ", ".join(shape.enum[:12]) + (" ..." if len(shape.enum) > 12 else "")
            problems.append(f"{path}: {value!r} is not one of {allowed}")
        if "min" in meta and len(value) < meta["min"]:
            problems.append(f"{path}: shorter than {meta['min']} characters")
        if "max" in meta and len(value) > meta["max"]:
            problems.append(f"{path}: longer than {meta['max']} characters ({len(value)})")
        pattern = meta.get("pattern")
        if pattern and not regex.fullmatch(pattern, value):
            problems.append(f"{path}: {value[:80]!r} does not match the pattern {pattern}")
    elif kind in ("integer", "long", "float", "double") and isinstance(value, (int, float)):
        if "min" in meta and value < meta["min"]:
            problems.append(f"{path}: {value} is below the minimum {meta['min']}")
        if "max" in meta and value > meta["max"]:
            problems.append(f"{path}: {value} is above the maximum {meta['max']}")


def validate_request(operation: str, params: dict) -> None:
    """Validate ``params`` for a SageMaker ``operation`` against botocore's service model.

    Raises:
        UserError: listing every problem with its path (``CreateModelPackage.ValidationSpecification...``).
    """
    from botocore.validate import ParamValidator

    model = _service_model()
    if operation not in model.operation_names:
        raise UserError(f"unknown SageMaker operation {operation}")
    input_shape = model.operation_model(operation).input_shape
    problems: list[str] = []
    report = ParamValidator().validate(params, input_shape)
    if report.has_errors():
        problems += [line.strip() for line in report.generate_report().splitlines() if line.strip()]
    _walk(params, input_shape, operation, problems)
    if problems:
        raise UserError(f"{operation} request is invalid ({len(problems)} problem(s)): " + "; ".join(problems))


def operation_of(request: dict) -> str:
    if "ModelPackageName" in request or "ModelPackageGroupName" in request:
        return "CreateModelPackage"
    if "AlgorithmName" in request:
        return "CreateAlgorithm"
    if "TrainingJobName" in request:
        return "CreateTrainingJob"
    raise UserError("request file is not a CreateModelPackage, CreateAlgorithm or CreateTrainingJob request")


def clients(endpoint_url: str | None = None, region: str | None = None):
    """(s3, sagemaker) boto3 clients; ``AWS_ENDPOINT_URL`` (e.g. a moto server) is honoured by boto3."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        session = boto3.session.Session(region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")
    except ProfileNotFound as err:
        raise UserError(f"{err}; set AWS_PROFILE to a profile in ~/.aws/config or unset it") from None
    if session.get_credentials() is None:
        raise UserError("no AWS credentials: the request is written and validated but cannot be sent; "
                        "configure credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID) to submit it")
    kwargs = {"endpoint_url": endpoint_url} if endpoint_url else {}
    return session.client("s3", **kwargs), session.client(SERVICE, **kwargs)


_GROUP_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # SageMaker's ModelPackageGroupName pattern
_GROUP_ARN = re.compile(r"^arn:aws[a-z-]*:sagemaker:[a-z0-9-]+:\d{12}:model-package-group/(.+)$")


def model_package_group_name(value: str, flag: str = "--group") -> str:
    """The group's name from a name or its ARN, checked against SageMaker's pattern (botocore checks no
    patterns offline: an ARN passed as a name created a group called by the ARN).

    Raises:
        UserError: not a valid group name or ARN.
    """
    match = _GROUP_ARN.match(value)
    name = match.group(1) if match else value
    if not _GROUP_NAME.match(name):
        raise UserError(f"{flag} {value!r}: a model package group name is 1-63 letters, digits and hyphens "
                        "(not starting or ending with a hyphen), or that group's ARN")
    return name


def ensure_model_package_group(sagemaker, group: str, description: str) -> bool:
    """Create the model package group unless it exists. Returns True when it was created."""
    from botocore.exceptions import ClientError

    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=group)
        return False
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("ValidationException", "ResourceNotFound"):
            raise
    sagemaker.create_model_package_group(ModelPackageGroupName=group, ModelPackageGroupDescription=description)
    return True


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> (bucket, key/prefix)."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise UserError(f"{uri}: expected an S3 URI like s3://bucket/prefix")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def upload_file(s3, path: Path, s3_uri: str) -> str:
    if not s3_uri.startswith("s3://") or "/" not in s3_uri[5:]:
        raise UserError(f"{s3_uri}: expected s3://bucket/key")
    bucket, key = s3_uri[5:].split("/", 1)
    s3.upload_file(str(path), bucket, key)
    return s3_uri


def send_request(sagemaker, request: dict) -> dict:
    """Validate strictly, then call the request's operation on a SageMaker client."""
    operation = operation_of(request)
    validate_request(operation, request)
    if operation == "CreateModelPackage":
        arn = sagemaker.create_model_package(**request)["ModelPackageArn"]
        described = sagemaker.describe_model_package(ModelPackageName=request["ModelPackageName"])
        return {"operation": operation, "arn": arn, "status": described.get("ModelPackageStatus")}
    if operation == "CreateAlgorithm":
        return {"operation": operation, "arn": sagemaker.create_algorithm(**request)["AlgorithmArn"]}
    return {"operation": operation, "arn": sagemaker.create_training_job(**request)["TrainingJobArn"]}


def submit_request(request_file: Path, upload: tuple[Path, str] | None = None, endpoint_url: str | None = None,
                   region: str | None = None) -> dict:
    """Validate and send a request written by ``hilt package request``.

    With ``upload`` (model.tar.gz, s3 URI) the archive is uploaded first and the request's
    ModelDataUrl points at it. Returns what SageMaker answered (ARN, and status where
    there is one to describe).
    """
    from botocore.exceptions import BotoCoreError, ClientError

    request = json.loads(request_file.read_text())
    operation = operation_of(request)
    s3, sagemaker = clients(endpoint_url, region)
    try:
        if upload is not None:
            path, uri = upload
            upload_file(s3, path, uri)
            if operation == "CreateModelPackage":
                for container in request["InferenceSpecification"]["Containers"]:
                    container["ModelDataUrl"] = uri
        return send_request(sagemaker, request)
    except ClientError as err:
        error = err.response.get("Error", {})
        raise UserError(f"SageMaker refused {operation}: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as err:
        raise UserError(f"could not reach AWS for {operation}: {err}") from None
