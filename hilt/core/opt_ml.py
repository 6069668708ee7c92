"""The SageMaker ``/opt/ml`` contract: every path and ``SM_*`` variable lives here.

SageMaker mounts a training job's inputs and collects its outputs under ``/opt/ml``;
the inference container reads its model from ``/opt/ml/model``. As in
sagemaker-training-toolkit, the base directory is overridable with
``SAGEMAKER_BASE_DIR``, so the same entry points run locally and in tests over a
temporary tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BASE_DIR = "/opt/ml"
BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"


@dataclass(frozen=True)
class OptML:
    """Paths of one ``/opt/ml`` tree."""

    base: Path

    @classmethod
    def from_env(cls) -> "OptML":
        """The tree under ``$SAGEMAKER_BASE_DIR``, or ``/opt/ml`` when unset."""
        return cls(Path(os.environ.get(BASE_DIR_ENV) or DEFAULT_BASE_DIR))

    @property
    def input_config_dir(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters_file(self) -> Path:
        return self.input_config_dir / "hyperparameters.json"

    @property
    def resource_config_file(self) -> Path:
        return self.input_config_dir / "resourceconfig.json"

    @property
    def input_data_config_file(self) -> Path:
        return self.input_config_dir / "inputdataconfig.json"

    @property
    def input_data_dir(self) -> Path:
        return self.base / "input" / "data"

    def channel_dir(self, name: str) -> Path:
        """``/opt/ml/input/data/<name>``, where SageMaker mounts a channel."""
        return self.input_data_dir / name

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def output_data_dir(self) -> Path:
        return self.output_dir / "data"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    @property
    def checkpoint_dir(self) -> Path:
        return self.base / "checkpoints"

    def create(self) -> "OptML":
        """Create the directories SageMaker would have created before the job starts."""
        for path in (
            self.input_config_dir,
            self.input_data_dir,
            self.model_dir,
            self.output_data_dir,
            self.checkpoint_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        return self
