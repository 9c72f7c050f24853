"""The team MLflow server's app: ``mlflow server --app-name siamese-auth``.

MLflow's basic-auth app (users, READ / EDIT / MANAGE per experiment and registered model) plus
the rule of siamese.registry.access that MLflow cannot express on its own: EDIT on a registered
model lets a trainer register versions and set ``challenger``, but setting or deleting
``champion`` is answered 403 unless the user holds MANAGE on the model (or is an admin). The
check runs on the server, after basic-auth authenticated and authorised the request, so it holds
for every client (the MLflow UI, a raw REST call, an old siamese), not only for ``siamese
promote``.

Registered as the ``mlflow.app`` entry point ``siamese-auth`` (pyproject.toml); the server needs
MLflow's auth extras (``pip install -e '.[server]'``) and the usual basic-auth settings
(MLFLOW_AUTH_CONFIG_PATH, MLFLOW_FLASK_SERVER_SECRET_KEY)."""

from __future__ import annotations

from flask import Flask, Response, request
from mlflow.server import app as mlflow_app
from mlflow.server import auth as basic_auth

from siamese.registry.access import RELEASE_ALIASES, RELEASE_PERMISSION

ALIAS_ROUTE = "/mlflow/registered-models/alias"  # POST sets an alias, DELETE deletes it


def _request_value(key: str) -> str | None:
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict) and key in body:
        return str(body[key])
    return request.args.get(key)


def refuse_release_alias_moves() -> Response | None:
    """403 for a set or delete of a release alias (``champion``) by a user without MANAGE on the
    registered model; None (carry on) for every other request."""
    if request.method not in ("POST", "DELETE") or not request.path.endswith(ALIAS_ROUTE):
        return None
    if _request_value("alias") not in RELEASE_ALIASES:
        return None
    if basic_auth.sender_is_admin():
        return None
    name = _request_value("name")
    if name is None:
        return None  # MLflow answers the malformed request itself
    # the same resolution basic-auth applies to the user's other requests on this model
    # (explicit grants, roles, then default_permission)
    held = basic_auth._get_registered_model_permission(name)
    if held.name == RELEASE_PERMISSION or held.can_manage:
        return None
    user = basic_auth.authenticate_request().username
    return Response(
        f"Permission denied: user {user!r} holds {held.name} on the registered model {name}; "
        f"moving the alias {_request_value('alias')} takes {RELEASE_PERMISSION} (the release "
        "manager role)",
        status=403,
    )


def create_app(app: Flask = mlflow_app):
    """MLflow's basic-auth app with :func:`refuse_release_alias_moves` after its own check
    (Flask runs before-request hooks in order, and stops at the first that answers: an
    unauthenticated or unauthorised request never reaches this one)."""
    served = basic_auth.create_app(app)
    app.before_request(refuse_release_alias_moves)
    return served
