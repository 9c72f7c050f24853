"""The served model on real AT&T faces: the weights-only package, the pyfunc's inputs and modes,
`mlflow models serve` over HTTP (answers equal to the in-process pyfunc, bad input -> 400),
and the verify / index / search commands. One tiny model is trained and registered per module."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from siamese.cli import app
from siamese.config import validate_params
from siamese.data.images import decode_image, encode_png
from siamese.errors import BadImageError, ParamsError
from siamese.params_file import set_params
from siamese.registry.client import b64, dataframe_split_json
from siamese.registry.tracking import tracking_uri
from tests.helpers.images import png_header_only
from tests.helpers.params import FACES_PARAMS, FAST_PARAMS
from tests.helpers.project import SHARED_DATA, make_project
from tests.helpers.servers import background, free_port, log_tail, wait_http

NAME = "faces-serve"
MAX_PIXELS = 50_000  # AT&T faces are 92 x 112 = 10 304 pixels
MAX_REQUEST_BYTES = 12_000_000  # a face is ~10 kB (~14 kB in base64)
MAX_ROWS = 60  # rows per HTTP request (serve.max_rows); 2 x 60 images are 4 chunks of 32
IDENTITIES, PER_IDENTITY, GALLERY_PER_IDENTITY = 8, 5, 4


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A model trained on 8 real face identities, registered as NAME@champion in a fresh
    project (sqlite tracking), plus a gallery split: 4 images per person indexed, 1 held out."""
    from tests.helpers.stages import (
        run_promote_stage,
        run_register_stage,
        run_stages_until_evaluate,
    )

    att = SHARED_DATA / "att_faces"
    if not att.exists():
        pytest.skip(f"real dataset not found at {att} (set SIAMESE_SHARED_DATA)")
    root = tmp_path_factory.mktemp("serving")
    faces, gallery, held_out = root / "faces", root / "gallery_faces", root / "held_out"
    for ident in sorted(p for p in att.iterdir() if p.is_dir())[:IDENTITIES]:
        imgs = sorted(ident.iterdir())[:PER_IDENTITY]
        for dest, chosen in ((faces, imgs), (gallery, imgs[:GALLERY_PER_IDENTITY])):
            (dest / ident.name).mkdir(parents=True)
            for img in chosen:
                shutil.copy(img, dest / ident.name / img.name)
        held_out.mkdir(exist_ok=True)
        shutil.copy(imgs[-1], held_out / f"{ident.name}.pgm")
    overrides = [
        f"data.source={faces}",
        *FACES_PARAMS,
        "train.max_epochs=3",
        "calibrate.bootstrap_resamples=0",
        "evaluate.bootstrap_resamples=0",
        "evaluate.kfold=0",
        "evaluate.retrieval=false",
        "evaluate.oneshot_episodes=0",
        f"register.model_name={NAME}",
        f"serve.max_pixels={MAX_PIXELS}",
        f"serve.max_request_bytes={MAX_REQUEST_BYTES}",
        f"serve.max_rows={MAX_ROWS}",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("SIAMESE_MLFLOW_RUN_ID", raising=False)
        project = make_project(root / "project", FAST_PARAMS)
        mp.chdir(project)
        params = set_params(project / "params.yaml", overrides)
        run_stages_until_evaluate(params)
        reg = run_register_stage(params)
        run_promote_stage(params)  # v1: champion
        uri = tracking_uri()
        mp.setenv("MLFLOW_TRACKING_URI", uri)  # for every test of this module
        yield {
            "project": project,
            "faces": faces,
            "gallery": gallery,
            "held_out": held_out,
            "registration": reg,
            "tracking_uri": uri,
            "model_uri": f"models:/{NAME}@champion",
        }


@pytest.fixture(scope="module")
def pyfunc(served):
    return mlflow.pyfunc.load_model(served["model_uri"])


@pytest.fixture(scope="module")
def server_process(served):
    """`mlflow models serve -m models:/NAME@champion --env-manager local` on a free port: its
    base URL, the process (the CLI, uvicorn its child) and its log."""
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": served["tracking_uri"],
        # the CLI starts `uvicorn` from PATH: the one beside this interpreter
        "PATH": str(mlflow_bin.parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    cmd = [str(mlflow_bin), "models", "serve", "-m", served["model_uri"], "--env-manager"]
    cmd += ["local", "--host", "127.0.0.1", "--port", str(port)]
    log = served["project"] / "serve.log"
    base = f"http://127.0.0.1:{port}"
    # its own process group: uvicorn is a child of the CLI, and both are stopped together
    with background(cmd, log, env, grace=20) as proc:
        why = wait_http(f"{base}/ping", proc, log, timeout=120)
        if why:
            pytest.fail(f"model server did not come up: {why}")
        yield SimpleNamespace(url=base, proc=proc, log=log)


@pytest.fixture(scope="module")
def server(server_process) -> str:
    return server_process.url


def _face(served, ident: int, img: int) -> Path:
    folder = sorted(p for p in served["faces"].iterdir())[ident]
    return sorted(folder.iterdir())[img]


def _real_pairs(served) -> pd.DataFrame:
    pairs = [((0, 0), (0, 1)), ((0, 0), (1, 0)), ((2, 3), (2, 4)), ((3, 1), (5, 2))]
    return pd.DataFrame(
        {
            "image_a": [_face(served, *a).read_bytes() for a, _ in pairs],
            "image_b": [_face(served, *b).read_bytes() for _, b in pairs],
        }
    )


# --- the package -------------------------------------------------------------------------------


def test_package_is_weights_only_model_from_code(served, tmp_path, monkeypatch):
    import pickle

    import torch

    local = Path(mlflow.artifacts.download_artifacts(served["model_uri"], dst_path=str(tmp_path)))
    files = {str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()}
    assert {
        "artifacts/encoder/model.safetensors",
        "artifacts/encoder/model.json",
        "artifacts/preprocessing.json",
        "artifacts/calibration.json",
        "serving_model.py",
        "input_example.json",
        "serving_input_example.json",
    } <= files
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".ckpt"))]
    pyfunc_conf = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert pyfunc_conf["model_code_path"].endswith("serving_model.py")
    assert "python_model" not in pyfunc_conf  # no pickled PythonModel object
    pre = json.loads((local / "artifacts/preprocessing.json").read_text())
    assert pre["image_size"] == 24 and pre["max_pixels"] == MAX_PIXELS
    assert pre["max_request_bytes"] == MAX_REQUEST_BYTES
    assert pre["max_rows"] == MAX_ROWS and pre["chunk_images"] == 32
    assert pre["normalization"] == {"divide": 127.5, "subtract": 1.0}
    cal = json.loads((local / "artifacts/calibration.json").read_text())
    assert cal["threshold"] == served["registration"]["threshold"]
    assert cal["strategy"] == "max_accuracy" and cal["probability"]["method"] == "platt"

    # loading never unpickles: both pickle and torch.load are off limits
    def refuse(*a, **k):
        raise AssertionError("the package must load without unpickling anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = mlflow.pyfunc.load_model(str(local))
    assert model.metadata.get_params_schema().params[0].name == "mode"
    example = json.loads((local / "serving_input_example.json").read_text())["dataframe_split"]
    frame = pd.DataFrame(example["data"], columns=example["columns"]).map(base64.b64decode)
    out = model.predict(frame)
    assert list(out.columns) == ["distance", "similarity", "probability", "match"]


def test_pyfunc_takes_bytes_base64_and_arrays_and_embeds(served, pyfunc):
    from PIL import Image

    pairs = _real_pairs(served)
    by_bytes = pyfunc.predict(pairs)
    assert by_bytes["match"].dtype == bool and (by_bytes["distance"] >= 0).all()
    assert ((by_bytes["probability"] >= 0) & (by_bytes["probability"] <= 1)).all()
    threshold = served["registration"]["threshold"]
    assert list(by_bytes["match"]) == list(by_bytes["distance"] <= threshold)
    by_b64 = pyfunc.predict(pairs.map(b64))
    arrays = pairs.map(lambda v: np.asarray(Image.open(io.BytesIO(v))))
    by_array = pyfunc.predict(arrays)
    pd.testing.assert_frame_equal(by_bytes, by_b64)
    pd.testing.assert_frame_equal(by_bytes, by_array)

    # embed mode: the vectors whose model distance is the pair distance
    emb = pyfunc.predict(
        pd.DataFrame({"image": list(pairs["image_a"]) + list(pairs["image_b"])}),
        params={"mode": "embed"},
    )
    vec = np.array(emb["embedding"].tolist())
    n = len(pairs)
    enc = pyfunc.unwrap_python_model().encoder
    import torch

    d = enc.pair_distance(torch.from_numpy(vec[:n]), torch.from_numpy(vec[n:])).numpy()
    np.testing.assert_allclose(d, by_bytes["distance"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "frame, params, message",
    [
        (pd.DataFrame({"image_a": [b"not an image"], "image_b": [b"x"]}), None, "row 0 image_a"),
        (pd.DataFrame({"a": [b"x"], "b": [b"y"]}), None, "missing column"),
        (pd.DataFrame({"image_a": [b"x"]}), {"mode": "embed"}, "missing column"),
        (pd.DataFrame({"image": [b"x"]}), {"mode": "bogus"}, "unknown mode"),
        (pd.DataFrame({"image_a": [np.zeros(5)], "image_b": [np.zeros(5)]}), None, "shape"),
    ],
)
def test_pyfunc_bad_input_is_invalid_parameter(pyfunc, frame, params, message):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match=message) as err:
        pyfunc.predict(frame, params=params)
    assert err.value.get_http_status_code() == 400


def test_decode_refuses_big_images_before_decoding():
    # the header declares 50 000 x 50 000 pixels; the data is ~40 bytes: a decompression bomb
    with pytest.raises(BadImageError, match="decompression bomb"):
        decode_image(png_header_only(50_000, 50_000), 24, "bomb.png")
    # under PIL's bomb limit but over ours: refused from the header, before the broken data
    # would even be read
    with pytest.raises(BadImageError, match="1000x1000 = 1000000 pixels, over the limit of"):
        decode_image(png_header_only(1000, 1000), 24, "big.png", max_pixels=MAX_PIXELS)
    ok = decode_image(encode_png(np.full((200, 250), 7, np.uint8)), 24, "ok.png", max_pixels=None)
    assert ok.shape == (24, 24, 1) and (ok == 7).all()
    with pytest.raises(ParamsError, match="serve.max_pixels"):
        validate_params({"serve": {"max_pixels": 0}})


def test_scoring_server_guard_refuses_before_parsing_and_cuts_long_messages(monkeypatch):
    """guard_scoring_server wraps MLflow's request handler only inside `mlflow models serve`."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from siamese.registry.guard import guard_scoring_server

    calls = []

    def handler(data, content_type, model, schema):
        calls.append(data)
        if data == b"long":
            raise MlflowException("x" * 10 + "y" * 100_000 + "the end", error_code="BAD_REQUEST")
        return scoring_server.InvocationsResponse("{}", 200, "application/json")

    monkeypatch.setattr(scoring_server, "invocations", handler)
    monkeypatch.delenv(scoring_server._SERVER_MODEL_PATH, raising=False)
    assert not guard_scoring_server(100) and scoring_server.invocations is handler
    monkeypatch.setenv(scoring_server._SERVER_MODEL_PATH, "models:/x/1")
    assert guard_scoring_server(1000)
    assert guard_scoring_server(100)  # loading again replaces the limit, wrapping once
    guarded = scoring_server.invocations
    assert guarded.siamese_original is handler
    r = guarded(b"{}", None, None, None)
    assert r.status == 415 and "no Content-Type header" in json.loads(r.response)["message"]
    r = guarded(b"a" * 101, "application/json", None, None)
    assert r.status == 413 and "101 bytes, over the limit of 100 bytes" in r.response
    assert calls == []  # refused without being parsed
    # a JSON body reaches MLflow's handler parsed (as a DataFrame format); others as they came
    r = guarded(b'{"inputs": {"image": ["eA=="]}}', "application/json; charset=UTF-8", None, None)
    assert r.status == 200
    assert calls == [{"dataframe_split": {"columns": ["image"], "data": [["eA=="]]}}]
    r = guarded(b"a" * 100, "application/json", None, None)
    assert r.status == 400 and "not valid JSON" in json.loads(r.response)["message"]
    assert guarded(b"a" * 100, "text/csv", None, None).status == 200 and calls[-1] == b"a" * 100
    with pytest.raises(MlflowException) as err:
        guarded(b"long", "text/csv", None, None)
    message = err.value.message
    assert len(message) <= 4000 and message.startswith("xxx") and message.endswith("the end")
    assert "characters cut" in message


# --- bounded work per request ---------------------------------------------------------------------


def _tiny_pngs(n: int, seed: int = 0) -> list[bytes]:
    """n distinct 4 x 3 PNGs (~70 bytes each): many rows in a small body."""
    rng = np.random.default_rng(seed)
    return [encode_png(rng.integers(0, 256, (3, 4), dtype=np.uint8)) for _ in range(n)]


@pytest.mark.parametrize("mode", ["pair", "embed"])
@pytest.mark.parametrize("chunk", [5, 16])
def test_chunked_embedding_is_identical_to_embedding_all_decoded_images(
    served, pyfunc, chunk, mode
):
    """A request is decoded and embedded chunk_images at a time; its answer is exactly (bit for
    bit) that of embedding all its decoded images stacked, in the same batches, and equal to
    one batch of all of them up to float32 rounding."""
    import copy

    from siamese.models.loading import embed
    from siamese.registry.serving_input import EMBED_COLUMN, INPUT_COLUMNS

    model = copy.copy(pyfunc.unwrap_python_model())
    model.chunk_images = chunk
    faces = [p.read_bytes() for p in sorted(served["faces"].rglob("*.pgm"))[:16]]
    images = faces + _tiny_pngs(3)  # 19 rows: full chunks and a partial one in both modes
    frame = pd.DataFrame({"image_a": images, "image_b": images[::-1]})
    columns = [EMBED_COLUMN] if mode == "embed" else list(INPUT_COLUMNS)
    if mode == "embed":
        frame = pd.DataFrame({EMBED_COLUMN: images})
    decoded = np.stack([decode_image(v, model.image) for c in columns for v in frame[c]])
    want = model.embeddings(decoded)  # all decoded images at once, batches of chunk_images
    if mode == "embed":
        got = model.predict(None, frame, {"mode": "embed"})
        np.testing.assert_array_equal(np.array(got["embedding"].tolist()), want)
    else:
        got = model.predict(None, frame)
        pd.testing.assert_frame_equal(got, model.score(want, len(frame)), check_exact=True)
    one_batch = embed(model.encoder, decoded, batch_size=len(decoded)).astype(np.float64)
    np.testing.assert_allclose(want, one_batch, rtol=1e-5, atol=1e-6)


def test_request_memory_is_one_chunk_of_images_not_rows_times_image_size():
    """150 pairs of tiny PNGs for a 256 px model: all decoded images would take 2 x 150 x
    256 x 256 = 20 MB (and as much again stacked); decoded and embedded 16 at a time, the peak
    of Python/numpy allocations (tracemalloc) during predict is one chunk and the embeddings."""
    import tracemalloc

    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.registry.package import preprocessing_spec
    from siamese.registry.pyfunc import SiameseModel

    size, rows, chunk = 256, 150, 16
    torch.manual_seed(0)
    encoder = SiameseEncoder("mlp", size, 16, 8, True).eval()
    spec = preprocessing_spec(size, None, chunk_images=chunk)
    model = SiameseModel().setup(encoder, spec, {"threshold": 0.5})
    pngs = _tiny_pngs(64)
    frame = pd.DataFrame(
        {
            "image_a": [pngs[i % 64] for i in range(rows)],
            "image_b": [pngs[-i % 64] for i in range(rows)],
        }
    )
    model.predict(
        None, frame.head(2)
    )  # first-call allocations (imports, kernels) are not the request's
    tracemalloc.start()
    try:
        out = model.predict(None, frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(out) == rows and out["distance"].notna().all()
    all_decoded = 2 * rows * size * size
    # twice one chunk of decoded images, the float64 embeddings, ~2 KB a row (frame, answer)
    bound = 2 * chunk * size * size + 2 * rows * 16 * 8 + rows * 2000
    print(
        f"peak {peak / 1e6:.1f} MB (bound {bound / 1e6:.1f} MB, "
        f"all decoded {all_decoded / 1e6:.0f} MB)"
    )
    assert peak < bound < all_decoded / 4


def test_request_past_its_deadline_stops_between_images(served, pyfunc):
    """Inside `mlflow models serve` the guard gives each request the scoring server's deadline;
    once it has passed (the client was answered 504) the model stops before the next image
    instead of computing to the end for nobody (the HTTP case is a slow test below)."""
    import time

    from siamese.registry import guard

    model = pyfunc.unwrap_python_model()
    frame = _real_pairs(served)
    past = guard.ServingRequest(deadline=time.monotonic() - 1, timeout_s=60, max_rows=None)
    with guard.request_scope(past), pytest.raises(guard.ServingError) as err:
        model.predict(None, frame)
    assert err.value.status == 504
    assert "timeout of 60 s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)" in err.value.siamese_message
    assert "stopped after 0 of 8 images" in err.value.siamese_message
    assert len(model.predict(None, frame)) == 4  # outside a request: no deadline


# --- over HTTP -----------------------------------------------------------------------------------


def test_http_serving_matches_pyfunc_and_answers_bad_input_with_400(served, pyfunc, server):
    import requests

    url = f"{server}/invocations"
    headers = {"Content-Type": "application/json"}
    pairs = _real_pairs(served)
    r = requests.post(url, data=dataframe_split_json(pairs), headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    got = pd.DataFrame(r.json()["predictions"])
    want = pyfunc.predict(pairs)  # (the server computes single-threaded: float32 rounding)
    np.testing.assert_allclose(got["distance"], want["distance"], rtol=1e-6)
    np.testing.assert_allclose(got["probability"], want["probability"], rtol=1e-6)
    assert list(got["match"]) == list(want["match"])

    embed = pd.DataFrame({"image": list(pairs["image_a"][:2])})
    r = requests.post(
        url, data=dataframe_split_json(embed, {"mode": "embed"}), headers=headers, timeout=60
    )
    assert r.status_code == 200, r.text
    want_emb = pyfunc.predict(embed, params={"mode": "embed"})
    np.testing.assert_allclose(
        [p["embedding"] for p in r.json()["predictions"]],
        want_emb["embedding"].tolist(),
        rtol=1e-6,
        atol=1e-7,
    )

    face = b64(pairs["image_a"][0])
    too_big = b64(encode_png(np.zeros((300, 300), np.uint8)))  # 90 000 > 50 000 pixels
    bad = {
        "row 0 image_a: not a readable image": (
            ["image_a", "image_b"],
            [[b64(b"GIF89a but not really"), face]],
        ),
        "row 0 image_b: refused as a decompression bomb": (
            ["image_a", "image_b"],
            [[face, b64(png_header_only(50_000, 50_000))]],
        ),
        "over the limit of 50000 pixels": (["image_a", "image_b"], [[too_big, face]]),
        "missing column": (["left", "right"], [[face, face]]),
        "2 columns passed": (["image_a", "image_b"], [[face]]),
    }
    for message, (columns, rows) in bad.items():
        body = json.dumps({"dataframe_split": {"columns": columns, "data": rows}})
        r = requests.post(url, data=body, headers=headers, timeout=60)
        assert r.status_code == 400, (message, r.status_code, r.text[:500])
        assert message in r.json()["message"], (message, r.text[:500])
    r = requests.post(url, data="{not json", headers=headers, timeout=60)
    assert r.status_code == 400

    # still up, still right
    r = requests.post(url, data=dataframe_split_json(pairs[:1]), headers=headers, timeout=60)
    assert r.status_code == 200
    assert r.json()["predictions"][0]["distance"] == pytest.approx(want["distance"][0])


def _records_json(frame: pd.DataFrame, params: dict | None = None) -> str:
    """The ``/invocations`` body in the ``dataframe_records`` format (image bytes as base64)."""
    rows = [{c: b64(v) for c, v in row.items()} for row in frame.to_dict("records")]
    return json.dumps({"dataframe_records": rows, **({"params": params} if params else {})})


def _split_body(columns: list[str], rows: list[list], params: dict | None = None) -> str:
    body: dict = {"dataframe_split": {"columns": columns, "data": rows}}
    if params:
        body["params"] = params
    return json.dumps(body)


def test_concurrent_burst_with_malformed_requests_keeps_serving(served, pyfunc, server_process):
    """40 good and 25 malformed requests, shuffled, all at once from 16 threads to the one
    uvicorn worker of `mlflow models serve`: every good one is answered as the in-process pyfunc
    answers it, every bad one with 400 (415 for a missing or unsupported content type, 413 for a
    body over serve.max_request_bytes) and a short message naming the problem; nothing fails
    unhandled, and the server stays up and right."""
    import random
    import time
    from concurrent.futures import ThreadPoolExecutor

    import requests

    url = f"{server_process.url}/invocations"
    rng = random.Random(20240611)
    faces = [_face(served, i, j) for i in range(IDENTITIES) for j in range(PER_IDENTITY)]
    raw = {p: p.read_bytes() for p in faces}

    # -- good: real face pairs (PGM bytes), 1 to 4 rows, dataframe_split or dataframe_records
    good = []
    for k in range(40):
        n = 1 if k % 2 == 0 else rng.randint(2, 4)
        a = [rng.choice(faces) for _ in range(n)]
        # about half the pairs are of one person, so both decisions occur
        b = [
            rng.choice([f for f in faces if f.parent == x.parent] if rng.random() < 0.5 else faces)
            for x in a
        ]
        frame = pd.DataFrame({"image_a": [raw[x] for x in a], "image_b": [raw[y] for y in b]})
        body = dataframe_split_json(frame) if k % 4 < 2 else _records_json(frame)
        good.append({"body": body, "want": pyfunc.predict(frame)})

    # -- malformed: (kind, body, content type, expected status, words of its message)
    face = b64(raw[faces[0]])
    png = encode_png(decode_image(raw[faces[1]], 64))
    cols = ["image_a", "image_b"]

    def pair(a: str, b: str, **params) -> str:
        return _split_body(cols, [[a, b]], params)

    noise = random.Random(1).randbytes
    garbage = b64(noise(7_500_000))  # 10 MB of base64, under serve.max_request_bytes
    too_long = b64(noise(9_500_000))  # 12.7 MB, over it
    ct, limit = "application/json", f"over the limit of {MAX_REQUEST_BYTES} bytes"
    bad = [
        ("not an image", pair(b64(b"not an image"), face), ct, 400, "row 0 image_a: not a"),
        ("0-byte image", _split_body(cols, [[face, face], [face, ""]]), ct, 400,
         "row 1 image_b: empty file (0 bytes)"),
        ("truncated PNG", pair(b64(png[: len(png) // 2]), face), ct, 400,
         "row 0 image_a: not a readable image"),
        ("truncated PGM", pair(face, b64(raw[faces[2]][:3000])), ct, 400,
         "row 0 image_b: not a readable image"),
        ("decompression bomb", pair(face, b64(png_header_only(50_000, 50_000))), ct, 400,
         "row 0 image_b: refused as a decompression bomb"),
        ("over serve.max_pixels", pair(b64(encode_png(np.zeros((300, 300), np.uint8))), face),
         ct, 400, "over the limit of 50000 pixels"),
        ("1x1 image", pair(face, b64(encode_png(np.zeros((1, 1), np.uint8)))), ct, 400,
         "row 0 image_b: image is 1x1 pixels, too small"),
        ("huge garbage base64", pair(face, garbage), ct, 400, "row 0 image_b: not a readable"),
        ("null image", json.dumps({"dataframe_records": [{"image_a": face, "image_b": None}]}),
         ct, 400, "column image_b"),
        ("number for image", pair(face, 12345), ct, 400, "column image_b"),
        ("wrong columns", _split_body(["left", "right"], [[face, face]]), ct, 400,
         "missing column(s) ['image_a', 'image_b']"),
        ("wrong row shape", _split_body(cols, [[face]]), ct, 400, "2 columns passed"),
        ("ragged rows", _split_body(cols, [[face, face], [face, face, face]]), ct, 400,
         "columns"),
        ("unknown mode", pair(face, face, mode="bogus"), ct, 400, "unknown mode 'bogus'"),
        ("embed without image column", pair(face, face, mode="embed"), ct, 400,
         "missing column(s) ['image']"),
        ("invalid JSON", '{"dataframe_split": {"columns": ', ct, 400, "valid JSON"),
        ("not UTF-8", b"\xff\xfe\x00garbage", ct, 400, "valid JSON"),
        ("2 MB not UTF-8", b"\xff" * 2_000_000, ct, 400, "not UTF-8 text"),
        ("empty body", b"", ct, 400, "valid JSON"),
        ("JSON list", json.dumps([[face, face]]), ct, 400, "must be a JSON object"),
        ("no input key", json.dumps({"data": [[face, face]]}), ct, 400, "dataframe_split"),
        ("body over serve.max_request_bytes", pair(face, too_long), ct, 413, limit),
        ("wrong content type", pair(face, face), "text/plain", 415, "content types"),
        ("not UTF-8 charset", pair(face, face), f"{ct}; charset=latin-1", 415, "UTF-8"),
        ("no content type", pair(face, face), None, 415, "no Content-Type header"),
    ]  # fmt: skip

    requests_ = [("good", i) for i in range(len(good))] + [("bad", i) for i in range(len(bad))]
    rng.shuffle(requests_)

    def send(item):
        kind, i = item
        if kind == "good":
            body, ctype = good[i]["body"], ct
        else:
            body, ctype = bad[i][1:3]
        headers = {"Content-Type": ctype} if ctype else {}
        t0 = time.monotonic()
        try:
            r = requests.post(url, data=body, headers=headers, timeout=30)
        except requests.RequestException as err:
            return item, None, repr(err), time.monotonic() - t0
        return item, r, None, time.monotonic() - t0

    t0 = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, requests_))
    burst_s = time.monotonic() - t0

    problems = []
    for (kind, i), r, err, _ in results:
        what = f"good #{i}" if kind == "good" else f"bad: {bad[i][0]}"
        if err is not None:
            problems.append(f"{what}: no answer ({err})")
            continue
        if kind == "good":
            if r.status_code != 200:
                problems.append(f"{what}: {r.status_code} {r.text[:300]}")
                continue
            got, want = pd.DataFrame(r.json()["predictions"]), good[i]["want"]
            if not (
                len(got) == len(want)
                and np.allclose(got["distance"], want["distance"], rtol=0, atol=1e-5)
                and np.allclose(got["probability"], want["probability"], rtol=0, atol=1e-5)
                and list(got["match"]) == list(want["match"])
            ):
                problems.append(
                    f"{what}: answered {got.to_dict('list')}, expected {want.to_dict('list')}"
                )
        else:
            _, _, _, status, words = bad[i]
            message = r.text
            if r.headers.get("content-type", "").startswith("application/json"):
                try:
                    message = r.json().get("message", r.text)
                except ValueError:
                    pass
            if r.status_code != status or words not in message or len(r.content) > 10_000:
                problems.append(
                    f"{what}: {r.status_code} ({len(r.content)} bytes) {message[:300]!r}"
                )
    print(
        f"burst of {len(results)} requests in {burst_s:.1f} s; slowest "
        f"{max(res[3] for res in results):.1f} s"
    )
    assert not problems, "\n".join(problems)

    # still up, still right, and nothing failed unhandled (no 500, no traceback in the log)
    assert server_process.proc.poll() is None, log_tail(server_process.log)
    log = server_process.log.read_text(errors="replace")
    assert "Traceback" not in log and " 500 " not in log, log_tail(server_process.log, 80)
    assert requests.get(f"{server_process.url}/ping", timeout=10).status_code == 200
    r = requests.post(url, data=good[1]["body"], headers={"Content-Type": ct}, timeout=30)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(
        pd.DataFrame(r.json()["predictions"])["distance"], good[1]["want"]["distance"], atol=1e-5
    )
    assert server_process.proc.poll() is None


def _post(url: str, body, content_type: str = "application/json"):
    import requests

    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)


def _assert_refused(r, status: int, words: str, log: Path) -> None:
    """Answered ``status`` with a short JSON message holding ``words``; no traceback anywhere."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert words in r.json()["message"], r.text[:500]
    assert len(r.content) < 2000 and "Traceback" not in r.text and "stack_trace" not in r.json()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and " 500 " not in text, log_tail(log, 60)


_FACE = "<face>"  # replaced by a real face, base64-encoded
_BAD_JSON = {
    "nested 100 000 deep": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "5000-digit number": (
        '{"dataframe_split": {"columns": ["image_a"], "data": [[' + "1" * 5000 + "]]}}",
        "a number has more than 4300 digits",
    ),
    "truncated": ('{"dataframe_split": {"columns": ', "not valid JSON: Expecting value"),
    "not UTF-8": (b'{"inputs": "\xff"}', "not valid JSON: it is not UTF-8 text"),
    "a JSON string": ('"<face>"', "must be a JSON object"),
    "two formats": ('{"inputs": [], "instances": []}', "exactly one of the keys"),
    "params not an object": (
        '{"dataframe_split": {"columns": ["image"], "data": [["<face>"]]}, "params": "embed"}',
        "params must be a JSON object",
    ),
    "instances a string": ('{"instances": "<face>"}', "instances must be an array of row"),
    "inputs columns of different lengths": (
        '{"inputs": {"image_a": ["<face>", "<face>"], "image_b": ["<face>"]}}',
        "different lengths",
    ),
    "split row not an array": (
        '{"dataframe_split": {"columns": ["image_a", "image_b"], "data": ["<face>"]}}',
        "row 0 of dataframe_split.data is a string, not an array",
    ),
    # cells of image columns that are not base64 strings: named by row and column
    "null in dataframe_split": (
        '{"dataframe_split": {"columns": ["image_a", "image_b"], '
        '"data": [["<face>", "<face>"], ["<face>", null]]}}',
        "row 1 image_b: null instead of an image; each cell of column image_b",
    ),
    "number in dataframe_records": (
        '{"dataframe_records": [{"image_a": 12345, "image_b": "<face>"}]}',
        "row 0 image_a: a number instead of an image",
    ),
    "missing key in dataframe_records": (
        '{"dataframe_records": [{"image_a": "<face>", "image_b": "<face>"}, '
        '{"image_a": "<face>"}]}',
        "row 1 image_b: missing",
    ),
    "boolean in instances": (
        '{"instances": [{"image_a": "<face>", "image_b": true}]}',
        "row 0 image_b: a boolean instead of an image",
    ),
    "array in inputs": (
        '{"inputs": {"image_a": ["<face>", "<face>", [1, 2]], '
        '"image_b": ["<face>", "<face>", "<face>"]}}',
        "row 2 image_a: an array instead of an image",
    ),
    "object in embed inputs": (
        '{"inputs": [{"image": {"b64": "<face>"}}], "params": {"mode": "embed"}}',
        "row 0 image: an object instead of an image",
    ),
    "float in dataframe_split": (
        '{"dataframe_split": {"columns": ["image"], "data": [[1.5]]}, "params": {"mode": "embed"}}',
        "row 0 image: a number instead of an image",
    ),
}


@pytest.mark.parametrize("case", list(_BAD_JSON))
def test_http_malformed_json_and_non_image_cells_answer_400_naming_the_problem(
    served, server_process, case
):
    """What MLflow's own parsing answered with a 500 (nesting past the parser's recursion
    limit, a 5000-digit number) or with its internal type-conversion message (a null or a
    number where an image belongs) is answered 400 with a message naming the problem, and the
    row and column of a bad cell."""
    body, words = _BAD_JSON[case]
    face = b64(_face(served, 0, 0).read_bytes())
    body = body.replace(_FACE, face) if isinstance(body, str) else body
    r = _post(f"{server_process.url}/invocations", body)
    _assert_refused(r, 400, words, server_process.log)


def _request_bodies(frame: pd.DataFrame, params: dict | None = None) -> dict[str, tuple[str, str]]:
    """The same rows (image bytes) in every body format the server takes: name -> (body, type)."""
    enc = frame.map(b64)
    records = enc.to_dict("records")
    columns = {c: list(enc[c]) for c in enc.columns}
    extra = {"params": params} if params else {}
    bodies = {
        "dataframe_split": _split_body(list(enc.columns), enc.to_numpy().tolist(), params),
        "dataframe_records": json.dumps({"dataframe_records": records, **extra}),
        "instances rows": json.dumps({"instances": records, **extra}),
        "instances columns": json.dumps({"instances": columns, **extra}),
        "inputs columns": json.dumps({"inputs": columns, **extra}),
        "inputs rows": json.dumps({"inputs": records, **extra}),
    }
    out = {k: (v, "application/json") for k, v in bodies.items()}
    if not params:  # a CSV body has no params
        out["csv"] = (enc.to_csv(index=False), "text/csv")
    return out


@pytest.mark.parametrize("mode", ["pair", "embed"])
def test_http_instances_and_inputs_answered_like_dataframe_split(served, server, mode):
    """``instances`` / ``inputs`` bodies (rows or columns) with base64 images are answered
    exactly as the same rows in ``dataframe_split`` (MLflow turned their cells into fixed-width
    byte arrays of the base64 text: every image was refused as unreadable)."""
    pairs = _real_pairs(served)
    if mode == "embed":
        frame, params = pd.DataFrame({"image": list(pairs["image_a"])}), {"mode": "embed"}
    else:
        frame, params = pairs, None
    answers = {}
    for name, (body, ctype) in _request_bodies(frame, params).items():
        r = _post(f"{server}/invocations", body, ctype)
        assert r.status_code == 200, (name, r.text[:500])
        answers[name] = r.json()["predictions"]
    assert len(answers["dataframe_split"]) == len(frame)
    for name, predictions in answers.items():
        assert predictions == answers["dataframe_split"], name


@pytest.mark.parametrize(
    "fmt",
    [
        "dataframe_split",
        "dataframe_records",
        "instances rows",
        "instances columns",
        "inputs columns",
        "inputs rows",
        "csv",
    ],
)
def test_http_max_rows_refused_before_decoding_and_answered_up_to_it(
    served, pyfunc, server_process, fmt
):
    """serve.max_rows + 1 rows are answered 413 naming the limit, before any image is decoded
    (their cells are not images: decoding would answer 400); serve.max_rows rows of real faces
    are answered like the in-process pyfunc (2 x 60 images: 4 chunks of 32)."""
    url = f"{server_process.url}/invocations"
    junk = pd.DataFrame({"image_a": [b"not an image"] * (MAX_ROWS + 1)})
    junk["image_b"] = junk["image_a"]
    body, ctype = _request_bodies(junk)[fmt]
    r = _post(url, body, ctype)
    words = (
        f"has {MAX_ROWS + 1} rows, over the limit of {MAX_ROWS} rows per request (serve.max_rows)"
    )
    _assert_refused(r, 413, words, server_process.log)

    faces = [
        _face(served, i, j).read_bytes() for i in range(IDENTITIES) for j in range(PER_IDENTITY)
    ]
    frame = pd.DataFrame(
        {
            "image_a": [faces[i % 40] for i in range(MAX_ROWS)],
            "image_b": [faces[(7 * i + 3) % 40] for i in range(MAX_ROWS)],
        }
    )
    body, ctype = _request_bodies(frame)[fmt]
    r = _post(url, body, ctype)
    assert r.status_code == 200, r.text[:500]
    got, want = pd.DataFrame(r.json()["predictions"]), pyfunc.predict(frame)
    np.testing.assert_allclose(got["distance"], want["distance"], rtol=0, atol=1e-5)
    assert list(got["match"]) == list(want["match"])


# --- bounded memory and time over HTTP (own server; slow) --------------------------------------

BOUNDED_SIZE, BOUNDED_ROWS, BOUNDED_TIMEOUT_S = 256, 1000, 20


@pytest.fixture(scope="module")
def bounded_server(tmp_path_factory):
    """`mlflow models serve` of a 256 px MLP package (random weights: only memory and time are
    measured) with serve.max_rows = 1000, chunks of 32 images and a 20 s scoring timeout."""
    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.registry.package import save_package

    root = tmp_path_factory.mktemp("bounded")
    torch.manual_seed(0)
    encoder = SiameseEncoder("mlp", BOUNDED_SIZE, 16, 8, True)
    (root / "train").mkdir()
    torch.save(encoder.state_dict(), root / "train" / "model.pt")
    (root / "train" / "model.json").write_text(json.dumps(encoder.config))
    calibration = {"strategy": "eer", "threshold": 0.5, "probability": {"method": "none"}}
    pkg = save_package(
        root / "pkg", root / "train", calibration, 25_000_000,
        max_request_bytes=200_000_000, max_rows=BOUNDED_ROWS, chunk_images=32,
    )  # fmt: skip
    port, mlflow_bin = free_port(), Path(sys.executable).parent / "mlflow"
    env = {
        **os.environ,
        "PATH": str(mlflow_bin.parent) + os.pathsep + os.environ.get("PATH", ""),
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(BOUNDED_TIMEOUT_S),
    }
    cmd = [str(mlflow_bin), "models", "serve", "-m", str(pkg), "--env-manager", "local"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    log, base = root / "serve.log", f"http://127.0.0.1:{port}"
    with background(cmd, log, env, grace=20) as proc:
        why = wait_http(f"{base}/ping", proc, log, timeout=120)
        if why:
            pytest.fail(f"model server did not come up: {why}")
        yield SimpleNamespace(url=base, proc=proc, log=log)


def _tree_rss(root) -> int:
    import psutil

    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _peak_rss_during(pid: int, work):
    """(work's result, RSS of the process tree before, its peak while work ran), polled."""
    import threading

    import psutil

    root = psutil.Process(pid)
    before = _tree_rss(root)
    peak, stop = [before], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(root))
            stop.wait(0.002)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        result = work()
    finally:
        stop.set()
        thread.join()
    return result, before, max(peak[0], _tree_rss(root))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["pair", "embed"])
def test_http_many_rows_stay_within_a_peak_memory_bound(bounded_server, mode):
    """serve.max_rows rows of tiny PNGs (a ~0.2 MB body) for a 256 px model: decoding them all
    would take 2 x 1000 x 256 x 256 = 131 MB, twice (the list and its stack); the server's
    process tree (psutil, polled every 2 ms) grows by less: one chunk's working set, the parsed
    body and a few KB a row."""
    url = f"{bounded_server.url}/invocations"
    pngs = _tiny_pngs(64)
    if mode == "embed":
        rows = [[b64(pngs[i % 64])] for i in range(BOUNDED_ROWS)]
        columns, params, images = ["image"], {"mode": "embed"}, BOUNDED_ROWS
    else:
        rows = [[b64(pngs[i % 64]), b64(pngs[-i % 64])] for i in range(BOUNDED_ROWS)]
        columns, params, images = ["image_a", "image_b"], None, 2 * BOUNDED_ROWS
    assert _post(url, _split_body(columns, rows[:40], params)).status_code == 200  # warm-up
    body = _split_body(columns, rows, params)
    r, before, peak = _peak_rss_during(bounded_server.proc.pid, lambda: _post(url, body))
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["predictions"]) == BOUNDED_ROWS
    grown, all_decoded = peak - before, images * BOUNDED_SIZE**2
    # a chunk's working set (float32 input tensors and their copies: measured ~6 of them, in a
    # worker thread's own malloc arena), the parsed body, ~5 KB a row, 16 MiB of slack
    chunk_working_set = 8 * 4 * 32 * BOUNDED_SIZE**2
    bound = chunk_working_set + 5 * len(body) + BOUNDED_ROWS * 5000 + 16 * 2**20
    print(f"{mode}: body {len(body) / 1e6:.2f} MB, RSS {before / 2**20:.0f} -> "
          f"{peak / 2**20:.0f} MiB (+{grown / 2**20:.1f} MiB; bound {bound / 2**20:.0f} MiB, "
          f"all decoded images {all_decoded / 2**20:.0f} MiB)")  # fmt: skip
    # the unchunked model held every decoded image twice (the list and its stack)
    assert grown < bound < 2 * all_decoded


@pytest.mark.slow
def test_http_request_past_the_timeout_stops_and_frees_the_worker(bounded_server):
    """A request of 2 x 1000 25-megapixel images (minutes of decoding) gets MLflow's 504 after
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT; the model then stops between images, says so in the
    server log (no traceback), and the worker answers the next request."""
    import re
    import time

    url = f"{bounded_server.url}/invocations"
    big = b64(encode_png(np.zeros((5000, 5000), np.uint8)))  # ~25 kB of PNG, 25 MP decoded
    r = _post(url, _split_body(["image_a", "image_b"], [[big, big]] * BOUNDED_ROWS))
    assert r.status_code == 504, r.text[:500]
    pattern = re.compile(r"stopped after (\d+) of (\d+) images")
    for _ in range(1200):  # the stop comes at the next image: wait for its line
        found = pattern.search(bounded_server.log.read_text(errors="replace"))
        if found:
            break
        time.sleep(0.1)
    assert found, log_tail(bounded_server.log)
    assert int(found[1]) < int(found[2]) == 2 * BOUNDED_ROWS
    small = _split_body(["image_a", "image_b"], [[b64(p), b64(p)] for p in _tiny_pngs(3)])
    r = _post(url, small)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3, r.text[:500]
    log = bounded_server.log.read_text(errors="replace")
    assert "Traceback" not in log and "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT" in log


# --- the command line ----------------------------------------------------------------------------


def _cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_verify_prints_distance_probability_and_decision(served, pyfunc):
    a, b, c = _face(served, 0, 0), _face(served, 0, 1), _face(served, 4, 0)
    want = pyfunc.predict(
        pd.DataFrame({"image_a": [a.read_bytes()] * 2, "image_b": [b.read_bytes(), c.read_bytes()]})
    )
    # default model: models:/<register.model_name>@champion from params.yaml
    res = _cli("verify", str(a), str(b), "--params", str(served["project"] / "params.yaml"))
    assert res.exit_code == 0, res.output
    # one pair per call here, two in `want`: float32 convolutions may round differently by
    # batch size (~1e-8), so compare the printed values, not their strings
    lines = dict(line.split(":", 1) for line in res.output.strip().splitlines())
    assert float(lines["distance"]) == pytest.approx(want["distance"][0], abs=2e-6)
    assert float(lines["probability"]) == pytest.approx(want["probability"][0], abs=2e-6)
    decision = "match (distance <=" if want["match"][0] else "no match (distance >"
    assert lines["decision"].strip().startswith(decision)
    res = _cli("verify", str(a), str(c), "--model", served["model_uri"], "--json")
    out = json.loads(res.output)
    assert out["distance"] == pytest.approx(want["distance"][1], rel=1e-5)
    assert out["match"] == bool(want["match"][1])
    assert out["threshold"] == served["registration"]["threshold"]

    bad = served["project"] / "bad.png"
    bad.write_bytes(b"not an image")
    res = CliRunner().invoke(app, ["verify", str(a), str(bad), "--model", served["model_uri"]])
    assert res.exit_code == 2 and "bad.png: not a readable image" in res.output


def test_index_and_search_find_the_person(served, tmp_path):
    exact, ivf = tmp_path / "exact", tmp_path / "ivf"
    res = _cli("index", str(served["gallery"]), "--model", served["model_uri"], "--out", str(exact))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["index"] == "flat" and summary["count"] == IDENTITIES * GALLERY_PER_IDENTITY
    assert summary["identities"] == IDENTITIES and summary["distance"] == "euclidean"
    assert summary["model"] == f"models:/{NAME}/{served['registration']['version']}"
    meta = json.loads((exact / "gallery.json").read_text())
    assert len(meta["identities"]) == len(meta["paths"]) == summary["count"]
    # IVF (forced: 4 cells; all searched, so it must agree with the exact index)
    res = _cli(
        "index", str(served["gallery"]), "--model", served["model_uri"], "--out", str(ivf),
        "--ivf-above", "0", "--nlist", "4", "--nprobe", "4",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["index"] == "ivf"

    from siamese.registry.loading import load_served_model

    model = load_served_model(served["model_uri"])
    enc = model.encoder
    import torch

    g_emb = np.load(exact / "embeddings.npy").astype(np.float64)
    correct = 0
    people = sorted(served["held_out"].iterdir())
    for query in people:
        res = _cli("search", str(query), "--index", str(exact), "-k", "3", "--json")
        assert res.exit_code == 0, res.output
        hits = json.loads(res.output)
        assert [h["rank"] for h in hits] == [1, 2, 3]
        assert len({h["identity"] for h in hits}) == 3
        assert all(a["distance"] <= b["distance"] for a, b in zip(hits, hits[1:], strict=False))
        ivf_hits = json.loads(
            _cli("search", str(query), "--index", str(ivf), "-k", "3", "--json").output
        )
        assert [h["identity"] for h in ivf_hits] == [h["identity"] for h in hits]
        np.testing.assert_allclose(
            [h["distance"] for h in ivf_hits], [h["distance"] for h in hits], rtol=1e-5
        )
        # the exact index equals brute force through the model's own metric
        q = model.embeddings(decode_image(query.read_bytes(), model.image)[None])
        d = enc.distance_matrix(torch.from_numpy(q), torch.from_numpy(g_emb)).numpy()[0]
        assert hits[0]["distance"] == pytest.approx(d.min(), rel=1e-4, abs=1e-6)
        correct += hits[0]["identity"] == query.stem
    # a held-out photo of a person finds that person first (8 people: chance is 1/8)
    assert correct >= 3, correct  # measured 5 of 8 with this seed

    res = _cli("search", str(people[0]), "--index", str(exact), "-k", "2")
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].split()[0] == "1"

    # a gallery built before colour and resize existed (its model_config without in_channels
    # and resize: gray, stretched) is still searched by the same model
    assert meta["model_config"]["in_channels"] == 1 and meta["model_config"]["resize"] == "stretch"
    for key in ("in_channels", "resize"):
        del meta["model_config"][key]
    (exact / "gallery.json").write_text(json.dumps(meta))
    old = _cli("search", str(people[0]), "--index", str(exact), "-k", "2", "--json")
    assert old.exit_code == 0, old.output
    assert [h["identity"] for h in json.loads(old.output)] == [line.split()[2] for line in lines]


def test_learned_head_gallery_falls_back_to_brute_force(tmp_path, served):
    """A weighted-L1 head has no FAISS metric: search runs through encoder.distance_matrix."""
    import torch

    from siamese.models.encoders import SiameseEncoder
    from siamese.registry.gallery import build_gallery, search_image
    from siamese.registry.package import save_package

    torch.manual_seed(0)
    enc = SiameseEncoder("mlp", 24, 8, 4, True, head="weighted_l1")
    model_dir = tmp_path / "train"
    model_dir.mkdir()
    torch.save(enc.state_dict(), model_dir / "model.pt")
    (model_dir / "model.json").write_text(json.dumps(enc.config))
    calib = {"strategy": "eer", "threshold": 0.5, "probability": {"method": "none"}}
    pkg = save_package(tmp_path / "pkg", model_dir, calib, MAX_PIXELS)
    summary = build_gallery(served["gallery"], str(pkg), tmp_path / "g")
    assert summary["index"] == "brute" and summary["distance"] == "learned"
    assert not (tmp_path / "g" / "index.faiss").exists()
    query = sorted(served["held_out"].iterdir())[0]
    hits = search_image(tmp_path / "g", query, k=IDENTITIES)
    assert len(hits) == IDENTITIES
    model = mlflow.pyfunc.load_model(str(pkg)).unwrap_python_model()
    q = model.embeddings(decode_image(query.read_bytes(), 24)[None])
    g = np.load(tmp_path / "g" / "embeddings.npy").astype(np.float64)
    with torch.no_grad():
        d = model.encoder.distance_matrix(torch.from_numpy(q), torch.from_numpy(g)).numpy()[0]
    assert hits[0]["distance"] == pytest.approx(d.min(), rel=1e-6)
    # unset probability map: served probability is NaN, decisions still at the threshold
    out = mlflow.pyfunc.load_model(str(pkg)).predict(
        pd.DataFrame({"image_a": [query.read_bytes()], "image_b": [query.read_bytes()]})
    )
    assert np.isnan(out["probability"][0]) and bool(out["match"][0]) == (out["distance"][0] <= 0.5)
