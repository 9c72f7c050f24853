"""One-shot evaluation: N-way K-shot episodes over embeddings, and Lake et al.'s one-shot runs.

Episodes. An episode draws N distinct classes, K support images of each and ``queries`` query
images of each (disjoint from the supports). Every query is assigned the class whose supports are
nearest by *mean distance* (for K = 1 simply the nearest support). The mean distance, rather than
a prototype (mean embedding), is used because it needs only query-to-support distances, so it
stays valid for any distance the model defines. The episode's accuracy is the share of its
queries classified correctly; the report is the mean over episodes with the 95% confidence
interval ``1.96 * std / sqrt(episodes)`` used throughout the few-shot literature (std over the
episode accuracies, ddof=0). Within-group episodes draw all N classes from one group (e.g. one
Omniglot alphabet), the harder and standard Omniglot protocol; unstructured ones draw from all.

Runs. Lake, Salakhutdinov & Tenenbaum (2015) published 20 one-shot runs as folders ``runNN/``
holding ``training/classKK.png`` (one image per class), ``test/itemMM.png`` and
``class_labels.txt`` whose lines read ``runNN/test/itemMM.png runNN/training/classKK.png``
(relative to the folder of runs). A test item is correct when its nearest training image under the
model is the listed one. :func:`build_runs` writes runs in exactly that format from the background
set (zip or folder), e.g. from alphabets held out of training.

Every query-to-support distance goes through :func:`support_distances`, the one place that
defines "distance under the model".
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from siamese.data.files import read_file, read_zip_entry
from siamese.data.images import ImageSpec, read_image
from siamese.distances import pairwise_distance
from siamese.io import atomic_dir
from siamese.models.loading import embed
from siamese.output import progress

CI_Z = 1.96  # 95% normal interval, as reported in few-shot papers


def support_distances(encoder, queries: np.ndarray, supports: np.ndarray) -> np.ndarray:
    """(len(queries), len(supports)) float64 distances between embeddings under the model.

    ``encoder`` is the trained model (its own metric, learned head included) or, for tests on
    raw embeddings, a distance name such as ``"euclidean"``."""

    q = torch.from_numpy(np.asarray(queries, np.float64))
    s = torch.from_numpy(np.asarray(supports, np.float64))
    if len(q) == 0 or len(s) == 0:
        return np.zeros((len(q), len(s)))
    with torch.no_grad():
        if isinstance(encoder, str):
            return pairwise_distance(q, s, encoder).numpy()
        return encoder.distance_matrix(q, s).numpy()


def mean_ci(values: np.ndarray) -> dict[str, float]:
    """Mean and the few-shot papers' 95% interval: mean +- 1.96 * std / sqrt(n)."""
    v = np.asarray(values, np.float64)
    mean = float(v.mean())
    half = float(CI_Z * v.std() / np.sqrt(len(v))) if len(v) else float("nan")
    return {"accuracy": mean, "ci95": half, "low": mean - half, "high": mean + half}


@dataclass
class Episode:
    classes: np.ndarray  # (N,) class labels
    support: np.ndarray  # (N, K) indices into the embeddings
    query: np.ndarray  # (N, Q) indices into the embeddings


def _class_groups(labels: np.ndarray, groups: np.ndarray | None) -> dict[int, int]:
    if groups is None:
        return {}
    out = {}
    for c in np.unique(labels):
        out[int(c)] = int(groups[np.flatnonzero(labels == c)[0]])
    return out


def eligible_classes(labels: np.ndarray, shots: int, queries: int) -> np.ndarray:
    """Classes with enough images for K supports plus the queries."""
    classes, counts = np.unique(labels, return_counts=True)
    return classes[counts >= shots + queries]


def sample_episodes(
    labels: np.ndarray,
    ways: int,
    shots: int = 1,
    episodes: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    queries: int = 1,
) -> list[Episode]:
    """Seeded N-way K-shot episodes over the images indexed by ``labels``.

    With ``groups`` (one group id per image), every episode's classes come from one group, drawn
    uniformly among the groups with at least N eligible classes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    pool = eligible_classes(labels, shots, queries)
    members = {int(c): np.flatnonzero(labels == c) for c in pool}
    if groups is None:
        candidates = [pool]
    else:
        group_of = _class_groups(labels, np.asarray(groups))
        by_group: dict[int, list[int]] = {}
        for c in pool:
            by_group.setdefault(group_of[int(c)], []).append(int(c))
        candidates = [np.array(v) for _, v in sorted(by_group.items()) if len(v) >= ways]
    if not candidates or len(candidates[0]) < ways:
        raise ValueError(
            f"no {'group' if groups is not None else 'set'} holds {ways} classes with "
            f"{shots + queries} images each"
        )
    out = []
    for _ in range(episodes):
        cands = candidates[rng.integers(len(candidates))]
        classes = rng.choice(cands, size=ways, replace=False)
        sup, qry = [], []
        for c in classes:
            pick = rng.choice(members[int(c)], size=shots + queries, replace=False)
            sup.append(pick[:shots])
            qry.append(pick[shots:])
        out.append(Episode(classes, np.array(sup), np.array(qry)))
    return out


def episode_accuracies(
    encoder, embeddings: np.ndarray, episodes: list[Episode], batch: int = 50
) -> np.ndarray:
    """Per-episode share of queries whose nearest class (mean support distance) is their own.

    The distances of ``batch`` episodes come from one :func:`support_distances` call over their
    distinct query and support images."""
    acc = np.empty(len(episodes))
    for start in progress(range(0, len(episodes), batch), f"{len(episodes)} episodes"):
        chunk = episodes[start : start + batch]
        uq, q_inv = np.unique(
            np.concatenate([ep.query.ravel() for ep in chunk]), return_inverse=True
        )
        us, s_inv = np.unique(
            np.concatenate([ep.support.ravel() for ep in chunk]), return_inverse=True
        )
        dist = support_distances(encoder, embeddings[uq], embeddings[us])
        qo = so = 0
        for i, ep in enumerate(chunk, start):
            (n, k), nq = ep.support.shape, ep.query.size
            rows, cols = q_inv[qo : qo + nq], s_inv[so : so + n * k]
            qo, so = qo + nq, so + n * k
            per_class = dist[np.ix_(rows, cols)].reshape(nq, n, k).mean(axis=2)
            truth = np.repeat(np.arange(n), ep.query.shape[1])
            acc[i] = float((per_class.argmin(axis=1) == truth).mean())
    return acc


def max_ways(labels: np.ndarray, shots: int, queries: int, groups: np.ndarray | None) -> int:
    """The largest N an episode can have (per group when grouped)."""
    pool = eligible_classes(np.asarray(labels), shots, queries)
    if groups is None:
        return len(pool)
    group_of = _class_groups(np.asarray(labels), np.asarray(groups))
    counts: dict[int, int] = {}
    for c in pool:
        counts[group_of[int(c)]] = counts.get(group_of[int(c)], 0) + 1
    return max(counts.values(), default=0)


def evaluate_episodes(
    encoder,
    embeddings: np.ndarray,
    labels: np.ndarray,
    ways: int,
    shots: int = 1,
    episodes: int = 1000,
    seed: int = 0,
    groups: np.ndarray | None = None,
    queries: int = 1,
) -> dict:
    """Mean episode accuracy with its 95% CI. N is clamped to the classes available (the report
    records both); with fewer than 2 classes the result is ``{"skipped": reason}``."""
    available = max_ways(labels, shots, queries, groups)
    n = min(ways, available)
    report: dict = {"requested_ways": ways, "ways": n, "shots": shots, "queries_per_class": queries}
    if n < 2:
        where = "in any one group" if groups is not None else ""
        report["skipped"] = (
            f"only {available} class(es) with {shots + queries} images {where}".strip()
            + f"; {ways}-way episodes need at least 2"
        )
        return report
    eps = sample_episodes(labels, n, shots, episodes, seed, groups, queries)
    report.update(mean_ci(episode_accuracies(encoder, embeddings, eps)))
    report["episodes"] = episodes
    report["chance"] = 1.0 / n
    return report


# --------------------------------------------------------------------------- Lake et al. runs

_LINE = re.compile(r"^(run\d+)/test/(item\d+\.png)\s+(run\d+)/training/(class\d+\.png)$")


@dataclass
class OneShotRun:
    name: str  # runNN
    training: list[Path]  # the candidate images (classKK.png)
    test: list[Path]  # the query items (itemMM.png)
    answers: list[int] = field(default_factory=list)  # per test item: index into training


def read_runs(folder: str | Path) -> list[OneShotRun]:
    """Parse a folder of runs in the official format (``class_labels.txt`` per run)."""
    folder = Path(folder)
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"run\d+", p.name))
    if not run_dirs:
        raise FileNotFoundError(f"{folder} holds no runNN/ folders of one-shot runs")
    runs = []
    for rd in run_dirs:
        labels = rd / "class_labels.txt"
        if not labels.is_file():
            raise FileNotFoundError(f"{labels} is missing")
        training = sorted((rd / "training").glob("class*.png"))
        index = {p.name: i for i, p in enumerate(training)}
        run = OneShotRun(rd.name, training, [])
        for n, line in enumerate(labels.read_text().splitlines(), 1):
            if not line.strip():
                continue
            m = _LINE.match(line.strip())
            if not m or m[1] != rd.name or m[3] != rd.name or m[4] not in index:
                raise ValueError(
                    f"{labels}:{n}: expected 'runNN/test/itemMM.png "
                    f"runNN/training/classKK.png' of this run, got {line!r}"
                )
            run.test.append(rd / "test" / m[2])
            run.answers.append(index[m[4]])
        runs.append(run)
    return runs


def score_runs(encoder, runs: list[OneShotRun]) -> dict:
    """Share of test items whose nearest training image under ``encoder`` is the listed one."""

    size = ImageSpec.from_config(encoder.config)
    per_run, correct, total = {}, 0, 0
    for run in runs:
        tr = embed(encoder, np.stack([read_image(p, size) for p in run.training]))
        te = embed(encoder, np.stack([read_image(p, size) for p in run.test]))
        pred = support_distances(encoder, te, tr).argmin(axis=1)
        hits = int((pred == np.asarray(run.answers)).sum())
        per_run[run.name] = hits / len(run.test)
        correct += hits
        total += len(run.test)
    accs = np.array(list(per_run.values()))
    ci = mean_ci(accs)
    return {
        "accuracy": correct / total,
        "error_rate": 1.0 - correct / total,
        "correct": correct,
        "items": total,
        "runs": len(runs),
        "ways": int(np.median([len(r.training) for r in runs])),
        "run_accuracy_ci95": ci["ci95"],
        "per_run": per_run,
    }


def _background_index(source: str | Path) -> dict[str, dict[str, dict[str, str]]]:
    """alphabet -> character -> drawer ('01'..'20') -> member name (zip) or path (folder)."""
    source = Path(source)
    if source.is_file():
        with zipfile.ZipFile(source) as z:
            names = [n for n in z.namelist() if n.lower().endswith(".png")]
    else:
        names = [str(p) for p in sorted(source.rglob("*.png"))]
    index: dict[str, dict[str, dict[str, str]]] = {}
    for name in names:
        parts = Path(name).parts
        if len(parts) < 3:
            continue
        alphabet, char, file = parts[-3], parts[-2], parts[-1]
        drawer = Path(file).stem.rsplit("_", 1)[-1]
        index.setdefault(alphabet, {}).setdefault(char, {})[drawer] = name
    return index


def build_runs(
    source: str | Path,
    dest: str | Path,
    alphabets: list[str] | None = None,
    n_runs: int = 20,
    ways: int = 20,
    seed: int = 0,
) -> list[str]:
    """Write ``n_runs`` one-shot runs in the official format from background-set images.

    Each run takes one alphabet (cycling through ``alphabets`` in a seeded order; default all),
    ``ways`` of its characters and two drawers: one drawer's drawing of each character becomes
    ``training/classKK.png``, the other's ``test/itemMM.png``, both in shuffled order (alphabets
    with fewer than ``ways`` characters are left out). Source is the official zip
    (``images_background/<Alphabet>/<characterNN>/<id>_<nn>.png``) or its extracted folder. The
    image bytes are copied unchanged. Returns the run names."""

    index = _background_index(source)
    if not index:
        raise FileNotFoundError(f"{source}: no <Alphabet>/<character>/<image>.png found")
    alphabets = sorted(index) if not alphabets else list(alphabets)
    unknown = [a for a in alphabets if a not in index]
    if unknown:
        raise ValueError(f"unknown alphabet(s) {unknown}; available: {', '.join(sorted(index))}")
    usable = [a for a in alphabets if len(index[a]) >= ways]
    if not usable:
        raise ValueError(f"no alphabet among {alphabets} has {ways} characters")
    rng = np.random.default_rng(seed)
    order = list(rng.permutation(usable))
    zf = zipfile.ZipFile(source) if Path(source).is_file() else None

    def read(name: str) -> bytes:
        if zf is None:
            return read_file(name)
        return read_zip_entry(zf, zf.getinfo(name), f"{source}:{name}")

    names = []
    try:
        with atomic_dir(dest) as tmp:
            for r in range(n_runs):
                alphabet = order[r % len(order)]
                chars = sorted(index[alphabet])
                chars = [chars[i] for i in rng.choice(len(chars), ways, replace=False)]
                common = sorted(set.intersection(*(set(index[alphabet][c]) for c in chars)))
                if len(common) < 2:
                    raise ValueError(f"{alphabet}: fewer than two drawers drew all characters")
                train_drawer, test_drawer = rng.choice(common, 2, replace=False)
                name = f"run{r + 1:02d}"
                rd = tmp / name
                (rd / "training").mkdir(parents=True)
                (rd / "test").mkdir()
                item_of = rng.permutation(ways)  # character j is test item item_of[j] + 1
                lines = []
                for j, c in enumerate(chars):
                    cls, item = f"class{j + 1:02d}.png", f"item{item_of[j] + 1:02d}.png"
                    (rd / "training" / cls).write_bytes(read(index[alphabet][c][train_drawer]))
                    (rd / "test" / item).write_bytes(read(index[alphabet][c][test_drawer]))
                    lines.append((item, f"{name}/test/{item} {name}/training/{cls}"))
                (rd / "class_labels.txt").write_text(
                    "\n".join(li for _, li in sorted(lines)) + "\n"
                )
                names.append(name)
    finally:
        if zf is not None:
            zf.close()
    return names
