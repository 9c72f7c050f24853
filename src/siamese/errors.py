"""Failures a stage reports as a clean message rather than a traceback, shared by the library
modules that raise them and the CLI that prints them (importing this module is cheap)."""

from __future__ import annotations


class TrainingFault(RuntimeError):
    """Training stopped on a numerical problem (a non-finite loss, a collapsed embedding); the
    message names where, and the last good checkpoint is kept for a resume."""
