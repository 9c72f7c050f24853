"""Every failure the project reports as a clean, actionable message rather than a traceback.

One module for all of them: the library modules raise them, the CLI and the flows map them to a
message and an exit code, and importing this module is cheap (no third-party imports)."""

from __future__ import annotations

import errno
import os
import signal

# Exit codes of the ``siamese`` commands (README "Exit codes"): each error class below carries
# its own, so the CLI's one translation (siamese.cli) needs no list of classes.
EXIT_FAILED = 1  # an unexpected error (a bug): `siamese --verbose ...` shows the traceback
EXIT_BAD_INPUT = 2
EXIT_PROMOTION_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_TRAINING_FAULT = 5
EXIT_SYSTEM = 6
EXIT_ACCESS_DENIED = 7


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the offending key."""

    exit_code = EXIT_BAD_INPUT


class DatasetError(ValueError):
    """The dataset is unusable as given; the message names the path or identity at fault."""

    exit_code = EXIT_BAD_INPUT


class BadImageError(ValueError):
    """An input could not be decoded as an image; the message names the input."""

    exit_code = EXIT_BAD_INPUT


class DownloadError(RuntimeError):
    """A download failed or did not verify; the message says which file and why."""

    exit_code = EXIT_FAILED


class TrainingFault(RuntimeError):
    """Training stopped on a numerical problem (a non-finite loss, a collapsed embedding); the
    message names where, and the last good checkpoint is kept for a resume."""

    exit_code = EXIT_TRAINING_FAULT


class NonFiniteLossError(TrainingFault):
    """Training produced NaN/inf; stopping keeps the last good checkpoint intact."""


class EmbeddingCollapseError(TrainingFault):
    """Every input maps to (nearly) the same embedding: the metric has degenerated."""


class GalleryError(ValueError):
    """A gallery cannot be built, read or searched; the message says why."""

    exit_code = EXIT_BAD_INPUT


class OnnxExportError(RuntimeError):
    """The encoder could not be exported to ONNX, or its ONNX graph does not match PyTorch on real
    images; the message names the operator or the measured difference. Registration fails on it
    only where ONNX is required (``serve.runtime: onnx``) or the export is wrong, never silently."""

    exit_code = EXIT_BAD_INPUT


class OnnxParityError(OnnxExportError):
    """The ONNX graph was exported but its outputs differ from PyTorch's on real images by more
    than the tolerance: a version is never registered with a wrong export."""


class PromotionError(RuntimeError):
    """The promotion or rollback cannot (or must not) happen; the message says why."""

    exit_code = EXIT_PROMOTION_REFUSED


class ProjectError(ValueError):
    """The project cannot do what was asked as it stands (e.g. a sweep in a folder without a git
    commit for DVC experiments); the message says what to set up."""

    exit_code = EXIT_BAD_INPUT


class ProjectLockedError(RuntimeError):
    """Another pipeline run holds the project; the message names it and what to do."""

    exit_code = EXIT_FAILED


class PathError(ValueError):
    """A path the params or the input name cannot be used as a file name (too long, missing, not a
    directory, a symlink loop); the message names it and what to change."""

    exit_code = EXIT_BAD_INPUT


class SystemResourceError(RuntimeError):
    """The machine refused a read or write the stage needed: no space left, a quota, a file too
    large, a read-only file system, permission denied, too many open files, out of memory, an I/O
    error. Nothing was published; the message names the path and what to do."""

    exit_code = EXIT_SYSTEM


class TrackingRejectedError(ValueError):
    """The MLflow tracking store refused a request as invalid (a bad or conflicting name, a
    missing model, run or experiment): rerunning will not help, the input must change."""

    exit_code = EXIT_BAD_INPUT


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking server could not be reached or failed the request (permission denied,
    an internal error): rerun when it is back or the credentials are fixed."""

    exit_code = EXIT_UNREACHABLE


class AccessDeniedError(RuntimeError):
    """The MLflow tracking server did not let this caller do it: no credentials or wrong ones
    (401), or a user whose role lacks the permission (403; moving ``champion`` without MANAGE on
    the registered model). Nothing was changed; rerunning cannot help until the credentials or
    the grants change, so it has its own exit code (and no retry)."""

    exit_code = EXIT_ACCESS_DENIED


class PackageIntegrityError(RuntimeError):
    """A model package's files differ from the SHA-256 digests recorded when it was registered
    (its weights or specs were altered afterwards): it is refused, never served. The message
    names the file and both digests."""

    exit_code = EXIT_BAD_INPUT


class StageFailed(RuntimeError):
    """A pipeline step run as its own process (a DVC stage, ``dvc push``, ``siamese promote``)
    failed. ``str()`` is the step's own one-line error; ``output`` keeps everything it printed
    (shown by ``--verbose``) and ``exit_code`` the step's documented exit code."""

    def __init__(self, step: str, message: str, exit_code: int = EXIT_FAILED, output: str = ""):
        super().__init__(f"{step} failed: {message}")
        self.step, self.message, self.exit_code, self.output = step, message, exit_code, output

    def __reduce__(self):  # Prefect pickles a failed task's exception
        return type(self), (self.step, self.message, self.exit_code, self.output)


# errno -> (what happened, what to do): a path that cannot be used (exit 2), or the machine
# refusing (exit 6; so is any errno not listed)
_PATH_ERRNOS = {
    errno.ENAMETOOLONG: (
        "file name too long",
        "choose a shorter name (a file or folder name is limited to 255 bytes, a path to 4096); "
        "if it comes from params.yaml (data.source), a --set value or an option, shorten it",
    ),
    errno.ENOENT: ("no such file or directory", "check the path (data.source in params.yaml)"),
    errno.ENOTDIR: ("a part of the path is not a directory", "check the path"),
    errno.EISDIR: ("is a directory where a file was expected", "check the path"),
    errno.ELOOP: ("too many levels of symbolic links", "fix the symlink loop"),
}
_SYSTEM_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free disk space (df -h) and rerun"),
    errno.EDQUOT: ("disk quota exceeded", "free space within the quota and rerun"),
    errno.EFBIG: ("file too large", "raise the file-size limit (ulimit -f) or free space"),
    errno.EROFS: ("read-only file system", "run the project on a writable file system"),
    errno.EACCES: ("permission denied", "give this user access to the path (ls -l) and rerun"),
    errno.EPERM: ("operation not permitted", "give this user access to the path and rerun"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) and rerun"),
    errno.ENFILE: ("too many open files in the system", "close other programs and rerun"),
    errno.ENOMEM: ("out of memory", "free memory or use smaller params and rerun"),
    errno.EIO: ("input/output error", "check the disk (dmesg) and rerun"),
}


def _short_path(name: object, keep: int = 120) -> str:
    text = os.fsdecode(name) if isinstance(name, str | bytes) else str(name)
    if len(text) <= keep:
        return text
    return f"{text[: keep // 2]}...{text[-keep // 2 :]} ({len(text)} characters)"


def from_os_error(err: OSError, stage: str | None = None) -> PathError | SystemResourceError:
    """The project's error for an operating-system error: one line naming the path (shortened if
    it is huge), what happened and what to do, and the class that carries the exit code."""
    paths = [p for p in (err.filename, err.filename2) if p is not None]
    where = f": {' -> '.join(_short_path(p) for p in paths)}" if paths else ""
    prefix = f"{stage}: " if stage else ""
    if err.errno in _PATH_ERRNOS:
        what, todo = _PATH_ERRNOS[err.errno]
        return PathError(f"{prefix}{what}{where}: {todo}")
    what, todo = _SYSTEM_ERRNOS.get(
        err.errno, (err.strerror or str(err) or type(err).__name__, "check the path and rerun")
    )
    name = errno.errorcode.get(err.errno, type(err).__name__) if err.errno else type(err).__name__
    tail = "; nothing was published and the previous outputs are unchanged" if stage else ""
    return SystemResourceError(f"{prefix}{what} ({name}){where}: {todo}{tail}")


class Interrupted(KeyboardInterrupt):
    """A signal (SIGTERM, SIGHUP) asked the command to stop. Raised by the CLI's handler so that
    the stage unwinds as on Ctrl-C: its MLflow run is ended FAILED, its scratch directory removed
    (a training keeps its last epoch checkpoint to resume from), the previous outputs in place."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    def __reduce__(self):
        return type(self), (self.signum,)


class RegistryStateError(RuntimeError):
    """The tracking store or model registry lacks what a command needs (the training run, a
    version, a version's model files); the message names what is missing and the command that
    repairs it. Exit 2: rerunning the same command cannot help, the repairing command does."""

    exit_code = EXIT_BAD_INPUT


def in_chain(err: BaseException | None, kind: type) -> BaseException | None:
    """``err`` or the first exception that caused it which is a ``kind`` (the one walk of a
    cause chain, used by the CLI's error translation and the tracking-error mapping)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
