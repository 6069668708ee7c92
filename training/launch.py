"""``hilt launch``: run a recipe as a real SageMaker training job.

Plain boto3 (``CreateTrainingJob``), not the SageMaker SDK's ``ModelTrainer``: hilt's
training image already is the entry point (``train``) and reads the SageMaker contract
itself, so the SDK would add a large dependency whose one job here is to build this
request, and with ``source_code`` it would swap our entry point for its own torchrun
driver. Building the request ourselves keeps it one dict that is validated strictly
against botocore's service model (the same validator as the Marketplace requests),
written by ``--dry-run``, and sent as is.

Data: a dataset directory is uploaded once to ``S3/datasets/<sha256>/`` — the dataset
hash from ``hilt export``'s manifest — and a ``<channel>.complete`` marker beside each channel
prefix is written last (outside it, so the job never downloads it), so a
second launch of the same data uploads nothing and a half-finished upload is redone.
A base model directory (the ``model`` channel) is addressed the same way.

Recipe: a bundled recipe travels by name (the image carries ``recipes/``); any other
recipe YAML travels whole as JSON in the ``recipe`` hyperparameter. ``--set`` overrides
become their own hyperparameters, as strings, exactly as ``hilt train`` writes them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from hilt.core.aws import split_s3_uri
from hilt.core.errors import UserError
from hilt.core.layout import require_model_dir
from hilt.training.base.methods import method_of
from hilt.training.base.recipe import BUNDLED_RECIPES_DIR, load_recipe, recipes_dir, resolve_recipe_path

MARKER_SUFFIX = ".complete"  # datasets/<hash>/train.complete: beside the channel prefix, not in it
DEFAULT_MAX_RUN = 24 * 3600
CONTENT_TYPE = "application/jsonlines"


@dataclass
class LaunchSpec:
    """Everything ``hilt launch`` was asked to do."""

    recipe: str
    image: str
    role: str
    data: str
    instance_type: str
    instance_count: int = 1
    s3: str | None = None
    model: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)
    spot: bool = False
    max_wait: int | None = None
    max_run: int = DEFAULT_MAX_RUN
    checkpoint_s3: str | None = None
    volume_gb: int = 100
    job_name: str | None = None
    tune: "TuneSpec | None" = None


@dataclass
class TuneSpec:
    """``hilt launch --tune``: a hyperparameter tuning job over the recipe's tunable ranges."""

    objective: str | None = None  # a TUNING_OBJECTIVES metric; eval_loss when there is validation data
    keys: list[str] | None = None  # recipe keys to tune; default: the ones the recipe's method uses
    max_jobs: int = 8
    max_parallel: int = 2
    strategy: str = "Bayesian"


def tree_sha256(root: Path) -> str:
    """sha256 over a directory's files (relative paths and bytes, in sorted order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def dataset_hash(data: Path) -> str:
    """The dataset's sha256 from ``hilt export``'s manifest, else a hash of its files."""
    manifest = data / "manifest.json"
    if manifest.is_file():
        value = json.loads(manifest.read_text()).get("dataset_sha256")
        if value:
            return value
    return tree_sha256(data)


def dataset_channels(data: Path) -> dict[str, Path]:
    """Local channel directories of a dataset: ``train`` (required) and ``validation``."""
    if not data.is_dir():
        raise UserError(f"--data {data}: no such directory; pass the folder `hilt export` wrote or an s3:// prefix")
    train = data / "train" if (data / "train").is_dir() else data
    if not any(train.glob("*.jsonl")):
        raise UserError(f"--data {data}: no train/*.jsonl; pass the folder `hilt export` wrote")
    channels = {"train": train}
    if (data / "validation").is_dir() and any((data / "validation").glob("*.jsonl")):
        channels["validation"] = data / "validation"
    return channels


def join_key(*parts: str) -> str:
    """S3 key parts joined by single slashes (empty parts dropped)."""
    return "/".join(p.strip("/") for p in parts if p.strip("/"))


def job_name(recipe_name: str, limit: int = 63, stamp_format: str = "%Y%m%d-%H%M%S") -> str:
    """``hilt-<recipe>-<UTC timestamp>``, trimmed to SageMaker's name pattern and ``limit``
    characters (63 for a training job; a tuning job has 32 and a shorter stamp)."""
    stamp = time.strftime(stamp_format, time.gmtime())
    base = re.sub(r"[^a-zA-Z0-9-]+", "-", f"hilt-{recipe_name}").strip("-")
    return f"{base[: limit - len(stamp) - 1].rstrip('-')}-{stamp}"


def recipe_hyperparameters(recipe: str, overrides: dict[str, str]) -> dict[str, str]:
    """The ``recipe`` hyperparameter (a bundled name, or the whole YAML as JSON) plus overrides."""
    path = resolve_recipe_path(recipe).resolve()
    if path.parent == BUNDLED_RECIPES_DIR.resolve() or path.parent == recipes_dir().resolve():
        value = path.stem
    else:
        import yaml

        value = json.dumps(yaml.safe_load(path.read_text()), separators=(",", ":"), sort_keys=True)
    return {"recipe": value, **{k: str(v) for k, v in overrides.items()}}


def build_request(spec: LaunchSpec, recipe, channel_uris: dict[str, str], s3_root: str,
                  dataset_sha256: str) -> dict:
    """The ``CreateTrainingJob`` request (not yet validated) for the spec's loaded ``recipe``."""
    from hilt.training.trainers.callbacks import METRIC_DEFINITIONS

    name = spec.job_name or job_name(recipe.name)
    stopping = {"MaxRuntimeInSeconds": spec.max_run}
    if spec.spot:
        stopping["MaxWaitTimeInSeconds"] = spec.max_wait or spec.max_run
    checkpoint = spec.checkpoint_s3 or f"s3://{join_key(s3_root[5:], 'checkpoints', name)}"
    request = {
        "TrainingJobName": name,
        "AlgorithmSpecification": {
            "TrainingImage": spec.image,
            "TrainingInputMode": "File",
            "MetricDefinitions": METRIC_DEFINITIONS,
            "EnableSageMakerMetricsTimeSeries": True,
        },
        "RoleArn": spec.role,
        "HyperParameters": recipe_hyperparameters(spec.recipe, spec.overrides),
        "InputDataConfig": [
            {
                "ChannelName": channel,
                "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri,
                                                "S3DataDistributionType": "FullyReplicated"}},
                **({"ContentType": CONTENT_TYPE} if channel != "model" else {}),
                "CompressionType": "None",
                "InputMode": "File",
            }
            for channel, uri in channel_uris.items()
        ],
        "OutputDataConfig": {"S3OutputPath": f"s3://{join_key(s3_root[5:], 'jobs')}"},
        "ResourceConfig": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count,
                           "VolumeSizeInGB": spec.volume_gb},
        "StoppingCondition": stopping,
        "EnableManagedSpotTraining": spec.spot,
        # Spot interruptions and restarts resume from here: the trainer checkpoints to /opt/ml/checkpoints.
        "CheckpointConfig": {"S3Uri": checkpoint, "LocalPath": "/opt/ml/checkpoints"},
        # SageMaker uploads the trainer's TensorBoard events (train.report_to) while the job runs.
        "TensorBoardOutputConfig": {"S3OutputPath": f"s3://{join_key(s3_root[5:], 'tensorboard')}",
                                    "LocalPath": "/opt/ml/output/tensorboard"},
        "Tags": [{"Key": "hilt:recipe", "Value": recipe.name[:256]},
                 {"Key": "hilt:dataset-sha256", "Value": dataset_sha256}],
    }
    return request


TUNING_STRATEGIES = ("Bayesian", "Random", "Hyperband", "Grid")


def default_tune_keys(recipe) -> list[str]:
    """The tunable keys that matter for this recipe's method and PEFT."""
    keys = ["train.learning_rate", "train.warmup_ratio"]
    if recipe.peft.method != "full":
        keys += ["peft.r", "peft.dropout"]
    keys += method_of(recipe.method).tune_keys()
    if recipe.train.max_steps <= 0:
        keys.append("train.epochs")
    return keys


def parameter_ranges(keys: list[str]) -> dict:
    """ParameterRanges from the recipe schema's ``tune`` ranges.

    Raises:
        UserError: for a key that is not a recipe key or has no tunable range.
    """
    from hilt.training.base.recipe import flat_fields, tuning_range

    fields = dict(flat_fields())
    ranges: dict[str, list] = {"IntegerParameterRanges": [], "ContinuousParameterRanges": [],
                               "CategoricalParameterRanges": []}
    tunable = sorted(k for k, f in fields.items() if tuning_range(f))
    for key in keys:
        if key not in fields or not tuning_range(fields[key]):
            raise UserError(f"--tune-keys {key}: not a tunable recipe key; tunable: {', '.join(tunable)}")
        low, high = tuning_range(fields[key])
        if fields[key].annotation is int:
            ranges["IntegerParameterRanges"].append(
                {"Name": key, "MinValue": str(int(low)), "MaxValue": str(int(high)), "ScalingType": "Auto"})
        else:
            # Decades apart (a learning rate): searched on a log scale.
            scaling = "Logarithmic" if low > 0 and high / low >= 100 else "Auto"
            ranges["ContinuousParameterRanges"].append(
                {"Name": key, "MinValue": repr(float(low)), "MaxValue": repr(float(high)), "ScalingType": scaling})
    return {k: v for k, v in ranges.items() if v}


def build_tuning_request(spec: LaunchSpec, recipe, training: dict) -> dict:
    """CreateHyperParameterTuningJob from the CreateTrainingJob request a plain launch would send.

    Raises:
        UserError: on an objective the trainer does not log, or eval_loss without validation data.
    """
    from hilt.training.trainers.callbacks import TUNING_OBJECTIVES

    tune = spec.tune
    channels = {c["ChannelName"] for c in training["InputDataConfig"]}
    objectives = {o["MetricName"]: o["Type"] for o in TUNING_OBJECTIVES}
    objective = tune.objective or ("eval_loss" if "validation" in channels else "train_loss")
    if objective not in objectives:
        raise UserError(f"--objective {objective}: use one of {', '.join(objectives)}")
    if objective == "eval_loss" and "validation" not in channels:
        raise UserError("--objective eval_loss needs validation data: export with --validation-fraction > 0 "
                        "(a validation/ folder in --data) or tune on --objective train_loss")
    if tune.strategy not in TUNING_STRATEGIES:
        raise UserError(f"--strategy {tune.strategy}: use one of {', '.join(TUNING_STRATEGIES)}")
    if not 1 <= tune.max_parallel <= tune.max_jobs:
        raise UserError(f"--max-parallel {tune.max_parallel}: must be between 1 and --max-jobs {tune.max_jobs}")
    keys = tune.keys or default_tune_keys(recipe)
    ranges = parameter_ranges(keys)
    static = {k: v for k, v in training["HyperParameters"].items() if k not in keys}
    algorithm = {k: v for k, v in training["AlgorithmSpecification"].items()
                 if k in ("TrainingImage", "TrainingInputMode", "MetricDefinitions")}
    definition = {
        "StaticHyperParameters": static,
        "AlgorithmSpecification": algorithm,
        "RoleArn": training["RoleArn"],
        "InputDataConfig": training["InputDataConfig"],
        "OutputDataConfig": training["OutputDataConfig"],
        "ResourceConfig": training["ResourceConfig"],
        "StoppingCondition": training["StoppingCondition"],
        "EnableManagedSpotTraining": training["EnableManagedSpotTraining"],
        # No CheckpointConfig: trials differ in their hyperparameters, and a trial must never
        # resume another's checkpoints (the entry point would refuse them).
    }
    return {
        "HyperParameterTuningJobName": job_name(recipe.name, limit=32, stamp_format="%m%d%H%M%S"),
        "HyperParameterTuningJobConfig": {
            "Strategy": tune.strategy,
            "HyperParameterTuningJobObjective": {"Type": objectives[objective], "MetricName": objective},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": tune.max_jobs,
                               "MaxParallelTrainingJobs": tune.max_parallel},
            "ParameterRanges": ranges,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": definition,
        "Tags": training["Tags"],
    }


def check_spec(spec: LaunchSpec):
    """Problems the service model cannot see, caught before anything is uploaded. Returns the recipe."""
    if spec.max_wait is not None and not spec.spot:
        raise UserError("--max-wait applies to managed spot training only; add --spot or drop --max-wait")
    if spec.spot and spec.max_wait is not None and spec.max_wait < spec.max_run:
        raise UserError(f"--max-wait {spec.max_wait} is shorter than --max-run {spec.max_run}; SageMaker needs "
                        "MaxWaitTimeInSeconds >= MaxRuntimeInSeconds: raise --max-wait")
    recipe = load_recipe(spec.recipe, spec.overrides)
    if recipe.model.name_or_path is None and not spec.model:
        raise UserError(f"recipe {recipe.name} names no base model (model.name_or_path is null): pass --model "
                        "DIR|s3://… (the `model` channel) or --set model.name_or_path=HUB_ID")
    gpu_family = re.match(r"^ml\.(p\d|g\d|trn|inf)", spec.instance_type)
    if recipe.peft.method == "qlora" and not gpu_family:
        raise UserError(f"recipe {recipe.name} uses QLoRA, which needs CUDA; --instance-type {spec.instance_type} "
                        "has no GPU: pick an ml.g5/ml.p4d/ml.p5 type")
    if spec.data.startswith("s3://") is False and not Path(spec.data).is_dir():
        raise UserError(f"--data {spec.data}: no such directory; pass the folder `hilt export` wrote or an s3:// prefix")
    return recipe


def _exists(s3, bucket: str, key: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def upload_once(s3, local: Path, uri: str, label: str) -> bool:
    """Upload ``local``'s files under ``uri`` unless its marker is there. Returns True if uploaded."""
    from tqdm.auto import tqdm

    bucket, prefix = split_s3_uri(uri)
    marker = prefix + MARKER_SUFFIX
    if _exists(s3, bucket, marker):
        print(f"[hilt] {label}: {uri} already uploaded (same hash), reused")
        return False
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for path in tqdm(files, desc=f"uploading {label}", unit="file"):
        s3.upload_file(str(path), bucket, join_key(prefix, path.relative_to(local).as_posix()))
    s3.put_object(Bucket=bucket, Key=marker, Body=json.dumps({"files": len(files)}).encode())
    print(f"[hilt] {label}: {len(files)} files uploaded to {uri}")
    return True


def default_s3_root(region: str | None) -> str:
    """The SageMaker SDK's default bucket, ``s3://sagemaker-<region>-<account>/hilt``; created if missing."""
    import boto3
    from botocore.exceptions import ClientError

    session = boto3.session.Session(region_name=region or None)
    account = session.client("sts").get_caller_identity()["Account"]
    region_name = session.region_name or "us-east-1"
    bucket = f"sagemaker-{region_name}-{account}"
    s3 = session.client("s3")
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError:
        config = {} if region_name == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region_name}}
        s3.create_bucket(Bucket=bucket, **config)
    return f"s3://{bucket}/hilt"


def plan(spec: LaunchSpec, s3_root: str, s3=None) -> tuple[dict[str, str], dict[str, Path], str]:
    """(channel -> S3 URI, channel -> local dir to upload, dataset hash); reads S3 only to list an s3:// --data."""
    uris: dict[str, str] = {}
    uploads: dict[str, Path] = {}
    bucket_path = s3_root[5:]
    if spec.data.startswith("s3://"):
        # A prefix laid out as hilt uploads datasets: train/ and, if present, validation/.
        bucket, prefix = split_s3_uri(spec.data)
        last = prefix.rsplit("/", 1)[-1]
        data_hash = last if re.fullmatch(r"[0-9a-f]{64}", last) else hashlib.sha256(spec.data.encode()).hexdigest()
        for channel in ("train", "validation"):
            if s3 is not None:
                listed = s3.list_objects_v2(Bucket=bucket, Prefix=join_key(prefix, channel) + "/", MaxKeys=1)
                if not listed.get("KeyCount"):
                    if channel == "train":
                        raise UserError(f"--data {spec.data}: nothing under {channel}/; upload a dataset laid out "
                                        "as train/data.jsonl (and validation/) or pass a local dataset dir")
                    continue
            elif channel == "validation":
                continue
            uris[channel] = f"s3://{join_key(bucket, prefix, channel)}/"
    else:
        data = Path(spec.data)
        data_hash = dataset_hash(data)
        for channel, directory in dataset_channels(data).items():
            uris[channel] = f"s3://{join_key(bucket_path, 'datasets', data_hash, channel)}/"
            uploads[channel] = directory
    if spec.model:
        if spec.model.startswith("s3://"):
            uris["model"] = spec.model
        else:
            model = Path(spec.model)
            require_model_dir(model, "--model")
            uris["model"] = f"s3://{join_key(bucket_path, 'models', tree_sha256(model))}/"
            uploads["model"] = model
    return uris, uploads, data_hash


def launch(spec: LaunchSpec, dry_run: bool, out: Path | None, region: str | None = None) -> dict:
    """Validate, upload (once), build, validate strictly, and submit (unless dry run).

    Returns:
        ``{"request": ..., "uploaded": [...], "arn": ..., "status": ...}``.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from hilt.core.aws import clients, validate_request

    recipe = check_spec(spec)
    if spec.s3 is None and dry_run:
        raise UserError("--dry-run needs --s3 s3://bucket/prefix (where datasets and outputs go); without it "
                        "hilt asks AWS for the default SageMaker bucket, which needs credentials")
    s3, sagemaker = (None, None) if dry_run else clients(region=region)  # no credentials: one-line error
    try:
        s3_root = spec.s3 or default_s3_root(region)
    except (BotoCoreError, ClientError) as err:
        raise UserError(f"could not find the default SageMaker bucket ({err}); pass --s3 s3://bucket/prefix") from None
    split_s3_uri(s3_root)
    try:
        channel_uris, uploads, data_hash = plan(spec, s3_root, s3)
        request = build_request(spec, recipe, channel_uris, s3_root, data_hash)
        validate_request("CreateTrainingJob", request)
        if spec.tune is not None:
            request = build_tuning_request(spec, recipe, request)
            validate_request("CreateHyperParameterTuningJob", request)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(request, indent=2) + "\n")
        result: dict = {"request": request, "uploaded": []}
        if dry_run:
            return result
        for channel, directory in uploads.items():
            if upload_once(s3, directory, channel_uris[channel], channel):
                result["uploaded"].append(channel)
        if spec.tune is not None:
            name = request["HyperParameterTuningJobName"]
            result["arn"] = sagemaker.create_hyper_parameter_tuning_job(**request)["HyperParameterTuningJobArn"]
            result["status"] = sagemaker.describe_hyper_parameter_tuning_job(
                HyperParameterTuningJobName=name)["HyperParameterTuningJobStatus"]
        else:
            result["arn"] = sagemaker.create_training_job(**request)["TrainingJobArn"]
            result["status"] = sagemaker.describe_training_job(TrainingJobName=request["TrainingJobName"])[
                "TrainingJobStatus"]
    except ClientError as err:
        error = err.response.get("Error", {})
        raise UserError(f"AWS refused the launch: {error.get('Code')}: {error.get('Message')}") from None
    except BotoCoreError as err:
        raise UserError(f"could not reach AWS to launch: {err}") from None
    return result
