"""Callbacks of long work (preprocessing, training, evaluation, occlusion maps).

``progress(stage, fraction)`` reports what is running and how much of the whole is done
(``fraction`` in [0, 1]); ``should_cancel()`` is polled between steps, and a True answer stops the
work with ``errors.Cancelled``.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from typing import Any

from .errors import Cancelled

ProgressCallback = Callable[[str, float], None]
CancelCallback = Callable[[], bool]

#: The stages preprocessing reports, in order (``preprocess.preprocess_t1``).
PREPROCESSING_STAGES = ("read", "affine", "n4", "segment", "normalise", "write")

#: Stage groups shown as progress bars (one per group, by both skins and on a terminal), and the
#: stage names the command line reports for each (a heat-map stage is "occlusion model 2/5" or "risk model 2/5").
STAGE_GROUPS = {
    "Preprocessing": PREPROCESSING_STAGES,
    "Ensemble": ("ensemble",),
    "Heat map": ("occlusion", "risk"),
}


def stage_group(stage: str) -> str | None:
    """The ``STAGE_GROUPS`` key of a stage name, or None for a stage outside them."""
    for group, names in STAGE_GROUPS.items():
        if stage.split()[0] in names:
            return group
    return None


class TerminalProgress:
    """A progress callback for people at a terminal: one bar per stage group (tqdm) with the
    current stage, the elapsed time and an estimate of the time left, on stderr. Stages outside
    ``STAGE_GROUPS`` (training, evaluation) share one bar. Picklable: a child process that gets it
    draws its own bars (preprocessing runs in one)."""

    def __init__(self) -> None:
        self._group: str | None = None
        self._bar: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def __call__(self, stage: str, fraction: float) -> None:
        from tqdm import tqdm

        group = stage_group(stage) or "Progress"
        if group != self._group:
            self.close()
            self._group = group
            size = shutil.get_terminal_size((100, 24))  # a terminal that reports no size (0 x 0) gets 100 x 24
            self._bar = tqdm(
                ncols=min(size.columns, 120),
                nrows=size.lines,
                total=1000,
                desc=group,
                file=sys.stderr,
                leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar:24}| {elapsed}<{remaining}",
            )
        self._bar.set_description_str(f"{group} ({stage})" if stage.lower() != group.lower() else group, refresh=False)
        self._bar.n = min(1000, max(0, round(1000 * fraction)))
        self._bar.refresh()
        if fraction >= 1.0:
            self.close()

    def close(self) -> None:
        """End the current bar (left on screen as it is)."""
        if self._bar is not None:
            self._bar.close()
        self._bar, self._group = None, None


def check_cancel(should_cancel: CancelCallback | None, what: str) -> None:
    """Raise Cancelled("<what> cancelled") when ``should_cancel`` says so."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"{what} cancelled")


def print_progress(stage: str, fraction: float) -> None:
    """Progress callback of long commands: one ``progress: STAGE FRACTION`` line on stderr, for a
    person or for a GUI that runs the command and reads its output."""
    print(f"progress: {stage} {fraction:.2f}", file=sys.stderr, flush=True)


def progress_for(lines: bool) -> ProgressCallback | None:
    """The progress callback of a long command: ``progress:`` lines with ``--progress`` (for
    programs), bars with the time left when stderr is a terminal (for people), else none."""
    if lines:
        return print_progress
    return TerminalProgress() if sys.stderr.isatty() else None
