"""Exceptions that the command line and the GUIs turn into clear messages, and the exit codes of
the commands (``run_command``)."""

from __future__ import annotations

import sys
from collections.abc import Callable


class BrainImageNetError(Exception):
    """Base class of the errors this library raises on purpose."""


class InputError(BrainImageNetError):
    """The user's input (image file, array, option) cannot be used as given.

    The command line maps it to exit code 2 and a one-line ``error: ...`` message.
    """


class ContrastRefused(InputError):
    """The scan's tissue contrast is not that of a T1 (a FLAIR, a T2- or proton-density-weighted
    scan...): it is refused as soon as the contrast is measured, before any map is made, and no
    option lets it reach the networks. ``measures``: the contrast measures that decided it
    (``qc.contrast_measures``)."""

    def __init__(self, message: str, measures: dict | None = None) -> None:
        super().__init__(message)
        self.measures = measures or {}

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.measures))


class BundleError(BrainImageNetError):
    """A model bundle is missing, corrupt, unsafe (pickle) or does not match its card."""


class Cancelled(BrainImageNetError):
    """The user cancelled a long run (preprocessing, training, occlusion)."""


class SubjectsFailed(BrainImageNetError):
    """A cohort run finished, but some subjects failed (their rows in the table say why). The
    command line maps it to exit code 3."""


def run_command(work: Callable[[], int | None], interrupted: str = "interrupted") -> int:
    """Run the work of a command and return the process exit code: the work's own (0 when it
    returns None); 3 for SubjectsFailed, 2 for any other BrainImageNetError or a missing file,
    130 for an interrupt, each after one line ``error: ...`` on stderr (``interrupted`` is that
    line's text for an interrupt)."""
    try:
        code = work()
    except SubjectsFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (BrainImageNetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: {interrupted}", file=sys.stderr)
        return 130
    return 0 if code is None else code
