"""The buyer's sample notebook AWS Marketplace's listing guide asks a model seller for.

``hilt package listing`` writes it beside LISTING.md, filled from the run's own metadata
(hilt.json: the recipe, the validation replay's sample requests, the metering unit). It walks a
buyer through the model package they subscribed to: create a model from it, deploy an endpoint,
invoke it with hilt's request schema and the OpenAI chat schema, stream an answer, run a batch
transform, clean up; and, for the seller or a buyer testing the image, the same requests against
the serve container run locally, where the Marketplace metering header can be read (SageMaker
consumes it on a real endpoint).

Every code cell is plain Python (boto3 and the standard library; no notebook magics), tagged in
its metadata with what it needs: ``sagemaker`` cells call the SageMaker APIs (a test runs them
against moto), ``container`` cells call a serve container at ``CONTAINER_URL`` (a test runs them
against the built hilt-serve image).
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

NOTEBOOK_FILE = "sample-notebook.ipynb"


def _cell(kind: str, source: str, tags: tuple[str, ...] = ()) -> dict:
    cell = {"cell_type": kind, "id": uuid.uuid5(uuid.NAMESPACE_URL, source).hex[:8], "metadata": {}, "source": source}
    if tags:
        cell["metadata"]["tags"] = list(tags)
    if kind == "code":
        cell.update(execution_count=None, outputs=[])
    return cell


def sample_notebook(name: str, description: str, metering_unit: str, samples: list[dict],
                    instance_type: str = "ml.g5.xlarge", transform_instance_type: str = "ml.g5.xlarge") -> dict:
    """The notebook (nbformat 4.5 JSON) for the model ``name``; ``samples`` are validation-replay requests."""
    generate = {"inputs": [{"role": "user", "content": "How do I book a meeting room?"}],
                "parameters": {"max_new_tokens": 64}}
    for sample in samples[:1]:  # the replay's first request (of a MultiRecord body, its first line)
        try:
            first = json.loads(sample["input"].splitlines()[0])
            if isinstance(first, dict) and isinstance(first.get("inputs"), (str, list)) and first["inputs"]:
                generate = first
        except (ValueError, IndexError, KeyError, AttributeError):
            pass
    inputs = generate["inputs"]
    prompt = inputs if isinstance(inputs, str) else str(inputs[-1].get("content", "")) if isinstance(inputs[-1], dict) \
        else "How do I book a meeting room?"
    name = re.sub(r"[^A-Za-z0-9-]+", "-", name).strip("-")[:40] or "hilt-model"  # a SageMaker resource name
    chat = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 64}
    cells = [
        _cell("markdown", f"# {name}: getting started\n\n{description}\n\n"
              "This notebook uses the model package you subscribed to in AWS Marketplace: it creates a model, "
              "deploys a real-time endpoint, sends requests in both schemas the model answers (hilt's "
              "`{\"inputs\", \"parameters\"}` and the OpenAI chat-completions `{\"messages\"}`), streams an answer, "
              "runs a batch transform and cleans up. Prerequisites: the subscription, an IAM role SageMaker can "
              "assume (`AmazonSageMakerFullAccess`), and `boto3`."),
        _cell("code", "import json\nimport os\nimport time\nimport urllib.request\n\nimport boto3\n\n"
              "REGION = os.environ.get(\"AWS_REGION\", \"us-east-1\")\n"
              "# The ARN on your subscription's configuration page.\n"
              "MODEL_PACKAGE_ARN = os.environ.get(\"MODEL_PACKAGE_ARN\", "
              "\"arn:aws:sagemaker:us-east-1:123456789012:model-package/REPLACE-ME\")\n"
              "ROLE_ARN = os.environ.get(\"SAGEMAKER_ROLE_ARN\", \"arn:aws:iam::123456789012:role/SageMakerExecution\")\n"
              f"INSTANCE_TYPE = os.environ.get(\"INSTANCE_TYPE\", \"{instance_type}\")\n"
              f"TRANSFORM_INSTANCE_TYPE = os.environ.get(\"TRANSFORM_INSTANCE_TYPE\", \"{transform_instance_type}\")\n"
              f"NAME = \"{name}-\" + time.strftime(\"%Y%m%d-%H%M%S\")\n"
              "# A request in hilt's schema (from the seller's validation replay) and one in the chat schema.\n"
              f"request = {json.dumps(generate, ensure_ascii=False)}\n"
              f"chat = {json.dumps(chat, ensure_ascii=False)}\n"
              "sagemaker = boto3.client(\"sagemaker\", region_name=REGION)\n"
              "runtime = boto3.client(\"sagemaker-runtime\", region_name=REGION)", ("sagemaker", "container")),
        _cell("markdown", "## Create a model and deploy an endpoint\n\nMarketplace runs the model without network "
              f"access. A real-time endpoint on `{instance_type}` takes several minutes to be InService."),
        _cell("code", "sagemaker.create_model(ModelName=NAME, ExecutionRoleArn=ROLE_ARN,\n"
              "                       PrimaryContainer={\"ModelPackageName\": MODEL_PACKAGE_ARN},\n"
              "                       EnableNetworkIsolation=True)\n"
              "sagemaker.create_endpoint_config(EndpointConfigName=NAME, ProductionVariants=[{\n"
              "    \"VariantName\": \"AllTraffic\", \"ModelName\": NAME, \"InstanceType\": INSTANCE_TYPE,\n"
              "    \"InitialInstanceCount\": 1}])\n"
              "sagemaker.create_endpoint(EndpointName=NAME, EndpointConfigName=NAME)\n"
              "sagemaker.get_waiter(\"endpoint_in_service\").wait(EndpointName=NAME)\n"
              "print(sagemaker.describe_endpoint(EndpointName=NAME)[\"EndpointStatus\"])", ("sagemaker",)),
        _cell("markdown", "## Invoke it\n\nhilt's schema answers `{\"generated_text\", \"finish_reason\", \"usage\"}`; "
              "the chat schema answers a `chat.completion`. Each successful call is metered as "
              f"`inference.count` with ConsumedUnits = {metering_unit.replace('_', ' ')}."),
        _cell("code", "response = runtime.invoke_endpoint(EndpointName=NAME, ContentType=\"application/json\",\n"
              "                                   Accept=\"application/json\", Body=json.dumps(request))\n"
              "print(response[\"Body\"].read().decode())", ("sagemaker",)),
        _cell("code", "response = runtime.invoke_endpoint(EndpointName=NAME, ContentType=\"application/json\",\n"
              "                                   Body=json.dumps(chat))\n"
              "print(response[\"Body\"].read().decode())", ("sagemaker",)),
        _cell("markdown", "## Stream an answer\n\n`\"stream\": true` with InvokeEndpointWithResponseStream: "
              "server-sent events of `chat.completion.chunk` objects."),
        _cell("code", "stream = runtime.invoke_endpoint_with_response_stream(\n"
              "    EndpointName=NAME, ContentType=\"application/json\", Body=json.dumps({**chat, \"stream\": True}))\n"
              "for event in stream[\"Body\"]:\n"
              "    print(event[\"PayloadPart\"][\"Bytes\"].decode(), end=\"\")", ("sagemaker", "streaming")),
        _cell("markdown", "## Batch transform\n\nOne request per line (`application/jsonlines`, SplitType Line); "
              "batch transform is billed by instance hours, not by the metering dimension. Put your input file in S3 "
              "first."),
        _cell("code", "INPUT_S3 = os.environ.get(\"TRANSFORM_INPUT\", \"s3://REPLACE-ME/input.jsonl\")\n"
              "OUTPUT_S3 = os.environ.get(\"TRANSFORM_OUTPUT\", \"s3://REPLACE-ME/output/\")\n"
              "sagemaker.create_transform_job(\n"
              "    TransformJobName=NAME, ModelName=NAME, BatchStrategy=\"SingleRecord\", MaxPayloadInMB=6,\n"
              "    TransformInput={\"DataSource\": {\"S3DataSource\": {\"S3DataType\": \"S3Prefix\", \"S3Uri\": INPUT_S3}},\n"
              "                    \"ContentType\": \"application/jsonlines\", \"SplitType\": \"Line\"},\n"
              "    TransformOutput={\"S3OutputPath\": OUTPUT_S3, \"AssembleWith\": \"Line\"},\n"
              "    TransformResources={\"InstanceType\": TRANSFORM_INSTANCE_TYPE, \"InstanceCount\": 1})\n"
              "print(sagemaker.describe_transform_job(TransformJobName=NAME)[\"TransformJobStatus\"])", ("sagemaker",)),
        _cell("markdown", "## Clean up\n\nAn endpoint bills by the hour until it is deleted."),
        _cell("code", "sagemaker.delete_endpoint(EndpointName=NAME)\n"
              "sagemaker.delete_endpoint_config(EndpointConfigName=NAME)\n"
              "sagemaker.delete_model(ModelName=NAME)", ("sagemaker",)),
        _cell("markdown", "## The container on your own machine\n\nThe serve image answers SageMaker's contract on "
              "port 8080 (`docker run -p 8080:8080 -v MODEL_DIR:/opt/ml/model IMAGE serve`). There the response "
              "carries the `X-Amzn-Inference-Metering` header SageMaker bills from."),
        _cell("code", "CONTAINER_URL = os.environ.get(\"CONTAINER_URL\", \"http://localhost:8080\")\n\n\n"
              "def post(body, accept=\"application/json\"):\n"
              "    req = urllib.request.Request(CONTAINER_URL + \"/invocations\", data=json.dumps(body).encode(),\n"
              "                                 headers={\"Content-Type\": \"application/json\", \"Accept\": accept})\n"
              "    with urllib.request.urlopen(req, timeout=120) as answer:\n"
              "        return answer.headers, answer.read().decode()\n\n\n"
              "headers, body = post(request)\n"
              "print(json.loads(headers[\"X-Amzn-Inference-Metering\"]), json.loads(body))\n"
              "headers, body = post(chat)\n"
              "print(json.loads(headers[\"X-Amzn-Inference-Metering\"]), json.loads(body)[\"choices\"][0][\"message\"])\n"
              "headers, body = post({**chat, \"stream\": True}, accept=\"text/event-stream\")\n"
              "print([line for line in body.splitlines() if line][-1])  # data: [DONE]", ("container",)),
    ]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python"}, "hilt": {"generated_by": "hilt package listing"}}}


def _is_ours(raw: bytes) -> bool:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and isinstance(data.get("metadata"), dict) and "hilt" in data["metadata"]


def check_notebook_path(out: Path) -> None:
    """Raises UserError when ``out`` exists and is not a notebook hilt wrote (nothing is changed)."""
    from hilt.core.outputs import check_output_file

    check_output_file(out, "the sample notebook", _is_ours, what="a sample notebook hilt wrote")


def write_sample_notebook(out: Path, name: str, description: str, metering_unit: str, samples: list[dict]) -> Path:
    """Write the notebook; a file at ``out`` that hilt did not write is refused (UserError)."""
    from hilt.core.outputs import write_atomic

    check_notebook_path(out)
    return write_atomic(out, json.dumps(sample_notebook(name, description, metering_unit, samples), indent=1) + "\n")
