"""``siamese data add``: bring a user's dataset (a folder, or a zip archive of one) under DVC so
its version is part of every run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from siamese import paths
from siamese.config import DataParams, load_params, validate_params
from siamese.data.sources import load_folder_dataset
from siamese.params_file import set_params

DATA_DIR = Path("data")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# the data.on_* choices ``data add`` takes as options (and records in params.yaml)
ON_CHOICES = ("on_bad_image", "on_small_identity", "on_duplicate_image")


def add_dataset(
    source: Path,
    project: Path,
    name: str | None = None,
    use: bool = True,
    choices: dict[str, str] | None = None,
) -> Path:
    """Copy ``source`` into ``data/``, track it with DVC and (``use``) point data.source at it.

    The dataset is read first as prepare will read it: under the project's data.* params, with
    ``choices`` (data.on_bad_image / on_small_identity / on_duplicate_image given on the command
    line) over them, so a dataset prepare would refuse is refused here and one it would read
    with skips (LFW as published: most people have one photo) can be added. With ``use``, the
    given choices are written to params.yaml beside data.source, so prepare reads it the same
    way."""
    source, project = Path(source).resolve(), Path(project).resolve()
    choices = {k: v for k, v in (choices or {}).items() if v is not None}
    # validate before copying anything so a bad dataset leaves the project untouched (reads are
    # bounded by the project's data.max_file_bytes: a device or FIFO is refused, never copied)
    params_file = project / paths.PARAMS
    data = load_params(params_file).data if params_file.is_file() else DataParams()
    # a bad choice is a ParamsError naming data.<key> and the allowed values
    data = validate_params(
        {"data": {**data.model_dump(mode="json"), **choices}}, origin="data add options"
    ).data
    load_folder_dataset(
        source,
        size=16,
        min_images=data.min_images_per_identity,
        on_bad_image=data.on_bad_image,
        on_small_identity=data.on_small_identity,
        on_duplicate_image=data.on_duplicate_image,
        max_file_bytes=data.max_file_bytes,
    )
    rel = DATA_DIR / (name or source.name)
    target = project / rel
    if target.exists():
        raise ValueError(f"{rel} already exists in the project; choose another --name")
    tmp = target.with_name(f".{target.name}.adding")
    _remove(tmp)
    if source.is_dir():
        shutil.copytree(source, tmp, symlinks=False)
    else:  # a zip archive of identity folders
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, tmp)
    tmp.rename(target)
    proc = subprocess.run(["dvc", "add", str(rel)], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        _remove(target)
        raise RuntimeError(f"dvc add {rel} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    if use:
        chosen = [f"data.{k}={v}" for k, v in sorted(choices.items())]
        set_params(project / "params.yaml", [f"data.source={rel.as_posix()}", *chosen])
    return rel
