"""The memory-mapped store of prepared images (siamese.data.store) and prepare's parallel
decoding (siamese.data.decoding): the same bytes for any number of workers, the same batches in
DataLoader workers as in one process, and stages that read rows, never the whole file."""

from __future__ import annotations

import logging
import pickle
import shutil
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from siamese.data.artifacts import META_FILE, PreparedData, write_prepared
from siamese.data.decoding import Decoder
from siamese.data.sources import load_folder_dataset
from siamese.data.store import IMAGES_FILE, MappedImages, create_images, keep_rows, resize_rows
from siamese.errors import DatasetError


def _store(path, n: int = 300, shape=(12, 10, 3), seed: int = 0):
    """A prepared folder of ``n`` random colour images, 10 identities, all in train."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    write_prepared(
        path,
        images=images,
        labels=np.arange(n, dtype=np.int64) % 10,
        split=np.zeros(n, np.int8),
        groups=np.full(n, -1, np.int64),
        forged=np.zeros(n, bool),
    )
    return images


def test_store_grows_shrinks_and_compacts_in_place(tmp_path):
    path = tmp_path / IMAGES_FILE
    arr = create_images(path, 5, (2, 3, 1))
    arr[:] = np.arange(5, dtype=np.uint8)[:, None, None, None]
    arr.flush()
    del arr
    grown = resize_rows(path, 9)  # rotation classes add rows to the same file
    assert grown.shape == (9, 2, 3, 1) and list(grown[:, 0, 0, 0]) == [0, 1, 2, 3, 4, 0, 0, 0, 0]
    grown[8] = 8
    kept = keep_rows(grown, [1, 3, 8])  # skipped images leave the file, nothing is copied twice
    assert isinstance(kept, np.memmap) and list(kept[:, 0, 0, 0]) == [1, 3, 8]
    del grown, kept
    on_disk = np.load(path)
    assert on_disk.shape == (3, 2, 3, 1) and list(on_disk[:, 0, 0, 0]) == [1, 3, 8]
    assert path.stat().st_size == 128 + 3 * 6  # the header (padded to 128) and 3 rows, no tail
    in_memory = keep_rows(np.arange(4), [0, 2])
    assert not isinstance(in_memory, np.memmap) and list(in_memory) == [0, 2]


def test_two_dataloader_workers_read_the_same_batches_as_one_process(tmp_path):
    from siamese.training.datamodule import ImageDataset

    images = _store(tmp_path)
    data = PreparedData(tmp_path)
    assert isinstance(data.images.array, np.memmap)
    ds = ImageDataset(data.images, data.labels)
    # a worker receives the path, not the pixels, and maps the file itself
    assert len(pickle.dumps(ds)) < images.nbytes / 20

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # forkserver: a worker starts from a clean process (not a fork of this test process,
        # whatever earlier tests left in it) and maps the file itself from the path it gets
        context = "forkserver" if workers else None
        loader = DataLoader(
            ds, batch_size=16, shuffle=False, num_workers=workers, multiprocessing_context=context
        )
        return list(loader)

    one, two = batches(0), batches(2)
    assert len(one) == len(two) == 19
    for (xa, ya), (xb, yb) in zip(one, two, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # and they are the stored pixels, in order
    first = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(one[0][0], first)


def test_embedding_streams_rows_of_the_store_instead_of_loading_it(tmp_path):
    from siamese.models.encoders import SiameseEncoder
    from siamese.models.loading import embed, pair_distances

    images = _store(tmp_path, n=3000, shape=(24, 24, 3))  # 5 MB of pixels
    data = PreparedData(tmp_path)
    encoder = SiameseEncoder("mlp", 24, 8, 8, True, in_channels=3).eval()
    idx = np.arange(0, 3000, 2)
    tracemalloc.start()
    try:
        emb = embed(encoder, data.images, batch_size=128, indices=idx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # a batch of 128 rows is 0.2 MB; reading the indexed rows whole would be 2.6 MB
    assert peak < images[idx].nbytes / 4, peak
    np.testing.assert_allclose(emb, embed(encoder, images[idx]), rtol=1e-5, atol=1e-6)
    pairs = {"a": np.array([0, 5, 7]), "b": np.array([5, 9, 0]), "y": np.array([1, 0, 1])}
    d = pair_distances(encoder, data.images, pairs)
    np.testing.assert_allclose(d, pair_distances(encoder, images, pairs), rtol=1e-5)


def test_training_data_module_holds_the_mapped_file(project, small_faces):
    from siamese import paths
    from siamese.params_file import set_params
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare
    from siamese.training.datamodule import SiameseDataModule

    params = set_params(
        "params.yaml",
        [
            f"data.source={small_faces}",
            "mine.val_pairs=10",
            "mine.test_pairs=10",
            "mine.train_pairs=0",
        ],
    )
    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    dm = SiameseDataModule(params, paths.PREPARED, paths.PAIRS)
    dm.setup("fit")
    assert isinstance(dm.data.images, MappedImages)
    assert isinstance(dm.data.images.array, np.memmap)
    assert dm.train_dataloader().dataset.images is dm.data.images


def test_prepare_writes_identical_files_for_one_and_two_workers(project, att_faces, caplog):
    from siamese import paths
    from siamese.params_file import set_params
    from siamese.stages.prepare import run_prepare

    out = {}
    for workers in (1, 2):
        params = set_params(
            "params.yaml",
            [f"data.source={att_faces}", "data.image_size=[20, 16]", f"data.workers={workers}"],
        )
        with caplog.at_level(logging.INFO, logger="siamese.data.decoding"):
            summary = run_prepare(params, paths.PREPARED)
        assert summary["images"] > 32 * 4  # several chunks for two workers
        out[workers] = {
            name: (paths.PREPARED / name).read_bytes()
            for name in (IMAGES_FILE, META_FILE, "manifest.csv")
        }
    assert out[1] == out[2]
    images = np.load(paths.PREPARED / IMAGES_FILE, mmap_mode="r")
    n = summary["images"]
    assert images.shape == (n, 20, 16, 1) and images.std() > 10
    # no terminal here: progress is logged (at least the final line)
    assert f"decoding: {n}/{n} images (100%)" in caplog.text


def test_parallel_decoding_skips_or_names_a_bad_image_in_reading_order(small_faces, tmp_path):
    first, fifth = sorted(p.name for p in small_faces.iterdir())[0:5:4]
    for ident in (first, fifth):
        (small_faces / ident / "broken.pgm").write_bytes(b"not an image")
    decoder = Decoder(workers=2, path=tmp_path / IMAGES_FILE)
    with pytest.raises(DatasetError, match=rf"{first}/broken\.pgm"):
        load_folder_dataset(small_faces, 16, decoder=decoder)
    ds = load_folder_dataset(small_faces, 16, on_bad_image="skip", decoder=decoder)
    assert ds.skipped["images"] == [f"{first}/broken.pgm", f"{fifth}/broken.pgm"]
    assert isinstance(ds.images, np.memmap) and ds.images.shape == (40, 16, 16, 1)
    serial = load_folder_dataset(small_faces, 16, on_bad_image="skip")
    np.testing.assert_array_equal(ds.images, serial.images)
    assert ds.sources == serial.sources


def test_prepared_data_of_the_old_single_file_format_asks_for_a_rerun(tmp_path):
    _store(tmp_path / "new")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(tmp_path / "new" / META_FILE, old / "data.npz")
    with pytest.raises(DatasetError, match=r"rerun prepare .*siamese prepare"):
        PreparedData(old)


def test_data_workers_is_validated():
    from siamese.config import validate_params
    from siamese.errors import ParamsError

    assert validate_params({"data": {"workers": None}}).data.workers is None
    with pytest.raises(ParamsError, match="data.workers"):
        validate_params({"data": {"workers": 0}})


def test_random_training_reads_keep_few_of_the_mapped_file_pages_resident(tmp_path):
    """A random row's page fault maps a whole large folio of the hot page cache: without
    releasing them, a training process's resident set grew towards the whole file (1.4 GB of a
    large store after 3000 reads, benchmarks/scale.py). The dataset unmaps every few rows."""
    import psutil

    from siamese.training.datamodule import ImageDataset

    n = 6000  # 112 x 112 colour: 226 MB of pixels
    images = create_images(tmp_path / IMAGES_FILE, n, (112, 112, 3))
    images[:] = 7  # written: every page is in the page cache, as after prepare
    images.flush()
    del images
    ds = ImageDataset(MappedImages(tmp_path / IMAGES_FILE), np.arange(n) % 10)
    process = psutil.Process()
    before = process.memory_info().rss
    grew = 0
    for i in np.random.default_rng(0).integers(0, n, 1500):
        ds[int(i)]
        grew = max(grew, process.memory_info().rss - before)
    assert grew < 80 * 2**20, f"{grew / 2**20:.0f} MB of the 226 MB file stayed resident"
