"""`hilt launch` against a local moto server over HTTP: upload once, CreateTrainingJob, dry run, errors.

And the contract between the two ends: the request's HyperParameters, written into an
/opt/ml tree as SageMaker would, give the training entry point the recipe that was launched.
"""

from __future__ import annotations

import json
import os

import boto3
import pytest

from conftest import run_hilt
from hilt.training.base.job import read_job
from hilt.training.base.recipe import load_recipe

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-train:0.1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"


def _aws(moto_server, service):
    return boto3.client(service, endpoint_url=moto_server["url"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _objects(s3, bucket):
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}


def _launch(hilt_exe, moto_server, *args):
    return run_hilt(hilt_exe, "launch", "quickstart-tiny-sft", "--image", IMAGE, "--role", ROLE,
                    "--instance-type", "ml.m5.xlarge", *args, env=moto_server["env"])


MODEL_S3 = "s3://hilt-models/tiny/"  # a base model already in S3 (quickstart names none itself)


def test_launch_uploads_once_and_submits(hilt_exe, moto_server, dataset_dir, tiny_model_dir, tmp_path):
    from hilt.training.launch import tree_sha256

    s3, sagemaker = _aws(moto_server, "s3"), _aws(moto_server, "sagemaker")
    s3.create_bucket(Bucket="hilt-launch")
    common = ["--data", str(dataset_dir), "--model", str(tiny_model_dir), "--s3", "s3://hilt-launch/team",
              "--spot", "--max-wait", "90000", "--max-run", "3600", "--instance-count", "2",
              "--set", "train.max_steps=10", "--set", "train.learning_rate=1e-3"]
    first = _launch(hilt_exe, moto_server, *common, "--job-name", "hilt-first")
    assert first.returncode == 0, first.stdout + first.stderr[-2000:]
    data_hash, model_hash = tree_sha256(dataset_dir), tree_sha256(tiny_model_dir)
    objects = _objects(s3, "hilt-launch")
    prefix = f"team/datasets/{data_hash}"
    assert {f"{prefix}/train/data.jsonl", f"{prefix}/validation/data.jsonl", f"{prefix}/train.complete",
            f"{prefix}/validation.complete", f"team/models/{model_hash}/config.json",
            f"team/models/{model_hash}.complete"} <= set(objects)
    body = s3.get_object(Bucket="hilt-launch", Key=f"{prefix}/train/data.jsonl")["Body"].read()
    assert body == (dataset_dir / "train" / "data.jsonl").read_bytes()

    job = sagemaker.describe_training_job(TrainingJobName="hilt-first")
    assert job["HyperParameters"] == {"recipe": "quickstart-tiny-sft", "train.max_steps": "10",
                                      "train.learning_rate": "0.001"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]}
    assert channels == {"train": f"s3://hilt-launch/{prefix}/train/",
                        "validation": f"s3://hilt-launch/{prefix}/validation/",
                        "model": f"s3://hilt-launch/team/models/{model_hash}/"}
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 90000}
    assert job["CheckpointConfig"] == {"S3Uri": "s3://hilt-launch/team/checkpoints/hilt-first",
                                       "LocalPath": "/opt/ml/checkpoints"}
    assert job["ResourceConfig"]["InstanceCount"] == 2 and job["ResourceConfig"]["InstanceType"] == "ml.m5.xlarge"
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://hilt-launch/team/jobs"
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE

    # Same data again: nothing is uploaded twice (same keys, same ETags and times).
    second = _launch(hilt_exe, moto_server, *common, "--job-name", "hilt-second")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already uploaded (same hash), reused" in second.stdout and "uploaded: nothing new" in second.stdout
    assert _objects(s3, "hilt-launch") == objects
    assert {"hilt-first", "hilt-second"} <= {j["TrainingJobName"] for j in
                                             sagemaker.list_training_jobs()["TrainingJobSummaries"]}

    # The uploaded prefix itself as --data: its channels are found by listing, its hash kept.
    third = _launch(hilt_exe, moto_server, "--data", f"s3://hilt-launch/{prefix}", "--model", MODEL_S3,
                    "--s3", "s3://hilt-launch/team", "--job-name", "hilt-third")
    assert third.returncode == 0, third.stderr[-2000:]
    job = sagemaker.describe_training_job(TrainingJobName="hilt-third")
    assert {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in job["InputDataConfig"]} == {
        "train": f"s3://hilt-launch/{prefix}/train/", "validation": f"s3://hilt-launch/{prefix}/validation/",
        "model": MODEL_S3}
    assert {"Key": "hilt:dataset-sha256", "Value": data_hash} in sagemaker.list_tags(
        ResourceArn=job["TrainingJobArn"])["Tags"]
    empty = _launch(hilt_exe, moto_server, "--data", "s3://hilt-launch/nothing-here", "--model", MODEL_S3,
                    "--s3", "s3://hilt-launch/team")
    assert empty.returncode == 2 and "nothing under train/" in empty.stderr


def test_dry_run_writes_a_valid_request_and_sends_nothing(hilt_exe, moto_server, dataset_dir, tmp_path):
    from hilt.core.aws import validate_request

    s3 = _aws(moto_server, "s3")
    s3.create_bucket(Bucket="hilt-dry")
    out = tmp_path / "request.json"
    result = _launch(hilt_exe, moto_server, "--data", str(dataset_dir), "--s3", "s3://hilt-dry/x", "--dry-run",
                     "--model", MODEL_S3, "--checkpoint-s3", "s3://hilt-dry/ckpt/run-1",
                     "--out", str(out), "--job-name", "hilt-dry-run")
    assert result.returncode == 0, result.stderr
    request = json.loads(out.read_text())
    validate_request("CreateTrainingJob", request)
    assert all(isinstance(v, str) for v in request["HyperParameters"].values())
    assert request["EnableManagedSpotTraining"] is False and "MaxWaitTimeInSeconds" not in request["StoppingCondition"]
    assert request["CheckpointConfig"] == {"S3Uri": "s3://hilt-dry/ckpt/run-1", "LocalPath": "/opt/ml/checkpoints"}
    assert {d["Name"] for d in request["AlgorithmSpecification"]["MetricDefinitions"]} >= {"train_loss", "eval_loss"}
    assert _objects(s3, "hilt-dry") == {}
    names = {j["TrainingJobName"] for j in _aws(moto_server, "sagemaker").list_training_jobs()["TrainingJobSummaries"]}
    assert "hilt-dry-run" not in names


def test_default_bucket_from_sts(hilt_exe, moto_server, dataset_dir):
    result = _launch(hilt_exe, moto_server, "--data", str(dataset_dir), "--model", MODEL_S3,
                     "--job-name", "hilt-default-bucket")
    assert result.returncode == 0, result.stderr[-2000:]
    keys = _objects(_aws(moto_server, "s3"), "sagemaker-us-east-1-123456789012")
    assert any(k.startswith("hilt/datasets/") and k.endswith("train/data.jsonl") for k in keys)


@pytest.mark.parametrize("args, message", [
    (["--max-wait", "100"], "--max-wait applies to managed spot training only"),
    (["--spot", "--max-wait", "100", "--max-run", "200"], "raise --max-wait"),
    (["--instance-type", "ml.fake.huge"], "ResourceConfig.InstanceType: 'ml.fake.huge' is not one of"),
    (["--role", "not-an-arn"], "RoleArn"),
    (["--set", "train.learnin_rate=1"], "did you mean 'train.learning_rate'"),
    (["--job-name", "bad_name!"], "TrainingJobName"),
    (["--model", ""], "names no base model"),
])
def test_launch_refuses_bad_requests_in_one_line(hilt_exe, moto_server, dataset_dir, args, message):
    result = run_hilt(hilt_exe, "launch", "quickstart-tiny-sft", "--image", IMAGE, "--role", ROLE,
                      "--instance-type", "ml.m5.xlarge", "--data", str(dataset_dir), "--s3", "s3://b/p",
                      "--model", MODEL_S3, "--dry-run", "--out", "/dev/null", *args, env=moto_server["env"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_qlora_needs_a_gpu_instance(hilt_exe, dataset_dir):
    result = run_hilt(hilt_exe, "launch", "llama3-8b-sft-qlora", "--image", IMAGE, "--role", ROLE,
                      "--instance-type", "ml.m5.xlarge", "--data", str(dataset_dir), "--s3", "s3://b/p", "--dry-run",
                      "--out", "/dev/null")
    assert result.returncode == 2 and "needs CUDA" in result.stderr


@pytest.mark.parametrize("custom", [False, True])
def test_launched_hyperparameters_give_the_entry_point_the_same_recipe(custom, dataset_dir, tiny_model_dir, tmp_path,
                                                                     opt_ml):
    from hilt.training.launch import LaunchSpec, launch

    recipe = "quickstart-tiny-sft"
    if custom:  # a recipe outside recipes/ travels whole, as JSON
        recipe_file = tmp_path / "mine.yaml"
        recipe_file.write_text(load_recipe("quickstart-tiny-sft").model_copy(update={"name": "mine"})
                               .model_dump_json())
        recipe = str(recipe_file)
    overrides = {"train.max_steps": "7", "peft.r": "8"}
    spec = LaunchSpec(recipe=recipe, image=IMAGE, role=ROLE, data=str(dataset_dir), instance_type="ml.m5.xlarge",
                      s3="s3://b/p", model=str(tiny_model_dir), overrides=overrides, job_name="contract")
    request = launch(spec, dry_run=True, out=None)["request"]
    opt_ml.hyperparameters_file.write_text(json.dumps(request["HyperParameters"]))
    assert {c["ChannelName"] for c in request["InputDataConfig"]} == {"train", "validation", "model"}
    opt_ml.channel_dir("model").symlink_to(tiny_model_dir, target_is_directory=True)
    for channel in ("train", "validation"):
        opt_ml.channel_dir(channel).mkdir(parents=True, exist_ok=True)
        (opt_ml.channel_dir(channel) / "data.jsonl").write_bytes((dataset_dir / channel / "data.jsonl").read_bytes())
    job = read_job(opt_ml)
    assert job.recipe == load_recipe(recipe, overrides)
    assert job.recipe.train.max_steps == 7 and job.recipe.peft.r == 8
    assert (job.recipe.name == "mine") is custom


def test_without_credentials_launch_says_so_and_dry_run_still_works(hilt_exe, dataset_dir, tmp_path):
    assert "AWS_PROFILE" not in os.environ
    no_aws = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none"),
              "AWS_EC2_METADATA_DISABLED": "true"}
    args = ["launch", "quickstart-tiny-sft", "--image", IMAGE, "--role", ROLE, "--instance-type", "ml.m5.xlarge",
            "--data", str(dataset_dir), "--model", MODEL_S3]
    result = run_hilt(hilt_exe, *args, env=no_aws)
    assert result.returncode == 2 and "no AWS credentials" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    dry = run_hilt(hilt_exe, *args, "--s3", "s3://b/p", "--dry-run", "--out", str(tmp_path / "r.json"), env=no_aws)
    assert dry.returncode == 0 and (tmp_path / "r.json").is_file()


def test_tune_writes_and_sends_a_tuning_job(hilt_exe, moto_server, dataset_dir, tmp_path):
    from hilt.core.aws import validate_request

    s3 = _aws(moto_server, "s3")
    s3.create_bucket(Bucket="hilt-tune")
    out = tmp_path / "tuning.json"
    result = _launch(hilt_exe, moto_server, "--data", str(dataset_dir), "--s3", "s3://hilt-tune/x", "--model",
                     MODEL_S3, "--tune", "--dry-run", "--out", str(out), "--max-jobs", "6", "--max-parallel", "3")
    assert result.returncode == 0, result.stderr
    request = json.loads(out.read_text())
    validate_request("CreateHyperParameterTuningJob", request)
    config = request["HyperParameterTuningJobConfig"]
    # dataset_dir has validation/: the objective is the held-out loss, minimised.
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "eval_loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    continuous = {r["Name"]: r for r in config["ParameterRanges"]["ContinuousParameterRanges"]}
    assert continuous["train.learning_rate"] == {"Name": "train.learning_rate", "MinValue": "1e-06",
                                                 "MaxValue": "0.01", "ScalingType": "Logarithmic"}
    assert {r["Name"] for r in config["ParameterRanges"]["IntegerParameterRanges"]} == {"peft.r"}
    definition = request["TrainingJobDefinition"]
    # Tuned keys are not also static; the recipe and the rest travel as SageMaker strings.
    assert "train.learning_rate" not in definition["StaticHyperParameters"]
    assert definition["StaticHyperParameters"]["recipe"] == "quickstart-tiny-sft"
    assert "CheckpointConfig" not in definition  # trials must not resume each other's checkpoints
    assert {d["Name"] for d in definition["AlgorithmSpecification"]["MetricDefinitions"]} >= {"eval_loss"}

    # Sent to moto, which implements CreateHyperParameterTuningJob.
    result = _launch(hilt_exe, moto_server, "--data", str(dataset_dir), "--s3", "s3://hilt-tune/x", "--model",
                     MODEL_S3, "--tune", "--tune-keys", "train.learning_rate,peft.alpha", "--objective", "train_loss")
    assert result.returncode == 0, result.stderr
    assert "Bayesian over train.learning_rate, peft.alpha" in result.stdout or \
        "Bayesian over peft.alpha, train.learning_rate" in result.stdout
    listed = _aws(moto_server, "sagemaker").list_hyper_parameter_tuning_jobs()["HyperParameterTuningJobSummaries"]
    assert any(j["HyperParameterTuningJobName"].startswith("hilt-quickstart") for j in listed)


@pytest.mark.parametrize("args, message", [
    (("--tune-keys", "train.seed"), "--tune-keys train.seed: not a tunable recipe key; tunable: "),
    (("--objective", "accuracy"), "--objective accuracy: use one of eval_loss, train_loss"),
    (("--max-jobs", "2", "--max-parallel", "3"), "--max-parallel 3: must be between 1 and --max-jobs 2"),
])
def test_tune_refuses_bad_settings_in_one_line(hilt_exe, moto_server, dataset_dir, tmp_path, args, message):
    result = _launch(hilt_exe, moto_server, "--data", str(dataset_dir), "--s3", "s3://hilt-tune/x", "--model",
                     MODEL_S3, "--tune", "--dry-run", "--out", str(tmp_path / "t.json"), *args)
    assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_tune_on_eval_loss_needs_validation_data(hilt_exe, moto_server, tmp_path):
    from tasks import write_channel, uppercase_example
    import random

    data = tmp_path / "train-only"
    write_channel(data / "train", [uppercase_example(random.Random(0)) for _ in range(4)])
    result = _launch(hilt_exe, moto_server, "--data", str(data), "--s3", "s3://hilt-tune/x", "--model", MODEL_S3,
                     "--tune", "--dry-run", "--out", str(tmp_path / "t.json"), "--objective", "eval_loss")
    assert result.returncode == 2 and "--objective eval_loss needs validation data" in result.stderr
