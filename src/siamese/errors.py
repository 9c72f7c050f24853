"""Every failure the project reports as a clean, actionable message rather than a traceback.

One module for all of them: the library modules raise them, the CLI and the flows map them to a
message and an exit code, and importing this module is cheap (no third-party imports)."""

from __future__ import annotations


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the offending key."""


class DatasetError(ValueError):
    """The dataset is unusable as given; the message names the path or identity at fault."""


class BadImageError(ValueError):
    """An input could not be decoded as an image; the message names the input."""


class DownloadError(RuntimeError):
    """A download failed or did not verify; the message says which file and why."""


class TrainingFault(RuntimeError):
    """Training stopped on a numerical problem (a non-finite loss, a collapsed embedding); the
    message names where, and the last good checkpoint is kept for a resume."""


class NonFiniteLossError(TrainingFault):
    """Training produced NaN/inf; stopping keeps the last good checkpoint intact."""


class EmbeddingCollapseError(TrainingFault):
    """Every input maps to (nearly) the same embedding: the metric has degenerated."""


class GalleryError(ValueError):
    """A gallery cannot be built, read or searched; the message says why."""


class PromotionError(RuntimeError):
    """The promotion or rollback cannot (or must not) happen; the message says why."""


class ProjectLockedError(RuntimeError):
    """Another pipeline run holds the project; the message names it and what to do."""


class RegistryStateError(RuntimeError):
    """The tracking store or model registry lacks what a command needs (the training run, a
    version, a version's model files); the message names what is missing and the command that
    repairs it. Exit 2: rerunning the same command cannot help, the repairing command does."""
