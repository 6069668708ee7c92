#!/usr/bin/env python
"""Benchmark: 100,000 annotations in Label Studio's JSON export format -> dataset.

Builds a synthetic export (SFT template, two annotators on a third of the tasks, a few
cancelled, empty and duplicate answers), then times `hilt export --from-file`'s code path
end to end: parse the JSON, apply the rules, write the dataset atomically.
Target: < 10 s on a 2-core machine.

    .venv/bin/python scripts/bench_export.py [--annotations 100000]

Results: bench_results/export.json (and a line on stdout).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def synthetic_export(n_annotations: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "please order book laptop desk office floor meeting client summary advisor portal manager".split()
    tasks, aid, tid = [], 0, 0
    while aid < n_annotations:
        tid += 1
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(6, 30)))
        annotations = []
        for who in range(1 if rng.random() < 0.67 else 2):
            if aid >= n_annotations:
                break
            aid += 1
            roll = rng.random()
            text = "" if roll < 0.01 else " ".join(rng.choice(words) for _ in range(rng.randint(10, 80)))
            annotations.append({
                "id": aid, "completed_by": who + 1, "was_cancelled": roll > 0.99, "ground_truth": False,
                "lead_time": rng.uniform(5, 120), "created_at": "2026-11-01T10:00:00.000000Z",
                "updated_at": "2026-11-01T10:00:00.000000Z", "prediction": {},
                "result": [{"from_name": "answer", "to_name": "prompt", "type": "textarea",
                            "value": {"text": [text]}, "id": f"r{aid}"}],
            })
        tasks.append({"id": tid, "data": {"prompt": prompt}, "annotations": annotations, "predictions": []})
    return tasks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "export.json"))
    args = parser.parse_args()

    from hilt.labeling.dataset import export_to_dataset
    from hilt.labeling.export import ExportOptions
    from hilt.labeling.templates import default_spec

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    export_file = work / "export.json"
    export_file.write_text(json.dumps(synthetic_export(args.annotations)))

    started = time.perf_counter()
    tasks = json.loads(export_file.read_bytes())
    parsed = time.perf_counter()
    _, manifest = export_to_dataset(tasks, default_spec("sft"), ExportOptions(), {"type": "file"}, work / "dataset")
    seconds = time.perf_counter() - started
    c = manifest["counts"]
    records = c["records"]["train"] + c["records"]["validation"]
    result = {
        "annotations": c["annotations"], "tasks": c["tasks"], "records": records, "rejects": c["rejects"],
        "seconds": round(seconds, 3), "parse_seconds": round(parsed - started, 3),
        "records_per_second": round(records / seconds), "annotations_per_second": round(c["annotations"] / seconds),
        "target_seconds": 10, "target_met": seconds < 10,
        "export_file_mb": round(export_file.stat().st_size / 2**20, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{c['annotations']} annotations ({result['export_file_mb']} MB export) -> {records} records + "
          f"{c['rejects']['total']} rejects in {seconds:.2f}s ({result['records_per_second']} records/s; "
          f"target < 10 s: {'met' if result['target_met'] else 'NOT met'}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
