"""Shared by the dataset benchmarks: train through the project's own pipeline (``siamese run`` with
a preset, in a fresh copy of the project) and collect what the stages wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import SHARED_DATA, make_project


def siamese(project: Path, *args: str, timeout: float = 3600) -> tuple[float, str]:
    """Run the ``siamese`` console script in ``project``; returns (seconds, stdout)."""
    exe = Path(sys.executable).parent / "siamese"
    start = time.perf_counter()
    proc = subprocess.run(
        [str(exe), *args], cwd=project, capture_output=True, text=True, timeout=timeout
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(
            f"siamese {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return elapsed, proc.stdout


def run_preset(workdir: Path, preset: str, sets: list[str]) -> dict:
    """A fresh project copy, one ``siamese run --preset`` and the stages' JSON outputs."""
    project = make_project(workdir / "project")
    args = ["run", "--preset", preset, "--no-push"]
    for s in sets:
        args += ["--set", s]
    elapsed, _ = siamese(project, *args)
    art = project / "artifacts"
    read = lambda p: json.loads((art / p).read_text())  # noqa: E731
    return {
        "project": project,
        "pipeline_s": round(elapsed, 1),
        "train": read("train_metrics.json"),
        "metrics": read("evaluate/metrics.json"),
        "calibration": read("calibrate/calibration.json"),
        "prepared": read("prepared/summary.json"),
        "identities": read("prepared/identities.json"),
        "registration": read("register/registration.json"),
    }


def main_metrics(m: dict, far: float = 0.01) -> dict:
    """The verification figures every benchmark reports, with their bootstrap CIs."""
    keys = ["roc_auc", "eer", "accuracy", f"tar_at_far_{far:g}"]
    out = {k: m[k] for k in keys if k in m}
    out["ci"] = {k: m["ci"][k] for k in keys if k in m.get("ci", {})}
    return out


def emit(result: dict) -> None:
    print(json.dumps(result, indent=2, default=str))


def verification_benchmark(name: str, preset: str, default_data: str, goal: dict, report) -> None:
    """One verification benchmark as a command: parse args, train, print the JSON report."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=SHARED_DATA / default_data)
    ap.add_argument("--set", action="append", default=[], help="extra params override")
    ap.add_argument("--keep", type=Path, default=None, help="keep the project copy here")
    args = ap.parse_args()
    sets = [
        f"data.source={args.data.resolve()}",
        f"register.experiment=benchmark-{name.replace('_', '-')}",
        *args.set,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        r = run_preset(args.keep or Path(tmp), preset, sets)
    m = r["metrics"]
    emit(
        {
            "benchmark": name,
            "protocol": "identity-disjoint verification pairs",
            "goal": goal,
            **report(m),
            "verification": main_metrics(m),
            "split": {k: v for k, v in r["prepared"].items() if k.endswith("_identities")},
            "retrieval": m.get("retrieval"),
            "threshold": r["calibration"]["threshold"],
            "train": r["train"],
            "pipeline_s": r["pipeline_s"],
            "settings": sets,
        }
    )
