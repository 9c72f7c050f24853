"""PNG figures of an evaluation, logged to the model's MLflow run so two runs can be compared by
eye in the UI. The same data is written as CSV and declared as DVC plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from siamese.evaluation import metrics


def _plt():
    import matplotlib  # lazy: slow to import, only the report figures need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return path


def roc_figure(d: np.ndarray, y: np.ndarray, path: Path) -> Path:
    plt = _plt()
    fpr, tpr, _ = metrics.roc_curve(d, y)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {metrics.roc_auc(d, y):.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false accept rate", ylabel="true accept rate", title="ROC (test pairs)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def det_figure(d: np.ndarray, y: np.ndarray, path: Path) -> Path:
    """DET curve on normal-deviate axes, as verification reports draw it."""
    from scipy.stats import norm  # lazy: scipy is slow to import

    plt = _plt()
    fpr, tpr, _ = metrics.roc_curve(d, y)
    eps = 1e-4
    far, frr = np.clip(fpr, eps, 1 - eps), np.clip(1 - tpr, eps, 1 - eps)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(norm.ppf(far), norm.ppf(frr))
    ticks = np.array([1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.plot([-4, 4], [-4, 4], ls=":", c="grey", label="FAR = FRR")
    lim = norm.ppf([eps, 0.9])
    ax.set(xlim=lim, ylim=lim, xlabel="false accept rate", ylabel="false reject rate")
    ax.set_title(f"DET (EER {metrics.eer(d, y):.4f})")
    ax.legend(loc="upper right")
    return _save(fig, path)


def openset_det_figure(points: list[tuple[float, float, float]], report: dict, path: Path) -> Path:
    """Open-set DET: FNIR against FPIR (siamese.evaluation.openset) on normal-deviate axes, the
    FNIR at each reported FPIR marked."""
    from scipy.stats import norm  # lazy: scipy is slow to import

    plt = _plt()
    eps = 1e-4
    fpir = np.clip([p[0] for p in points], eps, 1 - eps)
    fnir = np.clip([p[1] for p in points], eps, 1 - eps)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.step(norm.ppf(fpir), norm.ppf(fnir), where="post")
    for key, value in report.items():
        if key.startswith("fnir_at_fpir_"):
            target = float(key.removeprefix("fnir_at_fpir_"))
            z = norm.ppf(np.clip([target, value], eps, 1 - eps))
            ax.plot(*z, "o", label=f"FNIR {value:.3f} @ FPIR {target:g}")
    ticks = np.array([1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
    ax.set_xticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    ax.set_yticks(norm.ppf(ticks), [f"{t:g}" for t in ticks])
    lim = norm.ppf([eps, 0.95])
    ax.set(xlim=lim, ylim=lim, xlabel="FPIR (not-enrolled probes identified)", ylabel="FNIR")
    ax.set_title(f"Open-set DET (rank-1 {report.get('rank_1', float('nan')):.3f})")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def histogram_figure(d: np.ndarray, y: np.ndarray, threshold: float, bins: int, path: Path):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    edges = np.histogram_bin_edges(d, bins=bins)
    ax.hist(d[y], bins=edges, alpha=0.6, label="same identity")
    ax.hist(d[~y], bins=edges, alpha=0.6, label="different identity")
    ax.axvline(threshold, c="k", ls="--", label=f"threshold {threshold:.3f}")
    ax.set(xlabel="distance", ylabel="pairs", title="Test pair distances")
    ax.legend()
    return _save(fig, path)


def reliability_figure(rel: dict, path: Path) -> Path:
    plt = _plt()
    keep = rel["count"] > 0
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfectly calibrated")
    ax.plot(rel["mean_predicted"][keep], rel["observed"][keep], "o-", label="model")
    ax.set(
        xlabel="predicted P(same identity)",
        ylabel="observed frequency",
        title="Reliability (test pairs)",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(loc="upper left")
    return _save(fig, path)


def hardest_errors_figure(
    d: np.ndarray,
    y: np.ndarray,
    threshold: float,
    images: np.ndarray,
    pairs: dict,
    k: int,
    path: Path,
) -> Path:
    """The k closest different-identity pairs and the k farthest same-identity pairs, side by
    side with their distances: where the model's mistakes (or near-mistakes) are."""
    plt = _plt()
    neg = np.flatnonzero(~y)
    pos = np.flatnonzero(y)
    rows = [
        ("false accept", neg[np.argsort(d[neg])[:k]], lambda v: v <= threshold),
        ("false reject", pos[np.argsort(-d[pos])[:k]], lambda v: v > threshold),
    ]
    cols = max(len(r[1]) for r in rows) or 1
    fig, axes = plt.subplots(2, cols, figsize=(1.6 * cols, 4.2), squeeze=False)
    for r, (label, idx, is_error) in enumerate(rows):
        for c in range(cols):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(idx):
                continue
            i = idx[c]
            pair = np.concatenate([images[pairs["a"][i]], images[pairs["b"][i]]], axis=1)
            ax.imshow(pair, cmap="gray", vmin=0, vmax=255)
            err = is_error(d[i])
            ax.set_title(
                f"{d[i]:.3f}" + (" ✗" if err else ""), fontsize=8, color="red" if err else "black"
            )
        axes[r, 0].text(
            -0.1,
            0.5,
            label,
            transform=axes[r, 0].transAxes,
            rotation=90,
            va="center",
            ha="right",
            fontsize=9,
        )
    fig.suptitle(f"Hardest test pairs (threshold {threshold:.3f}; ✗ = error)", fontsize=10)
    return _save(fig, path)


def write_evaluation_figures(
    distances: np.ndarray,
    same: np.ndarray,
    threshold: float,
    out_dir: str | Path,
    bins: int = 30,
    rel: dict | None = None,
    hardest: tuple | None = None,
) -> list[Path]:
    out_dir = Path(out_dir)
    d = np.asarray(distances, dtype=np.float64)
    y = np.asarray(same).astype(bool)
    paths = [
        roc_figure(d, y, out_dir / "roc.png"),
        det_figure(d, y, out_dir / "det.png"),
        histogram_figure(d, y, threshold, bins, out_dir / "distance_hist.png"),
    ]
    if rel is not None:
        paths.append(reliability_figure(rel, out_dir / "reliability.png"))
    if hardest is not None and hardest[2] > 0:
        images, pairs, k = hardest
        paths.append(
            hardest_errors_figure(d, y, threshold, images, pairs, k, out_dir / "hardest_errors.png")
        )
    return paths
