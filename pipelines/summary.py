"""The summary ``siamese run`` prints, for a flow run (pipelines.flow) and for a run that had
nothing to do (pipelines.uptodate). Imports nothing heavy, so a no-change run prints it without
loading Prefect."""

from __future__ import annotations

import os

KEPT = "this version did not beat it on the same benchmark pairs"


def format_summary(summary: dict) -> str:
    """The summary ``siamese run`` prints: what each stage did, the registered model and its
    aliases, the test results, and where to look (MLflow, Prefect, the DVC push). A run that
    had nothing to do (``summary["up_to_date"]``, pipelines.uptodate) says so and started no
    Prefect flow."""
    reg = summary["registration"]
    test = reg["test"]
    promo = summary.get("promotion") or {}
    aliases = list(reg["aliases"])
    note = ""
    if promo.get("promoted") or promo.get("decision") == "unchanged":
        aliases.append("champion")
    elif promo.get("decision") == "kept":
        note = f" (champion v{promo['champion_version']} kept: {KEPT})"
    elif promo:
        note = f" (not promoted: {promo.get('reason', promo.get('decision'))})"
    lines = [
        "",
        "== siamese run summary ==",
        *([f"nothing to run: {summary['up_to_date']}"] if summary.get("up_to_date") else []),
        "stages: " + ", ".join(f"{k}={v}" for k, v in summary["stages"].items()),
        *([f"data: {summary['data']}"] if summary.get("data") else []),
        f"registered model: {reg['model_name']} version {reg['version']} "
        f"aliases: {', '.join(aliases)}" + note,
        f"test pairs: {test['n_pairs']}  ROC AUC {test['roc_auc']:.4f}  EER {test['eer']:.4f}  "
        f"accuracy {test['accuracy']:.4f} at threshold {reg['threshold']:.4f}",
    ]
    tars = [f"TAR@FAR={k.split('_')[-1]} {v:.4f}" for k, v in test.items() if k.startswith("tar_")]
    if tars:
        lines.append("            " + "  ".join(tars))
    uri = reg["tracking_uri"]
    lines += [
        f"MLflow UI:  mlflow ui --backend-store-uri {uri}  ->  "
        f"http://127.0.0.1:5000/#/experiments/{reg['experiment_id']}/runs/{reg['run_id']}",
    ]
    if uri.startswith("http"):
        lines[-1] = f"MLflow UI:  {uri}/#/experiments/{reg['experiment_id']}/runs/{reg['run_id']}"
    if summary.get("flow_run_id"):
        api = os.environ.get("PREFECT_API_URL")
        ui = api.removesuffix("/api") if api else "http://127.0.0.1:4200"
        start = "" if api else "prefect server start  ->  "
        lines.append(f"Prefect UI: {start}{ui}/runs/flow-run/{summary['flow_run_id']}")
    else:
        lines.append("Prefect:    no flow started (nothing to run)")
    lines.append(f"DVC push: {summary['push']}")
    return "\n".join(lines)
