"""Edit params.yaml in place (comments kept), the way ``dvc exp run --set-param`` does, after
validating the result so a bad override never reaches the file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from siamese.config import (
    Params,
    apply_overrides,
    flatten,
    load_yaml,
    parse_override,
    read_params_file,
    validate_params,
)
from siamese.errors import ParamsError
from siamese.io import atomic_write_bytes

_MISSING = object()


def _lookup(tree: dict, keys: list[str]) -> Any:
    for k in keys:
        if not isinstance(tree, dict) or k not in tree:
            return _MISSING
        tree = tree[k]
    return tree


def _represent_null(representer, _data: None):
    # ruamel writes None as an empty value; params.yaml spells it null, as its comments do
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _comments_only(text: str) -> str:
    """The comment and blank lines of a file that holds nothing else (kept above the overrides
    written into an otherwise empty params file); "" when it holds anything more."""
    lines = text.splitlines(keepends=True)
    if all(not line.strip() or line.lstrip().startswith("#") for line in lines):
        return text if not text or text.endswith("\n") else text + "\n"
    return ""


def set_params(path: str | Path, overrides: list[str]) -> Params:
    """Apply ``key.path=value`` overrides to the params file in place, comments kept, once
    the result validates. The file is read as every stage reads it (``read_params_file``:
    duplicate keys and a non-mapping top level refused, an empty file taken as ``{}``), so an
    override never lands in a file the stages would read differently. An override that leaves a
    value as it was does not rewrite its line; when nothing changes the file is not written."""
    path = Path(path)
    plain = read_params_file(path)
    expected = apply_overrides(plain, overrides)
    params = validate_params(expected, origin=f"{path} with overrides")
    if expected == plain:
        return params  # nothing changes: the file is left byte for byte as it is
    source = path.read_text(encoding="utf-8")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), _represent_null)
    yaml.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own list layout
    doc = yaml.load(source)
    header = ""
    if doc is None:  # empty, comments only, or `null`: the overrides start the mapping
        doc, header = CommentedMap(), _comments_only(source)
    for text in overrides:
        keys, value = parse_override(text)
        if _lookup(plain, keys) == _lookup(expected, keys):
            continue  # already the value it ends with: the line (and its comment) stays as it is
        node = doc
        for k in keys[:-1]:
            if k not in node or not isinstance(node[k], dict):
                node[k] = CommentedMap()
            node = node[k]
        key = keys[-1]
        if isinstance(value, list | dict) or isinstance(node.get(key), list | dict):
            # ruamel keeps a collection's trailing comment (and the line break it holds) on the
            # key; swapping in another collection would glue the next key onto this line
            node.ca.items.pop(key, None)
        node[key] = value
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = header + buf.getvalue()
    # never write a file that reads back wrong (read as the stages read it)
    if (load_yaml(text, f"{path} with overrides") or {}) != expected:
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


def _preset_values(path: Path) -> dict:
    """A preset file's values, flattened to dotted keys (read as params.yaml is read: a
    mapping, each key given once)."""
    return flatten(read_params_file(path))


def preset_overrides(name: str, project: str | Path = ".") -> list[str]:
    """The preset's values as ``key.path=value`` overrides, applied before any ``--set`` so a
    preset is just a named, versioned bundle of overrides that still lands in params.yaml (where
    DVC and MLflow see every value).

    Presets compose: every key that any preset in ``params/`` sets, and this preset leaves out,
    is first reset to its default (``siamese.config``), so what an earlier preset left in
    params.yaml (Omniglot's ``data.split_by: group``, ``rotation_classes``, ...) never leaks
    into the next one, whatever the order. Keys no preset sets (``trainer.*``, ``seed``, ...)
    keep their params.yaml value."""

    path = preset_path(name, project)
    chosen = _preset_values(path)
    managed = set(chosen)
    for other in sorted((Path(project) / PRESETS_DIR).glob("*.yaml")):
        managed |= set(_preset_values(other))
    defaults = flatten(Params().model_dump(mode="json"))
    resets = {k: defaults[k] for k in sorted(managed - set(chosen)) if k in defaults}
    return [f"{key}={json.dumps(value)}" for key, value in {**resets, **chosen}.items()]
