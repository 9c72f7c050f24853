"""Guards of ``mlflow models serve`` that the served model installs when it is loaded there:
the scoring server's request handler answers a bad request as such (400, 413, 415, bounded error
messages) instead of with a 500 or unbounded memory, work whose client has timed out stops, and
inference threads are set for serving."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST, DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import scoring_server

from siamese.registry.serving_input import BadRequest, read_json_request, too_many_rows

logger = logging.getLogger(__name__)

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


class ServingError(MlflowException):
    """An error the served model raises with its own message and HTTP status. Inside the guarded
    scoring server it is answered with exactly that message: MLflow's handler would prefix it
    with the repr of the whole input (``Failed to predict data '...'``)."""

    def __init__(self, message: str, status: int = 400, error_code: int = INVALID_PARAMETER_VALUE):
        super().__init__(message, error_code=error_code)
        self.siamese_message = message
        self.status = status


@dataclass(frozen=True)
class ServingRequest:
    """The request the guarded handler is answering (in this thread's context): when its
    client gets MLflow's 504 (``deadline``, time.monotonic) and how many rows it may have."""

    deadline: float | None
    timeout_s: float | None
    max_rows: int | None


_REQUEST: ContextVar[ServingRequest | None] = ContextVar("siamese_serving_request", default=None)


@contextlib.contextmanager
def request_scope(request: ServingRequest) -> Iterator[ServingRequest]:
    """Answer one request under ``request``'s limits: what :func:`check_rows` and
    :func:`check_deadline` see in this context until the block ends."""

    token = _REQUEST.set(request)
    try:
        yield request
    finally:
        _REQUEST.reset(token)


def check_rows(n: int) -> None:
    """Refuse (413) a request of more than ``serve.max_rows`` rows. JSON bodies are counted
    before MLflow builds the frame; this covers CSV and Parquet bodies, before any image is
    decoded. In process (no HTTP request) there is no row limit: memory is bounded by chunks."""

    req = _REQUEST.get()
    if req is not None and req.max_rows is not None and n > req.max_rows:
        raise ServingError(too_many_rows(n, req.max_rows), status=413, error_code=BAD_REQUEST)


def check_deadline(done: int, total: int) -> None:
    """Stop a request whose client has already been answered 504 by the scoring server's
    timeout (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT): MLflow only stops waiting for the worker
    thread, so without this the work would go on to the end and hold the worker."""

    req = _REQUEST.get()
    if req is None or req.deadline is None or time.monotonic() <= req.deadline:
        return
    message = (
        f"the request ran past the scoring server's timeout of {req.timeout_s:g} s "
        f"(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT), so its client was answered 504; stopped "
        f"after {done} of {total} images to free the worker. Send fewer rows per request or "
        "raise the timeout"
    )
    logger.warning("siamese: %s", message)
    raise ServingError(message, status=504, error_code=DEADLINE_EXCEEDED)


def _is_utf8_json(content_type: str) -> bool:
    """Whether MLflow would parse the body as JSON (its own test of the content type): other
    types, charsets and parameters are left to it (CSV, Parquet, or its 415)."""

    mime, *parameters = (part.strip() for part in content_type.split(";"))
    values = {key: value for key, _, value in (p.partition("=") for p in parameters)}
    return (
        mime == scoring_server.CONTENT_TYPE_JSON
        and set(values) <= {"charset"}
        and values.get("charset", "utf-8").lower() == "utf-8"
    )


def guard_scoring_server(max_request_bytes: int | None, max_rows: int | None = None) -> bool:
    """Inside ``mlflow models serve`` (and only there), wrap the scoring server's request
    handler ``mlflow.pyfunc.scoring_server.invocations`` so that bad requests are answered as
    such instead of costing memory or a 500:

    * no Content-Type header: 415 with a JSON message (MLflow itself fails with 500);
    * a body over ``max_request_bytes``: 413 with a JSON message, before it is parsed (parsing,
      base64 decoding and MLflow's error messages take several times the body's size);
    * a JSON body is parsed here (:func:`siamese.registry.serving_input.read_json_request`):
      invalid JSON 400 (MLflow answers 500 to some), more than ``max_rows`` rows 413 before
      MLflow builds the frame, a cell of an image column that is not a string 400 naming its
      row and column; ``instances`` / ``inputs`` are handed on as DataFrame formats, so their
      base64 images are decoded like ``dataframe_split``'s;
    * the model's own errors (:class:`ServingError`) are answered with their message and
      status; other error messages over ``MAX_ERROR_CHARS`` characters are cut in the middle;
    * the request's deadline (now + MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT) is set for
      :func:`check_deadline`.

    The handler is looked up by name on each request, so the wrapper takes effect for every
    request after the model is loaded; loading again replaces the limits. Returns whether the
    guard is installed."""

    original = getattr(scoring_server, "invocations", None)
    needed = ("InvocationsResponse", "CONTENT_TYPES", "CONTENT_TYPE_JSON", "_SERVER_MODEL_PATH")
    if original is None or not all(hasattr(scoring_server, n) for n in needed):
        return False  # another MLflow scoring server: left as it is
    if scoring_server._SERVER_MODEL_PATH not in os.environ:
        return False
    original = getattr(original, "siamese_original", original)

    def refuse(status: int, message: str, error_code: str = "BAD_REQUEST"):
        body = json.dumps({"error_code": error_code, "message": _shorten(message)})
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
        timeout = MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get()
        deadline = None if not timeout else time.monotonic() + timeout
        try:
            with request_scope(ServingRequest(deadline, timeout, max_rows)):
                if _is_utf8_json(content_type):
                    # MLflow's parser takes the parsed object as it is (_decode_json_input);
                    # no local name holds it, so it is freed once MLflow has built the frame
                    return original(
                        read_json_request(data, max_rows), content_type, *args, **kwargs
                    )
                return original(data, content_type, *args, **kwargs)
        except BadRequest as err:
            return refuse(err.status, err.message)
        except ServingError as err:
            return refuse(err.status, err.siamese_message, err.error_code)
        except MlflowException as err:
            err.message = _shorten(str(err.message))
            raise

    invocations.siamese_original = original
    scoring_server.invocations = invocations
    return True
