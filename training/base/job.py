"""Read a SageMaker training job's inputs from /opt/ml into one typed ``Job``.

SageMaker writes ``input/config/hyperparameters.json`` (every value a string),
``resourceconfig.json`` (hosts, current host) and ``inputdataconfig.json`` (channels),
and mounts each channel at ``input/data/<channel>``. Everything is checked here, before
a model is loaded: a bad recipe key or a missing channel fails in the first second.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hilt.core.errors import UserError
from hilt.core.layout import require_model_dir
from hilt.core.opt_ml import OptML
from hilt.training.base.methods import Method, method_of
from hilt.training.base.recipe import Recipe, load_recipe

KNOWN_CHANNELS = ("train", "validation", "model")
# Keys SageMaker or its SDK add to the hyperparameters on their own.
_RESERVED_PREFIXES = ("sagemaker_", "_tuning_objective_metric", "_")


@dataclass(frozen=True)
class Hosts:
    """Where this process runs in the cluster (resourceconfig.json).

    ``hosts`` are the hosts that train together: all of the job's, or, in a heterogeneous
    cluster (``instance_groups``), those of this host's instance group.
    """

    hosts: list[str]
    current_host: str
    instance_type: str = ""
    network_interface: str = ""

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    @property
    def master(self) -> str:
        # SageMaker's convention: the first host in sorted order leads.
        return self.hosts[0]


@dataclass(frozen=True)
class Job:
    """A validated training job: recipe, channels, hosts, hardware."""

    opt_ml: OptML
    recipe: Recipe
    hyperparameters: dict[str, str]
    channels: dict[str, Path]
    hosts: Hosts
    gpus_per_host: int
    model_path: str = field(default="")

    @property
    def method(self) -> Method:
        """The recipe's training method: its trainer, record kind and rules."""
        return method_of(self.recipe.method)

    @property
    def processes_per_host(self) -> int:
        wanted = self.recipe.distributed.processes_per_host
        if wanted == "auto":
            return max(self.gpus_per_host, 1)
        return wanted

    @property
    def world_size(self) -> int:
        return self.processes_per_host * len(self.hosts.hosts)

    @property
    def checkpoint_dir(self) -> Path:
        """Where this host's checkpoints go. SageMaker syncs /opt/ml/checkpoints of every host to
        the one CheckpointConfig S3 path: with several hosts each writes under its own name,
        so no host's checkpoint overwrites another's."""
        if len(self.hosts.hosts) > 1:
            return self.opt_ml.checkpoint_dir / self.hosts.current_host
        return self.opt_ml.checkpoint_dir


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise UserError(f"{path}: {what} is not UTF-8 text; write it as UTF-8 JSON") from None
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: {what} is not valid JSON ({err.msg} at line {err.lineno}); fix the file") from None


def _sdk_string(value: Any) -> Any:
    """A value as the recipe reads it: the SageMaker SDKs JSON-encode every hyperparameter
    (``"\"quickstart-tiny-sft\""``, ``"3"``, ``"\"2e-4\""``); a string that is a JSON string
    literal is decoded, as sagemaker-training-toolkit's ``read_hyperparameters`` does. Other
    JSON (numbers, booleans, lists) is decoded by the recipe's own override parsing."""
    if isinstance(value, str) and value.startswith('"'):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def read_hyperparameters(opt_ml: OptML) -> tuple[str, dict[str, str], str | None]:
    """Split hyperparameters.json into the recipe name, the dotted overrides, and the metric a
    hyperparameter tuning job optimises (SageMaker adds ``_tuning_objective_metric``)."""
    raw = _read_json(opt_ml.hyperparameters_file, "hyperparameters.json") or {}
    if not isinstance(raw, dict):
        raise UserError(f"{opt_ml.hyperparameters_file}: expected a JSON object of name -> string")
    raw = {k: _sdk_string(v) for k, v in raw.items()}
    overrides = {k: v for k, v in raw.items() if not k.startswith(_RESERVED_PREFIXES) and k != "recipe"}
    recipe = raw.get("recipe")
    if recipe is None:
        raise UserError(
            f"{opt_ml.hyperparameters_file}: hyperparameter 'recipe' is missing; "
            "set it to a recipe name such as quickstart-tiny-sft"
        )
    objective = raw.get("_tuning_objective_metric")
    return str(recipe), overrides, str(objective) if objective else None


def read_hosts(opt_ml: OptML) -> Hosts:
    """Hosts from resourceconfig.json; a single local host when the file is absent."""
    raw = _read_json(opt_ml.resource_config_file, "resourceconfig.json")
    if raw is None:
        return Hosts(hosts=["algo-1"], current_host="algo-1")
    hosts = raw.get("hosts") if isinstance(raw, dict) else None
    current = raw.get("current_host") if isinstance(raw, dict) else None
    if not (isinstance(hosts, list) and hosts and all(isinstance(h, str) for h in hosts)) or not isinstance(current, str):
        raise UserError(
            f"{opt_ml.resource_config_file}: needs 'hosts' (a list of host names, e.g. [\"algo-1\"]) and "
            f"'current_host' (a string), got {json.dumps(raw)[:120]}; write the file as SageMaker does"
        )
    hosts = sorted(hosts)
    if current not in hosts:
        raise UserError(f"{opt_ml.resource_config_file}: current_host '{current}' is not in hosts {hosts}")
    instance_type = raw.get("current_instance_type") or ""
    groups = raw.get("instance_groups")
    if groups:
        group = next((g for g in groups if isinstance(g, dict) and isinstance(g.get("hosts"), list)
                      and current in g["hosts"]), None)
        if group is None:
            raise UserError(f"{opt_ml.resource_config_file}: current_host '{current}' is in no instance group of "
                            f"instance_groups; write the file as SageMaker does")
        hosts = sorted(group["hosts"])  # a heterogeneous cluster: this host's group trains together
        instance_type = group.get("instance_type") or instance_type
    return Hosts(hosts=hosts, current_host=current, instance_type=str(instance_type),
                 network_interface=str(raw.get("network_interface_name") or ""))


def read_channels(opt_ml: OptML) -> dict[str, Path]:
    """Channels present on disk, cross-checked with inputdataconfig.json when present."""
    declared = _read_json(opt_ml.input_data_config_file, "inputdataconfig.json")
    on_disk = {p.name: p for p in sorted(opt_ml.input_data_dir.glob("*")) if p.is_dir()}
    if declared is not None and not (isinstance(declared, dict) and all(isinstance(v, dict) for v in declared.values())):
        raise UserError(f"{opt_ml.input_data_config_file}: expected an object of channel name -> settings "
                        f"(e.g. {{\"train\": {{\"TrainingInputMode\": \"File\"}}}}), got {json.dumps(declared)[:80]}")
    if declared is not None:
        for name, spec in declared.items():
            if name not in on_disk:
                raise UserError(
                    f"{opt_ml.input_data_config_file}: channel '{name}' is declared but "
                    f"{opt_ml.channel_dir(name)} does not exist"
                )
            mode = (spec or {}).get("TrainingInputMode", "File")
            if mode not in ("File", "FastFile"):
                raise UserError(
                    f"channel '{name}': TrainingInputMode {mode} is not supported; use File or FastFile"
                )
    unknown = sorted(set(on_disk) - set(KNOWN_CHANNELS))
    if unknown:
        raise UserError(
            f"unknown channel(s) {', '.join(unknown)} in {opt_ml.input_data_dir}; "
            f"hilt reads {', '.join(KNOWN_CHANNELS)}"
        )
    if "train" not in on_disk:
        raise UserError(
            f"no 'train' channel: {opt_ml.channel_dir('train')} is missing; pass --data DIR "
            "(a dataset from `hilt export`) or give the training job a train channel"
        )
    # An export whose split left no held-out record writes an empty validation/data.jsonl: the
    # two commands must compose, so that is a job without held-out evaluation, not an error.
    if "validation" in on_disk and _holds_no_records(on_disk["validation"]):
        print(f"[hilt] the validation channel ({on_disk.pop('validation')}) holds no records: training without "
              "held-out evaluation", flush=True)
    return on_disk


def _holds_no_records(channel: Path) -> bool:
    """A channel folder with no files, or only record files with nothing but blank lines in them."""
    files = [p for p in channel.rglob("*") if p.is_file() and not p.name.startswith(".")]
    return all(p.suffix in (".jsonl", ".json") and not p.read_bytes().strip() for p in files)


def detect_gpus() -> int:
    """GPUs on this host: ``SM_NUM_GPUS`` when SageMaker's toolkit set it, else CUDA's count."""
    if os.environ.get("SM_NUM_GPUS"):
        return int(os.environ["SM_NUM_GPUS"])
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def read_job(opt_ml: OptML | None = None) -> Job:
    """Read and validate everything a training job needs, without loading a model.

    Raises:
        UserError: with every problem found, each naming the file or key and the fix.
    """
    opt_ml = opt_ml or OptML.from_env()
    recipe_name, overrides, objective = read_hyperparameters(opt_ml)
    # A bundled recipe arrives by name; any other recipe arrives whole, as JSON (hilt launch).
    recipe = load_recipe(json.loads(recipe_name) if recipe_name.lstrip().startswith("{") else recipe_name, overrides)
    channels = read_channels(opt_ml)
    hosts = read_hosts(opt_ml)

    if "model" in channels:
        model_path = str(channels["model"])
    elif recipe.model.name_or_path:
        model_path = recipe.model.name_or_path
        check_model_reachable(model_path)
    else:
        raise UserError(
            "no base model: mount a 'model' channel (hilt train --model DIR) or set model.name_or_path"
        )
    if Path(model_path).exists():
        require_model_dir(model_path, hint="the model channel must hold a save_pretrained directory")
    if objective == "eval_loss" and "validation" not in channels:
        raise UserError("the tuning objective is eval_loss but the job has no 'validation' channel; give the "
                        "tuning job's training definition a validation channel or tune on train_loss")
    gpus = detect_gpus()
    if recipe.peft.method == "qlora" and gpus == 0:
        raise UserError(
            "peft.method=qlora needs a CUDA GPU (bitsandbytes 4-bit); on CPU set peft.method=lora"
        )
    if recipe.train.precision in ("bf16", "fp16") and gpus == 0:
        raise UserError(
            f"train.precision={recipe.train.precision} needs a GPU; on CPU set train.precision=auto or fp32"
        )
    return Job(
        opt_ml=opt_ml,
        recipe=recipe,
        hyperparameters={"recipe": recipe_name, **{k: str(v) for k, v in overrides.items()}},
        channels=channels,
        hosts=hosts,
        gpus_per_host=gpus,
        model_path=model_path,
    )


def _hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the model hub answers at all (one connection attempt, no retries)."""
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def check_model_reachable(name_or_path: str) -> None:
    """Fail in the first seconds when ``model.name_or_path`` cannot be loaded here.

    A local directory must exist; a hub id must be in the local cache when the hub is
    switched off (``HF_HUB_OFFLINE``, Marketplace's network isolation) or does not answer.
    Without this, transformers retries the hub for a minute and then fails deep inside.

    Raises:
        UserError: naming the key, what is wrong and the fix.
    """
    fix = "mount the weights as the 'model' channel (hilt train --model DIR) or set model.name_or_path to a local dir"
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return
    looks_like_path = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or path.exists()
    if looks_like_path:
        raise UserError(f"model.name_or_path {name_or_path}: no such directory; {fix}")
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            return
    except Exception:  # noqa: BLE001  (an invalid repo id is reported below)
        pass
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    if offline or not _hub_reachable():
        why = "the hub is switched off here (HF_HUB_OFFLINE)" if offline else "the model hub cannot be reached"
        raise UserError(f"model.name_or_path {name_or_path}: a hub id that is not in the local cache and {why}; {fix}")


def write_failure(opt_ml: OptML, message: str) -> None:
    """Write the reason to /opt/ml/output/failure, which SageMaker shows as FailureReason.

    Never raises: when the output folder cannot be written (read-only, full disk) the
    reason still reaches the log, which the caller prints. A job tree removed while the job
    ran is not made again for it: a lone ``output/failure`` in a folder without the tree's
    marker made every rerun refuse the folder as someone else's.
    """
    try:
        if not opt_ml.base.is_dir():
            raise FileNotFoundError(errno.ENOENT, "the job's folder was removed while it ran")
        opt_ml.failure_file.parent.mkdir(exist_ok=True)
        opt_ml.failure_file.write_text(message.rstrip() + "\n")
    except OSError as err:
        print(f"hilt: warning: could not write {opt_ml.failure_file} ({err.strerror})", file=sys.stderr)
