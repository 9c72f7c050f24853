"""PNG figures of an evaluation, logged to the model's MLflow run so two runs can be compared by
eye in the UI. The same data is declared as DVC plots (CSV) for ``dvc plots diff``."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_evaluation_figures(
    distances: np.ndarray, same: np.ndarray, threshold: float, out_dir: str | Path, bins: int = 30
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from siamese import metrics

    out_dir = Path(out_dir)
    same = np.asarray(same).astype(bool)
    fpr, tpr, _ = metrics.roc_curve(distances, same)
    auc = metrics.roc_auc(distances, same)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title="ROC (test pairs)")
    ax.legend(loc="lower right")
    roc_path = out_dir / "roc.png"
    fig.savefig(roc_path, dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.histogram_bin_edges(distances, bins=bins)
    ax.hist(distances[same], bins=edges, alpha=0.6, label="same identity")
    ax.hist(distances[~same], bins=edges, alpha=0.6, label="different identity")
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="distance", ylabel="pairs", title="Test pair distances")
    ax.legend()
    hist_path = out_dir / "distance_hist.png"
    fig.savefig(hist_path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return [roc_path, hist_path]
