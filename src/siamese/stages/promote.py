"""promote / rollback: move the registry's ``champion`` alias, and record why.

``run_promote`` compares the ``challenger`` version with the current ``champion`` on the same
benchmark pairs: the DVC-tracked test pairs (``artifacts/pairs/test.npz`` over the prepared
images in ``artifacts/prepared``), both scored through their served pyfunc interface, so the two
numbers are comparable whatever each version's own evaluation ran on. The metric and the minimum
improvement come from ``register.promote_metric`` / ``register.min_improvement``.

A challenger whose evaluation failed or is missing (its run is not FINISHED, or carries no
``test.*`` metric for the promotion metric) is never promoted: the refusal is tagged on the
version and raised as ``PromotionError``. The first version (no champion yet) is promoted.

On a team server only a release manager (MANAGE on the registered model) may promote or roll
back: both ask the server first and refuse before anything changes (siamese.registry.access).
The versions compared are checked against the digests recorded at registration before they are
scored, and the record names the digest that was evaluated (``promotion.model_sha256``).

Every alias move is logged and recorded: on the version (``promotion.*`` tags, and
``previous_champion`` on a new champion) and in the registered model's ``champion_history`` tag
(the latest moves as JSON), which ``run_rollback`` uses to go back one champion."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from siamese.config import Params
from siamese.data.artifacts import PreparedData, load_pairs, pairs_path
from siamese.errors import PromotionError
from siamese.io import atomic_dir, file_md5, write_json
from siamese.registry import tracking
from siamese.registry.access import require_release_permission
from siamese.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    evaluation_problem,
    move_champion,
    version_by_alias,
)
from siamese.registry.promotion import benchmark_score, improvement, metric_key
from siamese.registry.tracking import active_tracking_uri, tracking_uri
from siamese.registry.versions import get_version, require_files

log = logging.getLogger(__name__)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _benchmark(prepared_dir: Path, pairs_dir: Path) -> tuple[np.ndarray, dict, str]:
    path = pairs_path(pairs_dir, "test")
    if not path.is_file():
        raise FileNotFoundError(f"benchmark pairs {path} not found; run `siamese mine` first")
    return PreparedData(prepared_dir).images, load_pairs(path), file_md5(path)


def run_promote(
    params: Params,
    prepared_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    version: str | None = None,
) -> dict:
    """Promote the challenger (or ``version``) to champion if it wins on the benchmark pairs."""

    uri = tracking_uri()
    client = tracking.client(uri)
    name = params.register.model_name
    require_release_permission(uri, name, "promote")
    r = params.register
    key = metric_key(params)
    explicit = version is not None
    if version is None:
        chal = version_by_alias(client, name, CHALLENGER)
        if chal is None:
            raise PromotionError(f"model {name} has no {CHALLENGER} version; run register first")
    else:
        chal = get_version(client, name, version)
    version = str(chal.version)
    champ = version_by_alias(client, name, CHAMPION)
    result = {
        "model_name": name,
        "version": version,
        "metric": key,
        "min_improvement": r.min_improvement,
        "champion_version": str(champ.version) if champ else None,
        "at": _now(),
        "tracking_uri": uri,
    }

    def record(decision: str, reason: str, **values) -> dict:
        result.update(values, decision=decision, reason=reason, promoted=decision == "promoted")
        tags = {
            "promotion.decision": decision,
            "promotion.reason": reason[:4000],
            "promotion.metric": key,
            "promotion.min_improvement": f"{r.min_improvement:g}",
            "promotion.champion_version": result["champion_version"] or "none",
            "promotion.at": result["at"],
        }
        keys = ("challenger_value", "champion_value", "benchmark_md5")
        for k in (*keys, "model_sha256", "champion_model_sha256"):
            if result.get(k) is not None:
                tags[f"promotion.{k}"] = (
                    f"{result[k]:.6f}" if isinstance(result[k], float) else str(result[k])
                )
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        log.info("promotion of %s v%s: %s (%s)", name, version, decision, reason)
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / "promotion.json", result)
        return result

    problem = evaluation_problem(client, chal, key)
    if problem is not None:
        record("refused", problem)
        raise PromotionError(f"not promoting {name} v{version}: {problem}")
    # both are loaded to be scored (and the champion is what production serves): a version whose
    # files the artifact store lost is named with its repair before anything is decided
    for mv in (chal, champ):
        if mv is not None:
            require_files(client, name, mv, uri)
    if champ is not None and str(champ.version) == version:
        return record("unchanged", f"v{version} already is the {CHAMPION}")
    if chal.tags.get("rolled_back_at") and not explicit:
        # a demoted version keeps the challenger alias until the next registration; re-promoting
        # it on the next scheduled run would undo the rollback
        return record(
            "skipped",
            f"v{version} was rolled back at {chal.tags['rolled_back_at']}; promote it "
            f"explicitly with `siamese promote --version {version}`",
        )

    images, pairs, md5 = _benchmark(Path(prepared_dir), Path(pairs_dir))
    result["benchmark_md5"] = md5
    with active_tracking_uri(uri):
        chal_value, result["model_sha256"] = benchmark_score(params, name, version, images, pairs)
        champ_value = None
        if champ is not None:
            champ_value, result["champion_model_sha256"] = benchmark_score(
                params, name, str(champ.version), images, pairs
            )
    values = {"challenger_value": chal_value, "champion_value": champ_value}
    if champ is None:
        decision, reason = "promoted", f"first {CHAMPION} ({key} {chal_value:.4f})"
    else:
        gain = improvement(params, chal_value, champ_value)
        values["improvement"] = gain
        better = gain > 0 and gain > r.min_improvement
        verdict = "beats" if better else "does not beat"
        reason = (
            f"{key} {chal_value:.4f} vs {CHAMPION} v{champ.version} {champ_value:.4f} on the "
            f"same {len(pairs['y'])} benchmark pairs: {verdict} it by more than "
            f"{r.min_improvement:g} (improvement {gain:+.4f})"
        )
        decision = "promoted" if better else "kept"
    if decision == "promoted":
        move_champion(
            client,
            name,
            version,
            {
                "action": "promote",
                "to": version,
                "from": str(champ.version) if champ else None,
                "at": result["at"],
                "metric": key,
                "value": round(chal_value, 6),
            },
        )
        if champ is not None:
            client.set_model_version_tag(name, version, "previous_champion", str(champ.version))
        if chal.tags.get("rolled_back_at"):
            client.delete_model_version_tag(name, version, "rolled_back_at")
        values.update(_reembed_gallery(client, params, name, version, Path(prepared_dir), uri))
    return record(decision, reason, **values)


def _reembed_gallery(client, params: Params, name: str, version: str, prepared, uri) -> dict:
    """The registered gallery embedded again by the new champion (siamese.registry
    .gallery_package). A failure does not undo the promotion: the gallery's champion package
    keeps serving the gallery with the weights that embedded it, and the error is recorded."""
    from siamese.registry.gallery_package import reembed_for_champion

    try:
        done = reembed_for_champion(
            client, name, version, prepared, params.identify, params.seed, uri
        )
    except Exception as err:  # noqa: BLE001 - recorded, the promotion stands
        log.warning("gallery of %s not embedded again by v%s: %s", name, version, err)
        return {"gallery_error": f"{type(err).__name__}: {err}"[:1000]}
    return {"gallery": done} if done else {}


def run_rollback(params: Params, out_dir: str | Path | None = None) -> dict:
    """Move ``champion`` back to the version it replaced (the ``previous_champion`` tag)."""

    client = tracking.client()
    name = params.register.model_name
    require_release_permission(tracking_uri(), name, "rollback")
    champ = version_by_alias(client, name, CHAMPION)
    if champ is None:
        raise PromotionError(f"model {name} has no {CHAMPION}; nothing to roll back")
    previous = champ.tags.get("previous_champion")
    if not previous:
        raise PromotionError(
            f"{name} v{champ.version} has no previous {CHAMPION} to roll back to "
            "(it was the first one)"
        )
    try:
        target = client.get_model_version(name, previous)
    except MlflowException:
        raise PromotionError(
            f"the previous {CHAMPION} of {name} v{champ.version}, v{previous}, no longer exists"
        ) from None
    # rolling back to a version that cannot be loaded would leave production without a model
    require_files(client, name, target, tracking_uri())
    at = _now()
    move_champion(
        client,
        name,
        previous,
        {"action": "rollback", "to": previous, "from": str(champ.version), "at": at},
    )
    client.set_model_version_tag(name, str(champ.version), "rolled_back_at", at)
    client.set_model_version_tag(name, str(champ.version), "rolled_back_to", previous)
    result = {
        "model_name": name,
        "champion": previous,
        "rolled_back": str(champ.version),
        "at": at,
    }
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / "rollback.json", result)
    return result
