"""Callbacks of long work (preprocessing, training, evaluation, occlusion maps).

``progress(stage, fraction)`` reports what is running and how much of the whole is done
(``fraction`` in [0, 1]); ``should_cancel()`` is polled between steps, and a True answer stops the
work with ``errors.Cancelled``.
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import Cancelled

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]

#: The stages preprocessing reports, in order (``preprocess.preprocess_t1``).
PREPROCESSING_STAGES = ("read", "affine", "n4", "segment", "syn", "write")


def check_cancel(should_cancel: CancelCallback | None, what: str) -> None:
    """Raise Cancelled("<what> cancelled") when ``should_cancel`` says so."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"{what} cancelled")
