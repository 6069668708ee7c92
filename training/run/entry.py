"""The training container's ``train`` entry point, and ``hilt train`` over a local tree.

SageMaker starts the training image with ``train``; it reads /opt/ml (under
``SAGEMAKER_BASE_DIR``), trains, and leaves the model in /opt/ml/model. With more than
one process (GPUs per host, or hosts in resourceconfig.json) it launches the workers
itself with torchrun, each running ``python -m hilt.training.run.worker``; the model directory is
finished afterwards in this process, on the first host only.

``hilt train`` writes the same /opt/ml files SageMaker would (hyperparameters as
strings, channels as directories) under ``--output`` and calls the same ``run_job``:
one code path, locally and in the cloud.

Exit codes: 0 done; 2 user error (reason in /opt/ml/output/failure); 143 stopped by
SIGTERM after saving a checkpoint (a rerun resumes); anything else is a bug.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import traceback
from pathlib import Path

from hilt.core.env import env_number
from hilt.core.net import free_port
from hilt.core.errors import EXIT_USER_ERROR, UserError
from hilt.core.layout import require_model_dir
from hilt.training.base.job import Job, read_job, write_failure
from hilt.core.opt_ml import BASE_DIR_ENV, OptML

EXIT_STOPPED = 128 + signal.SIGTERM
DEFAULT_MASTER_PORT = 29500


def run_worker(job: Job) -> int:
    """Train in this process (one worker of possibly many). Returns the exit code."""
    outcome = job.method.train(job)
    return EXIT_STOPPED if outcome.stopped_early else 0


def torchrun_command(job: Job) -> list[str]:
    """The torchrun command for this host: one node per SageMaker host, the first host leads."""
    single_host = len(job.hosts.hosts) == 1
    master = "127.0.0.1" if single_host else job.hosts.master
    port = env_number("HILT_MASTER_PORT", None, kind=int, high=65535) \
        or (free_port() if single_host else DEFAULT_MASTER_PORT)
    return [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc_per_node={job.processes_per_host}",
        f"--nnodes={len(job.hosts.hosts)}",
        f"--node_rank={job.hosts.node_rank}",
        f"--master_addr={master}",
        f"--master_port={port}",
        "-m", "hilt.training.run.worker",
    ]


def launch_workers(job: Job) -> int:
    """Start ``processes_per_host`` workers on this host with torchrun; wait for them."""
    from hilt.training.run.cluster import prepare

    command = torchrun_command(job)
    env = prepare(job.hosts, dict(os.environ))  # every host resolves; NCCL on SageMaker's interface, EFA
    env[BASE_DIR_ENV] = str(job.opt_ml.base)
    if job.gpus_per_host == 0 and "OMP_NUM_THREADS" not in env:
        # CPU workers share the cores; more threads than cores each only thrash.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // job.processes_per_host))
    print(f"[hilt] launching {job.world_size} workers: {' '.join(command[2:])}", flush=True)
    child = subprocess.Popen(command, env=env)
    stopping = False

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        from hilt.training.base.stopping import note_request

        note_request()  # the 120 s run from now: the partial model's merge must fit in what is left
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        rc = child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if stopping:
        return EXIT_STOPPED
    return rc


def run_job(opt_ml: OptML) -> int:
    """Read, validate and run one training job over an /opt/ml tree. Returns the exit code.

    SIGTERM is handled from the first line (``hilt.training.base.stopping``): in any phase the job
    stops within SageMaker's 120 s and leaves what it has in /opt/ml/model, marked partial.
    """
    from hilt.training.base import stopping

    previous = stopping.install()
    read: dict[str, Job] = {}  # the job, once read: what a stop in a later phase saves from
    try:
        try:
            return _run(opt_ml, read)
        except stopping.JobStopped as stop:
            return _stopped(read.get("job"), stop.phase)
    except stopping.JobStopped:  # a SIGTERM that arrived while the stop was being handled
        return EXIT_STOPPED
    finally:
        stopping.uninstall(previous)


def _stopped(job: Job | None, phase: str) -> int:
    """Leave what a stopped job has (first host only) and exit 143."""
    from hilt.training.base import stopping

    with stopping.protected():
        if job is not None and job.hosts.node_rank == 0:
            from hilt.training.run.artifacts import finish_partial_model_dir

            try:
                finish_partial_model_dir(job, phase)
            except Exception as err:  # noqa: BLE001  (the stop must still happen; the log says why)
                print(f"hilt: warning: the partial model could not be written ({type(err).__name__}: {err})",
                      file=sys.stderr, flush=True)
        else:
            print(f"[hilt] stopped by SIGTERM during {phase}, before the job was read; nothing to save", flush=True)
    return EXIT_STOPPED


def _run(opt_ml: OptML, read: dict[str, Job]) -> int:
    from hilt.training.base import stopping

    try:
        stopping.enter("read")
        job = read["job"] = read_job(opt_ml)
        print(
            f"[hilt] recipe={job.recipe.name} method={job.recipe.method} peft={job.recipe.peft.method} "
            f"model={job.model_path} world_size={job.world_size} gpus_per_host={job.gpus_per_host}",
            flush=True,
        )
        from hilt.training.run.provenance import check_resume
        from hilt.training.base.tracking import check_tracking

        check_tracking(job.recipe.train.report_to)  # an MLflow store that cannot be opened: before training
        check_resume(job)  # never resume checkpoints made from other data, recipe or model
        if job.world_size > 1:
            rc = launch_workers(job)
            if rc not in (0, EXIT_STOPPED) and not opt_ml.failure_file.exists():
                write_failure(opt_ml, f"a training worker exited with code {rc}; see the job log for its traceback")
        else:
            rc = run_worker(job)
        if rc == EXIT_STOPPED:
            return _stopped(job, "train")
        if rc == 0 and job.hosts.node_rank == 0:
            from hilt.training.run.artifacts import finish_model_dir

            manifest = finish_model_dir(job)
            print(f"[hilt] model written to {opt_ml.model_dir} (steps={manifest['metrics'].get('global_step')})")
            _log_to_mlflow(job, manifest)
            if stopping.requested():  # SIGTERM while the last files were written: they are whole, the job stopped
                print("[hilt] stopped by SIGTERM while writing the model; it was finished first and is complete",
                      flush=True)
                return EXIT_STOPPED
        return rc
    except (UserError, OSError) as err:
        if isinstance(err, OSError):
            from hilt.core.outputs import as_user_error

            user_error = as_user_error(err, opt_ml.base)
            if user_error is None and not opt_ml.base.is_dir():
                user_error = UserError(f"{opt_ml.base}: the job's folder was removed while it ran; run again "
                                       "(it starts over)")
            if user_error is None:
                return _bug(opt_ml, err)
            err = user_error
        write_failure(opt_ml, str(err))
        print(f"hilt: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as err:
        return _bug(opt_ml, err)


def _log_to_mlflow(job: Job, manifest: dict) -> None:
    """The finished model's recipe, evaluation and artifacts to the job's MLflow run. The model is
    already written: a tracking server that fails now costs a warning, not the job."""
    from hilt.training.base.tracking import log_finished_model

    try:
        log_finished_model(job, manifest)
    except Exception as err:  # noqa: BLE001  (any MLflow client or server error)
        print(f"[hilt] warning: could not log the finished model to MLflow ({type(err).__name__}: {err}); "
              "the model directory is complete", file=sys.stderr, flush=True)


def _bug(opt_ml: OptML, err: BaseException) -> int:
    """A bug: keep the traceback in the log, and give SageMaker a FailureReason."""
    write_failure(opt_ml, f"internal error: {type(err).__name__}: {err}")
    traceback.print_exc()
    return 1


def main() -> int:
    """``train``: what SageMaker runs in the training image."""
    return run_job(OptML.from_env())


def _link(target: Path, link: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target.resolve():
            return
        if link.is_symlink() or link.is_file():
            link.unlink()
        else:
            shutil.rmtree(link)
    link.symlink_to(target.resolve(), target_is_directory=True)


def is_job_tree(folder: Path) -> bool:
    """Whether ``folder`` is an /opt/ml tree ``hilt train`` laid out (older ones had no marker)."""
    return OptML(folder).hyperparameters_file.is_file()


def prepare_local_tree(
    output: Path, recipe: str, data: Path, model: Path | None, overrides: dict[str, str], fresh: bool = False
) -> OptML:
    """Lay out ``output`` as the /opt/ml tree SageMaker would give the job.

    Channels are symlinks to the dataset's ``train/`` and ``validation/`` and to the
    model directory; hyperparameters are written as strings, as SageMaker writes them.
    Rerunning with the same settings reuses the tree, so training resumes from its
    newest checkpoint (``run_job`` checks the checkpoints were made from the same
    recipe, data and model); ``fresh`` discards the checkpoints and model first.

    Raises:
        UserError: when a path is missing, or ``output`` is a folder hilt did not lay out.
    """
    from hilt.core.outputs import claim_output_dir
    from hilt.training.run.provenance import discard_checkpoints
    from hilt.training.base.recipe import resolve_recipe_path

    if not data.is_dir():
        raise UserError(f"--data {data}: no such directory; pass the folder `hilt export` wrote")
    if model is not None:
        require_model_dir(model, "--model")
    recipe_path = resolve_recipe_path(recipe)
    claim_output_dir(output, "training-job", "--output", recognise=is_job_tree,
                     hint="the --output of an earlier `hilt train`")
    opt_ml = OptML(output.resolve())
    hyperparameters = {"recipe": str(recipe_path.resolve()), **{k: str(v) for k, v in overrides.items()}}
    if fresh:
        removed = discard_checkpoints(opt_ml.checkpoint_dir)
        if opt_ml.model_dir.is_dir():
            shutil.rmtree(opt_ml.model_dir)
        print(f"[hilt] --fresh: discarded {removed} checkpoint(s) and the model of the earlier run", flush=True)
    opt_ml.create()
    opt_ml.hyperparameters_file.write_text(json.dumps(hyperparameters, indent=2, sort_keys=True))
    train = data / "train" if (data / "train").is_dir() else data
    channels = {"train": train}
    if (data / "validation").is_dir() and any((data / "validation").glob("*.jsonl")):
        channels["validation"] = data / "validation"
    if model is not None:
        channels["model"] = model
    for name, target in channels.items():
        _link(target, opt_ml.channel_dir(name))
    data_config = {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated"} for name in channels}
    opt_ml.input_data_config_file.write_text(json.dumps(data_config, indent=2, sort_keys=True))
    if opt_ml.failure_file.exists():
        opt_ml.failure_file.unlink()
    return opt_ml


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
