"""Dataset sources. Each yields identity-labelled images (grayscale or RGB, as an ``ImageSpec``
says) plus where each came from, so the manifest can trace every training example back to its
origin.

A folder source is a directory or a zip archive of one, in one of these layouts (``data.layout``):

- ``flat``: ``root/<identity>/<image>`` (AT&T faces; a user's own data)
- ``grouped``: ``root/<group>/<identity>/<image>`` (Omniglot: ``<Alphabet>/<character>/``); the
  identity is named ``"<group>/<identity>"`` so names are unique, and the group is kept so that
  splits can hold out whole groups
- ``signatures``: ``root/<writer>/genuine|forged/<image>`` (SVC2004); the writer is the identity,
  forgeries keep the writer's label but are flagged ``forged``: they are never positives
- ``auto``: chosen from the depth of the image files and the folder names (a ``.csv`` or
  ``.parquet`` source: ``csv``)

A manifest source (``csv``) is a CSV or Parquet table listing each image's path (relative to the
table's folder), identity and optionally group, split and forged flag (siamese.data.manifests).
Both kinds go through the same per-file checks: regular file, ``data.max_file_bytes``, decoding,
and the ``data.on_*`` policies.

A single top-level folder that wraps the whole tree (the official Omniglot archive's
``images_background/``) is looked through.
"""

from __future__ import annotations

import hashlib
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from siamese.data.decoding import Decoder, decode_files
from siamese.data.files import DEFAULT_MAX_FILE_BYTES, read_file, read_zip_entry
from siamese.data.images import IMAGE_EXTENSIONS, ImageSpec, resize_array
from siamese.data.manifests import Manifest, is_manifest, read_manifest
from siamese.errors import BadImageError, DatasetError

log = logging.getLogger(__name__)

# data.layout: the one list of choices (config validates against it)
LAYOUTS = ("auto", "flat", "grouped", "signatures", "csv")
MANIFEST_LAYOUT = "csv"  # a table listing the images (siamese.data.manifests)
SIGNATURE_KINDS = ("genuine", "forged")
DUPLICATE_POLICIES = ("error", "skip", "keep")  # data.on_duplicate_image
_IGNORED_DIRS = {"__MACOSX"}
# what a dataset left out, by kind (skipped.json; summary.json counts each as skipped_<kind>):
# images: unreadable (on_bad_image: skip); identities: too few images (on_small_identity: skip);
# duplicates: filed under two identities (on_duplicate_image: skip); copies: byte-identical copies
# of an image of the same identity (always left out, one copy kept: a positive pair of an image
# with itself teaches nothing and inflates the metrics); ignored: files not read at all (not an
# image format this reads, or an image outside any identity folder)
SKIP_KINDS = ("images", "identities", "duplicates", "copies", "ignored")


def _no_skips() -> dict[str, list[str]]:
    return {kind: [] for kind in SKIP_KINDS}


@dataclass
class LoadedDataset:
    images: np.ndarray  # (N, H, W, C) uint8
    identities: list[str]  # per image
    sources: list[str]  # per image: relative path or "digits:<index>"
    hashes: list[str]  # per image: sha256 of the source content
    skipped: dict[str, list[str]] = field(default_factory=_no_skips)
    groups: list[str | None] | None = None  # per image: the identity's group, None: no groups
    forged: list[bool] | None = None  # per image: a skilled forgery of the identity's signature
    layout: str = "flat"
    # identity -> train / val / test as the source assigns them (a manifest's split column);
    # None: the source assigns none, prepare splits at random (or by group)
    splits: dict[str, str] | None = None

    def __post_init__(self) -> None:
        n = len(self.identities)
        if self.groups is None:
            self.groups = [None] * n
        if self.forged is None:
            self.forged = [False] * n

    @property
    def has_groups(self) -> bool:
        return any(g is not None for g in self.groups)


def load_digits_dataset(size: ImageSpec | int, decoder: Decoder = Decoder()) -> LoadedDataset:
    """scikit-learn's 1,797 real handwritten digits; the identity is the digit."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn is slow to import

    digits = load_digits()
    raw = (digits.images / 16.0).astype(np.float32)
    images = decoder.allocate(len(raw), size)
    for i, img in enumerate(raw):
        images[i] = resize_array(img, size)
    identities = [f"digit_{int(t)}" for t in digits.target]
    sources = [f"digits:{i}" for i in range(len(raw))]
    hashes = [hashlib.sha256(digits.images[i].tobytes()).hexdigest() for i in range(len(raw))]
    return LoadedDataset(images, identities, sources, hashes, layout="digits")


# ---------------------------------------------------------------------------------------------
# the tree: a directory or a zip archive, as relative POSIX paths of image files and folders


@dataclass
class _Tree:
    files: list[tuple[str, ...]]  # path parts of every candidate image file, sorted
    folders: list[tuple[str, ...]]  # path parts of every folder (to report empty identities)
    read: Callable[[tuple[str, ...]], bytes]
    describe: Callable[[tuple[str, ...]], str]  # a path a user can find
    ignored: list[str] = field(default_factory=list)  # files not read: not an image format read


def _hidden(part: str) -> bool:
    return part.startswith(".") or part in _IGNORED_DIRS


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _printable(name: str) -> str:
    """A file name as a terminal can show it (bytes that are not UTF-8 as \\xNN)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _directory_tree(root: Path, max_file_bytes: int) -> _Tree:
    """Every image file and folder under ``root``. Symlinked folders are followed (data is often
    linked in), but a folder reached twice (a loop, or two links to one folder) is an error."""
    files: list[tuple[str, ...]] = []
    folders: list[tuple[str, ...]] = []
    ignored: list[str] = []
    seen: dict[str, tuple[str, ...]] = {}  # real path -> the parts it was first reached by

    def where(parts: tuple[str, ...]) -> str:
        return str(root.joinpath(*parts))

    def visit(path: Path, parts: tuple[str, ...], ancestors: frozenset[str]) -> None:
        real = os.path.realpath(path)
        if real in ancestors:
            raise DatasetError(
                f"symlink loop: {where(parts)} -> {os.readlink(path)} points back to "
                f"{where(seen[real])}, which contains it; remove the link or point it at a "
                "folder outside the dataset"
            )
        if real in seen:
            first, second = seen[real], parts
            link = second if path.is_symlink() else first
            raise DatasetError(
                f"{where(first)} and {where(second)} are the same folder ({real}): "
                f"{where(link)} is a symlink to a folder that is read already; remove the link "
                "so each identity is read once"
            )
        seen[real] = parts
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise DatasetError(
                f"cannot list the folder {path} ({err.strerror or err}); check its permissions"
            ) from None
        for entry in entries:
            if _hidden(entry.name):
                continue
            child = (*parts, entry.name)
            is_dir = entry.is_dir()  # follows symlinks; a dangling link is no folder
            if not is_dir and not _is_image(entry.name):
                ignored.append("/".join(map(_printable, child)))
                continue
            if _printable(entry.name) != entry.name:
                raise DatasetError(
                    f"{path / _printable(entry.name)}: the name is not valid UTF-8, so it cannot "
                    "be recorded in the manifest; rename it"
                )
            if is_dir:
                folders.append(child)
                visit(Path(entry.path), child, ancestors | {real})
            else:
                files.append(child)

    visit(root, (), frozenset())

    def read(parts: tuple[str, ...]) -> bytes:
        return read_file(root.joinpath(*parts), max_file_bytes)

    return _Tree(sorted(files), sorted(folders), read, where, sorted(ignored))


@contextmanager
def _zip_tree(path: Path, max_file_bytes: int) -> Iterator[_Tree]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DatasetError(f"dataset archive {path} is not a readable zip file ({err})") from None
    with zf:
        files, folders, names, ignored = [], set(), {}, []
        for info in zf.infolist():
            # normalised: "/s1/1.pgm", "./s1/1.pgm" and "s1//1.pgm" all name s1/1.pgm
            parts = tuple(p for p in PurePosixPath(info.filename).parts if p not in ("", "/"))
            if not parts or any(_hidden(p) for p in parts):
                continue
            if ".." in parts:  # would lie outside the archive's tree
                if not info.is_dir():
                    ignored.append(info.filename)
                continue
            for i in range(1, len(parts) if not info.is_dir() else len(parts) + 1):
                folders.add(parts[:i])
            if info.is_dir():
                continue
            if not _is_image(parts[-1]):
                ignored.append("/".join(parts))
                continue
            if parts in names:
                raise DatasetError(
                    f"dataset archive {path}: the entries {names[parts].filename!r} and "
                    f"{info.filename!r} are both {'/'.join(parts)}, so one would be read for "
                    "both; remove one of them from the archive (or rename it)"
                )
            files.append(parts)
            names[parts] = info

        def read(parts: tuple[str, ...]) -> bytes:
            return read_zip_entry(zf, names[parts], f"{path}:{'/'.join(parts)}", max_file_bytes)

        yield _Tree(
            sorted(files),
            sorted(folders),
            read,
            lambda p: f"{path}:{'/'.join(p)}",
            sorted(ignored),
        )


@contextmanager
def _open_tree(source: Path, max_file_bytes: int) -> Iterator[_Tree]:
    if not source.exists():
        raise DatasetError(
            f"dataset path {source} does not exist; set data.source to 'digits', to a directory "
            "of identity folders root/<identity>/<image>, to a zip archive of one, or to a "
            ".csv / .parquet table listing the images (data.layout: csv)"
        )
    if source.is_dir():
        yield _directory_tree(source, max_file_bytes)
    elif zipfile.is_zipfile(source):
        with _zip_tree(source, max_file_bytes) as tree:
            yield tree
    else:
        raise DatasetError(
            f"dataset path {source} is neither a directory of identity folders nor a zip archive"
        )


# ---------------------------------------------------------------------------------------------
# layout: how deep the identity folders lie and what each level means


def _expected_parts(layout: str, identity_depth: int) -> int:
    """Number of path parts of an image file (folders + the file name)."""
    return identity_depth + (2 if layout == "signatures" else 1)


def _single_top(files: list[tuple[str, ...]]) -> str | None:
    tops = {f[0] for f in files}
    return next(iter(tops)) if len(tops) == 1 and all(len(f) > 1 for f in files) else None


def _resolve_layout(
    files: list[tuple[str, ...]], layout: str, identity_depth: int | None, where: str
) -> tuple[str, int, int]:
    """(layout, identity_depth, number of wrapping top-level folders to look through)."""
    strip = 0
    if layout == "auto":
        # look through wrapping folders, e.g. the official images_background/ of Omniglot
        while (
            (rest := [f[strip:] for f in files]) and _single_top(rest) and min(map(len, rest)) > 2
        ):
            strip += 1
        rest = [f[strip:] for f in files]
        depths = {len(f) for f in rest}
        if identity_depth is not None:
            layout = "flat" if identity_depth == 1 else "grouped"
        elif depths == {2}:
            layout = "flat"
        elif depths == {3}:
            kinds = {f[1].lower() for f in rest}
            layout = "signatures" if kinds <= set(SIGNATURE_KINDS) else "grouped"
        else:
            examples = ", ".join(
                "/".join(next(f for f in rest if len(f) == d)) for d in sorted(depths)[:3]
            )
            raise DatasetError(
                f"cannot detect the layout of {where}: images lie at different depths "
                f"(e.g. {examples}); set data.layout to flat, grouped or signatures"
            )
    depth = identity_depth or (2 if layout == "grouped" else 1)
    want = _expected_parts(layout, depth)
    rest = [f[strip:] for f in files]
    while rest and all(len(f) > want for f in rest) and _single_top(rest):
        strip += 1
        rest = [f[strip:] for f in files]
    bad = next((f for f in rest if len(f) != want), None)
    if bad is not None:
        shape = {
            "flat": "<identity>/<image>",
            "grouped": "<group>/" + "<folder>/" * (depth - 2) + "<identity>/<image>",
            "signatures": "<writer>/genuine|forged/<image>",
        }[layout]
        raise DatasetError(
            f"{where}: image {'/'.join(bad)} does not fit data.layout {layout} "
            f"(identity_depth {depth}: expected {shape}); check data.layout / "
            "data.identity_depth"
        )
    return layout, depth, strip


# ---------------------------------------------------------------------------------------------


def load_folder_dataset(
    root: str | Path,
    size: ImageSpec | int,
    min_images: int = 2,
    on_bad_image: str = "error",
    on_small_identity: str = "error",
    layout: str = "auto",
    identity_depth: int | None = None,
    on_duplicate_image: str = "error",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    drop_copies: bool = True,
    decoder: Decoder = Decoder(),
) -> LoadedDataset:
    """Read identity folders from a directory or a zip archive of one (layouts: module doc), or
    the images a manifest table lists (layout csv, or auto with a .csv / .parquet ``root``).

    ``on_duplicate_image``: what to do with an image whose bytes occur under two or more
    identities (error, skip every copy, or keep). ``max_file_bytes``: the largest file (or zip
    entry) read; anything that is not a regular file is refused before it is read.
    ``drop_copies``: keep one of an identity's byte-identical copies of an image (what training
    and evaluation need: no pair of an image with itself); a gallery keeps every file.
    ``decoder``: how many processes decode, and into memory or a memory-mapped file."""
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown data.layout {layout!r}; allowed: {', '.join(LAYOUTS)}")
    if on_duplicate_image not in DUPLICATE_POLICIES:
        raise DatasetError(
            f"unknown data.on_duplicate_image {on_duplicate_image!r}; allowed: "
            f"{', '.join(DUPLICATE_POLICIES)}"
        )
    root = Path(root)
    if layout == MANIFEST_LAYOUT or (layout == "auto" and is_manifest(root) and root.is_file()):
        if not is_manifest(root):
            raise DatasetError(
                f"data.layout {MANIFEST_LAYOUT} reads a table: data.source must be a .csv or "
                f".parquet file listing the images (got {root})"
            )
        return load_manifest_dataset(
            root,
            size,
            min_images,
            on_bad_image,
            on_small_identity,
            on_duplicate_image,
            max_file_bytes,
            drop_copies,
            decoder,
        )
    if is_manifest(root) and root.is_file():
        raise DatasetError(
            f"data.source {root} is a table, read with data.layout {MANIFEST_LAYOUT} (or auto), "
            f"not {layout}"
        )
    with _open_tree(root, max_file_bytes) as tree:
        loose = [f for f in tree.files if len(f) == 1]
        if loose:  # images beside the identity folders belong to no identity
            tree.ignored = sorted([*tree.ignored, *(f[0] for f in loose)])
            tree.files = [f for f in tree.files if len(f) > 1]
        if tree.ignored:
            shown = ", ".join(tree.ignored[:3]) + (", ..." if len(tree.ignored) > 3 else "")
            log.warning(
                "ignoring %d file(s) under %s that are not images in a format read here (%s) "
                "or lie outside any identity folder: %s (listed in skipped.json)",
                len(tree.ignored),
                root,
                ", ".join(sorted(IMAGE_EXTENSIONS)),
                shown,
            )
        if not tree.files:
            raise DatasetError(
                f"dataset path {root} holds no identity folders with images "
                "(root/<identity>/<image>)"
            )
        layout, depth, strip = _resolve_layout(tree.files, layout, identity_depth, str(root))
        return _read_images(
            tree,
            root,
            size,
            min_images,
            on_bad_image,
            on_small_identity,
            layout,
            depth,
            strip,
            on_duplicate_image,
            drop_copies,
            decoder,
        )


# one read image: (its row in the decoded array, relative path, sha256 of the file, forged, the
# key its source reads and describes it by: path parts in a folder, the row number in a manifest)
_Row = tuple[int, str, str, bool, Any]


def _drop_copies(rows_of: dict[str, list[_Row]], skipped: dict[str, list[str]]) -> dict[str, int]:
    """Keep one of each identity's byte-identical copies of an image (a genuine one before a
    forgery, else the first read): a copy would pair the image with itself as a positive, in
    offline mining, in the online miners and in the val/test pairs. Returns how many images each
    identity lost; the copies left out are named in ``skipped["copies"]``."""
    dropped: dict[str, int] = {}
    examples: list[str] = []
    for name, rows in rows_of.items():
        keep: dict[str, int] = {}  # sha256 -> index of the copy kept
        for i, (_, _, digest, forged, _) in enumerate(rows):
            if digest not in keep or (rows[keep[digest]][3] and not forged):
                keep[digest] = i
        if len(keep) == len(rows):
            continue
        kept = set(keep.values())
        for i, row in enumerate(rows):
            if i not in kept:
                skipped["copies"].append(row[1])
                examples.append(f"{row[1]} = {rows[keep[row[2]]][1]}")
        rows_of[name] = [row for i, row in enumerate(rows) if i in kept]
        dropped[name] = len(rows) - len(kept)
    if examples:
        log.warning(
            "using %d image(s) once: byte-identical copies of an image of the same identity "
            "were left out (%s; listed in skipped.json as copies)",
            len(examples),
            "; ".join(examples[:3]) + ("; ..." if len(examples) > 3 else ""),
        )
    return dropped


def _handle_duplicates(
    rows_of: dict[str, list[_Row]],
    policy: str,
    describe: Callable[[Any], str],
    skipped: dict[str, list[str]],
) -> dict[str, int]:
    """Find images whose bytes occur under two or more identities (copies within one identity
    are left alone) and apply ``policy``; returns how many images each identity lost."""
    if policy == "keep":
        return {}
    owners: dict[str, set[str]] = {}
    for name, rows in rows_of.items():
        for row in rows:
            owners.setdefault(row[2], set()).add(name)
    shared = {digest for digest, names in owners.items() if len(names) > 1}
    if not shared:
        return {}
    # every copy of a shared image, in reading order (identities sorted, then their files)
    copies = [(name, row[1], row[2], row[4]) for name, rows in rows_of.items() for row in rows]
    copies = [c for c in copies if c[2] in shared]
    if policy == "error":
        digest = copies[0][2]
        first: dict[str, Any] = {}  # identity -> the key of its first copy of that image
        for name, _, d, key in copies:
            if d == digest:
                first.setdefault(name, key)
        (a_name, a_key), (b_name, b_key) = list(first.items())[:2]
        more = f" ({len(shared)} such images in all)" if len(shared) > 1 else ""
        raise DatasetError(
            f"the same image is filed under two identities: {describe(a_key)} (identity "
            f"{a_name!r}) and {describe(b_key)} (identity {b_name!r}) are identical{more}. "
            "That is label noise and leaks between the splits: remove the wrong copy, or set "
            "data.on_duplicate_image: skip to leave out every copy (keep: use them anyway)"
        )
    dropped: dict[str, int] = {}
    for name in rows_of:
        kept = [row for row in rows_of[name] if row[2] not in shared]
        if len(kept) < len(rows_of[name]):
            dropped[name] = len(rows_of[name]) - len(kept)
            rows_of[name] = kept
    skipped["duplicates"].extend(rel for _, rel, _, _ in copies)
    log.warning(
        "leaving out %d image(s): %d image(s) occur under two or more identities",
        len(copies),
        len(shared),
    )
    return dropped


def _read_images(
    tree: _Tree,
    root: Path,
    size: ImageSpec | int,
    min_images: int,
    on_bad_image: str,
    on_small_identity: str,
    layout: str,
    depth: int,
    strip: int,
    on_duplicate_image: str = "error",
    drop_copies: bool = True,
    decoder: Decoder = Decoder(),
) -> LoadedDataset:
    """The images of a folder tree, by identity folder (every identity folder is listed, even an
    empty one, so it is reported)."""
    # identity -> [(path parts, relative path, forged)]
    listed: dict[str, list[tuple[tuple[str, ...], str, bool]]] = {}
    group_of: dict[str, str | None] = {}

    def ident_of(rel: tuple[str, ...]) -> tuple[str, str | None]:
        name = "/".join(rel[:depth])
        return name, (rel[0] if layout == "grouped" else None)

    for folder in tree.folders:
        rel = folder[strip:]
        if len(rel) == depth and folder[:strip] == tree.files[0][:strip]:
            name, group = ident_of(rel)
            listed.setdefault(name, [])
            group_of[name] = group
    for parts in tree.files:
        rel = parts[strip:]
        name, group = ident_of(rel)
        forged = False
        if layout == "signatures":
            kind = rel[1].lower()
            if kind not in SIGNATURE_KINDS:
                raise DatasetError(
                    f"{tree.describe(parts)}: signature images must lie in "
                    f"<writer>/genuine/ or <writer>/forged/, not {rel[1]}/"
                )
            forged = kind == "forged"
        listed.setdefault(name, []).append((parts, "/".join(parts), forged))
        group_of[name] = group
    return _load_listed(
        listed,
        group_of,
        tree.read,
        tree.describe,
        str(root),
        size,
        min_images,
        on_bad_image,
        on_small_identity,
        on_duplicate_image,
        drop_copies,
        layout,
        count_genuine=layout == "signatures",
        ignored=tree.ignored,
        decoder=decoder,
    )


def load_manifest_dataset(
    table: str | Path,
    size: ImageSpec | int,
    min_images: int = 2,
    on_bad_image: str = "error",
    on_small_identity: str = "error",
    on_duplicate_image: str = "error",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    drop_copies: bool = True,
    decoder: Decoder = Decoder(),
) -> LoadedDataset:
    """Read the images a manifest table lists (siamese.data.manifests): the table is checked
    whole first, then each file goes through the checks a folder's files do, its errors naming
    the table's row. A split column becomes ``LoadedDataset.splits``."""
    manifest = read_manifest(table)
    listed: dict[str, list[tuple[int, str, bool]]] = {}
    group_of: dict[str, str | None] = {}
    for row in manifest.rows:
        listed.setdefault(row.identity, []).append((row.number, row.rel, row.forged))
        group_of[row.identity] = row.group
    ds = _load_listed(
        listed,
        group_of,
        lambda number: _read_row(manifest, number, max_file_bytes),
        lambda number: manifest.where(manifest.rows[number - 1]),
        str(manifest.table),
        size,
        min_images,
        on_bad_image,
        on_small_identity,
        on_duplicate_image,
        drop_copies,
        MANIFEST_LAYOUT,
        count_genuine="forged" in manifest.columns,
        decoder=decoder,
    )
    splits = manifest.split_of()
    if splits is not None:
        ds.splits = {name: splits[name] for name in dict.fromkeys(ds.identities)}
    return ds


def _read_row(manifest: Manifest, number: int, max_file_bytes: int) -> bytes:
    """The bytes of the file a manifest row names, errors prefixed by the table and row."""
    try:
        return read_file(manifest.file(manifest.rows[number - 1]), max_file_bytes)
    except BadImageError as err:
        raise BadImageError(f"{manifest.table}, row {number}: {err}") from None


def _load_listed(
    listed: dict[str, list[tuple[Any, str, bool]]],
    group_of: dict[str, str | None],
    read: Callable[[Any], bytes],
    describe: Callable[[Any], str],
    where: str,
    size: ImageSpec | int,
    min_images: int,
    on_bad_image: str,
    on_small_identity: str,
    on_duplicate_image: str,
    drop_copies: bool,
    layout: str,
    count_genuine: bool,
    ignored: list[str] | None = None,
    decoder: Decoder = Decoder(),
) -> LoadedDataset:
    """Decode every listed image (identity -> [(key, relative path, forged)]; ``read`` and
    ``describe`` take the key) under the data.on_* policies: the one reader behind folders,
    archives and manifests. ``count_genuine``: an identity's size counts its genuine images."""
    skipped = _no_skips()
    skipped["ignored"] = list(ignored or [])
    # identity -> _Row of every readable image; the files are decoded in parallel, in this
    # order, into ``decoded``
    read_rows: dict[str, list[_Row]] = {name: [] for name in sorted(listed)}
    order = [(name, *entry) for name in sorted(listed) for entry in listed[name]]
    decoded = decoder.allocate(len(order), size)
    unreadable = (BadImageError, OSError, KeyError, zipfile.BadZipFile)
    outcomes = decode_files(
        lambda i: read(order[i][1]),
        [describe(key) for _, key, _, _ in order],
        size,
        decoded,
        decoder,
        read_errors=unreadable,
    )
    for outcome in outcomes:
        name, key, rel, forged = order[outcome.index]
        err = outcome.error
        if err is not None:
            if not isinstance(err, unreadable):
                raise err
            if on_bad_image == "skip":
                skipped["images"].append(rel)
                log.warning("skipping unreadable image: %s", err)
                continue
            outcomes.close()
            raise DatasetError(
                f"{err}; remove or replace it, or set data.on_bad_image: skip to skip such files"
            ) from None
        read_rows[name].append((outcome.index, rel, outcome.digest, forged, key))
    dropped = _drop_copies(read_rows, skipped) if drop_copies else {}
    for name, n in _handle_duplicates(read_rows, on_duplicate_image, describe, skipped).items():
        dropped[name] = dropped.get(name, 0) + n

    kept: list[int] = []  # rows of ``decoded`` used
    identities: list[str] = []
    sources: list[str] = []
    hashes: list[str] = []
    groups: list[str | None] = []
    forged_flags: list[bool] = []
    for name, rows in read_rows.items():
        n_genuine = sum(not r[3] for r in rows)
        if n_genuine < min_images:
            what = "genuine image(s)" if count_genuine else "image(s)"
            if dropped.get(name):
                what += f" left after leaving out {dropped[name]} duplicate(s)"
            if on_small_identity == "skip":
                skipped["identities"].append(name)
                log.warning(
                    "skipping identity %r: %d %s, need %d", name, n_genuine, what, min_images
                )
                continue
            raise DatasetError(
                f"identity {name!r} ({where}) has {n_genuine} {what}; every identity needs at "
                f"least {min_images} to form positive pairs: add images, remove "
                f"{'its rows' if layout == MANIFEST_LAYOUT else 'the folder'}, or set "
                "data.on_small_identity: skip to leave such identities out"
            )
        for row, rel, digest, forged, _ in rows:
            kept.append(row)
            identities.append(name)
            sources.append(rel)
            hashes.append(digest)
            groups.append(group_of[name])
            forged_flags.append(forged)
    if not kept:
        raise DatasetError(f"dataset path {where} contains no usable images")
    return LoadedDataset(
        decoder.keep(decoded, kept),
        identities,
        sources,
        hashes,
        skipped,
        groups,
        forged_flags,
        layout,
    )


def load_source(
    source: str,
    size: ImageSpec | int,
    min_images: int = 2,
    on_bad_image: str = "error",
    on_small_identity: str = "error",
    layout: str = "auto",
    identity_depth: int | None = None,
    on_duplicate_image: str = "error",
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    decoder: Decoder = Decoder(),
) -> LoadedDataset:
    if source == "digits":  # the digits hold no image twice
        return load_digits_dataset(size, decoder)
    return load_folder_dataset(
        source,
        size,
        min_images,
        on_bad_image,
        on_small_identity,
        layout,
        identity_depth,
        on_duplicate_image,
        max_file_bytes,
        decoder=decoder,
    )


def source_fingerprint(source: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str:
    """A sha256 of what ``load_folder_dataset`` would read from ``source``: the archive's bytes,
    or every candidate image file's path and content (an unreadable one by its error) plus the
    names of the files not read. Recorded by prepare for a source DVC does not watch (outside
    ``data/``), so a rerun notices when it changed."""
    source = Path(source)
    digest = hashlib.sha256()
    if is_manifest(source) and source.is_file():
        return _manifest_fingerprint(source, max_file_bytes)
    if source.is_file():
        try:
            with open(source, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise DatasetError(f"dataset path {source} cannot be read ({err})") from None
        return digest.hexdigest()
    with _open_tree(source, max_file_bytes) as tree:
        for parts in tree.files:
            try:
                content = hashlib.sha256(tree.read(parts)).hexdigest()
            except (BadImageError, OSError) as err:
                content = f"unreadable: {err}"
            digest.update(f"{'/'.join(parts)}\0{content}\n".encode())
        for name in tree.ignored:
            digest.update(f"{name}\0ignored\n".encode())
    return digest.hexdigest()


def _manifest_fingerprint(table: Path, max_file_bytes: int) -> str:
    """A manifest's fingerprint: the table's bytes and the content of every file it lists (the
    images may change while the table does not)."""
    digest = hashlib.sha256(read_file(table, max(max_file_bytes, table.stat().st_size)))
    manifest = read_manifest(table)
    for row in manifest.rows:
        try:
            content = hashlib.sha256(read_file(manifest.file(row), max_file_bytes)).hexdigest()
        except BadImageError as err:
            content = f"unreadable: {err}"
        digest.update(f"{row.rel}\0{content}\n".encode())
    return digest.hexdigest()
