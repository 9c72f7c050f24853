"""The JSON request bodies ``mlflow models serve`` accepts, read the way this model needs them.

MLflow's scoring server parses a JSON body itself and answers some malformed bodies with a 500
(nesting deeper than the parser's recursion limit, an integer of more than 4300 digits); it casts
``instances`` / ``inputs`` to fixed-width numpy bytes arrays instead of base64-decoding them
(every such image was refused as unreadable, and one long cell made the array rows x longest
cell bytes); and a null or numeric image cell failed inside its type conversion with a message
naming neither the row nor the column. :func:`read_json_request` parses the body once, refuses
what is malformed with a message naming the row and column, checks the row count against
``serve.max_rows`` before any image is decoded, and hands MLflow one of the two DataFrame formats
(``dataframe_split`` / ``dataframe_records``), whose binary columns it base64-decodes."""

from __future__ import annotations

import json
import sys
from typing import Any

INPUT_COLUMNS = ("image_a", "image_b")
EMBED_COLUMN = "image"
IMAGE_COLUMNS = (*INPUT_COLUMNS, EMBED_COLUMN)
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"


class BadRequest(Exception):
    """A request refused before the model runs: the HTTP status and the message to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message = message
        self.status = status


def _kind(value: Any) -> str:
    """How a JSON value is named in messages (its JSON type, not Python's)."""

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def parse_json_body(data: bytes | str) -> Any:
    """The parsed body, or :class:`BadRequest` (400) naming why it is not JSON. Python's parser
    raises RecursionError past ~1000 nesting levels and ValueError for integers of more than
    4300 digits, which MLflow does not catch (500)."""

    try:
        return json.loads(data)
    except UnicodeDecodeError as err:
        raise BadRequest(
            f"the request body is not valid JSON: it is not UTF-8 text ({err.reason} at byte "
            f"{err.start})"
        ) from None
    except json.JSONDecodeError as err:
        raise BadRequest(
            f"the request body is not valid JSON: {err.msg} at line {err.lineno} column "
            f"{err.colno} (character {err.pos})"
        ) from None
    except RecursionError:
        raise BadRequest(
            "the request body is not valid JSON for this server: arrays or objects nested too "
            "deeply for the parser"
        ) from None
    except ValueError as err:  # an integer of more than sys.get_int_max_str_digits() digits
        reason = (
            f"a number has more than {sys.get_int_max_str_digits()} digits"
            if "digits" in str(err)
            else str(err)
        )
        raise BadRequest(f"the request body is not valid JSON for this server: {reason}") from None


def _check_rows(n: int, max_rows: int | None) -> None:
    if max_rows is not None and n > max_rows:
        raise BadRequest(too_many_rows(n, max_rows), status=413)


def too_many_rows(n: int, max_rows: int) -> str:
    return (
        f"the request has {n} rows, over the limit of {max_rows} rows per request "
        f"(serve.max_rows); send at most {max_rows} rows per request"
    )


def _check_cell(value: Any, row: int, column: str) -> None:
    if not isinstance(value, str):
        raise BadRequest(
            f"row {row} {column}: {_kind(value)} instead of an image; each cell of column "
            f"{column} must be a base64-encoded image (a JSON string)"
        )


def _split(value: Any, max_rows: int | None) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("data"), list):
        raise BadRequest(
            'dataframe_split must be an object {"columns": [...], "data": [[...], ...]} '
            f"(got {_kind(value)}{'' if not isinstance(value, dict) else ' without a data array'})"
        )
    rows = value["data"]
    _check_rows(len(rows), max_rows)
    columns = value.get("columns")
    if not isinstance(columns, list):
        return value  # MLflow / pandas refuse it with their own message
    images = [(j, c) for j, c in enumerate(columns) if c in IMAGE_COLUMNS]
    for i, row in enumerate(rows):
        if not isinstance(row, list):
            raise BadRequest(f"row {i} of dataframe_split.data is {_kind(row)}, not an array")
        if len(row) == len(columns):  # other lengths: pandas names the mismatch
            for j, column in images:
                _check_cell(row[j], i, column)
    return value


def _records(rows: Any, max_rows: int | None, where: str) -> list:
    if not isinstance(rows, list):
        raise BadRequest(f"{where} must be an array of objects, one per row (got {_kind(rows)})")
    _check_rows(len(rows), max_rows)
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise BadRequest(f"row {i} of {where} is {_kind(row)}, not an object")
    present = {c for row in rows for c in IMAGE_COLUMNS if c in row}
    for i, row in enumerate(rows):
        for column in IMAGE_COLUMNS:
            if column in present:
                if column not in row:
                    raise BadRequest(
                        f"row {i} {column}: missing (other rows have column {column}); every "
                        "row needs the same image columns"
                    )
                _check_cell(row[column], i, column)
    return rows


def _tf_serving(value: Any, max_rows: int | None, fmt: str) -> dict:
    """``instances`` / ``inputs``: an array of row objects, or an object of equally long column
    arrays, as MLflow accepts them; returned as a DataFrame format."""

    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return {"dataframe_records": _records(value, max_rows, fmt)}
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {c: len(v) for c, v in value.items()}
        if len(set(lengths.values())) > 1:
            raise BadRequest(f"the columns of {fmt} have different lengths: {lengths}")
        _check_rows(next(iter(lengths.values())), max_rows)
        rows = [list(r) for r in zip(*value.values(), strict=True)]
        split = {"columns": list(value), "data": rows}
        return {"dataframe_split": _split(split, max_rows)}
    raise BadRequest(
        f'{fmt} must be an array of row objects ([{{"image_a": "<base64>", "image_b": '
        f'"<base64>"}}, ...]) or an object of column arrays ({{"image_a": ["<base64>", ...], '
        f'"image_b": [...]}}); got {_kind(value)}'
    )


def read_json_request(data: bytes | str, max_rows: int | None) -> dict:
    """The request body as MLflow's DataFrame parser takes it (``{"dataframe_split" |
    "dataframe_records": ..., "params": {...}}``), or :class:`BadRequest`: invalid JSON, a body
    that is not one of the four formats, more rows than ``max_rows`` (413), an image cell that is
    not a string (naming row and column). Nothing is decoded here: cells stay base64 text."""

    body = parse_json_body(data)
    if not isinstance(body, dict):
        raise BadRequest(
            f"the request body must be a JSON object with one of the keys {', '.join(FORMATS)} "
            f"(got {_kind(body)})"
        )
    keys = [k for k in FORMATS if k in body]
    if len(keys) != 1:
        raise BadRequest(
            f"the request body must have exactly one of the keys {', '.join(FORMATS)} (and "
            f"optionally {PARAMS_KEY}); got keys {sorted(map(str, body))}"
        )
    fmt = keys[0]
    params = body.get(PARAMS_KEY)
    if params is not None and not isinstance(params, dict):
        raise BadRequest(
            f'{PARAMS_KEY} must be a JSON object, e.g. {{"mode": "embed"}} (got {_kind(params)})'
        )
    if fmt == "dataframe_split":
        out = {fmt: _split(body[fmt], max_rows)}
    elif fmt == "dataframe_records":
        out = {fmt: _records(body[fmt], max_rows, fmt)}
    else:
        out = _tf_serving(body[fmt], max_rows, fmt)
    if params is not None:
        out[PARAMS_KEY] = params
    return out
