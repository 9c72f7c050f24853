"""Guards of ``mlflow models serve`` that the served model installs when it is loaded there:
the scoring server's request handler answers a bad request as such (415, 413, bounded error
messages) instead of with a 500 or unbounded memory, and inference threads are set for serving."""

from __future__ import annotations

import functools
import json
import os

import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import scoring_server

THREADS_ENV = "SIAMESE_SERVE_THREADS"


def set_serving_threads() -> None:
    """Inside ``mlflow models serve`` inference runs single-threaded unless SIAMESE_SERVE_THREADS
    says otherwise: one pair is too small to gain from intra-op threads, and on a shared CPU
    oversubscribed threads cost far more (scale out with ``--workers`` instead). In any other
    process torch's setting is left alone unless the variable is set."""

    threads = os.environ.get(THREADS_ENV)
    if threads is None and scoring_server._SERVER_MODEL_PATH in os.environ:
        threads = "1"
    if threads:
        torch.set_num_threads(max(1, int(threads)))


MAX_ERROR_CHARS = 4000  # longer error messages are cut in the middle (head and tail kept)


def _shorten(message: str, limit: int = MAX_ERROR_CHARS) -> str:
    if len(message) <= limit:
        return message
    keep = (limit - 60) // 2
    cut = len(message) - 2 * keep
    return f"{message[:keep]} ... [{cut} characters cut] ... {message[-keep:]}"


def guard_scoring_server(max_request_bytes: int | None) -> bool:
    """Inside ``mlflow models serve`` (and only there), wrap the scoring server's request
    handler ``mlflow.pyfunc.scoring_server.invocations`` so that bad requests are answered as
    such instead of costing memory or a 500:

    * no Content-Type header: 415 with a JSON message (MLflow itself fails with 500);
    * a body over ``max_request_bytes``: 413 with a JSON message, before it is parsed (parsing,
      base64 decoding and MLflow's error messages take several times the body's size);
    * error messages over ``MAX_ERROR_CHARS`` characters are cut in the middle (MLflow echoes a
      body that is not valid JSON in full, ~10 bytes per byte of a non-UTF-8 body).

    The handler is looked up by name on each request, so the wrapper takes effect for every
    request after the model is loaded; loading again replaces the limit. Returns whether the
    guard is installed."""

    original = getattr(scoring_server, "invocations", None)
    needed = ("InvocationsResponse", "CONTENT_TYPES", "_SERVER_MODEL_PATH")
    if original is None or not all(hasattr(scoring_server, n) for n in needed):
        return False  # another MLflow scoring server: left as it is
    if scoring_server._SERVER_MODEL_PATH not in os.environ:
        return False
    original = getattr(original, "siamese_original", original)

    def refuse(status: int, message: str):
        body = json.dumps({"error_code": "BAD_REQUEST", "message": message})
        return scoring_server.InvocationsResponse(body, status, "application/json")

    @functools.wraps(original)
    def invocations(data, content_type, *args, **kwargs):
        if not (content_type or "").strip():
            return refuse(
                415,
                "the request has no Content-Type header; send 'Content-Type: application/json' "
                f"(accepted: {', '.join(scoring_server.CONTENT_TYPES)})",
            )
        if max_request_bytes is not None and len(data) > max_request_bytes:
            return refuse(
                413,
                f"the request body is {len(data)} bytes, over the limit of {max_request_bytes} "
                "bytes (serve.max_request_bytes)",
            )
        try:
            return original(data, content_type, *args, **kwargs)
        except MlflowException as err:
            err.message = _shorten(str(err.message))
            raise

    invocations.siamese_original = original
    scoring_server.invocations = invocations
    return True
