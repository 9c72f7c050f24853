"""Manifests: a dataset listed in a table (``data.layout: csv``) instead of laid out in folders,
which is how teams list data that lives in their own storage layout.

The table is a CSV file or a Parquet file (chosen by its extension) with one row per image:

- ``path`` (required): the image file, relative to the table's folder; an absolute path or one
  that climbs out with ``..`` is refused, so a manifest versioned with its folder cannot name
  files DVC does not version with it
- ``identity`` (required): who or what the image shows
- ``group`` (optional): the identity's group (an alphabet, a product line), for
  ``data.split_by: group``; one per identity
- ``split`` (optional): ``train``, ``val`` or ``test``, used instead of the seeded random split;
  an identity in two splits is refused (a test identity would be trained on)
- ``forged`` (optional): true for a skilled forgery of the identity's signature (as the
  signatures layout's ``forged/`` folder: never a positive, never trained on)

Other columns are ignored. Everything here is checked from the table alone, before any image is
read; the images then go through the same per-file checks as a folder's (siamese.data.sources).
Row numbers in messages count data rows from 1, the header not counted (row N is line N + 1 of a
plain CSV)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from siamese.data.split import SPLITS
from siamese.errors import DatasetError

MANIFEST_SUFFIXES = (".csv", ".parquet")
REQUIRED_COLUMNS = ("path", "identity")
OPTIONAL_COLUMNS = ("group", "split", "forged")
_TRUE = frozenset({"1", "true", "yes", "y", "t"})
_FALSE = frozenset({"0", "false", "no", "n", "f", ""})  # an empty forged cell: genuine


def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` names a table (by its extension), not a folder or archive."""
    return Path(path).suffix.lower() in MANIFEST_SUFFIXES


@dataclass(frozen=True)
class ManifestRow:
    number: int  # 1-based data row (the header not counted)
    path: str  # as written in the table
    parts: tuple[str, ...]  # the path's parts below the table's folder ("." and "" dropped)
    identity: str
    group: str | None
    split: str | None
    forged: bool

    @property
    def rel(self) -> str:
        return "/".join(self.parts)


@dataclass(frozen=True)
class Manifest:
    table: Path
    rows: list[ManifestRow]
    columns: tuple[str, ...]  # the required and optional columns the table has

    @property
    def folder(self) -> Path:
        """What the paths are relative to: the table's folder."""
        return self.table.parent

    @property
    def has_split(self) -> bool:
        return "split" in self.columns

    def file(self, row: ManifestRow) -> Path:
        return self.folder.joinpath(*row.parts)

    def where(self, row: ManifestRow) -> str:
        """The row as a user finds it: table, row number and the file it names."""
        return f"{self.table}, row {row.number}: {self.file(row)}"

    def split_of(self) -> dict[str, str] | None:
        """identity -> split from the split column (None: the table has none)."""
        if not self.has_split:
            return None
        return {row.identity: row.split for row in self.rows}


def _cell(value: object) -> str:
    """A table cell as text: CSV cells are read as text already; a Parquet column may hold
    numbers, booleans or nulls (an empty cell)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _read_table(table: Path) -> dict[str, list[str]]:
    """column name (stripped) -> its cells as text."""
    import pandas as pd  # lazy: only a manifest needs it

    if not table.is_file():
        raise DatasetError(
            f"manifest {table} does not exist or is not a file; set data.source to a .csv or "
            ".parquet table (data.layout: csv)"
        )
    suffix = table.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow  # noqa: F401  (pandas reads Parquet through it)
            except ImportError:
                raise DatasetError(
                    f"manifest {table} is a Parquet table, and reading Parquet needs the pyarrow "
                    "package, which is not installed: install it (pip install pyarrow) or save "
                    "the table as CSV"
                ) from None
            frame = pd.read_parquet(table, engine="pyarrow")
        else:
            # text cells as written: no "NA" -> NaN, no number parsing; a BOM (Excel) is dropped;
            # the header read as a row, so a repeated column name is seen (pandas renames it)
            frame = pd.read_csv(
                table, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig"
            )
            frame = frame.iloc[1:].set_axis(frame.iloc[0].tolist(), axis="columns")
    except DatasetError:
        raise
    except UnicodeDecodeError as err:
        raise DatasetError(
            f"manifest {table} is not UTF-8 text ({err.reason} at byte {err.start}); save it "
            "as UTF-8 CSV"
        ) from None
    except pd.errors.EmptyDataError:
        raise DatasetError(
            f"manifest {table} is empty; it needs a header row naming the columns "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: {', '.join(OPTIONAL_COLUMNS)}) and one "
            "row per image"
        ) from None
    except (pd.errors.ParserError, OSError, ValueError) as err:  # pyarrow's errors included
        kind = "Parquet" if suffix == ".parquet" else "CSV"
        reason = " ".join(str(err).split())
        raise DatasetError(f"manifest {table} cannot be read as {kind} ({reason})") from None
    columns: dict[str, list[str]] = {}
    for position, name in enumerate(frame.columns):
        key = str(name).strip()
        if key in columns:
            raise DatasetError(
                f"manifest {table}: the column {key!r} appears twice; keep one of them"
            )
        columns[key] = [_cell(v) for v in frame.iloc[:, position].tolist()]
    return columns


def _relative_parts(table: Path, number: int, path: str) -> tuple[str, ...]:
    """The parts of a row's path below the table's folder; anything that could lie outside it
    (an absolute path, a drive, ``..``) is refused."""
    where = f"manifest {table}, row {number}"
    if not path.strip():
        raise DatasetError(
            f"{where}: the path cell is empty; every row names an image file, relative to "
            f"{table.parent}"
        )
    posix, windows = PurePosixPath(path), PureWindowsPath(path)
    if posix.is_absolute() or windows.drive or windows.root:
        raise DatasetError(
            f"{where}: the path {path!r} is absolute; paths are relative to the table's folder "
            f"{table.parent} (so the table and its images are versioned together): write it "
            "relative to that folder, or move the table"
        )
    parts = tuple(p for p in posix.parts if p not in ("", "."))
    if ".." in parts:
        raise DatasetError(
            f"{where}: the path {path!r} climbs out of the table's folder {table.parent}/ with "
            "'..'; paths must lie in that folder (so the table and its images are versioned "
            "together): move the table up to a folder that holds the images"
        )
    if not parts:
        raise DatasetError(f"{where}: the path {path!r} names the table's folder, not an image")
    return parts


def read_manifest(table: str | Path) -> Manifest:
    """Read and check a manifest table (module doc). Raises ``DatasetError`` naming the table
    and the row or column at fault; no image is read."""
    table = Path(table)
    columns = _read_table(table)
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise DatasetError(
            f"manifest {table} has no column {' or '.join(repr(c) for c in missing)} (its "
            f"columns: {', '.join(map(repr, columns)) or 'none'}); a manifest needs the columns "
            f"{', '.join(REQUIRED_COLUMNS)}, optionally {', '.join(OPTIONAL_COLUMNS)}: rename "
            "the column, or add it"
        )
    n = len(columns["path"])
    if n == 0:
        raise DatasetError(f"manifest {table} lists no images (a header without rows)")
    present = tuple(c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in columns)
    rows = []
    for i in range(n):
        number = i + 1
        path = columns["path"][i]
        parts = _relative_parts(table, number, path)
        where = f"manifest {table}, row {number} ({path})"
        identity = columns["identity"][i].strip()
        if not identity:
            raise DatasetError(
                f"{where}: the identity cell is empty; every image needs the identity it shows "
                "(fill it in, or remove the row)"
            )
        group = None
        if "group" in columns:
            group = columns["group"][i].strip()
            if not group:
                raise DatasetError(
                    f"{where}: the group cell is empty; with a group column every row needs the "
                    "identity's group (or drop the column)"
                )
        split = None
        if "split" in columns:
            split = columns["split"][i].strip()
            if split not in SPLITS:
                raise DatasetError(
                    f"{where}: unknown split {split!r}; allowed: {', '.join(SPLITS)} (or drop "
                    "the split column for a seeded random split by identity)"
                )
        forged = False
        if "forged" in columns:
            flag = columns["forged"][i].strip().lower()
            if flag not in _TRUE | _FALSE:
                raise DatasetError(
                    f"{where}: forged is {columns['forged'][i]!r}; allowed: true / false (also "
                    "1 / 0, yes / no; empty: false)"
                )
            forged = flag in _TRUE
        rows.append(ManifestRow(number, path, parts, identity, group, split, forged))
    _check_one_per_identity(table, rows, "split", "splits", _LEAK)
    _check_one_per_identity(table, rows, "group", "groups", _TWO_GROUPS)
    return Manifest(table, rows, present)


_LEAK = (
    "an identity in two splits would be tested on images of someone it was trained on; give all "
    "of its rows one split"
)
_TWO_GROUPS = (
    "an identity belongs to one group; if two groups reuse a name, make the identities unique "
    "(e.g. '<group>/<identity>')"
)


def _check_one_per_identity(
    table: Path, rows: list[ManifestRow], attr: str, plural: str, why: str
) -> None:
    """Every row of an identity has the same ``attr`` (split, group), else an error naming the
    identity, its values and a row of each."""
    first: dict[str, ManifestRow] = {}
    for row in rows:
        value = getattr(row, attr)
        if value is None:
            return  # the table has no such column
        seen = first.setdefault(row.identity, row)
        if getattr(seen, attr) != value:
            raise DatasetError(
                f"manifest {table}: identity {row.identity!r} is in the {plural} "
                f"{getattr(seen, attr)!r} (row {seen.number}: {seen.path}) and {value!r} (row "
                f"{row.number}: {row.path}); {why}"
            )
