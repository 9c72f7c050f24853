"""``siamese data add``: bring a user's dataset (a folder, a zip archive of one, or a manifest
table with the folder it lists images from) under DVC so its version is part of every run."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from siamese import paths
from siamese.config import DataParams, load_params, validate_params
from siamese.data.manifests import is_manifest
from siamese.data.sources import MANIFEST_LAYOUT, load_folder_dataset
from siamese.params_file import set_params

log = logging.getLogger(__name__)

DATA_DIR = Path("data")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# the data.on_* choices ``data add`` takes as options (and records in params.yaml)
ON_CHOICES = ("on_bad_image", "on_small_identity", "on_duplicate_image")


@dataclass(frozen=True)
class AddedDataset:
    source: str  # the data.source it is read as: data/<name>, or data/<name>/<table>
    folder: Path  # what DVC tracks: data/<name> (record data/<name>.dvc)
    linked: int  # files hard-linked from the source (same filesystem)
    copied: int  # files copied (another filesystem, or linking refused)


def _dvc_cache_hardlinks(project: Path) -> bool:
    """Whether the project's DVC cache may hard-link workspace files (cache.type lists
    hardlink, at any config level)."""
    from dvc.config import Config, ConfigError

    try:
        types = Config(dvc_dir=os.fspath(project / ".dvc")).get("cache", {}).get("type") or []
    except ConfigError:
        return True  # unknown: assume the unsafe case, and copy
    return "hardlink" in ([types] if isinstance(types, str) else list(types))


def _place(source: Path, target: Path, link: bool) -> tuple[int, int]:
    """Put ``source`` (a folder or a file) at ``target``: each file hard-linked when ``link``
    and the filesystem allows it (same device), else copied. Returns (linked, copied)."""
    counts = [0, 0]

    def place_file(src: str, dst: str) -> None:
        if link:
            try:
                os.link(src, dst)  # follows a symlinked file, as copying does
                counts[0] += 1
                return
            except OSError:  # another filesystem (EXDEV), no links allowed there, too many
                pass
        shutil.copy2(src, dst)
        counts[1] += 1

    if source.is_dir():
        shutil.copytree(source, target, symlinks=False, copy_function=place_file)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        place_file(os.fspath(source), os.fspath(target))
    return counts[0], counts[1]


def add_dataset(
    source: Path,
    project: Path,
    name: str | None = None,
    use: bool = True,
    choices: dict[str, str] | None = None,
) -> AddedDataset:
    """Bring ``source`` into ``data/``, track it with DVC and (``use``) point data.source at it.

    ``source`` is a folder of identity folders, a zip archive of one, or a manifest table
    (.csv / .parquet): then the table's folder is added (the images it lists lie in it) and
    data.source names the table in the added folder.

    The dataset is read first as prepare will read it: under the project's data.* params, with
    ``choices`` (data.on_bad_image / on_small_identity / on_duplicate_image given on the command
    line) over them, so a dataset prepare would refuse is refused here and one it would read
    with skips (LFW as published: most people have one photo) can be added. With ``use``, the
    given choices are written to params.yaml beside data.source, so prepare reads it the same
    way.

    Files are hard-linked instead of copied when the source lies on the project's filesystem:
    `dvc add` (cache.type reflink or copy, DVC's default) then copies each into the cache and
    checks a copy out in its place, so neither the versioned copy nor the workspace keeps the
    source's inode, and a later edit of the source cannot change what was versioned; a cache
    that hard-links (cache.type hardlink) would share the source's inode, so then every file is
    copied."""
    source, project = Path(source).resolve(), Path(project).resolve()
    choices = {k: v for k, v in (choices or {}).items() if v is not None}
    # validate before copying anything so a bad dataset leaves the project untouched (reads are
    # bounded by the project's data.max_file_bytes: a device or FIFO is refused, never copied)
    params_file = project / paths.PARAMS
    data = load_params(params_file).data if params_file.is_file() else DataParams()
    table = is_manifest(source) and source.is_file()
    # a bad choice is a ParamsError naming data.<key> and the allowed values
    data = validate_params(
        {
            "data": {
                **data.model_dump(mode="json"),
                **choices,
                "source": str(source),
                "layout": MANIFEST_LAYOUT if table else "auto",
                "identity_depth": None,
            }
        },
        origin="data add options",
    ).data
    load_folder_dataset(
        source,
        size=16,
        min_images=data.min_images_per_identity,
        on_bad_image=data.on_bad_image,
        on_small_identity=data.on_small_identity,
        on_duplicate_image=data.on_duplicate_image,
        max_file_bytes=data.max_file_bytes,
        layout=data.layout,
    )
    folder = source.parent if table else source
    rel = DATA_DIR / (name or folder.name)
    target = project / rel
    if target.exists():
        raise ValueError(f"{rel} already exists in the project; choose another --name")
    tmp = target.with_name(f".{target.name}.adding")
    _remove(tmp)
    try:
        linked, copied = _place(folder, tmp, link=not _dvc_cache_hardlinks(project))
    except BaseException:
        _remove(tmp)
        raise
    tmp.rename(target)
    proc = subprocess.run(["dvc", "add", str(rel)], cwd=project, capture_output=True, text=True)
    if proc.returncode != 0:
        _remove(target)
        raise RuntimeError(f"dvc add {rel} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    data_source = (rel / source.name) if table else rel
    if use:
        chosen = [f"data.{k}={v}" for k, v in sorted(choices.items())]
        layout = []
        current = load_params(params_file).data.layout if params_file.is_file() else "auto"
        if table:
            layout = [f"data.layout={MANIFEST_LAYOUT}", "data.identity_depth=null"]
        elif current == MANIFEST_LAYOUT:
            layout = ["data.layout=auto"]
        set_params(
            project / "params.yaml", [f"data.source={data_source.as_posix()}", *layout, *chosen]
        )
    return AddedDataset(data_source.as_posix(), rel, linked, copied)
