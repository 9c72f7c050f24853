"""Who may move ``champion``: the team registry's one rule MLflow's permissions cannot express.

On a team server (``mlflow server --app-name siamese-auth``, README "Team registry: users and
roles") a registered model's permissions are READ, EDIT and MANAGE. EDIT lets a user register
versions and set aliases, so "trainers register, only release managers promote" needs one more
rule: the aliases of :data:`RELEASE_ALIASES` move only for users holding
:data:`RELEASE_PERMISSION` on the registered model (or admins). The server enforces it
(siamese.registry.auth_app); ``siamese promote`` and ``rollback`` also ask the server before they
change anything (:func:`require_release_permission`), so a caller without the permission is
refused with nothing changed, rather than half-way (tags written, alias refused).

This module is the client side and imports no server code: the clients of a team server need
neither Flask nor MLflow's auth extras."""

from __future__ import annotations

from mlflow.exceptions import MlflowException
from mlflow.utils.credentials import get_default_host_creds
from mlflow.utils.rest_utils import http_request

from siamese.errors import AccessDeniedError
from siamese.registry.aliases import CHAMPION
from siamese.registry.tracking import caller, not_authenticated_message

RELEASE_ALIASES = frozenset({CHAMPION})  # moved (set or deleted) by release managers only
RELEASE_PERMISSION = "MANAGE"  # on the registered model: the release manager's grant
# REST endpoints of MLflow's basic-auth app (mlflow.server.auth.routes, which needs Flask)
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"
USER_PERMISSION_ENDPOINT = "/api/3.0/mlflow/users/permissions/get"


def _get(uri: str, endpoint: str, action: str, params: dict | None = None):
    """The JSON answer of the auth app's ``endpoint``; None when the server has no auth app
    (404: a server without users lets everyone do everything)."""
    resp = http_request(get_default_host_creds(uri), endpoint, "GET", params=params)
    if resp.status_code == 404:
        return None
    if resp.status_code == 401:
        raise AccessDeniedError(not_authenticated_message(action))
    if resp.status_code != 200:
        raise MlflowException(
            f"API request to endpoint {endpoint} failed with error code {resp.status_code}: "
            f"{resp.text[:300]}"
        )
    return resp.json()


def release_permission_problem(uri: str, name: str, action: str = "promote") -> str | None:
    """Why the caller may not move ``champion`` of the registered model ``name`` on the server at
    ``uri``, or None when it may (an admin, MANAGE on the model, or a store without users: the
    project's SQLite file, a server without an auth app)."""
    if not uri.startswith(("http://", "https://")):
        return None
    current = _get(uri, CURRENT_USER_ENDPOINT, action)
    if current is None:
        return None
    user = current.get("user") or {}
    if user.get("is_admin"):
        return None
    username = user.get("username", "")
    answer = _get(
        uri,
        USER_PERMISSION_ENDPOINT,
        action,
        {"username": username, "resource_type": "registered_model", "resource_id": name},
    )
    held = (answer or {}).get("permission", "NO_PERMISSIONS")
    if held == RELEASE_PERMISSION:
        return None
    return (
        f"user {username!r} holds {held} on the registered model {name}; moving "
        f"{'/'.join(sorted(RELEASE_ALIASES))} takes {RELEASE_PERMISSION} (the release manager "
        "role)"
    )


def require_release_permission(uri: str, name: str, action: str) -> None:
    """Refuse ``action`` (promote, rollback) before it changes anything when the caller may not
    move ``champion`` of ``name``: an ``AccessDeniedError`` (exit 7) naming the user, what it
    holds and what it needs."""
    problem = release_permission_problem(uri, name, action)
    if problem is not None:
        raise AccessDeniedError(
            f"permission denied: {action} of {name} refused for {caller()}: {problem}. Nothing "
            "was changed. A release manager runs it, or the server's admin grants "
            f'{RELEASE_PERMISSION} on the model (README "Team registry: users and roles").'
        )
