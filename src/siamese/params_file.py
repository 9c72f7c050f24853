"""Edit params.yaml in place (comments kept), the way ``dvc exp run --set-param`` does, after
validating the result so a bad override never reaches the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from ruamel.yaml import YAML

from siamese.config import Params, apply_overrides, flatten, parse_override, validate_params
from siamese.errors import ParamsError
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


PRESETS_DIR = "params"


def preset_path(name: str, project: str | Path = ".") -> Path:
    """A preset is ``params/<name>.yaml`` in the project (or a path to any such file)."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    path = Path(project) / PRESETS_DIR / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (Path(project) / PRESETS_DIR).glob("*.yaml"))
        raise ParamsError(
            f"unknown preset {name!r}: {path} not found; available: {', '.join(available) or '-'}"
        )
    return path


def preset_overrides(name: str, project: str | Path = ".") -> list[str]:
    """The preset's values as ``key.path=value`` overrides, applied before any ``--set`` so a
    preset is just a named, versioned bundle of overrides that still lands in params.yaml (where
    DVC and MLflow see every value)."""

    path = preset_path(name, project)
    raw = YAML(typ="safe").load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ParamsError(f"preset {path} must be a mapping of params keys to values")
    return [f"{key}={json.dumps(value)}" for key, value in flatten(raw).items()]
