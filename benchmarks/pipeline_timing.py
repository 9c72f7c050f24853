"""Time ``siamese run`` on the built-in digits in a fresh copy of the project: a full run, then a
no-change rerun. Prints JSON (seconds, test ROC AUC)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conftest import make_project  # noqa: E402


def _timed_run(project: Path) -> tuple[float, str]:
    siamese = Path(sys.executable).parent / "siamese"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(siamese), "run"], cwd=project, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"siamese run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return elapsed, proc.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project")
        full, out = _timed_run(project)
        rerun, out2 = _timed_run(project)
        auc = float(re.search(r"ROC AUC ([0-9.]+)", out).group(1))
        result = {
            "benchmark": "pipeline_timing",
            "dataset": "digits (built in)",
            "full_run_s": round(full, 1),
            "no_change_rerun_s": round(rerun, 1),
            "rerun_skipped_all": "prepare=skipped" in out2 and "register=skipped" in out2,
            "test_roc_auc": auc,
            "targets": {"full_run_s": 180, "no_change_rerun_s": 15},
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
