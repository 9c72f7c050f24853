"""Train-stage throughput (images/s) against a plain PyTorch loop with the same model, P x K
batches, loss, miner and augmentation, on the built-in digits. Runs alternate and the best of
``--rounds`` is kept for each, so both see the same machine state. Goal: ratio >= 0.95."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch


def _setup(tmp: Path, image_size: int):
    from siamese.config import Params
    from siamese.stages.mine import run_mine
    from siamese.stages.prepare import run_prepare

    params = Params.model_validate(
        {
            "data": {"image_size": image_size},
            "train": {"batches_per_epoch": 40, "max_epochs": 1},
            "trainer": {"deterministic": False},
        }
    )
    run_prepare(params, tmp / "prepared")
    run_mine(params, tmp / "prepared", tmp / "pairs")
    return params


def plain_loop(params, tmp: Path, epochs: int) -> float:
    from siamese.datamodule import SiameseDataModule
    from siamese.losses.losses import MetricLoss
    from siamese.models.encoders import SiameseEncoder

    torch.manual_seed(params.seed)
    dm = SiameseDataModule(params, tmp / "prepared", tmp / "pairs")
    dm.setup()
    m, t = params.model, params.train
    enc = SiameseEncoder(
        m.encoder, params.data.image_size, m.embedding_dim, m.channels, m.normalize
    )
    crit = MetricLoss(t.loss, t.miner, t.margin, t.distance, t.contrastive_form, t.soft_margin)
    opt = torch.optim.AdamW(enc.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    loader = dm.train_dataloader()
    images = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        for x, labels in loader:
            loss, _ = crit(enc(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            images += len(x)
    return images / (time.perf_counter() - start)


def _clock():
    """A Lightning callback timing fit() from its first to its last training step."""
    import pytorch_lightning as pl

    class Clock(pl.Callback):
        def on_train_start(self, trainer, module) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, trainer, module) -> None:
            self.end = time.perf_counter()

    return Clock()


def framework_loop(params, tmp: Path, epochs: int) -> float:
    import pytorch_lightning as pl

    from siamese.datamodule import SiameseDataModule
    from siamese.module import SiameseModule

    pl.seed_everything(params.seed, verbose=False)
    dm = SiameseDataModule(params, tmp / "prepared", tmp / "pairs")
    module = SiameseModule(params.model_dump(mode="json"))
    clock = _clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
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
    t = params.train
    images = trainer.global_step * t.identities_per_batch * t.images_per_identity
    return images / (clock.end - clock.start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=28)
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        params = _setup(Path(tmp), args.image_size)
        plain, fw = [], []
        for _ in range(args.rounds):
            plain.append(plain_loop(params, Path(tmp), args.epochs))
            fw.append(framework_loop(params, Path(tmp), args.epochs))
    print(
        json.dumps(
            {
                "benchmark": "train_throughput",
                "setup": "digits 28x28, conv4, contrastive/hard_pairs, P x K = 6 x 16, Affine aug",
                "plain_images_per_s": round(max(plain), 1),
                "framework_images_per_s": round(max(fw), 1),
                "ratio": round(max(fw) / max(plain), 3),
                "goal": "ratio >= 0.95",
                "all_rounds": {
                    "plain": [round(v, 1) for v in plain],
                    "framework": [round(v, 1) for v in fw],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
