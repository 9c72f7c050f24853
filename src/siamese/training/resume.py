"""Resuming an interrupted training: where its checkpoints live, what it may be resumed under,
and the record (``resume.json``) that ties the scratch directory to its tracking run.

Nothing here talks to MLflow: whether the recorded run still exists is asked through the
``run_is_active`` callable the caller passes (see ``siamese.registry.runs.run_is_active``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from siamese.config import Params
from siamese.io import atomic_dir, read_json, write_json
from siamese.models.loading import TRAINING_OUTPUT

log = logging.getLogger(__name__)
RESUME_STATE = "resume.json"  # in the scratch dir: the MLflow run and the inputs' fingerprint


def scratch_dir(out_dir: str | Path) -> Path:
    """Where a training in progress keeps its checkpoints (``artifacts/.train.partial``): beside
    the output, so the finished directory is renamed into place, and derived from it, so every
    DDP rank and every rerun finds the same one."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.partial"


def checkpoint_dir(scratch: Path) -> Path:
    """The epoch checkpoints (``best.ckpt``, ``last.ckpt``) of the training in ``scratch``."""
    return scratch / "checkpoints"


def last_checkpoint(scratch: Path) -> Path:
    """The checkpoint written after every epoch: the one a rerun resumes from."""
    return checkpoint_dir(scratch) / "last.ckpt"


def checkpoint_progress(path: str | Path) -> tuple[int, int]:
    """(epoch, global step) a Lightning checkpoint was saved at."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return int(ckpt["epoch"]), int(ckpt["global_step"])


def fingerprint(params: Params, prepared_md5: str, pairs_md5: str) -> str:
    """What a checkpoint may be resumed under: the same training params and the same data."""
    dump = params.model_dump(mode="json")
    dump["train"].pop("resume", None)
    relevant = {k: dump[k] for k in ("seed", "data", "model", "augment", "train", "trainer")}
    text = json.dumps(relevant, sort_keys=True) + prepared_md5 + pairs_md5
    return hashlib.sha256(text.encode()).hexdigest()


def resumable(
    scratch: Path, fingerprint: str, run_is_active: Callable[[str], bool]
) -> tuple[str, Path] | None:
    """(run id, last.ckpt) of an interrupted training of the same inputs whose run is still
    active (asked through ``run_is_active``, which may raise when it cannot tell), if any."""
    state, ckpt = scratch / RESUME_STATE, last_checkpoint(scratch)
    if not (state.is_file() and ckpt.is_file()):
        return None
    try:
        saved = read_json(state)
    except (OSError, ValueError):
        return None
    if saved.get("fingerprint") != fingerprint:
        log.info("discarding the interrupted training in %s: params or data changed", scratch)
        return None
    if not run_is_active(saved["run_id"]):
        return None
    return saved["run_id"], ckpt


def reset(scratch: Path) -> None:
    """Drop whatever an earlier training left in ``scratch``: a fresh training starts empty."""
    if scratch.exists():
        shutil.rmtree(scratch)


def record(scratch: Path, run_id: str, fingerprint: str) -> None:
    """Tie ``scratch`` to its run and inputs, so that a rerun knows what it may resume."""
    write_json(scratch / RESUME_STATE, {"run_id": run_id, "fingerprint": fingerprint})


def publish(scratch: Path, out_dir: Path, run_record: dict) -> None:
    """Move the finished training into ``out_dir`` in one rename: the checkpoints, the exported
    encoder and ``run.json`` (``run_record``). Downstream stages never see half of it."""
    with atomic_dir(out_dir) as tmp:
        shutil.move(str(checkpoint_dir(scratch)), tmp / "checkpoints")
        for name in TRAINING_OUTPUT:  # the exported encoder
            shutil.move(str(scratch / name), tmp / name)
        write_json(tmp / "run.json", run_record)
