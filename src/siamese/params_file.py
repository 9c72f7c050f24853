"""Edit params.yaml in place (comments kept), the way ``dvc exp run --set-param`` does, after
validating the result so a bad override never reaches the file."""

from __future__ import annotations

import io
from pathlib import Path

from ruamel.yaml import YAML

from siamese.config import Params, ParamsError, apply_overrides, parse_override, validate_params
from siamese.io import atomic_write_bytes


def set_params(path: str | Path, overrides: list[str]) -> Params:
    path = Path(path)
    yaml = YAML()
    yaml.preserve_quotes = True
    if not path.is_file():
        raise ParamsError(f"params file {path} not found")
    doc = yaml.load(path.read_text()) or {}
    plain = YAML(typ="safe").load(path.read_text()) or {}
    expected = apply_overrides(plain, overrides)
    params = validate_params(expected, origin=f"{path} with overrides")
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                node[k] = {}
            node = node[k]
        key = keys[-1]
        if isinstance(value, list | dict) or isinstance(node.get(key), list | dict):
            # ruamel keeps a collection's trailing comment (and the line break it holds) on the
            # key; swapping in another collection would glue the next key onto this line
            node.ca.items.pop(key, None)
        node[key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    if (YAML(typ="safe").load(text) or {}) != expected:  # never write a file that reads back wrong
        raise ParamsError(f"could not apply {overrides} to {path} without corrupting it")
    atomic_write_bytes(path, text.encode())
    return params
