"""The built-in encoders side by side: parameters, training images/s and inference ms/image at
28, 64 and 112 px (gray images, default widths, channels-last as training and serving run
them), and the test-pair ROC AUC each reaches on Omniglot in the same short wall-clock budget
(the Omniglot preset with train.max_minutes; prepared once, shared by all encoders). Prints JSON.

    python benchmarks/encoders.py [--encoders conv4 resnet12 ...] [--sizes 28 64 112]
        [--batch 32] [--steps 3] [--auc-minutes 2] [--no-speed] [--no-auc] [--data ZIP]

Training speed: ``--steps`` timed steps (after one warm-up) of forward, contrastive loss on
all in-batch pairs, backward and AdamW on a P x K batch of ``--batch`` images. Inference: the
encoder in eval mode without gradients, a batch of ``--batch`` images, best of ``--steps``.
On the shared 2-core CPU the figures are noisy: compare orders of magnitude, not percents."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("SIAMESE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def speed(name: str, size: int, batch: int, steps: int) -> dict:
    from siamese.config import TrainParams
    from siamese.losses import build_loss
    from siamese.models.encoders import SiameseEncoder

    torch.manual_seed(0)
    enc = SiameseEncoder(name, size, 64, 64, True).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in enc.parameters())
    crit = build_loss(TrainParams(loss="contrastive", miner="all_pairs"))
    opt = torch.optim.AdamW(enc.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.arange(batch) // 4  # K = 4 images per identity
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        loss, _ = crit(enc(x), labels, enc)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step is a warm-up (allocations, oneDNN primitives)
            times.append(time.perf_counter() - start)
    enc.eval()
    infer = []
    with torch.no_grad():
        for _ in range(steps + 1):
            start = time.perf_counter()
            enc(x)
            infer.append(time.perf_counter() - start)
    return {
        "encoder": name,
        "image_px": size,
        "parameters": params,
        "train_images_per_s": round(batch * len(times) / sum(times), 1),
        "inference_ms_per_image": round(1000 * min(infer[1:]) / batch, 3),
    }


def omniglot_auc(names: list[str], minutes: float, data: Path, workdir: Path) -> list[dict]:
    """Train each encoder for ``minutes`` on the Omniglot preset; its test-pair ROC AUC."""
    from siamese.config import apply_overrides, read_params_file, validate_params
    from siamese.evaluation import metrics
    from siamese.models.loading import split_pair_distances
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare
    from siamese.stages.train import run_train

    os.chdir(workdir)  # the stages' MLflow store and scratch space
    raw = read_params_file(ROOT / "params" / "omniglot.yaml")
    base = [
        f"data.source={data}",
        f"train.max_minutes={minutes}",
        "train.early_stopping_patience=100",
        "train.resume=false",
    ]
    params = validate_params(apply_overrides(raw, base))
    run_prepare(params, workdir / "prepared")
    run_mine(params, workdir / "prepared", workdir / "pairs")
    out = []
    for name in names:
        p = validate_params(apply_overrides(raw, [*base, f"model.encoder={name}"]))
        started = time.perf_counter()
        summary = run_train(p, workdir / "prepared", workdir / "pairs", workdir / f"train-{name}")
        d, y = split_pair_distances(
            workdir / "prepared", workdir / "pairs", workdir / f"train-{name}", "test"
        )
        out.append(
            {
                "encoder": name,
                "budget_minutes": minutes,
                "epochs": summary.get("epochs_trained"),
                "steps": summary.get("global_steps"),
                "seconds": round(time.perf_counter() - started, 1),
                "test_roc_auc": round(float(metrics.roc_auc(d, y)), 4),
            }
        )
    return out


def main() -> None:
    from siamese.models.encoders import ENCODERS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    ap.add_argument("--sizes", nargs="+", type=int, default=[28, 64, 112])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--auc-minutes", type=float, default=2.0)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--no-auc", action="store_true")
    ap.add_argument("--data", type=Path, default=SHARED_DATA / "omniglot/images_background.zip")
    args = ap.parse_args()
    result: dict = {
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
    }
    if not args.no_speed:
        result["speed"] = []
        for name in args.encoders:
            for size in args.sizes:
                result["speed"].append(speed(name, size, args.batch, args.steps))
                print(json.dumps(result["speed"][-1]), file=sys.stderr, flush=True)  # progress
    if not args.no_auc:
        with tempfile.TemporaryDirectory() as tmp:
            result["omniglot"] = omniglot_auc(
                args.encoders, args.auc_minutes, args.data.resolve(), Path(tmp)
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
