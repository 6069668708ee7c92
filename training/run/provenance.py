"""What a training run's checkpoints were made from, so a resume never mixes inputs.

A checkpoint is only worth resuming from when the run would have written it itself: the
same resolved recipe (hyperparameters included), the same dataset bytes and the same
base model. The first run records these beside its checkpoints (``hilt-source.json``,
which SageMaker syncs to S3 with them); a later run compares, and refuses with one line
naming what changed instead of "resuming" into a model that never saw the new data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hilt.core.errors import UserError
from hilt.core.layout import model_fingerprint
from hilt.core.outputs import write_atomic

SOURCE_FILE = "hilt-source.json"


def run_source(job) -> dict:
    """The inputs that decide what a run's checkpoints hold."""
    from hilt.training.data.records import dataset_fingerprint

    return {
        "recipe": job.recipe.model_dump(mode="json"),
        "dataset": {name: dataset_fingerprint(job.channels[name])["sha256"]
                    for name in ("train", "validation") if name in job.channels},
        "base_model": model_fingerprint(job.model_path),
    }


def _changes(before: dict, now: dict) -> list[str]:
    changed = []
    for name in sorted(set(before.get("dataset", {})) | set(now["dataset"])):
        old, new = before.get("dataset", {}).get(name), now["dataset"].get(name)
        if old != new:
            changed.append(f"{name} data sha256 {str(old)[:12]}… -> {str(new)[:12]}…")
    if before.get("base_model") != now["base_model"]:
        changed.append("base model")
    old_recipe, new_recipe = before.get("recipe", {}), now["recipe"]
    keys = []
    for section in sorted(set(old_recipe) | set(new_recipe)):
        a, b = old_recipe.get(section), new_recipe.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys += [f"{section}.{k}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        else:
            keys.append(section)
    if keys:
        changed.append("recipe " + ", ".join(keys[:5]) + (" …" if len(keys) > 5 else ""))
    return changed


def check_resume(job) -> None:
    """Record this run's inputs beside its checkpoints, or check that they are the same.

    Raises:
        UserError: when the checkpoint folder holds checkpoints made from other inputs (or
            from unknown ones), naming what changed and the fix.
    """
    from hilt.training.trainers.callbacks import latest_checkpoint

    checkpoints = job.checkpoint_dir
    source_file = checkpoints / SOURCE_FILE
    now = run_source(job)
    fix = ("use a new --output (or checkpoint location), or start over with `hilt train --fresh`, "
           "which discards these checkpoints")
    if latest_checkpoint(checkpoints) is not None:
        try:
            before = json.loads(source_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise UserError(f"{checkpoints} holds checkpoints with no record of the data, recipe and model they were "
                            f"made from ({SOURCE_FILE}); resuming could train nothing on this data: {fix}") from None
        changed = _changes(before, now)
        if changed:
            raise UserError(f"{checkpoints} holds checkpoints of another run ({'; '.join(changed)}); "
                            f"resuming would not train on these inputs: {fix}")
        return
    write_atomic(source_file, json.dumps(now, indent=2, sort_keys=True) + "\n")


def discard_checkpoints(checkpoints: Path) -> int:
    """Remove the checkpoints a run wrote (``checkpoint-N`` and the source record). Returns how many."""
    removed = 0
    for path in checkpoints.glob("checkpoint-*"):
        if path.is_dir() and path.name.removeprefix("checkpoint-").isdigit():
            shutil.rmtree(path)
            removed += 1
    (checkpoints / SOURCE_FILE).unlink(missing_ok=True)
    return removed
