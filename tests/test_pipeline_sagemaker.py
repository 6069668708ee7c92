"""`hilt pipeline export --sagemaker`: the pipeline as a SageMaker Pipelines definition, parsed back
step by step, each step's arguments validated against botocore as the API call it becomes, and
created, updated and started on moto over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import run_hilt

pytest.importorskip("sagemaker", reason="the SageMaker SDK extra (pip install 'hilt[sagemaker]') is not installed")

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
TRAIN_IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/hilt-train:0.1.0"
SERVE_IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:0.1.0"


def write_pipeline(folder: Path, **changes) -> Path:
    data = {
        "name": "assistant",
        "source": {"project": 1, "template": "sft"},
        "export": {"validation_fraction": 0.15},
        "train": {"recipe": "quickstart-tiny-sft", "model": "s3://bucket/hilt/models/tiny/",
                  "set": {"train.max_steps": 200},
                  "sagemaker": {"image": TRAIN_IMAGE, "role": ROLE, "instance_type": "ml.g5.2xlarge",
                                "s3": "s3://bucket/hilt", "spot": True, "max_wait": 90000}},
        "evaluate": {"gates": ["exact_match>=+0.2", "loss<=-0.1", "rougeL>=0.5"], "max_new_tokens": 48},
        "request": {"name": "hilt-assistant", "image": SERVE_IMAGE, "role": ROLE, "s3": "s3://bucket/hilt/packages",
                    "hardware": "gpu"},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def resolve(value, parameters: dict, steps: dict):
    """A definition's expression as the value SageMaker gives it at run time."""
    if isinstance(value, dict):
        if set(value) == {"Get"}:
            ref = value["Get"]
            if ref.startswith("Parameters."):
                return parameters[ref.split(".", 1)[1]]
            if ref.startswith("Execution."):
                return "execution-0001"
            return steps[ref]
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return join["On"].join(str(resolve(v, parameters, steps)) for v in join["Values"])
        return {k: resolve(v, parameters, steps) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, parameters, steps) for v in value]
    return value


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from hilt.flows.sagemaker_pipeline import export

    folder = tmp_path_factory.mktemp("sm-pipeline")
    out = folder / "definition.json"
    result = export(write_pipeline(folder), out)
    return result, json.loads(out.read_text())


def test_definition_parses_back_step_by_step(exported):
    from hilt.training.launch import recipe_hyperparameters

    result, definition = exported
    assert result["pipeline"] == "hilt-assistant"
    assert result["steps"] == ["Train", "Evaluate", "CheckGates", "Register-RegisterModel", "GateFailed"]
    parameters = {p["Name"]: p.get("DefaultValue") for p in definition["Parameters"]}
    assert parameters == {"DatasetS3Uri": "s3://bucket/hilt/datasets/latest",
                          "BaseModelS3Uri": "s3://bucket/hilt/models/tiny/",
                          "TrainingInstanceType": "ml.g5.2xlarge", "TrainingInstanceCount": 1,
                          "EvaluationInstanceType": "ml.g5.2xlarge", "ModelApprovalStatus": "PendingManualApproval"}
    train, evaluate, gates = definition["Steps"]
    assert [s["Type"] for s in definition["Steps"]] == ["Training", "Processing", "Condition"]

    # Train: the recipe as hyperparameters, spot, per-execution checkpoints, TensorBoard, the channels.
    args = train["Arguments"]
    assert args["HyperParameters"] == recipe_hyperparameters("quickstart-tiny-sft", {"train.max_steps": "200"})
    assert args["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert args["EnableManagedSpotTraining"] is True
    assert args["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400, "MaxWaitTimeInSeconds": 90000}
    assert {"Get": "Execution.PipelineExecutionId"} in args["CheckpointConfig"]["S3Uri"]["Std:Join"]["Values"]
    assert args["CheckpointConfig"]["LocalPath"] == "/opt/ml/checkpoints"
    assert args["TensorBoardOutputConfig"]["LocalPath"] == "/opt/ml/output/tensorboard"
    assert args["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in args["InputDataConfig"]}
    assert channels["train"] == {"Std:Join": {"On": "/", "Values": [{"Get": "Parameters.DatasetS3Uri"}, "train/"]}}
    assert set(channels) == {"train", "validation", "model"}
    assert channels["model"] == {"Get": "Parameters.BaseModelS3Uri"}
    assert {m["Name"] for m in args["AlgorithmSpecification"]["MetricDefinitions"]} >= {"train_loss", "eval_loss"}

    # Evaluate: `hilt evaluate` on the training image, reading the Train step's model artifacts; no
    # --gate (the ConditionStep holds them, so a miss ends in GateFailed with eval.json kept).
    args = evaluate["Arguments"]
    command = args["AppSpecification"]["ContainerEntrypoint"]
    assert command[:2] == ["hilt", "evaluate"] and "--gate" not in command
    assert command[command.index("--baseline") + 1] == "/opt/ml/processing/baseline"
    assert command[command.index("--max-new-tokens") + 1] == "48"
    assert args["AppSpecification"]["ImageUri"] == TRAIN_IMAGE
    inputs = {i["InputName"]: i["S3Input"] for i in args["ProcessingInputs"]}
    assert inputs["model"]["S3Uri"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert inputs["model"]["LocalPath"] == command[command.index("--model") + 1]
    assert evaluate["PropertyFiles"] == [{"PropertyFileName": "Evaluation", "OutputName": "evaluation",
                                          "FilePath": "eval.json"}]

    # CheckGates: one condition per gate, on eval.json's deltas (signed) or the candidate's metrics.
    conditions = gates["Arguments"]["Conditions"]
    assert [(c["Type"], c["LeftValue"]["Std:JsonGet"]["Path"], c["RightValue"]) for c in conditions] == [
        ("GreaterThanOrEqualTo", "deltas.exact_match", 0.2), ("LessThanOrEqualTo", "deltas.loss", -0.1),
        ("GreaterThanOrEqualTo", "models.candidate.metrics.rougeL", 0.5)]
    assert all(c["LeftValue"]["Std:JsonGet"]["PropertyFile"] == {"Get": "Steps.Evaluate.PropertyFiles.Evaluation"}
               for c in conditions)
    (register,) = gates["Arguments"]["IfSteps"]
    (failed,) = gates["Arguments"]["ElseSteps"]
    assert register["Type"] == "RegisterModel" and failed["Type"] == "Fail"
    reg = register["Arguments"]
    assert reg["ModelPackageGroupName"] == "hilt-assistant"
    assert reg["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    (container,) = reg["InferenceSpecification"]["Containers"]
    assert container["Image"] == SERVE_IMAGE
    assert container["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    assert "ml.g5.xlarge" in reg["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"]
    assert reg["CustomerMetadataProperties"]["hilt:recipe"] == "quickstart-tiny-sft"


def test_each_step_is_a_valid_api_call_once_resolved(exported):
    """Resolved with the parameters' defaults, each step's arguments are the request SageMaker sends."""
    from hilt.core.aws import validate_request

    _, definition = exported
    parameters = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    steps = {"Steps.Train.ModelArtifacts.S3ModelArtifacts": "s3://bucket/hilt/jobs/j/output/model.tar.gz",
             "Steps.Evaluate.PropertyFiles.Evaluation": {}}
    train, evaluate, gates = definition["Steps"]
    training = resolve(train["Arguments"], parameters, steps)
    assert training["CheckpointConfig"]["S3Uri"] == "s3://bucket/hilt/checkpoints/hilt-assistant/execution-0001"
    validate_request("CreateTrainingJob", {"TrainingJobName": "hilt-assistant-train", **training})
    processing = resolve(evaluate["Arguments"], parameters, steps)
    validate_request("CreateProcessingJob", {"ProcessingJobName": "hilt-assistant-evaluate", **processing})
    (register,) = gates["Arguments"]["IfSteps"]
    package = {k: v for k, v in resolve(register["Arguments"], parameters, steps).items()
               if k != "SkipModelValidation"}
    package["ModelMetrics"] = {k: v for k, v in package["ModelMetrics"].items() if v}
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == \
        "s3://bucket/hilt/evaluations/hilt-assistant/execution-0001/eval.json"
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"].startswith(
        processing["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"])
    validate_request("CreateModelPackage", package)


def test_without_gates_register_follows_evaluate(tmp_path):
    from hilt.flows.sagemaker_pipeline import export

    out = tmp_path / "definition.json"
    result = export(write_pipeline(tmp_path, evaluate={"gates": []}, registry={"group": "team-assistant",
                                                                               "approval": "Approved"}), out)
    definition = json.loads(out.read_text())
    assert result["steps"] == ["Train", "Evaluate", "Register-RegisterModel"]
    register = definition["Steps"][2]
    assert register["DependsOn"] == ["Evaluate"]
    assert register["Arguments"]["ModelPackageGroupName"] == "team-assistant"
    assert {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}["ModelApprovalStatus"] == "Approved"


@pytest.mark.parametrize("changes, message", [
    ({"train": {"recipe": "quickstart-tiny-sft"}}, "train.sagemaker: required"),
    ({"train__model": "../models/tiny"}, "train.model ../models/tiny: a local folder"),
    ({"train__model": None}, "names no base model"),
    ({"evaluate": {"gates": ["exact_match>>1"]}}, "not METRIC OP NUMBER"),
])
def test_problems_are_one_line_and_nothing_is_written(tmp_path, changes, message):
    from hilt.core.errors import UserError
    from hilt.flows.sagemaker_pipeline import export

    path = write_pipeline(tmp_path, **changes)
    out = tmp_path / "definition.json"
    with pytest.raises(UserError, match=message) as raised:
        export(path, out)
    assert "\n" not in str(raised.value) and not out.exists()


@pytest.mark.slow
def test_upsert_and_start_on_moto(hilt_exe, moto_server, tmp_path):
    import boto3

    env = moto_server["env"]
    path = write_pipeline(tmp_path)
    out = tmp_path / "definition.json"
    common = ["pipeline", "export", str(path), "--sagemaker", str(out), "--endpoint-url", moto_server["url"]]
    result = run_hilt(hilt_exe, *common, "--upsert", "--start", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "created arn:aws:sagemaker:us-east-1:" in result.stdout and "started arn:" in result.stdout

    sm = boto3.client("sagemaker", region_name="us-east-1", endpoint_url=moto_server["url"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    described = sm.describe_pipeline(PipelineName="hilt-assistant")
    assert json.loads(described["PipelineDefinition"]) == json.loads(out.read_text())
    assert described["RoleArn"] == ROLE
    assert sm.describe_model_package_group(ModelPackageGroupName="hilt-assistant")["ModelPackageGroupName"]

    # A changed recipe override updates the same pipeline; a second execution overrides parameters.
    path = write_pipeline(tmp_path, train={**yaml.safe_load(path.read_text())["train"],
                                           "set": {"train.max_steps": 400}})
    result = run_hilt(hilt_exe, *common, "--upsert", "--start", "--param", "TrainingInstanceCount=2",
                      "--param", "DatasetS3Uri=s3://bucket/hilt/datasets/abc", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "updated arn:" in result.stdout
    definition = json.loads(sm.describe_pipeline(PipelineName="hilt-assistant")["PipelineDefinition"])
    assert definition["Steps"][0]["Arguments"]["HyperParameters"]["train.max_steps"] == "400"
    executions = sm.list_pipeline_executions(PipelineName="hilt-assistant")["PipelineExecutionSummaries"]
    assert len(executions) == 2
    values = [{p["Name"]: p["Value"] for p in sm.list_pipeline_parameters_for_execution(
        PipelineExecutionArn=e["PipelineExecutionArn"])["PipelineParameters"]} for e in executions]
    assert {"TrainingInstanceCount": "2", "DatasetS3Uri": "s3://bucket/hilt/datasets/abc"} in values

    # An unknown parameter, or --param without --start: one line, nothing sent.
    result = run_hilt(hilt_exe, *common, "--start", "--param", "Epochs=3", env=env)
    assert result.returncode == 2 and "--param Epochs: not a parameter of this pipeline" in result.stderr
    result = run_hilt(hilt_exe, *common, "--param", "TrainingInstanceCount=2", env=env)
    assert result.returncode == 2 and "add --start" in result.stderr
    assert len(sm.list_pipeline_executions(PipelineName="hilt-assistant")["PipelineExecutionSummaries"]) == 2


def test_every_local_step_is_accounted_for_on_sagemaker(exported):
    """`hilt pipeline run` and the export walk the same step list: each local step says what it
    becomes on SageMaker, and each SageMaker step comes from a local one."""
    from hilt.flows.pipeline import STEPS

    result, _ = exported
    sagemaker_steps = {name.split("-")[0] for name in result["steps"]} - {"GateFailed"}
    mentioned = set()
    for step in STEPS:
        assert step.on_sagemaker, f"step {step.name} does not say what it becomes on SageMaker"
        mentioned |= {name for name in sagemaker_steps if name in step.on_sagemaker}
    assert mentioned == sagemaker_steps == {"Train", "Evaluate", "CheckGates", "Register"}


def test_a_separate_baseline_is_evaluated_against_not_trained_from(tmp_path):
    from hilt.flows.sagemaker_pipeline import export

    out = tmp_path / "definition.json"
    export(write_pipeline(tmp_path, evaluate={"gates": ["exact_match>=+0.1"],
                                              "baseline": "s3://bucket/hilt/models/production/"}), out)
    train, evaluate, _ = json.loads(out.read_text())["Steps"]
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in train["Arguments"]["InputDataConfig"]}
    assert channels["model"] == {"Get": "Parameters.BaseModelS3Uri"}
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in evaluate["Arguments"]["ProcessingInputs"]}
    assert inputs["baseline"] == "s3://bucket/hilt/models/production/"
