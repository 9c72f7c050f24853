"""Time ``siamese run`` on the built-in digits in a fresh copy of the project: a full run, then a
no-change rerun. Prints JSON (seconds, test ROC AUC)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from _common import make_project
from _pipeline import siamese


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "project")
        full, out = siamese(project, "run")
        rerun, out2 = siamese(project, "run")
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
