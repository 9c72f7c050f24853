"""Where ``data.source`` stands with DVC, checked before prepare reads a byte and at the start of
every ``siamese run``: the promise that ``git checkout <commit> && dvc pull`` brings back a
registered version's inputs holds only for data whose DVC record matches what is trained on.

* A source tracked by a ``.dvc`` record (``siamese data add``, ``dvc add``) whose files changed
  since the record was made is refused: training on it would register a model whose inputs are in
  neither the DVC cache nor the remote. DVC itself says what changed (``dvc data status``).
* A source no DVC record tracks (outside the project, or never ``dvc add``-ed) is used, with a
  warning on every run, since its version cannot be brought back.
* A source outside ``data/`` (the folder the prepare stage depends on in dvc.yaml) is invisible to
  DVC's change detection, so prepare records its fingerprint and a run compares it
  (``fingerprint``), re-running prepare when it changed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from siamese.data.files import DEFAULT_MAX_FILE_BYTES
from siamese.data.manifests import is_manifest
from siamese.data.sources import source_fingerprint
from siamese.errors import DatasetError
from siamese.io import read_json

log = logging.getLogger(__name__)

DATA_DIR = "data"  # the prepare stage's DVC dependency (dvc.yaml)
BUILT_IN = "digits"
_CHANGES = ("added", "modified", "deleted", "renamed")
_SHOWN = 5  # changed files named in the error


@dataclass(frozen=True)
class SourceState:
    """``data.source`` as DVC sees it. ``record``: the ``.dvc`` file (or dvc.yaml) tracking it,
    None when nothing does; ``watched``: inside ``data/``, so DVC re-runs prepare when it changes;
    ``fingerprint``: the content hash of a source DVC does not watch (None otherwise)."""

    source: str
    record: str | None
    watched: bool
    fingerprint: str | None = None
    warning: str | None = None

    @property
    def versioned(self) -> bool:
        return self.source == BUILT_IN or self.record is not None

    def describe(self) -> str:
        """One line for the run summary."""
        if self.source == BUILT_IN:
            return f"{self.source} (built in)"
        if self.record is not None:
            return f"{self.source} (versioned by DVC: {self.record})"
        return f"{self.source} (NOT versioned by DVC; `dvc pull` cannot bring it back)"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _record_of(project: Path, source: Path) -> tuple[Path, Path] | None:
    """(the ``.dvc`` file, the path it tracks) for ``source`` or a folder containing it, found
    on disk (``dvc add X`` writes ``X.dvc`` beside ``X``), so an untracked source costs no DVC
    call; None when no record tracks it."""
    root = project.resolve()
    path = source.resolve()
    for candidate in (path, *path.parents):
        if not candidate.is_relative_to(root) or candidate == root:
            return None
        record = candidate.with_name(candidate.name + ".dvc")
        if not record.is_file():
            continue
        try:
            outs = yaml.safe_load(record.read_text(encoding="utf-8")).get("outs") or []
        except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as err:
            raise DatasetError(
                f"{record.relative_to(root)}, the DVC record of data.source, cannot be read "
                f"({err}); restore it (git checkout {record.relative_to(root)})"
            ) from None
        if any((record.parent / str(out.get("path", ""))).resolve() == candidate for out in outs):
            return record, candidate
    return None


def _changes(project: Path, tracked: Path) -> list[str]:
    """What differs between the workspace and the DVC record of ``tracked``: ``"modified:
    data/faces/s1/1.pgm"``, ... (DVC's own ``dvc data status --granular`` for that path)."""
    from dvc.repo import Repo

    with Repo(os.fspath(project)) as repo:
        target = os.path.relpath(tracked, repo.root_dir)
        status = repo.data_status(targets=[target], granular=True)
    found = []
    for kind in _CHANGES:
        for entry in status["uncommitted"].get(kind, []):
            if isinstance(entry, dict):  # renamed: {"old": ..., "new": ...}
                entry = f"{entry.get('old')} -> {entry.get('new')}"
            found.append((kind, entry))
    # a folder's own entry ("modified: data/faces/") says less than the files in it
    files = [(k, e) for k, e in found if not e.endswith("/")]
    return [f"{k}: {e}" for k, e in (files or found)]


def source_state(
    source: str,
    project: str | Path = ".",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    fingerprint: bool = True,
) -> SourceState:
    """Check ``data.source`` against DVC (module doc). Raises ``DatasetError`` when its DVC
    record is stale; ``fingerprint=False`` skips hashing a source outside ``data/``."""
    project = Path(project)
    if source == BUILT_IN:
        return SourceState(source, record=None, watched=True)
    path = Path(source) if Path(source).is_absolute() else project / source
    watched = _inside(path, project / DATA_DIR)
    if not path.exists():
        raise DatasetError(
            f"dataset path {source} does not exist; set data.source to 'digits', to a directory "
            "of identity folders root/<identity>/<image>, to a zip archive of one, or to a "
            ".csv / .parquet table listing the images (data.layout: csv)"
        )
    # a manifest's images lie in its folder: the folder is what a DVC record must version
    # (a record of the table alone would leave the images unversioned)
    versioned, hint = path, source
    if is_manifest(path) and path.is_file():
        versioned, hint = path.parent, str(Path(source).parent)
    found = _record_of(project, versioned)
    record = None
    if found is not None:
        record = os.path.relpath(found[0], project.resolve())
        tracked = os.path.relpath(found[1], project.resolve())
        from dvc.exceptions import DvcException

        try:
            changes = _changes(project, found[1])
        except DvcException as err:
            raise DatasetError(
                f"cannot check data.source {source} against its DVC record {record} "
                f"({type(err).__name__}: {err}); fix the DVC repository (`dvc doctor`, "
                "`dvc status`) and rerun"
            ) from None
        if changes:
            shown = "; ".join(changes[:_SHOWN])
            more = f"; and {len(changes) - _SHOWN} more" if len(changes) > _SHOWN else ""
            raise DatasetError(
                f"data.source {source} changed since its DVC record {record} was made "
                f"({shown}{more}): a model trained on it could not be reproduced, since these "
                f"files are in neither the DVC cache nor the remote. Version the change with "
                f"`dvc add {tracked}` (and commit {record}), or undo it with "
                f"`dvc checkout {tracked}`"
            )
    warning = None
    if record is None:
        if watched:
            warning = (
                f"data.source {source} is not tracked by DVC (no .dvc record), so its files are "
                "in neither the DVC cache nor the remote and `dvc pull` cannot bring back what "
                f"this run trains on; run `dvc add {hint}` and commit the .dvc file"
            )
        else:
            warning = (
                f"data.source {source} is outside the project's data/ folder, so DVC does not "
                "version it and `dvc pull` cannot bring back what this run trains on; run "
                f"`siamese data add {hint}` to copy it in and track it"
            )
    digest = None
    if fingerprint and not watched:
        digest = source_fingerprint(path, max_file_bytes)
    return SourceState(source, record, watched, digest, warning)


def changed_since_prepared(state: SourceState, prepared_dir: str | Path) -> bool:
    """Whether a source DVC does not watch differs from what prepare last read (the fingerprint
    prepare recorded in its ``summary.json``); False for a watched source or before any prepare
    (DVC runs prepare then anyway)."""
    summary = Path(prepared_dir) / "summary.json"
    if state.fingerprint is None or not summary.is_file():
        return False
    return read_json(summary).get("source_fingerprint") != state.fingerprint
