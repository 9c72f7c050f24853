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
    params = validate_params(apply_overrides(plain, overrides), origin=f"{path} with overrides")
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    atomic_write_bytes(path, buf.getvalue().encode())
    return params
