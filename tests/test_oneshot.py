"""One-shot and retrieval evaluation: the episode sampler, the official run format, retrieval
metrics against pytorch-metric-learning, and ``siamese oneshot`` against a registered model."""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from siamese.evaluation.oneshot import (
    build_runs,
    episode_accuracies,
    evaluate_episodes,
    mean_ci,
    read_runs,
    sample_episodes,
)
from siamese.evaluation.retrieval import retrieval_metrics
from tests.helpers.project import SHARED_DATA

OMNIGLOT = SHARED_DATA / "omniglot" / "images_background.zip"


@pytest.fixture(scope="module")
def omniglot() -> Path:
    if not OMNIGLOT.is_file():
        pytest.skip(f"Omniglot background set not found at {OMNIGLOT}")
    return OMNIGLOT


def _grouped_labels(groups: int = 4, classes: int = 6, images: int = 5):
    labels = np.repeat(np.arange(groups * classes), images)
    return labels, labels // classes


# --------------------------------------------------------------------------- episodes


def test_episodes_have_distinct_classes_disjoint_supports_and_are_seeded():
    labels, _ = _grouped_labels()
    eps = sample_episodes(labels, ways=5, shots=2, episodes=50, seed=3, queries=2)
    for ep in eps:
        assert len(set(ep.classes.tolist())) == 5
        assert ep.support.shape == (5, 2) and ep.query.shape == (5, 2)
        for c, s, q in zip(ep.classes, ep.support, ep.query, strict=True):
            assert (labels[s] == c).all() and (labels[q] == c).all()
            assert not set(s) & set(q)
    again = sample_episodes(labels, ways=5, shots=2, episodes=50, seed=3, queries=2)
    assert all(
        (a.support == b.support).all() and (a.query == b.query).all()
        for a, b in zip(eps, again, strict=True)
    )
    other = sample_episodes(labels, ways=5, shots=2, episodes=50, seed=4, queries=2)
    assert any((a.classes != b.classes).any() for a, b in zip(eps, other, strict=True))


def test_within_group_episodes_stay_in_one_group():
    labels, groups = _grouped_labels()
    eps = sample_episodes(labels, ways=6, episodes=100, seed=0, groups=groups)
    assert all(len(set(groups[ep.support.ravel()])) == 1 for ep in eps)
    assert len({int(groups[ep.support[0, 0]]) for ep in eps}) == 4  # every group gets drawn
    with pytest.raises(ValueError, match="no group holds 7 classes"):
        sample_episodes(labels, ways=7, episodes=1, groups=groups)


def test_ci_is_the_few_shot_papers_formula():
    acc = np.array([1.0, 0.5, 0.75, 0.25, 1.0])
    ci = mean_ci(acc)
    half = 1.96 * np.std(acc) / np.sqrt(len(acc))
    assert ci["accuracy"] == pytest.approx(acc.mean())
    assert ci["ci95"] == pytest.approx(half)
    assert ci["low"] == pytest.approx(acc.mean() - half)
    assert ci["high"] == pytest.approx(acc.mean() + half)


def test_perfect_embeddings_score_one_and_random_ones_chance():
    labels, groups = _grouped_labels(groups=5, classes=8, images=6)
    perfect = np.eye(labels.max() + 1)[labels] * 3.0
    for g in (None, groups):
        rep = evaluate_episodes("euclidean", perfect, labels, 5, 1, 200, seed=0, groups=g)
        assert rep["accuracy"] == 1.0 and rep["ci95"] == 0.0
    random = np.random.default_rng(0).normal(size=(len(labels), 32))
    rep = evaluate_episodes("euclidean", random, labels, 20, 1, 500, seed=1, queries=2)
    assert rep["chance"] == 0.05
    assert rep["low"] - 0.01 < 0.05 < rep["high"] + 0.01
    # K > 1: nearest class by mean support distance
    eps = sample_episodes(labels, 5, shots=3, episodes=20, seed=2)
    assert (episode_accuracies("cosine", perfect, eps) == 1.0).all()


def test_n_is_clamped_to_the_identities_available_or_skipped():
    labels = np.repeat([0, 1, 2], 3)
    rep = evaluate_episodes("euclidean", np.eye(3)[labels], labels, 20, 1, 10)
    assert rep["requested_ways"] == 20 and rep["ways"] == 3 and rep["accuracy"] == 1.0
    rep = evaluate_episodes("euclidean", np.eye(3)[labels], labels, 20, 1, 10, groups=labels)
    assert rep["ways"] == 1 and "skipped" in rep and "accuracy" not in rep


# --------------------------------------------------------------------------- official runs


def test_built_runs_are_in_the_official_format_and_read_back(omniglot, tmp_path):
    alphabets = ["Latin", "Greek"]
    names = build_runs(omniglot, tmp_path / "runs", alphabets, n_runs=3, ways=20, seed=7)
    assert names == ["run01", "run02", "run03"]
    # content hash -> (alphabet, character, drawer) of every source image
    origin = {}
    with zipfile.ZipFile(omniglot) as z:
        for n in z.namelist():
            parts = n.split("/")
            if parts[-1].endswith(".png") and parts[1] in alphabets:
                drawer = parts[-1][:-4].rsplit("_", 1)[1]
                origin[hashlib.sha256(z.read(n)).hexdigest()] = (parts[1], parts[2], drawer)

    def src(p: Path):
        return origin[hashlib.sha256(p.read_bytes()).hexdigest()]

    line = re.compile(r"^(run\d\d)/test/item(\d\d)\.png \1/training/class(\d\d)\.png$")
    for name in names:
        rd = tmp_path / "runs" / name
        lines = (rd / "class_labels.txt").read_text().splitlines()
        assert len(lines) == 20 and all(line.match(li) and li.startswith(name) for li in lines)
        assert sorted(m[2] for m in map(line.match, lines)) == [f"{i:02d}" for i in range(1, 21)]
        assert sorted(m[3] for m in map(line.match, lines)) == [f"{i:02d}" for i in range(1, 21)]
        assert len(list((rd / "training").iterdir())) == len(list((rd / "test").iterdir())) == 20
        pairs = [li.split() for li in lines]
        train_src = [src(tmp_path / "runs" / b) for _, b in pairs]
        test_src = [src(tmp_path / "runs" / a) for a, _ in pairs]
        assert len({s[0] for s in train_src + test_src}) == 1  # one alphabet per run
        assert len({s[2] for s in train_src}) == len({s[2] for s in test_src}) == 1
        assert train_src[0][2] != test_src[0][2]  # two different drawers
        assert [s[:2] for s in train_src] == [s[:2] for s in test_src]  # same characters
        assert len({s[1] for s in train_src}) == 20
    # the reader resolves each test item to its listed training image
    runs = read_runs(tmp_path / "runs")
    assert [r.name for r in runs] == names
    for r in runs:
        lines = (tmp_path / "runs" / r.name / "class_labels.txt").read_text().splitlines()
        rebuilt = [
            f"{r.name}/test/{t.name} {r.name}/training/{r.training[a].name}"
            for t, a in zip(r.test, r.answers, strict=True)
        ]
        assert rebuilt == lines
    # seeded: the same call writes the same runs
    build_runs(omniglot, tmp_path / "again", alphabets, n_runs=3, ways=20, seed=7)
    for name in names:
        for f in ("class_labels.txt", "training/class01.png", "test/item05.png"):
            a, b = tmp_path / "runs" / name / f, tmp_path / "again" / name / f
            assert a.read_bytes() == b.read_bytes()


def test_reader_names_a_malformed_line(tmp_path):
    rd = tmp_path / "run01"
    (rd / "training").mkdir(parents=True)
    (rd / "test").mkdir()
    (rd / "training" / "class01.png").write_bytes(b"")
    (rd / "class_labels.txt").write_text("run01/test/item01.png run02/training/class01.png\n")
    with pytest.raises(ValueError, match="class_labels.txt:1"):
        read_runs(tmp_path)
    with pytest.raises(FileNotFoundError, match="no runNN"):
        read_runs(rd)


# --------------------------------------------------------------------------- retrieval


def _pml(emb: np.ndarray, labels: np.ndarray) -> dict:
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
        knn_func=CustomKNN(LpDistance(normalize_embeddings=False)),
        device=torch.device("cpu"),
    )
    return calc.get_accuracy(torch.from_numpy(emb), torch.from_numpy(labels))


@pytest.mark.parametrize("ties", [False, True])
def test_retrieval_metrics_equal_pytorch_metric_learning(ties):
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 12, size=150)
    labels[:3] = 99  # a label with three images
    labels[3] = 100  # a lone query: left out, as PML does
    emb = rng.normal(size=(150, 6)) + labels[:, None] % 4 * 0.7
    if ties:  # exact duplicates within a label: tied distances between equally relevant items
        emb[labels == 5] = emb[np.flatnonzero(labels == 5)[0]]
        emb[labels == 7] = np.round(emb[labels == 7])
        for c in range(12):
            members = np.flatnonzero(labels == c)
            emb[members[1::2]] = emb[members[0::2][: len(members[1::2])]]
    emb = emb.astype(np.float32)
    ours = retrieval_metrics("euclidean", emb, labels, chunk=40)
    theirs = _pml(emb, labels)
    assert ours["queries"] == 149
    assert ours["precision_at_1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map_at_r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)


def test_retrieval_of_perfect_embeddings_and_lone_labels():
    labels = np.repeat(np.arange(5), 4)
    perfect = retrieval_metrics("euclidean", np.eye(5)[labels], labels)
    assert perfect == {"precision_at_1": 1.0, "r_precision": 1.0, "map_at_r": 1.0, "queries": 20}
    assert retrieval_metrics("euclidean", np.eye(3), np.arange(3))["queries"] == 0


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def omniglot_project(project, omniglot, tmp_path, monkeypatch):
    """The project set up on 16 Latin characters (8 drawings each) of the background set."""
    from siamese.params_file import set_params

    monkeypatch.delenv("SIAMESE_MLFLOW_RUN_ID", raising=False)
    root = tmp_path / "omniglot_latin"
    with zipfile.ZipFile(omniglot) as z:
        for n in sorted(z.namelist()):
            parts = n.split("/")
            if len(parts) == 4 and parts[1] == "Latin" and parts[3].endswith(".png"):
                char = root / parts[2]
                if parts[2] <= "character16" and len(list(char.glob("*.png"))) < 8:
                    char.mkdir(parents=True, exist_ok=True)
                    (char / parts[3]).write_bytes(z.read(n))
    return set_params(
        project / "params.yaml",
        [
            f"data.source={root}",
            "data.image_size=28",
            "mine.val_pairs=40",
            "mine.test_pairs=60",
            "mine.train_pairs=40",
            "calibrate.bootstrap_resamples=0",
            "evaluate.bootstrap_resamples=0",
            "evaluate.kfold=0",
            "evaluate.oneshot_episodes=200",
            "register.model_name=omniglot",
            "model.channels=16",
            "train.max_epochs=4",
            "train.batches_per_epoch=6",
        ],
    )


def test_oneshot_cli_scores_the_registered_champion(omniglot_project, omniglot, project):
    from typer.testing import CliRunner

    from siamese import paths
    from siamese.cli import app
    from siamese.data.artifacts import PreparedData, load_pairs
    from siamese.io import save_npz
    from siamese.stages.evaluate import run_evaluate
    from tests.helpers.stages import register_and_promote, run_stages_until_evaluate

    params = omniglot_project
    report = run_stages_until_evaluate(params)
    register_and_promote(params)  # v1 becomes champion
    stage_args = (paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION, paths.EVALUATION)

    # the evaluate stage's identity benchmarks, N clamped to the test identities
    n_test = len(
        np.unique(PreparedData(paths.PREPARED).labels[PreparedData(paths.PREPARED).split == 2])
    )
    saved = json.loads((paths.EVALUATION / "metrics.json").read_text())
    assert saved["retrieval"] == report["retrieval"] and 0 <= saved["retrieval"]["map_at_r"] <= 1
    assert saved["retrieval"]["queries"] == 8 * n_test
    for name in ("20way_1shot", "5way_1shot"):
        one = saved["oneshot"][name]
        assert one["ways"] == min(int(name.split("way")[0]), n_test) and one["episodes"] == 200
        assert 0 <= one["low"] <= one["accuracy"] <= one["high"] <= 1 + 1e-9
    assert not any(k.endswith("_within_group") for k in saved["oneshot"])
    assert "eer_skilled_forgery" not in saved

    # one-shot runs from two alphabets the model never saw, scored through the registry
    runner = CliRunner()
    built = runner.invoke(
        app,
        [
            "oneshot-runs",
            "--source",
            str(omniglot),
            "--alphabets",
            "Greek,Cyrillic",
            "--dest",
            "runs",
            "--runs",
            "4",
            "--ways",
            "20",
            "--seed",
            "1",
        ],
    )
    assert built.exit_code == 0, built.output
    result = runner.invoke(
        app,
        ["oneshot", "--runs", "runs", "--model", "models:/omniglot@champion", "--out", "o.json"],
    )
    assert result.exit_code == 0, result.output
    assert "one-shot accuracy" in result.output
    out = json.loads(Path("o.json").read_text())
    assert out["model"] == "models:/omniglot@champion"
    assert out["items"] == 80 and out["runs"] == 4 and out["ways"] == 20
    assert sorted(out["per_run"]) == ["run01", "run02", "run03", "run04"]
    assert 0.05 < out["accuracy"] <= 1  # above 20-way chance even for a tiny model
    assert out["error_rate"] == pytest.approx(1 - out["accuracy"])
    # a local model folder gives the same answer; an unknown alias is named
    local = runner.invoke(app, ["oneshot", "--runs", "runs", "--model", str(paths.TRAIN)])
    assert f"{out['accuracy']:.4f}" in local.output
    bad = runner.invoke(app, ["oneshot", "--runs", "runs", "--model", "models:/omniglot@nope"])
    assert bad.exit_code == 2 and "models:/omniglot@nope" in bad.output

    # the prepared-data contract's groups / forged, and the pairs' kind, when present
    with np.load(paths.PREPARED / "meta.npz") as z:
        arrays = dict(z)
    test_idx = np.flatnonzero(arrays["split"] == 2)
    arrays["groups"] = (arrays["labels"] % 2).astype(np.int64)
    arrays["forged"] = np.zeros(len(arrays["labels"]), bool)
    arrays["forged"][test_idx[0]] = True
    save_npz(paths.PREPARED / "meta.npz", **arrays)
    pairs = load_pairs(paths.PAIRS / "test.npz")
    pairs["kind"] = np.where(pairs["y"] == 1, 0, 1 + np.arange(len(pairs["y"])) % 2).astype(np.int8)
    save_npz(paths.PAIRS / "test.npz", **pairs)
    again = run_evaluate(params, *stage_args)
    assert again["retrieval"]["queries"] == 8 * n_test - 1
    assert 0 <= again["eer_skilled_forgery"] <= 1 and 0 <= again["eer_random_forgery"] <= 1
    within = again["oneshot"]["5way_1shot_within_group"]
    assert within["ways"] == max(np.bincount(np.unique(arrays["labels"][test_idx]) % 2))


def test_evaluate_params_validate_the_benchmark_settings():
    from siamese.config import validate_params
    from siamese.errors import ParamsError

    assert validate_params({}).evaluate.oneshot_ways == [20, 5]
    with pytest.raises(ParamsError, match="evaluate.oneshot_ways"):
        validate_params({"evaluate": {"oneshot_ways": [20, 1]}})
    with pytest.raises(ParamsError, match="evaluate.oneshot_shots"):
        validate_params({"evaluate": {"oneshot_shots": 0}})
