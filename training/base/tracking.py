"""Experiment tracking: TensorBoard event files where SageMaker collects them, and MLflow.

``train.report_to`` in the recipe picks the destinations: ``auto`` (the default) writes
TensorBoard events to ``/opt/ml/output/tensorboard`` (the ``LocalPath`` of the training job's
``TensorBoardOutputConfig``, which SageMaker uploads to S3 while the job runs) and, when
``MLFLOW_TRACKING_URI`` is set (a server, SageMaker's managed MLflow, or a local
``file:`` store), logs to MLflow too; ``none`` turns both off.

During training transformers' own callbacks log the metrics of every logging step (and, for
MLflow, the training arguments) into a run hilt starts first, so that the evaluation after
training lands in it too. Once the model directory is finished, ``log_finished_model`` adds to
the same run what only hilt knows: the resolved recipe as parameters, the dataset's sha256,
the held-out evaluation, and the model card, loss plot and ``hilt.json`` as artifacts. The
run id travels from the training worker to the entry process in a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError

TENSORBOARD_DIR = "tensorboard"  # under /opt/ml/output: SageMaker's default TensorBoardOutputConfig.LocalPath
RUN_FILE = "mlflow-run.json"  # under /opt/ml/output/data: the MLflow run of this job
REPORT_TO = ("auto", "none", "tensorboard", "mlflow", "tensorboard+mlflow")  # a recipe's train.report_to


def destinations(report_to: str) -> list[str]:
    """The tracking destinations of a recipe's ``train.report_to``.

    Raises:
        UserError: MLflow asked for without ``MLFLOW_TRACKING_URI``.
    """
    if report_to == "none":
        return []
    if report_to == "auto":
        return ["tensorboard"] + (["mlflow"] if os.environ.get("MLFLOW_TRACKING_URI") else [])
    chosen = report_to.split("+")
    if "mlflow" in chosen and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise UserError(f"train.report_to={report_to} needs MLFLOW_TRACKING_URI (a tracking server, SageMaker's "
                        "managed MLflow ARN, or file:///path for a local store); set it or use report_to=auto")
    return chosen


def check_tracking(report_to: str) -> None:
    """Open the MLflow store before training, so a bad URI is one line now, not a traceback later.

    Raises:
        UserError: naming the URI and what MLflow said.
    """
    if "mlflow" not in destinations(report_to):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    try:
        MlflowClient(tracking_uri=uri)
    except MlflowException as err:
        first = str(err).split(". ")[0]
        hint = ("; a local file store also needs MLFLOW_ALLOW_FILE_STORE=true (MLflow 3 keeps it in maintenance "
                "mode)") if "filesystem tracking backend" in str(err) else ""
        raise UserError(f"MLFLOW_TRACKING_URI={uri}: {first}{hint}") from None


def tensorboard_dir(job) -> Path:
    return job.opt_ml.output_dir / TENSORBOARD_DIR


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def report_to_argument(job) -> list[str]:
    """``report_to`` of the TrainingArguments: transformers' MLflowCallback when MLflow is on
    (TensorBoard gets hilt's own callback, writing where SageMaker collects it)."""
    return ["mlflow"] if "mlflow" in destinations(job.recipe.train.report_to) else []


def tracking_callbacks(job) -> list:
    """The trainer callbacks of a job's tracking."""
    chosen = destinations(job.recipe.train.report_to)
    callbacks: list = []
    if "tensorboard" in chosen and _is_main_process():
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        directory = tensorboard_dir(job)
        directory.mkdir(parents=True, exist_ok=True)
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(directory))))
    if "mlflow" in chosen and _is_main_process():
        _start_run(job, job.opt_ml.output_data_dir / RUN_FILE)
    return callbacks


def _start_run(job, path: Path) -> None:
    """Start the job's MLflow run before the trainer does: transformers' MLflowCallback then logs
    into it and leaves it open, so the evaluation after training lands in the same run (it ends
    when the process does). Its id goes to ``path`` for the entry process."""
    import mlflow

    run = mlflow.active_run() or mlflow.start_run(run_name=job.recipe.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}) + "\n")


def _flatten(value: Any, prefix: str) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}"))
        return out
    return {prefix: json.dumps(value) if isinstance(value, (list, type(None))) else str(value)}


def log_finished_model(job, manifest: dict) -> str | None:
    """Add the recipe, dataset hash, evaluation and model artifacts to the job's MLflow run.

    Returns:
        The run id, or None when the job does not log to MLflow.
    """
    run_file = job.opt_ml.output_data_dir / RUN_FILE
    if "mlflow" not in destinations(job.recipe.train.report_to) or not run_file.is_file():
        return None
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from hilt.core.layout import MANIFEST_FILE, CARD_FILE, LOSS_PLOT_FILE

    run_id = json.loads(run_file.read_text())["run_id"]
    client = MlflowClient()
    params = _flatten(manifest.get("recipe") or {}, "recipe")
    dataset = (manifest.get("dataset") or {}).get("train") or {}
    params["dataset.sha256"] = str(dataset.get("manifest_sha256") or dataset.get("sha256"))
    params["dataset.train_records"] = str(dataset.get("records"))
    params["base_model"] = str(manifest.get("base_model"))
    logged = set(client.get_run(run_id).data.params)  # transformers logged the training arguments
    fresh = [Param(k[:250], v[:6000]) for k, v in sorted(params.items()) if k[:250] not in logged]
    evaluation = (manifest.get("evaluation") or {}).get("metrics") or {}
    metrics = [Metric(f"heldout_{k}", float(v), 0, int(manifest.get("metrics", {}).get("global_step") or 0))
               for k, v in evaluation.items() if isinstance(v, (int, float))]
    tags = [RunTag("hilt.recipe", str((manifest.get("recipe") or {}).get("name"))),
            RunTag("hilt.dataset_sha256", params["dataset.sha256"])]
    for start in range(0, max(len(fresh), 1), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=fresh[start:start + 100], metrics=metrics if start == 0 else [],
                         tags=tags if start == 0 else [])
    model_dir = job.opt_ml.model_dir
    for name in (CARD_FILE, LOSS_PLOT_FILE, MANIFEST_FILE):
        if (model_dir / name).is_file():
            client.log_artifact(run_id, str(model_dir / name))
    print(f"[hilt] MLflow run {run_id}: recipe, dataset sha256, evaluation and model card logged", flush=True)
    return run_id
