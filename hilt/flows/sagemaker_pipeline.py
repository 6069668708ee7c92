"""``hilt pipeline export PIPELINE.yaml --sagemaker OUT.json``: the same pipeline on SageMaker Pipelines.

``hilt pipeline run`` orchestrates on one machine. A team that outgrows it runs the same steps
on the engine it already has: this module builds them with the SageMaker Python SDK's workflow
classes (the definition JSON is the SDK's, never written by hand):

    Train       TrainingStep on the training image: the recipe as hyperparameters, spot and
                checkpoints (one S3 prefix per execution, so a retried or spot-interrupted job
                resumes and no execution resumes another's), TensorBoard output, hilt's metrics.
    Evaluate    ProcessingStep on the same image running ``hilt evaluate`` on the job's
                model.tar.gz against the base model; eval.json is its property file.
    CheckGates  ConditionStep: one condition per gate, read from eval.json (a signed gate reads
                ``deltas.<metric>``, an absolute one ``models.candidate.metrics.<metric>``).
    Register    ModelStep (RegisterModel) into the model package group, approval status from a
                parameter (PendingManualApproval by default), eval.json as the ModelQuality
                statistics; ``hilt package promote GROUP/VERSION`` makes an approved version the
                Marketplace request.
    GateFailed  FailStep when a gate does not hold: nothing is registered.

Export runs before: the pipeline reads a dataset prefix (``DatasetS3Uri``, laid out as
``hilt export`` writes it: train/ and validation/), the way ``hilt launch`` uploads one.
Parameters: DatasetS3Uri, BaseModelS3Uri, TrainingInstanceType, TrainingInstanceCount,
EvaluationInstanceType, ModelApprovalStatus.

``--upsert`` creates or updates the pipeline (CreatePipeline / UpdatePipeline through boto3,
each request validated strictly against botocore's model first) and creates the model package
group if it is missing; ``--start`` starts an execution.

Why SDK v2 (``sagemaker>=2.257,<3``): its workflow classes are the documented, stable ones; v3
moved them into ``sagemaker-mlops``, which pulls a full MLflow server, scikit-learn, scipy and
pyarrow into the environment. The SDK is optional (``pip install 'hilt[sagemaker]'``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError

STEP_NAMES = {"train": "Train", "evaluate": "Evaluate", "gates": "CheckGates", "register": "Register",
              "failed": "GateFailed"}
PROCESSING = "/opt/ml/processing"
EVALUATION_FILE = "eval.json"
# Everything the SDK would otherwise read from ~/.config/sagemaker or send on its own: the
# definition depends on the pipeline YAML alone, and building it makes no network call.
_SDK_CONFIG = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
_GATE_CONDITIONS = {">=": "ConditionGreaterThanOrEqualTo", ">": "ConditionGreaterThan",
                    "<=": "ConditionLessThanOrEqualTo", "<": "ConditionLessThan"}


def _sdk() -> None:
    """Import the SageMaker SDK, or fail in one line naming the extra that installs it."""
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    # The SDK's config loader prints where it looked for defaults at INFO; hilt passes its own.
    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
    try:
        import sagemaker  # noqa: F401  (imported here so a missing SDK is one line)
    except ImportError:
        raise UserError("hilt pipeline export --sagemaker needs the SageMaker Python SDK: "
                        "pip install 'hilt[sagemaker]' (sagemaker>=2.257,<3)") from None


@contextmanager
def _quiet_sdk():
    """The SDK logs a warning for each field it drops from a definition and warns that a pipeline
    session starts no jobs; hilt says what matters itself."""
    logger = logging.getLogger("sagemaker")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield
    finally:
        logger.setLevel(level)


def pipeline_name(name: str) -> str:
    """``hilt-<name>`` in SageMaker's pipeline-name pattern (letters, digits, single hyphens)."""
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", f"hilt-{name}").strip("-")
    return cleaned[:256]


def _settings(p, dataset: str | None, base_model: str | None) -> dict[str, Any]:
    """What the definition needs that the YAML may not say; each problem named by its key.

    Raises:
        UserError: no train.sagemaker section, no S3 root, a local base model, relative gates
            without a base model to compare against.
    """
    from hilt.training.evaluation.evaluate import parse_gate
    from hilt.training.evaluation.general import GENERAL_METRICS
    from hilt.training.launch import join_key
    from hilt.training.base.recipe import load_recipe

    sm = p.train.sagemaker
    if sm is None:
        raise UserError("train.sagemaker: required to export a SageMaker Pipeline (image, role, instance_type, "
                        "s3); add it to the pipeline YAML (train.target may stay local)")
    if not sm.s3:
        raise UserError("train.sagemaker.s3: required to export a SageMaker Pipeline (s3://bucket/prefix for "
                        "datasets, checkpoints, job outputs and evaluations)")
    s3_root = sm.s3.rstrip("/")
    model = base_model or p.train.model
    if model and not model.startswith("s3://"):
        raise UserError(f"train.model {model}: a local folder; a SageMaker Pipeline reads the base model from S3: "
                        "upload it (aws s3 sync DIR s3://…/models/NAME/) and pass --base-model s3://…/models/NAME/")
    # What the candidate is compared with: evaluate.baseline (e.g. the model in production), else the base model.
    baseline = p.evaluate.baseline
    if baseline and not baseline.startswith("s3://"):
        raise UserError(f"evaluate.baseline {baseline}: a local folder; a SageMaker Pipeline reads it from S3: "
                        "upload it and write its s3:// prefix (or drop it to compare with the base model)")
    recipe = load_recipe(p.train.recipe, p.train.set)
    if not model and recipe.model.name_or_path is None:
        raise UserError(f"recipe {recipe.name} names no base model and train.model is not set: pass --base-model "
                        "s3://…/models/NAME/ (the `model` channel)")
    gates = [parse_gate(g) for g in p.evaluate.gates]
    if isinstance(p.evaluate.general, str):
        raise UserError(f"evaluate.general {p.evaluate.general}: a SageMaker Pipeline's evaluation uses hilt's own "
                        "general set (in the image); set evaluate.general to true or false")
    if p.evaluate.general is False and any(g.metric in GENERAL_METRICS for g in gates):
        bad = next(g.text for g in gates if g.metric in GENERAL_METRICS)
        raise UserError(f"evaluate.gates '{bad}' needs the general set; set evaluate.general: true or drop the gate")
    if not (baseline or model) and any(g.relative for g in gates):
        bad = next(g.text for g in gates if g.relative)
        raise UserError(f"evaluate.gates '{bad}' compares against the base model, which the pipeline only has "
                        "from S3: pass --base-model s3://…/models/NAME/ or write the gate unsigned")
    data = (dataset or join_key(s3_root, "datasets", "latest")).rstrip("/")
    if not data.startswith("s3://"):
        raise UserError(f"--dataset {dataset}: not an s3:// prefix; upload the folder `hilt export` wrote "
                        "(train/, validation/) and pass its s3://bucket/prefix")
    return {"sm": sm, "s3_root": s3_root, "model": model, "baseline": baseline, "recipe": recipe, "gates": gates,
            "dataset": data}


def gate_json_path(gate) -> str:
    """Where eval.json holds the value a gate reads: the change against the baseline (signed gates)
    or the candidate's value; general-set metrics sit under ``general``."""
    from hilt.training.evaluation.general import GENERAL_METRICS

    if gate.metric in GENERAL_METRICS:
        return f"general.deltas.{gate.metric}" if gate.relative else f"general.models.candidate.{gate.metric}"
    return f"deltas.{gate.metric}" if gate.relative else f"models.candidate.metrics.{gate.metric}"


@dataclass(frozen=True)
class _Build:
    """What each step's builder reads: the pipeline YAML, its checked settings (``_settings``), the SDK
    session, the pipeline's parameters by role, and where this execution's evaluation is written."""

    p: Any
    s: dict[str, Any]
    name: str
    session: Any
    parameters: dict[str, Any]
    evaluation_prefix: list
    eval_json_uri: Any


def build_pipeline(p, *, dataset: str | None = None, base_model: str | None = None, region: str | None = None):
    """The SDK ``Pipeline`` object for a loaded pipeline YAML (nothing is sent anywhere).

    Raises:
        UserError: see ``_settings``; a missing SDK.
    """
    _sdk()
    import boto3
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.functions import Join
    from sagemaker.workflow.pipeline import Pipeline
    from sagemaker.workflow.pipeline_context import PipelineSession

    s = _settings(p, dataset, base_model)
    name = pipeline_name(p.name)
    bucket = s["s3_root"][5:].split("/", 1)[0]
    session = PipelineSession(boto_session=boto3.Session(region_name=region or s["sm"].region or "us-east-1"),
                              default_bucket=bucket, sagemaker_config=_SDK_CONFIG)
    parameters = _parameters(p, s)
    # This execution's evaluation folder; the Joins built on it stay flat: one level each.
    evaluation_prefix = [s["s3_root"], "evaluations", name, ExecutionVariables.PIPELINE_EXECUTION_ID]
    build = _Build(p, s, name, session, parameters, evaluation_prefix,
                   eval_json_uri=Join(on="/", values=[*evaluation_prefix, EVALUATION_FILE]))

    with _quiet_sdk():
        train = _train_step(build)
        model_data = train.properties.ModelArtifacts.S3ModelArtifacts
        evaluate, report = _evaluate_step(build, model_data)
        register = _register_step(build, model_data, evaluate)
        last = _gates_step(build, evaluate, report, register) if s["gates"] else register
        pipeline = Pipeline(name=name, parameters=[x for x in parameters.values() if x is not None],
                            steps=[train, evaluate, last], sagemaker_session=session)
    return pipeline


def _parameters(p, s: dict[str, Any]) -> dict[str, Any]:
    """The pipeline's parameters by role, in the order the definition lists them (None: not declared)."""
    from sagemaker.workflow.parameters import ParameterInteger, ParameterString

    sm = s["sm"]
    return {
        "dataset": ParameterString("DatasetS3Uri", default_value=s["dataset"]),
        "base_model": ParameterString("BaseModelS3Uri", default_value=s["model"]) if s["model"] else None,
        "train_type": ParameterString("TrainingInstanceType", default_value=sm.instance_type),
        "train_count": ParameterInteger("TrainingInstanceCount", default_value=sm.instance_count),
        "eval_type": ParameterString("EvaluationInstanceType", default_value=sm.instance_type),
        "approval": ParameterString("ModelApprovalStatus", default_value=p.registry.approval),
    }


def _train_step(b: _Build):
    """Train: the recipe as hyperparameters on the training image, with spot, checkpoints and TensorBoard."""
    from sagemaker.debugger import TensorBoardOutputConfig
    from sagemaker.estimator import Estimator
    from sagemaker.inputs import TrainingInput
    from sagemaker.workflow.execution_variables import ExecutionVariables
    from sagemaker.workflow.functions import Join
    from sagemaker.workflow.steps import TrainingStep

    from hilt.serving.contract import JSONLINES
    from hilt.training.trainers.callbacks import METRIC_DEFINITIONS
    from hilt.training.launch import recipe_hyperparameters
    from hilt.training.base.recipe import hyperparameter_strings

    p, sm, s3_root, recipe, parameters = b.p, b.s["sm"], b.s["s3_root"], b.s["recipe"], b.parameters
    estimator = Estimator(
        image_uri=sm.image, role=sm.role, instance_count=parameters["train_count"],
        instance_type=parameters["train_type"], volume_size=sm.volume_gb, max_run=sm.max_run,
        use_spot_instances=sm.spot, max_wait=(sm.max_wait or sm.max_run) if sm.spot else None,
        # One prefix per execution: a retried or interrupted job resumes, another execution never does.
        checkpoint_s3_uri=Join(on="/", values=[s3_root, "checkpoints", b.name,
                                               ExecutionVariables.PIPELINE_EXECUTION_ID]),
        checkpoint_local_path="/opt/ml/checkpoints",
        output_path=f"{s3_root}/jobs", metric_definitions=METRIC_DEFINITIONS, enable_sagemaker_metrics=True,
        tensorboard_output_config=TensorBoardOutputConfig(f"{s3_root}/tensorboard/{b.name}",
                                                          "/opt/ml/output/tensorboard"),
        hyperparameters=recipe_hyperparameters(p.train.recipe, hyperparameter_strings(p.train.set)),
        disable_profiler=True, debugger_hook_config=False, sagemaker_session=b.session,
        tags=[{"Key": "hilt:pipeline", "Value": p.name[:256]}, {"Key": "hilt:recipe", "Value": recipe.name[:256]}],
    )
    dataset_uri = parameters["dataset"]
    channels = {"train": TrainingInput(Join(on="/", values=[dataset_uri, "train/"]), content_type=JSONLINES)}
    if p.export.validation_fraction > 0:
        channels["validation"] = TrainingInput(Join(on="/", values=[dataset_uri, "validation/"]),
                                               content_type=JSONLINES)
    if parameters["base_model"] is not None:
        channels["model"] = TrainingInput(parameters["base_model"])
    return TrainingStep(STEP_NAMES["train"], step_args=estimator.fit(channels),
                        description=f"hilt train: recipe {recipe.name} ({recipe.method})")


def _evaluate_step(b: _Build, model_data):
    """Evaluate: ``hilt evaluate`` on the job's model.tar.gz against the baseline, in a processing job.

    Returns:
        ``(step, property file)``: the ProcessingStep and eval.json as the gates read it.
    """
    from sagemaker.processing import ProcessingInput, ProcessingOutput, Processor
    from sagemaker.workflow.functions import Join
    from sagemaker.workflow.properties import PropertyFile
    from sagemaker.workflow.steps import ProcessingStep

    p, sm = b.p, b.s["sm"]
    command = ["hilt", "evaluate", "--model", f"{PROCESSING}/model", "--data", f"{PROCESSING}/data",
               "--out", f"{PROCESSING}/evaluation", "--max-new-tokens", str(p.evaluate.max_new_tokens)]
    inputs = [ProcessingInput(source=model_data, destination=f"{PROCESSING}/model", input_name="model"),
              ProcessingInput(source=Join(on="/", values=[b.parameters["dataset"], "validation/"]),
                              destination=f"{PROCESSING}/data/validation", input_name="validation")]
    baseline_source = b.s["baseline"] or b.parameters["base_model"]
    if baseline_source is not None:
        command += ["--baseline", f"{PROCESSING}/baseline"]
        inputs.append(ProcessingInput(source=baseline_source, destination=f"{PROCESSING}/baseline",
                                      input_name="baseline"))
    if p.evaluate.metric:
        command += ["--metric", p.evaluate.metric]
    if p.evaluate.max_samples:
        command += ["--max-samples", str(p.evaluate.max_samples)]
    if p.evaluate.general is False:
        command += ["--no-general"]
    # No --gate here: the gates are the ConditionStep's, so a model that misses one ends in
    # GateFailed with its eval.json kept, rather than in a failed processing job.
    processor = Processor(role=sm.role, image_uri=sm.image, instance_count=1, instance_type=b.parameters["eval_type"],
                          entrypoint=command, volume_size_in_gb=sm.volume_gb, max_runtime_in_seconds=sm.max_run,
                          env={"HF_HUB_OFFLINE": "1"}, sagemaker_session=b.session)
    report = PropertyFile(name="Evaluation", output_name="evaluation", path=EVALUATION_FILE)
    step = ProcessingStep(
        STEP_NAMES["evaluate"], description="hilt evaluate: the trained model against the base model",
        step_args=processor.run(inputs=inputs, outputs=[ProcessingOutput(
            output_name="evaluation", source=f"{PROCESSING}/evaluation",
            destination=Join(on="/", values=b.evaluation_prefix))]),
        property_files=[report])
    return step, report


def _register_step(b: _Build, model_data, evaluate):
    """Register: the trained model into the model package group, eval.json as its ModelQuality statistics."""
    from sagemaker.model import Model
    from sagemaker.model_metrics import MetricsSource, ModelMetrics
    from sagemaker.workflow.model_step import ModelStep

    from hilt.serving.marketplace import CONTENT_TYPES, INSTANCE_TYPES
    from hilt.serving.registry import metadata_value

    p, recipe, gates, request = b.p, b.s["recipe"], b.s["gates"], b.p.request
    model = Model(image_uri=request.image, model_data=model_data, role=request.role, sagemaker_session=b.session,
                  env={"HILT_SERVE_HOST": "0.0.0.0", "HILT_METERING_UNIT": request.metering_unit})
    metrics = ModelMetrics(model_statistics=MetricsSource(content_type="application/json", s3_uri=b.eval_json_uri))
    # Without gates the registration waits for the evaluation it reports (as `hilt pipeline run` does).
    return ModelStep(STEP_NAMES["register"], depends_on=None if gates else [evaluate], step_args=model.register(
        content_types=CONTENT_TYPES, response_types=CONTENT_TYPES,
        inference_instances=INSTANCE_TYPES[request.hardware]["realtime"],
        transform_instances=INSTANCE_TYPES[request.hardware]["transform"],
        model_package_group_name=p.registry.group or b.name, approval_status=b.parameters["approval"],
        model_metrics=metrics,
        description=f"{p.name}: fine-tuned with hilt ({recipe.name}); JSON and JSON Lines in and out.",
        domain="NATURAL_LANGUAGE_PROCESSING", task="OTHER",
        customer_metadata_properties={k: metadata_value(v) for k, v in {
            "hilt:pipeline": p.name, "hilt:recipe": recipe.name, "hilt:method": recipe.method,
            "hilt:gates": " and ".join(g.text for g in gates) or "none"}.items()},
    ))


def _gates_step(b: _Build, evaluate, report, register):
    """CheckGates: one condition per gate, read from eval.json; Register when all hold, else GateFailed."""
    from sagemaker.workflow import conditions
    from sagemaker.workflow.condition_step import ConditionStep
    from sagemaker.workflow.fail_step import FailStep
    from sagemaker.workflow.functions import Join, JsonGet

    gates = b.s["gates"]
    checks = []
    for gate in gates:
        value = JsonGet(step_name=evaluate.name, property_file=report, json_path=gate_json_path(gate))
        checks.append(getattr(conditions, _GATE_CONDITIONS[gate.op])(left=value, right=gate.threshold))
    failed = FailStep(STEP_NAMES["failed"], error_message=Join(on=" ", values=[
        "a gate did not hold:", "; ".join(g.text for g in gates), "- see", b.eval_json_uri]))
    return ConditionStep(STEP_NAMES["gates"], conditions=checks, if_steps=[register], else_steps=[failed])


def definition(pipeline) -> dict:
    """The pipeline's definition as SageMaker stores it (parsed JSON)."""
    with _quiet_sdk():
        return json.loads(pipeline.definition())


# What a step's run-time references stand for when its arguments are checked as the API call.
_PLACEHOLDERS = {"Execution.": "execution-id", "Steps.": "s3://bucket/step-output/model.tar.gz"}
_STEP_OPERATIONS = {"Training": ("CreateTrainingJob", "TrainingJobName"),
                    "Processing": ("CreateProcessingJob", "ProcessingJobName"),
                    "RegisterModel": ("CreateModelPackage", None)}


def _resolved(value, parameters: dict):
    """A definition value with parameters at their defaults and run-time references as placeholders."""
    if isinstance(value, dict):
        if set(value) == {"Get"}:
            ref = value["Get"]
            if ref.startswith("Parameters."):
                return parameters[ref.split(".", 1)[1]]
            return next(v for prefix, v in _PLACEHOLDERS.items() if ref.startswith(prefix))
        if set(value) == {"Std:Join"}:
            join = value["Std:Join"]
            return join["On"].join(str(_resolved(v, parameters)) for v in join["Values"])
        return {k: _resolved(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolved(v, parameters) for v in value]
    return value


def check_steps(parsed: dict) -> None:
    """Validate every job-creating step as the API request SageMaker will send, so a definition
    that would fail at run time fails here, in one line.

    Raises:
        UserError: naming the step and the invalid field.
    """
    from hilt.core.aws import validate_request

    parameters = {p["Name"]: p.get("DefaultValue") for p in parsed["Parameters"]}
    steps = list(parsed["Steps"])
    while steps:
        step = steps.pop(0)
        if step["Type"] == "Condition":
            steps += step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]
        if step["Type"] not in _STEP_OPERATIONS:
            continue
        operation, name_key = _STEP_OPERATIONS[step["Type"]]
        request = _resolved(step["Arguments"], parameters)
        request.pop("SkipModelValidation", None)  # a pipeline-only field
        if "ModelMetrics" in request:
            request["ModelMetrics"] = {k: v for k, v in request["ModelMetrics"].items() if v}
        if name_key:
            request[name_key] = step["Name"]
        try:
            validate_request(operation, request)
        except UserError as err:
            raise UserError(f"step {step['Name']}: {err}") from None


def create_pipeline_request(name: str, definition_json: str, role: str, description: str) -> dict:
    """CreatePipeline, validated strictly against botocore's service model."""
    from hilt.core.aws import validate_request

    # The same definition gives the same token: a repeated create is idempotent.
    token = hashlib.sha256(definition_json.encode()).hexdigest()[:32]
    request = {"PipelineName": name, "PipelineDisplayName": name, "PipelineDefinition": definition_json,
               "ClientRequestToken": token,
               "PipelineDescription": description[:3072], "RoleArn": role,
               "Tags": [{"Key": "hilt:generated-by", "Value": "hilt pipeline export"}]}
    validate_request("CreatePipeline", request)
    return request


def upsert(request: dict, group: str, *, endpoint_url: str | None = None, region: str | None = None) -> dict:
    """Create the pipeline, or update it when it exists; create the model package group if missing.

    Returns:
        ``{"arn": ..., "action": "created"|"updated", "group": ...}``.
    """
    from botocore.exceptions import ClientError

    from hilt.core.aws import clients, ensure_model_package_group, model_package_group_name, validate_request

    group = model_package_group_name(group, "registry.group")
    _, sm = clients(endpoint_url, region)
    ensure_model_package_group(sm, group, f"hilt pipeline {request['PipelineName']}: models it registered")
    try:
        sm.describe_pipeline(PipelineName=request["PipelineName"])
        exists = True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") not in ("ResourceNotFound", "ValidationException"):
            raise
        exists = False
    if exists:
        update = {k: request[k] for k in ("PipelineName", "PipelineDisplayName", "PipelineDefinition",
                                          "PipelineDescription", "RoleArn")}
        validate_request("UpdatePipeline", update)
        arn = sm.update_pipeline(**update)["PipelineArn"]
    else:
        arn = sm.create_pipeline(**request)["PipelineArn"]
    return {"arn": arn, "action": "updated" if exists else "created", "group": group}


def start(name: str, parameters: dict[str, str], *, endpoint_url: str | None = None,
          region: str | None = None) -> str:
    """Start an execution with ``parameters`` overriding the defaults. Returns its ARN."""
    from hilt.core.aws import clients, validate_request

    request = {"PipelineName": name, "PipelineExecutionDisplayName": f"{name}-hilt"[:82],
               "ClientRequestToken": uuid.uuid4().hex,
               "PipelineParameters": [{"Name": k, "Value": str(v)} for k, v in parameters.items()]}
    validate_request("StartPipelineExecution", request)
    _, sm = clients(endpoint_url, region)
    return sm.start_pipeline_execution(**request)["PipelineExecutionArn"]


def parse_parameters(pairs: list[str], declared: list[str]) -> dict[str, str]:
    """``--param Name=Value`` pairs, each naming a declared pipeline parameter.

    Raises:
        UserError: a pair without ``=`` or an undeclared name.
    """
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--param {pair}: expected NAME=VALUE, e.g. --param DatasetS3Uri=s3://bucket/data")
        if key not in declared:
            raise UserError(f"--param {key}: not a parameter of this pipeline; it has {', '.join(declared)}")
        values[key] = value
    return values


def export(path: Path, out: Path, *, dataset: str | None = None, base_model: str | None = None,
           region: str | None = None, role: str | None = None, do_upsert: bool = False, do_start: bool = False,
           params: list[str] | None = None, endpoint_url: str | None = None) -> dict:
    """Build, write ``out`` (the definition), and with ``do_upsert``/``do_start`` send it.

    Raises:
        UserError: every problem in one line; a refused AWS call with SageMaker's message.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from hilt.core.outputs import check_output_file, json_with_keys, write_atomic
    from hilt.flows.pipeline import load_pipeline

    check_output_file(Path(out), "--sagemaker", json_with_keys("Version", "Parameters", "Steps"),
                      what="a SageMaker Pipeline definition hilt wrote")
    p, _ = load_pipeline(path)
    if params and not do_start:
        raise UserError("--param sets an execution's values: add --start (the definition keeps the YAML's defaults)")
    pipeline = build_pipeline(p, dataset=dataset, base_model=base_model, region=region)
    parsed = definition(pipeline)
    check_steps(parsed)
    declared = [x["Name"] for x in parsed["Parameters"]]
    values = parse_parameters(params or [], declared)
    text = json.dumps(parsed, indent=2) + "\n"
    execution_role = role or p.train.sagemaker.role
    request = create_pipeline_request(pipeline.name, json.dumps(parsed), execution_role,
                                      f"hilt pipeline {p.name}: {' -> '.join(x['Name'] for x in parsed['Steps'])}")
    write_atomic(out, text)
    result: dict[str, Any] = {"pipeline": pipeline.name, "definition": str(out),
                              "steps": _step_names(parsed), "parameters": declared}
    try:
        if do_upsert:
            result.update(upsert(request, p.registry.group or pipeline.name, endpoint_url=endpoint_url,
                                 region=region or p.train.sagemaker.region))
        if do_start:
            result["execution"] = start(pipeline.name, values, endpoint_url=endpoint_url,
                                        region=region or p.train.sagemaker.region)
    except ClientError as err:
        error = err.response.get("Error", {})
        if do_start and not do_upsert and error.get("Code") in ("ResourceNotFound", "ValidationException"):
            raise UserError(f"pipeline {pipeline.name}: {error.get('Message')}; create it first with --upsert") from None
        raise UserError(f"SageMaker refused the pipeline {pipeline.name}: {error.get('Code')}: "
                        f"{error.get('Message')}") from None
    except BotoCoreError as err:
        raise UserError(f"could not reach AWS for pipeline {pipeline.name}: {err}") from None
    return result


def _step_names(parsed: dict) -> list[str]:
    """Every step's name, the condition's branches included, in definition order."""
    names = []
    for step in parsed["Steps"]:
        names.append(step["Name"])
        if step["Type"] == "Condition":
            for branch in ("IfSteps", "ElseSteps"):
                names += [s["Name"] for s in step["Arguments"][branch]]
    return names
