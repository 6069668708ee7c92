"""``hilt package validate --algorithm``: replay an Algorithm's Marketplace certification locally.

SageMaker certifies an Algorithm by running each ValidationProfile: the
TrainingJobDefinition as a training job of the Algorithm's image, then the
TransformJobDefinition as a batch transform of the model that job left. This replays
the same steps on this machine, in order, and stops at the first that fails:

1. ``request``: the CreateAlgorithm request validates against botocore's model, and the
   profile fits the Algorithm's own TrainingSpecification (channels declared, required
   channels fed, content types, input mode, instance type, hyperparameter names, types
   and ranges), as CreateAlgorithm would check it;
2. ``training-job``: an /opt/ml tree laid out as SageMaker lays it out (hyperparameters
   as strings with the Algorithm's defaults filled in, resourceconfig.json,
   inputdataconfig.json, each channel's files copied in), and the training image's
   ``train`` entry point run on it as a process with the network switched off
   (``HF_HUB_OFFLINE``: Marketplace jobs run network-isolated), under the profile's
   MaxRuntimeInSeconds (SIGTERM, then SIGKILL 120 s later);
3. ``model-artifact``: /opt/ml/model tarred as SageMaker tars it (``model.tar.gz``, files at
   the root, no hilt manifest), and /opt/ml/output/data as ``output.tar.gz``;
4. ``transform-job``: ``package validate``'s batch-transform replay of that archive with the
   profile's TransformJobDefinition.

S3 URIs are read from local folders: ``--local s3://bucket/prefix=DIR`` maps a prefix (the
longest matching prefix wins), as many times as needed, or from a JSON file of the same
pairs. One report (``algorithm-validation.json``) names every step, its time and, for the
first that failed, why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.outputs import claim_output_dir, write_atomic
from hilt.training.base.stopping import GRACE_SECONDS  # SageMaker's SIGTERM -> SIGKILL window

REPORT_FILE = "algorithm-validation.json"
SAGEMAKER_PREFIXES = ("sagemaker_", "_")


# ------------------------------------------------------------------ S3 URIs read from local folders


def parse_local_map(items: list[str]) -> dict[str, Path]:
    """``s3://bucket/prefix=DIR`` pairs, or JSON files of ``{"s3://...": "DIR"}`` (relative to the file).

    Raises:
        UserError: on an item that is neither.
    """
    mapping: dict[str, Path] = {}
    for item in items:
        uri, sep, path = item.partition("=")
        if sep and uri.startswith("s3://"):
            mapping[uri.rstrip("/")] = Path(path).expanduser()
            continue
        file = Path(item)
        if not file.is_file():
            raise UserError(f"--local {item}: not S3URI=DIR and not a JSON file; write e.g. "
                            "--local s3://my-bucket/hilt=./bucket-copy")
        try:
            pairs = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"--local {file}: not UTF-8 JSON ({err}); write {{\"s3://bucket/prefix\": \"DIR\"}}"
                            ) from None
        if not isinstance(pairs, dict) or not all(isinstance(k, str) and k.startswith("s3://") and isinstance(v, str)
                                                  for k, v in pairs.items()):
            raise UserError(f"--local {file}: must be an object of s3:// prefix -> local folder")
        for uri, path in pairs.items():
            local = Path(path).expanduser()
            mapping[uri.rstrip("/")] = local if local.is_absolute() else (file.parent / local)
    return mapping


def local_path(uri: str, mapping: dict[str, Path], what: str) -> Path:
    """Where the objects of ``uri`` are on this machine.

    Raises:
        UserError: when no prefix maps it, or the mapped path does not exist.
    """
    uri = uri.rstrip("/")
    matches = [k for k in mapping if uri == k or uri.startswith(k + "/")]
    if not matches:
        raise UserError(f"{what} {uri}: no --local mapping covers it; add --local {uri}=DIR (the folder holding "
                        "what that S3 prefix holds)")
    prefix = max(matches, key=len)
    path = mapping[prefix] / uri[len(prefix):].lstrip("/")
    if not path.exists():
        raise UserError(f"{what} {uri}: maps to {path}, which does not exist; fix the --local mapping "
                        f"({prefix}={mapping[prefix]})")
    return path


def _copy_in(source: Path, dest: Path) -> None:
    """What SageMaker downloads for a channel: the prefix's objects (hard links when possible)."""
    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    dest.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        link_or_copy(str(source), str(dest / source.name))
    else:
        shutil.copytree(source, dest, copy_function=link_or_copy, dirs_exist_ok=True, symlinks=False)


# ------------------------------------------------------------------ step 1: the request itself


def _check_hyperparameters(given: dict[str, str], specs: list[dict]) -> tuple[dict[str, str], list[str]]:
    """The hyperparameters SageMaker would pass (defaults filled in) and what it would refuse."""
    by_name = {s["Name"]: s for s in specs}
    problems = []
    passed = {s["Name"]: s["DefaultValue"] for s in specs if "DefaultValue" in s}
    for name, value in given.items():
        if not isinstance(value, str):
            problems.append(f"hyperparameter {name}: value {value!r} is not a string (SageMaker passes strings)")
            continue
        passed[name] = value
        spec = by_name.get(name)
        if spec is None:
            if not name.startswith(SAGEMAKER_PREFIXES):
                problems.append(f"hyperparameter {name} is not in SupportedHyperParameters")
            continue
        ranges = spec.get("Range", {})
        try:
            if spec["Type"] == "Integer":
                number: float = int(value)
                bounds = ranges.get("IntegerParameterRangeSpecification")
            elif spec["Type"] == "Continuous":
                number = float(value)
                bounds = ranges.get("ContinuousParameterRangeSpecification")
            else:
                number, bounds = 0.0, None
        except ValueError:
            problems.append(f"hyperparameter {name}={value}: not {spec['Type'].lower()}")
            continue
        if bounds and not float(bounds["MinValue"]) <= number <= float(bounds["MaxValue"]):
            problems.append(f"hyperparameter {name}={value}: outside [{bounds['MinValue']}, {bounds['MaxValue']}]")
        values = ranges.get("CategoricalParameterRangeSpecification", {}).get("Values")
        if spec["Type"] == "Categorical" and values and value not in values:
            problems.append(f"hyperparameter {name}={value}: not one of {values}")
    for spec in specs:
        if spec.get("IsRequired") and spec["Name"] not in passed:
            problems.append(f"hyperparameter {spec['Name']} is required")
    return passed, problems


def check_profile(request: dict, profile: dict) -> tuple[dict[str, str], list[str]]:
    """What CreateAlgorithm checks of a validation profile against the TrainingSpecification."""
    spec = request["TrainingSpecification"]
    job = profile["TrainingJobDefinition"]
    problems = []
    declared = {c["Name"]: c for c in spec["TrainingChannels"]}
    fed = {c["ChannelName"]: c for c in job["InputDataConfig"]}
    for name, channel in fed.items():
        if name not in declared:
            problems.append(f"channel {name} is not declared in TrainingChannels ({', '.join(declared)})")
            continue
        want = declared[name]
        if channel.get("ContentType") and channel["ContentType"] not in want["SupportedContentTypes"]:
            problems.append(f"channel {name}: ContentType {channel['ContentType']} is not in "
                            f"{want['SupportedContentTypes']}")
        compression = channel.get("CompressionType", "None")
        if compression not in want.get("SupportedCompressionTypes", ["None"]):
            problems.append(f"channel {name}: CompressionType {compression} is not supported")
        mode = channel.get("InputMode") or job["TrainingInputMode"]
        if mode not in want["SupportedInputModes"]:
            problems.append(f"channel {name}: input mode {mode} is not in {want['SupportedInputModes']}")
    for name, channel in declared.items():
        if channel.get("IsRequired") and name not in fed:
            problems.append(f"channel {name} is required but the validation profile does not feed it")
    resources = job["ResourceConfig"]
    if resources["InstanceType"] not in spec["SupportedTrainingInstanceTypes"]:
        problems.append(f"InstanceType {resources['InstanceType']} is not in SupportedTrainingInstanceTypes")
    if resources.get("InstanceCount", 1) > 1 and not spec.get("SupportsDistributedTraining"):
        problems.append("InstanceCount > 1 but SupportsDistributedTraining is false")
    hyperparameters, hp_problems = _check_hyperparameters(job.get("HyperParameters", {}),
                                                          spec.get("SupportedHyperParameters", []))
    return hyperparameters, problems + hp_problems


# ------------------------------------------------------------------ step 2: the training job


def lay_out_training_job(base: Path, job: dict, hyperparameters: dict[str, str], mapping: dict[str, Path]) -> None:
    """The /opt/ml tree SageMaker gives a training job's first host."""
    from hilt.core.opt_ml import OptML

    opt_ml = OptML(base).create()
    resources = job["ResourceConfig"]
    hosts = [f"algo-{i + 1}" for i in range(resources.get("InstanceCount", 1))]
    resource_config = {
        "current_host": hosts[0], "hosts": hosts, "current_instance_type": resources["InstanceType"],
        "current_group_name": "homogeneousCluster", "network_interface_name": "eth0",
        "instance_groups": [{"instance_group_name": "homogeneousCluster",
                             "instance_type": resources["InstanceType"], "hosts": hosts}],
    }
    data_config = {}
    for channel in job["InputDataConfig"]:
        name = channel["ChannelName"]
        source = channel["DataSource"]["S3DataSource"]
        _copy_in(local_path(source["S3Uri"], mapping, f"channel {name}"), opt_ml.channel_dir(name))
        data_config[name] = {"TrainingInputMode": channel.get("InputMode") or job["TrainingInputMode"],
                             "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
                             "RecordWrapperType": channel.get("RecordWrapperType", "None")}
        if channel.get("ContentType"):
            data_config[name]["ContentType"] = channel["ContentType"]
    opt_ml.hyperparameters_file.write_text(json.dumps(hyperparameters, indent=2, sort_keys=True))
    opt_ml.resource_config_file.write_text(json.dumps(resource_config, indent=2))
    opt_ml.input_data_config_file.write_text(json.dumps(data_config, indent=2, sort_keys=True))


def run_training_job(base: Path, max_runtime: int, log_file: Path, job_name: str,
                     image: str | None = None) -> tuple[int, str]:
    """Run ``train`` over ``base`` offline (inside ``image`` when given, ``base`` mounted at /opt/ml),
    stream its log, stop it at ``max_runtime`` as SageMaker would.

    Returns:
        (exit code, why it stopped: "" or "MaxRuntimeExceeded").
    """
    from hilt.serving.image import entry_command

    settings = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TRAINING_JOB_NAME": job_name}
    with entry_command("train", image, base, settings) as (argv, env):
        return _run_logged(argv, env, max_runtime, log_file)


def _run_logged(argv: list[str], env: dict[str, str], max_runtime: int, log_file: Path) -> tuple[int, str]:
    """Run ``argv`` in its own process group, its log copied to ``log_file`` and stdout; SIGTERM at
    ``max_runtime``, then SIGKILL after SageMaker's 120 s."""
    import threading

    from hilt.serving.image import stop_process

    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)

    def copy_log() -> None:
        with log_file.open("wb") as log:
            for line in iter(process.stdout.readline, b""):
                log.write(line)
                log.flush()
                sys.stdout.write("  [train] " + line.decode("utf-8", "replace"))
                sys.stdout.flush()

    reader = threading.Thread(target=copy_log, daemon=True)
    reader.start()
    reason = ""
    try:
        try:
            rc = process.wait(timeout=max_runtime)
        except subprocess.TimeoutExpired:
            reason = "MaxRuntimeExceeded"
            rc = stop_process(process, GRACE_SECONDS)
    except BaseException:
        # Interrupted (Ctrl-C): the training job stops with the replay, the way SageMaker stops a job.
        stop_process(process, GRACE_SECONDS)
        raise
    finally:
        reader.join(timeout=10)
    return rc, reason


def sagemaker_tar(folder: Path, out: Path) -> Path:
    """``folder``'s files in a gzipped tar, at the archive root: how SageMaker uploads /opt/ml/model."""
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=str(path.relative_to(folder)))
    tmp.replace(out)
    return out


# ------------------------------------------------------------------ the whole replay


def _is_certify_dir(folder: Path) -> bool:
    return (folder / REPORT_FILE).is_file()


def validate_algorithm(request_file: Path, mapping: dict[str, Path], output: Path,
                       start_timeout: float, max_unpacked_bytes: int, images: dict[str, str] | None = None) -> dict:
    """Replay every ValidationProfile of a CreateAlgorithm request; return (and write) the report.

    ``images`` ({"train": IMAGE, "serve": IMAGE}, either optional) runs the training job and the
    transform's ``serve`` inside those local images instead of this environment.

    Raises:
        UserError: when the request file cannot be read or is not a CreateAlgorithm request.
    """
    from hilt.core.aws import validate_request

    try:
        request = json.loads(request_file.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"--algorithm {request_file}: no such file; pass the JSON `hilt package request "
                        "algorithm` wrote") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--algorithm {request_file}: not UTF-8 JSON ({err}); pass the request file "
                        "`hilt package request algorithm` wrote") from None
    if not isinstance(request, dict) or "AlgorithmName" not in request:
        raise UserError(f"--algorithm {request_file}: not a CreateAlgorithm request (no AlgorithmName); "
                        "a Model Package is validated with --model-tar")
    images = {kind: image for kind, image in (images or {}).items() if image}
    for flag, image in (("--train-image", images.get("train")), ("--image", images.get("serve"))):
        if image:
            from hilt.serving.image import require_image

            require_image(image, flag)
    output = claim_output_dir(output, "algorithm-validation", "--output", recognise=_is_certify_dir,
                              hint="the --output of an earlier `hilt package validate --algorithm`")
    report: dict = {"algorithm": request["AlgorithmName"], "request": str(request_file.resolve()), "profiles": [],
                    **({"images": images} if images else {})}
    steps: list[dict] = []

    def step(name: str, profile: str, started: float, passed: bool, **detail) -> bool:
        steps.append({"step": name, "profile": profile, "passed": passed,
                      "seconds": round(time.perf_counter() - started, 1), **detail})
        print(f"[certify] {profile}: {name} {'passed' if passed else 'FAILED'}"
              + (f": {detail.get('error')}" if not passed and detail.get("error") else ""), flush=True)
        return passed

    started = time.perf_counter()
    try:
        validate_request("CreateAlgorithm", request)
        profiles = request.get("ValidationSpecification", {}).get("ValidationProfiles", [])
        if not profiles:
            raise UserError("CreateAlgorithm request has no ValidationSpecification.ValidationProfiles; "
                            "Marketplace certifies an Algorithm by running one")
    except UserError as err:
        step("request", "-", started, False, error=str(err))
        profiles = []
    for profile in profiles:
        name = profile["ProfileName"]
        root = output / name
        if not _replay_profile(request, profile, root, mapping, start_timeout, max_unpacked_bytes, step, images):
            break
    failed = next((s for s in steps if not s["passed"]), None)
    report.update(passed=failed is None and bool(profiles), steps=steps,
                  failed_step=failed["step"] if failed else None,
                  profiles=[p["ProfileName"] for p in profiles])
    write_atomic(output / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    report["report_file"] = str(output / REPORT_FILE)
    return report


def _replay_profile(request: dict, profile: dict, root: Path, mapping: dict[str, Path], start_timeout: float,
                    max_unpacked_bytes: int, step, images: dict[str, str]) -> bool:
    from hilt.serving.validate import validate_model_tar

    name = profile["ProfileName"]
    started = time.perf_counter()
    job = profile["TrainingJobDefinition"]
    hyperparameters, problems = check_profile(request, profile)
    if problems:
        return step("request", name, started, False, error="; ".join(problems))
    transform = profile["TransformJobDefinition"]
    try:  # every S3 URI must resolve before an hour of training
        for channel in job["InputDataConfig"]:
            local_path(channel["DataSource"]["S3DataSource"]["S3Uri"], mapping, f"channel {channel['ChannelName']}")
        transform_input = local_path(transform["TransformInput"]["DataSource"]["S3DataSource"]["S3Uri"], mapping,
                                     "TransformInput")
    except UserError as err:
        return step("request", name, started, False, error=str(err))
    step("request", name, started, True, hyperparameters=hyperparameters)

    started = time.perf_counter()
    base = root / "opt-ml"
    if base.exists():  # a replay starts from a fresh /opt/ml, as every SageMaker job does
        shutil.rmtree(base)
    lay_out_training_job(base, job, hyperparameters, mapping)
    print(f"[certify] {name}: training job over {base} (offline, "
          f"MaxRuntimeInSeconds {job['StoppingCondition']['MaxRuntimeInSeconds']})", flush=True)
    rc, reason = run_training_job(base, job["StoppingCondition"]["MaxRuntimeInSeconds"], root / "train.log",
                                  f"{request['AlgorithmName']}-{name}", images.get("train"))
    failure = base / "output" / "failure"
    if rc != 0:
        why = failure.read_text().strip() if failure.is_file() else f"train exited with code {rc}"
        return step("training-job", name, started, False, exit_code=rc, error=(reason + ": " if reason else "") + why,
                    log=str(root / "train.log"))
    step("training-job", name, started, True, exit_code=0, log=str(root / "train.log"))

    started = time.perf_counter()
    artifacts = root / "output"
    artifacts.mkdir(parents=True, exist_ok=True)
    tar = sagemaker_tar(base / "model", artifacts / "model.tar.gz")
    sagemaker_tar(base / "output" / "data", artifacts / "output.tar.gz")
    if not any((base / "model").iterdir()):
        return step("model-artifact", name, started, False, error="/opt/ml/model is empty after training")
    step("model-artifact", name, started, True, archive=str(tar), bytes=tar.stat().st_size)

    started = time.perf_counter()
    source = transform["TransformInput"]
    input_file = transform_input if transform_input.is_file() else None
    if input_file is None:
        files = sorted(p for p in transform_input.rglob("*") if p.is_file())
        if len(files) != 1:
            return step("transform-job", name, started, False,
                        error=f"TransformInput {source['DataSource']['S3DataSource']['S3Uri']}: the replay reads one "
                              f"input file, found {len(files)} under {transform_input}")
        input_file = files[0]
    result = validate_model_tar(
        tar, input_file, source.get("ContentType", "application/jsonlines"), source.get("SplitType", "None"),
        transform["TransformOutput"].get("AssembleWith", "None"), root / "transform", ping_timeout=start_timeout,
        max_unpacked_bytes=max_unpacked_bytes, batch_strategy=transform.get("BatchStrategy", "SingleRecord"),
        max_payload_mb=transform.get("MaxPayloadInMB", 6),
        max_concurrent_transforms=transform.get("MaxConcurrentTransforms", 1), require_manifest=False,
        image=images.get("serve"))
    return step("transform-job", name, started, result["passed"], records=result["records"],
                report=result["report_file"], error="; ".join(result["failures"][:3]) or None)
