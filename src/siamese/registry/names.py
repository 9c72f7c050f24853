"""The names params.yaml gives MLflow, checked with MLflow's own validation functions before any
stage runs: the registered model name, the experiment name and the reference model URI of hard
negative mining.

Without this check a name MLflow refuses (``register.model_name: team/siamese``) passes
``siamese check``, the pipeline trains for as long as it takes, and only ``register`` fails. The
params' own validation (siamese.config) sits below the training layer, which must not import
MLflow, so the check lives here and runs where a run starts: ``siamese check``, ``siamese run``
and the flow up front, and the train, register and mine stages before they record anything."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.utils.models import _parse_model_uri
from mlflow.utils.validation import (
    _validate_experiment_name,
    _validate_model_alias_name,
    _validate_model_name,
)

from siamese.config import Params
from siamese.errors import ParamsError
from siamese.registry.aliases import CHAMPION


def _refusal(check: Callable[[Any], None], value: Any) -> str | None:
    """What MLflow's validation function says about ``value``; None when it accepts it."""
    try:
        check(value)
    except MlflowException as err:
        return err.message
    return None


def model_uri_problem(uri: str) -> str | None:
    """Why MLflow would refuse the ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI (read
    by MLflow's own parser, its name and alias by MLflow's validators), or None."""
    try:
        parsed = _parse_model_uri(uri)
    except MlflowException as err:
        return err.message
    if parsed.model_id is not None:  # models:/<model id>: MLflow 3's logged-model form
        return None
    reason = _refusal(_validate_model_name, parsed.name)
    if reason is None and parsed.alias is not None:
        reason = _refusal(_validate_model_alias_name, parsed.alias)
    return reason


def model_name_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` as a registered model, or the URI
    ``models:/NAME@champion`` that promotion, serving and the CLI load it by; or None."""
    reason = _refusal(_validate_model_name, name)
    if reason is not None:
        return reason
    uri = f"models:/{name}@{CHAMPION}"
    reason = model_uri_problem(uri)
    if reason is not None:
        return f"its URI {uri}: {reason}"
    parsed = _parse_model_uri(uri)
    if (parsed.name, parsed.alias) != (name, CHAMPION):
        return (
            f"its URI {uri} does not read back as this name and alias: leave out '?' and "
            "other URL characters"
        )
    return None


def check_tracking_names(params: Params, origin: str = "params.yaml") -> None:
    """Raise ParamsError naming every params key whose name MLflow would refuse."""
    problems = []
    reg = params.register
    reason = model_name_problem(reg.model_name)
    if reason is not None:
        problems.append(
            f"  register.model_name: MLflow refuses the registered model name "
            f"{reg.model_name!r}: {reason}"
        )
    # register.experiment unset: the runs go to an experiment named after register.model_name
    key = "register.experiment" if reg.experiment is not None else "register.model_name"
    reason = _refusal(_validate_experiment_name, reg.experiment_name)
    if reason is not None:
        problems.append(
            f"  {key}: MLflow refuses the experiment name {reg.experiment_name!r}: {reason}"
        )
    ref = params.mine.hard_negatives_from
    if ref is not None and ref.startswith("models:"):
        reason = model_uri_problem(ref)
        if reason is not None:
            problems.append(f"  mine.hard_negatives_from: MLflow refuses {ref!r}: {reason}")
    if problems:
        raise ParamsError("\n".join([f"invalid parameters in {origin}:"] + problems))
