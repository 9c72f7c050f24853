"""Time ``siamese run`` on the built-in digits in a fresh copy of the project: a full run, then a
no-change ``siamese run`` side by side with a no-change ``dvc repro`` on the same project state
(alternating, ``--repeats`` times each; medians), so the two figures share the machine's load.
Prints JSON (seconds, their ratio, test ROC AUC). Goal: the no-change run at most 3x the
no-change ``dvc repro``."""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import make_project, tool_env
from _pipeline import siamese

GOAL_RATIO = 3.0


def dvc_repro(project: Path) -> tuple[float, str]:
    """A no-change ``dvc repro`` as a user runs it: (seconds, output)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro"],
        cwd=project,
        env=tool_env(),
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"dvc repro failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3, help="no-change runs of each command")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project")
        full, out = siamese(project, "run")
        ours, theirs, outputs = [], [], []
        for _ in range(args.repeats):
            seconds, text = siamese(project, "run")
            ours.append(seconds)
            outputs.append(text)
            seconds, text = dvc_repro(project)
            theirs.append(seconds)
            if "Data and pipelines are up to date" not in text:
                raise SystemExit(f"dvc repro found something to do:\n{text[-2000:]}")
        auc = float(re.search(r"ROC AUC ([0-9.]+)", out).group(1))
        rerun, repro = statistics.median(ours), statistics.median(theirs)
        result = {
            "benchmark": "pipeline_timing",
            "dataset": "digits (built in)",
            "full_run_s": round(full, 1),
            "no_change_run_s": round(rerun, 2),
            "no_change_dvc_repro_s": round(repro, 2),
            "ratio": round(rerun / repro, 2),
            "runs_s": [round(s, 2) for s in ours],
            "dvc_repro_s": [round(s, 2) for s in theirs],
            "rerun_started_nothing": all("nothing to run" in t for t in outputs),
            "test_roc_auc": auc,
            "targets": {"full_run_s": 180, "ratio": GOAL_RATIO},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
