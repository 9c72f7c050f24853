"""``siamese data add``: bring a user's dataset (a folder, or a zip archive of one) under DVC so
its version is part of every run."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from siamese import paths
from siamese.config import load_params
from siamese.data.files import DEFAULT_MAX_FILE_BYTES
from siamese.data.sources import load_folder_dataset
from siamese.params_file import set_params

DATA_DIR = Path("data")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def add_dataset(source: Path, project: Path, name: str | None = None, use: bool = True) -> Path:
    source, project = Path(source).resolve(), Path(project).resolve()
    # validate before copying anything so a bad dataset leaves the project untouched (reads are
    # bounded by the project's data.max_file_bytes: a device or FIFO is refused, never copied)
    params_file = project / paths.PARAMS
    cap = DEFAULT_MAX_FILE_BYTES
    if params_file.is_file():
        cap = load_params(params_file).data.max_file_bytes
    load_folder_dataset(source, size=16, max_file_bytes=cap)
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
        set_params(project / "params.yaml", [f"data.source={rel.as_posix()}"])
    return rel
