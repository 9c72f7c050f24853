"""What a person watching a command sees: progress while something long runs, and none of the
third-party chatter they cannot act on.

* ``progress_wanted``: draw progress bars only on a terminal. A stage run by ``siamese run``
  writes into the flow's pipe, never a terminal, so the flow says what its own terminal is
  through ``SIAMESE_PROGRESS`` (``1``: draw bars, ``0``: periodic lines); ``dvc repro`` run
  by hand gives the stage its own terminal, which is detected directly.
* ``progress``: a tqdm bar on a terminal, else one log line every ``every`` seconds (a log or
  the Prefect UI gets lines, not a bar redrawn thousands of times).
* ``configure``: by default the known third-party warnings and notices are silenced (each one
  listed in ``QUIET_ENV``, ``QUIET_WARNINGS`` or ``QUIET_LOG_PREFIXES`` with why); with
  ``--verbose`` (``SIAMESE_VERBOSE=1``) everything is shown. Errors are never silenced.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

VERBOSE_ENV = "SIAMESE_VERBOSE"  # set by --verbose; the stage processes a run starts inherit it
PROGRESS_ENV = "SIAMESE_PROGRESS"  # 1: draw progress bars, 0: periodic lines, unset: isatty

# environment defaults a quiet command sets for itself and the processes it starts (a value the
# user set is kept)
QUIET_ENV = {
    # MLflow's INFO notices ("Creating initial MLflow database tables", "Validating input
    # example against model signature", system-metrics start/stop); its warnings stay
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # one "Downloading artifacts" bar per file MLflow reads back (register, promote, oneshot)
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# warnings raised inside libraries about their own internals or about settings that do not apply
# to this project: (message regex, why)
QUIET_WARNINGS = (
    # Lightning 2.6 calls an API torch deprecated (pytorch_lightning/utilities/_pytree.py)
    (r".*isinstance\(treespec, LeafSpec\)` is deprecated", "Lightning's own use of torch"),
    # every metric is logged per epoch (on_step=False): the step logging interval is unused
    (r"The number of training batches .* is smaller than the logging interval", "no step logs"),
)
# Lightning's notices that are advertisements or say nothing a CPU or GPU user can act on
LIGHTNING_LOGGER = "pytorch_lightning.utilities.rank_zero"
QUIET_LOG_PREFIXES = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:")

_set_by_us: dict[str, str] = {}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def progress_wanted() -> bool:
    """Progress bars (tqdm, Lightning's) or, when False, periodic lines."""
    setting = os.environ.get(PROGRESS_ENV)
    if setting in ("0", "1"):
        return setting == "1"
    return bool(sys.stderr and sys.stderr.isatty())


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.levelno < logging.WARNING
            and str(record.msg).lstrip().startswith(QUIET_LOG_PREFIXES)
        )


_DROP_NOTICES = _DropNotices()


def configure(is_verbose: bool) -> None:
    """Quiet (the default) or verbose output for this process and the ones it starts."""
    lightning = logging.getLogger(LIGHTNING_LOGGER)
    if is_verbose:
        for key, value in list(_set_by_us.items()):
            if os.environ.get(key) == value:
                del os.environ[key]
            del _set_by_us[key]
        lightning.removeFilter(_DROP_NOTICES)
        return
    for key, value in QUIET_ENV.items():
        if key not in os.environ:
            os.environ[key] = _set_by_us[key] = value
    for message, _why in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    lightning.addFilter(_DROP_NOTICES)


T = TypeVar("T")


def progress(
    items: Iterable[T],
    desc: str,
    total: int | None = None,
    log: logging.Logger | None = None,
    every: float = 30.0,
) -> Iterator[T]:
    """``items``, reporting how far through them the loop is: a tqdm bar on a terminal
    (``progress_wanted``), else a line on ``log`` at most every ``every`` seconds and one at the
    end (when it took longer than ``every``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if progress_wanted():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)
        return
    log = log or logging.getLogger("siamese")
    started = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every:
            last = now
            log.info("%s", _progress_line(desc, done, total, now - started))
    elapsed = time.monotonic() - started
    if elapsed >= every:
        log.info("%s", _progress_line(desc, done, total, elapsed))


def _progress_line(desc: str, done: int, total: int | None, elapsed: float) -> str:
    if not total:
        return f"{desc}: {done} done, {format_seconds(elapsed)} elapsed"
    eta = elapsed / done * (total - done) if done else 0.0
    return (
        f"{desc}: {done}/{total} ({100 * done / total:.0f}%), {format_seconds(elapsed)} "
        f"elapsed, ETA {format_seconds(eta)}"
    )


def format_seconds(seconds: float) -> str:
    """``H:MM:SS``, for elapsed times and ETAs."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
