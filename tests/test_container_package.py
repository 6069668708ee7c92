"""model.tar.gz, the local validation replay, Model Package / Algorithm requests, submission."""

from __future__ import annotations

import copy
import io
import json
import re
import shutil
import tarfile

import pytest

from conftest import run_hilt
from hilt.core.aws import send_request, validate_request
from hilt.serving.marketplace import algorithm_request, model_package_request, write_listing
from hilt.serving.package import build_model_tar, extract_model_tar
from hilt.core.errors import UserError
from hilt.training.trainers.callbacks import METRIC_DEFINITIONS, format_metrics

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/hilt-serve:0.1.0"
ROLE = "arn:aws:iam::123456789012:role/SageMakerExecution"


def package_request(**overrides):
    args = dict(name="hilt-assistant", image=IMAGE, model_data_url="s3://hilt-test/model.tar.gz", role_arn=ROLE,
                validation_input="s3://hilt-test/validation/input.jsonl", validation_output="s3://hilt-test/validation/out")
    return model_package_request(**{**args, **overrides})


def test_tar_is_deterministic_and_extracts_to_the_same_files(tiny_model_dir, tmp_path):
    a = build_model_tar(tiny_model_dir, tmp_path / "a.tar.gz")
    b = build_model_tar(tiny_model_dir, tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert a["archive_sha256"] == b["archive_sha256"]
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names[0] == "hilt-package.json" and names[1:] == sorted(names[1:])
    assert all(m.mtime == 0 and m.uid == 0 and not m.name.startswith(("/", "..")) for m in members)
    extracted = extract_model_tar(tmp_path / "a.tar.gz", tmp_path / "opt" / "ml" / "model")
    assert extracted["verified"] and set(extracted["files"]) == {p.name for p in tiny_model_dir.iterdir()}
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "opt" / "ml" / "model")


def test_extraction_refuses_path_traversal_and_tampering(tiny_model_dir, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(UserError, match="cannot be extracted safely"):
        extract_model_tar(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()

    build_model_tar(tiny_model_dir, tmp_path / "good.tar.gz")
    tampered = tmp_path / "tampered.tar.gz"
    with tarfile.open(tmp_path / "good.tar.gz") as src, tarfile.open(tampered, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == "config.json":
                data = data.replace(b"llama", b"LLAMA")
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(UserError, match="config.json does not match its sha256"):
        extract_model_tar(tampered, tmp_path / "out2")


@pytest.mark.slow
def test_validation_replay_passes_on_trained_artifacts(hilt_exe, lora_run, tmp_path):
    out, _ = lora_run
    tar = tmp_path / "model.tar.gz"
    assert run_hilt(hilt_exe, "package", "build", "--model-dir", str(out / "model"), "--out", str(tar)).returncode == 0
    requests = [{"inputs": "upper: abcd", "parameters": {"max_new_tokens": 8}},
                {"inputs": [{"role": "user", "content": "upper: wxyz"}], "parameters": {"max_new_tokens": 8}},
                {"inputs": "upper: mnop", "parameters": {"max_new_tokens": 8}}]
    (tmp_path / "input.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tar), "--input", str(tmp_path / "input.jsonl"),
                      "--content-type", "application/jsonlines", "--split-type", "Line", "--output", str(tmp_path / "v"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "v" / "validation-report.json").read_text())
    assert report["passed"] and report["records"] == 3 and report["package_verified"]
    lines = [json.loads(l) for l in (tmp_path / "v" / "input.jsonl.out").read_text().splitlines()]
    # The container serves the trained model faithfully, in input order: same answers as
    # generating from the model dir directly (greedy), and mostly right on the task.
    from hilt.training.evaluation.generation import greedy_answers

    direct = greedy_answers(out / "model", [[{"role": "user", "content": f"upper: {w}"}] for w in ("abcd", "wxyz", "mnop")],
                            max_new_tokens=8)
    assert [l["generated_text"] for l in lines] == direct
    assert sum(a == b for a, b in zip(direct, ["ABCD", "WXYZ", "MNOP"])) >= 2
    assert all(s["metering"]["Dimension"] == "inference.count" for s in report["samples"])


def test_validation_replay_reports_failures(hilt_exe, tiny_model_dir, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    build_model_tar(broken, tmp_path / "broken.tar.gz")
    (tmp_path / "in.jsonl").write_text('{"inputs": "x"}\n')
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tmp_path / "broken.tar.gz"),
                      "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "v"))
    assert result.returncode == 1 and "FAILED" in result.stdout and "/ping answered 500" in result.stdout

    build_model_tar(tiny_model_dir, tmp_path / "ok.tar.gz")
    (tmp_path / "bad.jsonl").write_text('{"inputs": "fine", "parameters": {"max_new_tokens": 2}}\n{"no_inputs": 1}\n')
    result = run_hilt(hilt_exe, "package", "validate", "--model-tar", str(tmp_path / "ok.tar.gz"),
                      "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "v2"))
    assert result.returncode == 1 and "record 2: HTTP 400" in result.stdout


def test_model_package_request_validates_and_lists_one_hardware_family():
    request = package_request()
    validate_request("CreateModelPackage", request)
    spec = request["InferenceSpecification"]
    assert all(t.startswith(("ml.m5", "ml.c5")) for t in spec["SupportedRealtimeInferenceInstanceTypes"])
    transform = request["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]
    assert transform["TransformInput"]["SplitType"] == "Line" and transform["TransformOutput"]["AssembleWith"] == "Line"
    assert transform["BatchStrategy"] == "SingleRecord" and transform["MaxPayloadInMB"] == 6
    assert request["CertifyForMarketplace"] is True
    gpu = package_request(hardware="gpu")
    validate_request("CreateModelPackage", gpu)
    assert all(t.startswith(("ml.g5", "ml.p4d")) for t in gpu["InferenceSpecification"]["SupportedRealtimeInferenceInstanceTypes"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]["TransformInput"]
         .update(SplitType="Lines"), "SplitType: 'Lines' is not one of"),
        (lambda r: r["ValidationSpecification"].update(ValidationRole="role/SageMakerExecutionRole"), "ValidationRole"),
        (lambda r: r.update(ModelPackageName="x" * 200), "longer than 63 characters"),
        (lambda r: r["InferenceSpecification"].update(SupportedTransformInstanceTypes=["ml.p4d.24xlarge"]),
         "'ml.p4d.24xlarge' is not one of"),
    ],
)
def test_strict_validation_catches_what_param_validator_lets_through(mutate, message):
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    request = package_request()
    mutate(request)
    shape = get_session().get_service_model("sagemaker").operation_model("CreateModelPackage").input_shape
    assert not ParamValidator().validate(request, shape).has_errors()  # botocore alone accepts it
    with pytest.raises(UserError, match=re.escape(message)):
        validate_request("CreateModelPackage", request)


def test_algorithm_request_from_the_recipe_schema():
    request = algorithm_request("hilt-sft", IMAGE, ROLE, "llama3-8b-sft-lora", train_uri="s3://b/train/",
                                model_uri="s3://b/base/", validation_uri="s3://b/validation/",
                                validation_input="s3://b/val/input.jsonl", validation_output="s3://b/val/out",
                                training_output="s3://b/out")
    validate_request("CreateAlgorithm", request)
    spec = request["TrainingSpecification"]
    # An 8B recipe lists GPU instances by default; the base weights are a required channel fed in validation.
    assert spec["SupportedTrainingInstanceTypes"][0].startswith("ml.g5")
    profile = request["ValidationSpecification"]["ValidationProfiles"][0]["TrainingJobDefinition"]
    assert profile["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert [c["ChannelName"] for c in profile["InputDataConfig"]] == ["train", "validation", "model"]
    channels = {c["Name"]: c for c in spec["TrainingChannels"]}
    assert channels["model"]["IsRequired"] and "alpaca (instruction/input/output)" in channels["train"]["Description"]
    params = {p["Name"]: p for p in spec["SupportedHyperParameters"]}
    assert params["recipe"]["IsRequired"] and params["recipe"]["DefaultValue"] == "llama3-8b-sft-lora"
    lr = params["train.learning_rate"]
    assert lr["Type"] == "Continuous" and lr["IsTunable"] and lr["DefaultValue"] == "0.0002"
    assert params["peft.method"]["Range"]["CategoricalParameterRangeSpecification"]["Values"] == ["lora", "qlora", "full"]
    assert params["peft.r"]["Type"] == "Integer" and params["peft.r"]["IsTunable"]
    assert params["distributed.deepspeed"]["DefaultValue"] == "deepspeed/zero2.json"
    assert {c["Name"] for c in spec["TrainingChannels"]} == {"train", "validation", "model"}
    assert spec["MetricDefinitions"] == METRIC_DEFINITIONS
    assert {m["MetricName"] for m in spec["SupportedTuningJobObjectiveMetrics"]} <= {d["Name"] for d in METRIC_DEFINITIONS}
    # The regexes read the trainer's own log lines.
    line = format_metrics(20, {"train_loss": 0.912, "eval_loss": 1.05, "learning_rate": 4.9e-3, "tokens_per_second": 9001.5})
    found = {d["Name"]: float(re.search(d["Regex"], line).group(1)) for d in METRIC_DEFINITIONS if re.search(d["Regex"], line)}
    assert found == {"train_loss": 0.912, "eval_loss": 1.05, "learning_rate": 4.9e-3, "tokens_per_second": 9001.5}


def test_create_algorithm_with_stubber():
    """moto does not implement CreateAlgorithm: check the call botocore would make, after strict validation."""
    import botocore.session
    from botocore.stub import Stubber

    request = algorithm_request("hilt-sft", IMAGE, ROLE, "quickstart-tiny-sft", train_uri="s3://b/train/",
                                model_uri="s3://b/base/", validation_input="s3://b/val/input.jsonl",
                                validation_output="s3://b/val/out", training_output="s3://b/out")
    assert request["TrainingSpecification"]["SupportedTrainingInstanceTypes"][0].startswith("ml.m5")
    client = botocore.session.get_session().create_client("sagemaker", region_name="us-east-1",
                                                           aws_access_key_id="x", aws_secret_access_key="x")
    arn = "arn:aws:sagemaker:us-east-1:123456789012:algorithm/hilt-sft"
    with Stubber(client) as stub:
        stub.add_response("create_algorithm", {"AlgorithmArn": arn}, expected_params=copy.deepcopy(request))
        assert send_request(client, request) == {"operation": "CreateAlgorithm", "arn": arn}
        stub.assert_no_pending_responses()
    bad = copy.deepcopy(request)
    bad["TrainingSpecification"]["TrainingChannels"][0]["SupportedInputModes"] = ["Stream", "Fast"]
    with pytest.raises(UserError, match="SupportedInputModes"):
        send_request(client, bad)


def test_request_and_submit_against_moto(hilt_exe, moto_server, tiny_model_dir, tmp_path):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_server["url"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="hilt-test")
    tar = tmp_path / "model.tar.gz"
    build_model_tar(tiny_model_dir, tar)
    request_file = tmp_path / "model-package.json"
    result = run_hilt(hilt_exe, "package", "request", "model-package", "--name", "hilt-assistant", "--image", IMAGE,
                      "--role", ROLE, "--model-data-url", "s3://hilt-test/placeholder.tar.gz",
                      "--validation-input", "s3://hilt-test/validation/input.jsonl",
                      "--validation-output", "s3://hilt-test/validation/out", "--out", str(request_file))
    assert result.returncode == 0, result.stderr
    result = run_hilt(hilt_exe, "package", "submit", str(request_file), "--upload", str(tar),
                      "s3://hilt-test/models/model.tar.gz", "--endpoint-url", moto_server["url"],
                      env=moto_server["env"])
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["arn"].endswith("model-package/hilt-assistant") and answer["status"]
    uploaded = s3.get_object(Bucket="hilt-test", Key="models/model.tar.gz")["Body"].read()
    assert uploaded == tar.read_bytes()
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_server["url"], region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    described = sagemaker.describe_model_package(ModelPackageName="hilt-assistant")
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == "s3://hilt-test/models/model.tar.gz" and container["Image"] == IMAGE
    assert described["CertifyForMarketplace"] is True

    bad = json.loads(request_file.read_text())
    bad["ValidationSpecification"]["ValidationProfiles"][0]["TransformJobDefinition"]["TransformInput"]["SplitType"] = "Lines"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    refused = run_hilt(hilt_exe, "package", "submit", str(tmp_path / "bad.json"), "--endpoint-url",
                       moto_server["url"], env=moto_server["env"])
    assert refused.returncode == 2 and "SplitType: 'Lines'" in refused.stderr


def test_listing_draft(lora_run, tmp_path):
    out, _ = lora_run
    report = {"passed": True, "records": 2, "latency_ms": {"p50": 120.0, "p99": 300.0},
              "samples": [{"input": '{"inputs": "upper: abcd"}', "output": '{"generated_text": "ABCD"}',
                           "metering": {"Dimension": "inference.count", "ConsumedUnits": 2}}]}
    listing = write_listing(out / "model", tmp_path / "LISTING.md", report, "output_tokens").read_text()
    for section in ("## What the model does", "**Target customer:**", "## How it was trained", "## Performance",
                    "## Input and output", "## Sample inputs and outputs", "## Pricing dimension"):
        assert section in listing
    assert "256 training and 32 validation records" in listing
    assert "p50 120.0 ms" in listing and "inference.count" in listing and "real-time inference only" in listing
    assert "train_loss_last" in listing


def test_multirecord_replay_packs_mini_batches_and_a_failed_record_leaves_no_out(hilt_exe, tiny_model_dir, tmp_path):
    build_model_tar(tiny_model_dir, tmp_path / "ok.tar.gz")
    requests = [{"inputs": f"book room {i}", "parameters": {"max_new_tokens": 3}} for i in range(30)]
    lines = [json.dumps(r) for r in requests]
    (tmp_path / "in.jsonl").write_text("".join(l + "\n" for l in lines))
    out = tmp_path / "v"
    args = ("package", "validate", "--model-tar", str(tmp_path / "ok.tar.gz"), "--output", str(out),
            "--batch-strategy", "MultiRecord", "--max-payload-mb", "1", "--max-concurrent-transforms", "2")
    result = run_hilt(hilt_exe, *args, "--input", str(tmp_path / "in.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((out / "validation-report.json").read_text())
    assert report["requests"] == 1 and report["records"] == 30  # 30 short lines fit one 1 MB mini-batch
    assert report["execution_parameters"]["BatchStrategy"] == "MULTI_RECORD"
    answers = [json.loads(l) for l in (out / "in.jsonl.out").read_text().splitlines()]
    assert len(answers) == 30 and all(a["usage"]["output_tokens"] >= 1 for a in answers)

    # Mini-batches are packed up to MaxPayloadInMB: three records of ~0.4 MB make two requests.
    from hilt.serving.validate import mini_batches

    big = [b"x" * 400_000] * 3
    assert [len(b) for b in mini_batches(big, "MultiRecord", 1024 * 1024)] == [2, 1]
    assert [len(b) for b in mini_batches(big, "SingleRecord", 1024 * 1024)] == [1, 1, 1]

    # One bad record fails the transform: no .out (also not the one from the run before).
    bad = lines[:5] + ['{"inputs": "x", "parameters": {"beam": 2}}'] + lines[5:]
    (tmp_path / "in.jsonl").write_text("".join(l + "\n" for l in bad))
    result = run_hilt(hilt_exe, *args, "--input", str(tmp_path / "in.jsonl"))
    assert result.returncode == 1 and "records 1-31: HTTP 400" in result.stdout and "line 6" in result.stdout
    assert not (out / "in.jsonl.out").exists()


def test_model_package_request_needs_weights():
    with pytest.raises(UserError, match="--model-data-url is missing: a Model Package serves weights"):
        package_request(model_data_url=None)
    assert "ModelDataUrl" not in package_request(model_data_url=None, model_in_image=True)[
        "InferenceSpecification"]["Containers"][0]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["process", "images"])
def test_algorithm_certification_replays_offline(where, hilt_exe, warm_base_dir, dataset_dir, tmp_path, request):
    """The request `package request algorithm` writes, replayed: train offline -> SageMaker's tar -> transform;
    from this environment, or inside the train and serve images with their /opt/ml trees mounted."""
    in_images = []
    if where == "images":
        images = request.getfixturevalue("built_images")
        in_images = ["--train-image", images["train"], "--image", images["serve"]]
    bucket = "s3://seller-bucket/hilt"
    local = tmp_path / "bucket"
    (local / "input").mkdir(parents=True)
    (local / "input" / "validation.jsonl").write_text("".join(
        json.dumps({"inputs": [{"role": "user", "content": f"upper: {w}"}], "parameters": {"max_new_tokens": 8}})
        + "\n" for w in ("abcd", "wxyz")))
    request_file = tmp_path / "algorithm.json"
    result = run_hilt(hilt_exe, "package", "request", "algorithm", "--name", "hilt-sft", "--image", IMAGE,
                      "--role", ROLE, "--recipe", "quickstart-tiny-sft", "--set", "train.max_steps=20",
                      "--train-data", f"{bucket}/data/train/", "--validation-data", f"{bucket}/data/validation/",
                      "--model-data", f"{bucket}/base/", "--training-output", f"{bucket}/out",
                      "--validation-input", f"{bucket}/input/validation.jsonl", "--validation-output",
                      f"{bucket}/transform-out", "--out", str(request_file))
    assert result.returncode == 0, result.stderr
    request = json.loads(request_file.read_text())
    job = request["ValidationSpecification"]["ValidationProfiles"][0]["TrainingJobDefinition"]
    # What a framework estimator of the SageMaker SDK sends for free text: a JSON-encoded string.
    # (Typed values are range-checked by CreateTrainingJob, so they arrive plain.)
    job["HyperParameters"]["recipe"] = json.dumps(job["HyperParameters"]["recipe"])
    request_file.write_text(json.dumps(request))
    mapping = tmp_path / "s3-local.json"
    mapping.write_text(json.dumps({f"{bucket}/data": str(dataset_dir), f"{bucket}/base": str(warm_base_dir),
                                   f"{bucket}/input": "bucket/input"}))
    out = tmp_path / "certify"
    result = run_hilt(hilt_exe, "package", "validate", "--algorithm", str(request_file), "--local", str(mapping),
                      "--output", str(out), *in_images, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "algorithm validation PASSED" in result.stdout
    report = json.loads((out / "algorithm-validation.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["request", "training-job", "model-artifact", "transform-job"]
    assert report.get("images", {}) == ({"train": in_images[1], "serve": in_images[3]} if in_images else {})
    profile = out / "hilt-train-and-transform"
    base = profile / "opt-ml"
    # The job saw SageMaker's files: strings, with the Algorithm's defaults filled in, and copied channels.
    hyperparameters = json.loads((base / "input" / "config" / "hyperparameters.json").read_text())
    assert hyperparameters["recipe"] == '"quickstart-tiny-sft"' and hyperparameters["peft.r"] == "32"
    assert json.loads((base / "model" / "hilt.json").read_text())["metrics"]["global_step"] == 20
    assert not (base / "input" / "data" / "model").is_symlink()
    with tarfile.open(profile / "output" / "model.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"config.json", "model.safetensors", "adapter/adapter_model.safetensors", "hilt.json"} <= names
    assert "hilt-package.json" not in names  # SageMaker's archive, not `hilt package build`'s
    answers = (profile / "transform" / "validation.jsonl.out").read_text().splitlines()
    assert len(answers) == 2 and all("generated_text" in json.loads(a) for a in answers)
    assert (warm_base_dir / "config.json").is_file()  # the seller's files are read, never moved

    # A channel whose records cannot be read fails the training job, with SageMaker's FailureReason.
    bad = tmp_path / "bad-data"
    (bad / "train").mkdir(parents=True)
    (bad / "train" / "data.jsonl").write_text('{"question": "q"}\n')
    shutil.copytree(dataset_dir / "validation", bad / "validation")
    mapping.write_text(json.dumps({f"{bucket}/data": str(bad), f"{bucket}/base": str(warm_base_dir),
                                   f"{bucket}/input": "bucket/input"}))
    result = run_hilt(hilt_exe, "package", "validate", "--algorithm", str(request_file), "--local", str(mapping),
                      "--output", str(out), *in_images, env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    report = json.loads((out / "algorithm-validation.json").read_text())
    assert report["failed_step"] == "training-job"
    assert "not a dataset format hilt reads" in report["steps"][-1]["error"]


def test_register_in_the_model_registry_then_promote_an_approved_version(hilt_exe, moto_server, lora_run, tmp_path):
    """A trained model registered as versions of a model package group on moto (with its quality as
    ModelMetrics and its provenance as CustomerMetadataProperties); a pending version is not promoted, an
    approved one becomes the certified Marketplace request."""
    import boto3

    out, _ = lora_run
    s3 = boto3.client("s3", endpoint_url=moto_server["url"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="hilt-registry")
    args = ("package", "register", "--model-dir", str(out / "model"), "--group", "hilt-upper", "--image", IMAGE,
            "--model-data-url", "s3://hilt-registry/models/model.tar.gz",
            "--metrics-uri", "s3://hilt-registry/metrics/upper.json", "--submit",
            "--endpoint-url", moto_server["url"])
    first = run_hilt(hilt_exe, *args, "--out", str(tmp_path / "register.json"), env=moto_server["env"])
    assert first.returncode == 0, first.stderr
    assert "registered hilt-upper/1 (PendingManualApproval)" in first.stdout
    request = json.loads((tmp_path / "register.json").read_text())
    validate_request("CreateModelPackage", request)
    meta = request["CustomerMetadataProperties"]
    manifest = json.loads((out / "model" / "hilt.json").read_text())
    assert meta["hilt:recipe"] == "quickstart-tiny-sft" and meta["hilt:method"] == "sft"
    train = manifest["dataset"]["train"]
    assert meta["hilt:dataset-sha256"] == train.get("manifest_sha256", train["sha256"])
    assert "ModelPackageName" not in request and "CertifyForMarketplace" not in request
    quality = json.loads(s3.get_object(Bucket="hilt-registry", Key="metrics/upper.json")["Body"].read())
    assert quality == json.loads((tmp_path / "register.model-quality.json").read_text())
    assert quality["job_evaluation"]["metrics"] == manifest["evaluation"]["metrics"]
    second = run_hilt(hilt_exe, *args, "--out", str(tmp_path / "register2.json"), env=moto_server["env"])
    assert "registered hilt-upper/2" in second.stdout

    promote = ("package", "promote", "hilt-upper/2", "--name", "hilt-upper-assistant", "--role", ROLE,
               "--validation-input", "s3://hilt-registry/validation/input.jsonl",
               "--validation-output", "s3://hilt-registry/validation/out", "--endpoint-url", moto_server["url"],
               "--out", str(tmp_path / "model-package.json"))
    pending = run_hilt(hilt_exe, *promote, env=moto_server["env"])
    assert pending.returncode == 2 and "hilt-upper/2 is PendingManualApproval, not Approved" in pending.stderr
    assert not (tmp_path / "model-package.json").exists()
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_server["url"], region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing")
    arn = sagemaker.list_model_packages(ModelPackageGroupName="hilt-upper")["ModelPackageSummaryList"]
    arn = next(p["ModelPackageArn"] for p in arn if p["ModelPackageVersion"] == 2)
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    promoted = run_hilt(hilt_exe, *promote, env=moto_server["env"])
    assert promoted.returncode == 0, promoted.stderr
    marketplace = json.loads((tmp_path / "model-package.json").read_text())
    validate_request("CreateModelPackage", marketplace)
    assert marketplace["ModelPackageName"] == "hilt-upper-assistant" and marketplace["CertifyForMarketplace"] is True
    container = marketplace["InferenceSpecification"]["Containers"][0]
    assert container["Image"] == IMAGE and container["ModelDataUrl"] == "s3://hilt-registry/models/model.tar.gz"
    missing = run_hilt(hilt_exe, *[a if a != "hilt-upper/2" else "hilt-upper/9" for a in promote],
                       env=moto_server["env"])
    assert missing.returncode == 2 and "has no version 9" in missing.stderr


def test_every_hardware_choice_has_its_instance_types():
    from hilt.serving.contract import HARDWARE
    from hilt.serving.marketplace import INSTANCE_TYPES

    assert tuple(INSTANCE_TYPES) == HARDWARE
    assert all(set(types) == {"realtime", "transform", "training"} for types in INSTANCE_TYPES.values())
