"""Train-stage throughput (images/s) against a plain PyTorch loop doing exactly the same work:
the project's params.yaml (model, P x K sampler, loss, miner, augmentation, optimizer and
scheduler, deterministic flag), the same data module and the same thread count, with
``batches_per_epoch`` raised so a run lasts a few seconds. Goal: ratio (framework / plain)
>= 0.95.

Both sides count the images they actually trained on and time the same window: from just before
the first batch is fetched to just after the last optimizer step (Lightning: on_train_start to
on_train_end). Rounds alternate which side runs first; each side's best and median round are
reported.

An earlier version counted the framework's images as global_step x P x K with P taken from the
config (8), while the sampler clips P to the number of training identities (6 on the digits):
it credited the framework with 4/3 of the images it trained on, which is why the "plain" loop
looked 20-30 % slower. It also ran without the configured augmentation."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _setup(tmp: Path, image_size: int, batches: int):
    from siamese.config import read_params_file, validate_params
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare

    raw = read_params_file(ROOT / "params.yaml")
    raw["data"]["image_size"] = image_size
    raw["train"].update(batches_per_epoch=batches, num_workers=0)
    params = validate_params(raw)
    run_prepare(params, tmp / "prepared")
    run_mine(params, tmp / "prepared", tmp / "pairs")
    return params


def plain_loop(params, tmp: Path, epochs: int) -> float:
    from siamese.losses import build_loss
    from siamese.models.encoders import SiameseEncoder
    from siamese.training.datamodule import SiameseDataModule

    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(params.trainer.deterministic)
    dm = SiameseDataModule(params, tmp / "prepared", tmp / "pairs")
    dm.setup()
    m, t = params.model, params.train
    crit = build_loss(t)
    enc = SiameseEncoder(
        m.encoder,
        params.data.image_size,
        m.embedding_dim,
        m.channels,
        m.normalize,
        t.distance,
        head=crit.head,
        in_channels=params.data.channels,
        resize=params.data.resize,
    )
    enc.train()
    opt = torch.optim.AdamW(enc.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.max_epochs)
    loader = dm.train_dataloader()
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        for x, labels in loader:
            loss, _ = crit(enc(x), labels, enc)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(x)
        sched.step()
    return images / (time.perf_counter() - start)


def _clock():
    """A Lightning callback timing fit() from its first to its last training step and counting
    the images of the batches it trained on."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        images = 0

        def on_train_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.images += len(batch[0])

        def on_train_end(self, trainer, module) -> None:
            self.end = time.perf_counter()

    return Clock()


def framework_loop(params, tmp: Path, epochs: int) -> float:
    import pytorch_lightning as pl

    from siamese.training.datamodule import SiameseDataModule
    from siamese.training.module import SiameseModule

    pl.seed_everything(params.seed, verbose=False)
    dm = SiameseDataModule(params, tmp / "prepared", tmp / "pairs")
    module = SiameseModule(params)
    clock = _clock()
    tr = params.trainer
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=tr.precision,
        deterministic=tr.deterministic,
        max_epochs=epochs,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=dm)
    return clock.images / (clock.end - clock.start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batches", type=int, default=20, help="batches per epoch")
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    deterministic = torch.are_deterministic_algorithms_enabled()
    runs: dict[str, list[float]] = {"plain": [], "framework": []}
    loops = {"plain": plain_loop, "framework": framework_loop}
    with tempfile.TemporaryDirectory() as tmp:
        params = _setup(Path(tmp), args.image_size, args.batches)
        # one unrecorded run of each: first-call costs (imports, allocator, kernels)
        for loop in loops.values():
            loop(params, Path(tmp), 1)
        for r in range(args.rounds):
            for name in ("plain", "framework") if r % 2 == 0 else ("framework", "plain"):
                runs[name].append(loops[name](params, Path(tmp), args.epochs))
    torch.use_deterministic_algorithms(deterministic)
    t = params.train
    best = {k: max(v) for k, v in runs.items()}
    median = {k: statistics.median(v) for k, v in runs.items()}
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "setup": (
                    f"params.yaml: {params.data.source} {args.image_size}x{args.image_size}, "
                    f"{params.model.encoder}, {t.loss}/{t.miner}, P x K = "
                    f"{t.identities_per_batch} x {t.images_per_identity}, augment "
                    f"{[s.name for s in params.augment]}, deterministic "
                    f"{params.trainer.deterministic}, {args.threads} threads, "
                    f"{args.epochs} epochs x {args.batches} batches"
                ),
                "plain_images_per_s": round(best["plain"], 1),
                "framework_images_per_s": round(best["framework"], 1),
                "ratio": round(best["framework"] / best["plain"], 3),
                "ratio_of_medians": round(median["framework"] / median["plain"], 3),
                "goal": "ratio >= 0.95",
                "all_rounds": {k: [round(x, 1) for x in v] for k, v in runs.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
