"""The Lightning Trainer settings of ``params.trainer``: the arguments the train stage passes, and
their check, the way Lightning itself takes them, before anything runs.

Lightning only parses these arguments when the Trainer is built, in the train stage, after
prepare and mine ran; a value it refuses (``devices: 0``, ``precision: 8``, ``accelerator: cuda``
on a machine without one) would fail there. :func:`check_trainer` runs Lightning's own
registries and parsers on each key (so the allowed values follow the installed Lightning) and
then builds the Trainer once, without logger or callbacks, for what depends on the machine.
``siamese check``, ``siamese run``, the flow and the train stage call it before any stage runs or
anything is recorded. (The params' own validation, siamese.config, checks the types only: it runs
in every stage, and Lightning takes seconds to import.)"""

from __future__ import annotations

import functools
import logging
import warnings
from typing import Any, get_args

import pytorch_lightning as pl
from lightning_fabric.accelerators.cpu import _parse_cpu_cores
from lightning_fabric.plugins.precision.precision import (
    _PRECISION_INPUT_INT,
    _PRECISION_INPUT_STR,
    _PRECISION_INPUT_STR_ALIAS,
)
from lightning_fabric.utilities.device_parser import _normalize_parse_gpu_string_input
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.strategies import StrategyRegistry

from siamese.config import Params
from siamese.errors import ParamsError

DEVICES_HELP = (
    "give the number of devices (>= 1; on the CPU, of processes), -1 or 'auto' for all of them, "
    "or a list of GPU indices such as [0, 1]"
)


# precisions Lightning accepts that this model's training cannot use, and why
UNTRAINABLE_PRECISIONS = {
    "16-true": "16-true keeps the weights and AdamW's state in float16, where AdamW's eps "
    "(1e-8) is 0: a weight whose gradient is 0 turns NaN at the first step, and training stops "
    "on a non-finite loss; use 16-mixed (float16 compute, float32 weights; on the CPU Lightning "
    "runs it as bf16-mixed), bf16-mixed, or bf16-true (bfloat16 weights, float32's range)",
}


@functools.cache
def choices() -> dict[str, tuple]:
    """The accelerator, strategy and precision values the installed Lightning accepts, read from
    its own registries and type literals."""
    return {
        # "gpu": the Trainer's name for whichever GPU backend is there (cuda or mps)
        "accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
        "strategy": ("auto", *StrategyRegistry.available_strategies()),
        "precision": get_args(_PRECISION_INPUT_STR),
        # legacy spellings Lightning still maps (16 -> 16-mixed, "bf16" -> bf16-mixed, ...)
        "precision_alias": get_args(_PRECISION_INPUT_STR_ALIAS) + get_args(_PRECISION_INPUT_INT),
    }


def trainer_settings(params: Params) -> dict[str, Any]:
    """The Trainer arguments ``params.trainer`` sets: one place, so the Trainer that fits and
    the check before it see the same values."""
    tr = params.trainer
    return {
        "accelerator": tr.accelerator,
        "devices": tr.devices,
        "num_nodes": tr.num_nodes,
        "strategy": tr.strategy,
        "precision": tr.precision,
        "deterministic": tr.deterministic,
    }


def _devices_problem(devices: Any, accelerator: str) -> str | None:
    """What Lightning's device parsing says about ``devices``: 0, "0" and [] for any
    accelerator, anything but a count > 0 (or 'auto') for the CPU, anything but a count, -1 or
    distinct indices for the others."""
    if devices in ([], 0, "0") or (isinstance(devices, str) and not devices.strip()):
        return f"devices must not be {devices!r}: {DEVICES_HELP}"
    if devices == "auto":
        return None
    if accelerator == "cpu":
        try:
            _parse_cpu_cores(devices)
        except TypeError:
            return (
                "with accelerator cpu, devices is the number of processes: an int > 0 or "
                f"'auto' (got {devices!r})"
            )
        return None
    try:
        ids = _normalize_parse_gpu_string_input(devices)
    except ValueError:
        return f"devices {devices!r} is not understood: {DEVICES_HELP}"
    if isinstance(ids, int) and ids < -1:
        return f"devices must be >= 1 or -1 (got {devices!r}): {DEVICES_HELP}"
    if isinstance(ids, list) and (len(set(ids)) != len(ids) or min(ids) < 0):
        return f"device indices must be distinct and >= 0 (got {devices!r})"
    return None


def _key_problems(params: Params) -> list[str]:
    """Each trainer key Lightning would refuse whatever the machine, with its reason."""
    tr, allowed = params.trainer, choices()
    problems = []
    if tr.accelerator not in allowed["accelerator"]:
        problems.append(
            f"trainer.accelerator: unknown accelerator {tr.accelerator!r}; allowed: "
            + ", ".join(allowed["accelerator"])
        )
    if tr.strategy.lower() not in allowed["strategy"]:  # Lightning lower-cases strategy names
        problems.append(
            f"trainer.strategy: unknown strategy {tr.strategy!r}; allowed: "
            + ", ".join(allowed["strategy"])
        )
    if tr.precision not in allowed["precision"] + allowed["precision_alias"]:
        problems.append(
            f"trainer.precision: unknown precision {tr.precision!r}; allowed: "
            + ", ".join(allowed["precision"])
        )
    elif tr.precision in UNTRAINABLE_PRECISIONS:
        problems.append(f"trainer.precision: {UNTRAINABLE_PRECISIONS[tr.precision]}")
    reason = _devices_problem(tr.devices, tr.accelerator)
    if reason is not None:
        problems.append(f"trainer.devices: {reason}")
    return problems


def check_trainer(params: Params, origin: str = "params.yaml") -> list[str]:
    """Raise ParamsError naming each ``trainer.*`` key Lightning would refuse, then the settings
    Lightning refuses on this machine (an accelerator that is not there, GPU indices it lacks, a
    strategy that does not run on it, a precision whose package is missing), with Lightning's
    reason. Returns Lightning's warnings about the settings (e.g. that 16-mixed runs as
    bf16-mixed on the CPU)."""
    problems = _key_problems(params)
    if problems:
        raise ParamsError("\n  ".join([f"invalid parameters in {origin}:", *problems]))
    settings = trainer_settings(params)
    quiet = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "GPU available: False, used: False" and the like
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pl.Trainer(
                **settings,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
            )
    except Exception as err:  # MisconfigurationException, ValueError, a missing package, ...
        shown = ", ".join(f"{k}={v!r}" for k, v in settings.items() if k != "deterministic")
        raise ParamsError(
            f"invalid parameters in {origin}:\n  trainer: Lightning refuses these settings on "
            f"this machine ({shown}): {' '.join(str(err).split())}"
        ) from None
    finally:
        quiet.setLevel(level)
    return sorted({" ".join(str(w.message).split()) for w in caught})
