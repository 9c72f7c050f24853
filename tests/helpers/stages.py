"""The stages, chained as DVC does, in process in the current project (``params``: the validated
Params)."""

from __future__ import annotations

from siamese import paths
from siamese.stages.calibrate import run_calibrate
from siamese.stages.evaluate import run_evaluate
from siamese.stages.mine import run_mine
from siamese.stages.prepare import run_prepare
from siamese.stages.promote import run_promote
from siamese.stages.register import run_register
from siamese.stages.train import run_train


def run_stages_until_evaluate(params) -> dict:
    """prepare -> mine -> train -> calibrate -> evaluate in the current project; the report."""

    run_prepare(params, paths.PREPARED)
    run_mine(params, paths.PREPARED, paths.PAIRS)
    run_train(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.TRAIN_METRICS)
    run_calibrate(params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION)
    return run_evaluate(
        params, paths.PREPARED, paths.PAIRS, paths.TRAIN, paths.CALIBRATION, paths.EVALUATION
    )


def run_register_stage(params) -> dict:
    return run_register(
        params,
        paths.PREPARED,
        paths.PAIRS,
        paths.TRAIN,
        paths.CALIBRATION,
        paths.EVALUATION,
        paths.REGISTRATION,
    )


def run_promote_stage(params, version: str | None = None) -> dict:
    return run_promote(params, paths.PREPARED, paths.PAIRS, paths.PROMOTION, version)


def register_and_promote(params) -> dict:
    """register, then promote (as the training flow does); the registration with the decision."""
    reg = run_register_stage(params)
    assert reg["aliases"] == ["challenger"]
    promo = run_promote_stage(params)
    return {
        **reg,
        "aliases": reg["aliases"] + (["champion"] if promo["promoted"] else []),
        "promoted": promo["promoted"],
        "promotion": promo,
    }


def run_all_stages(params) -> dict:
    run_stages_until_evaluate(params)
    return register_and_promote(params)
