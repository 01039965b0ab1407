"""Running native-library work (ANTs, ITK) in a child process, so that a crash there becomes a
clear error instead of killing the caller (the CLI, the web app or Slicer)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from .errors import BrainImageNetError

T = TypeVar("T")


class WorkerCrashed(BrainImageNetError):
    """The child process died (for instance a segmentation fault inside ANTs)."""


def pool(processes: int = 1) -> ProcessPoolExecutor:
    """A pool of fresh ('spawn') worker processes: no state is shared with the caller."""
    return ProcessPoolExecutor(max_workers=max(1, processes), mp_context=multiprocessing.get_context("spawn"))


def run_isolated(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function(*args, **kwargs)`` in a fresh child process and return its result.

    Exceptions raised by the function come back as they are; a child that dies raises WorkerCrashed.
    """
    with pool(1) as executor:
        try:
            return executor.submit(function, *args, **kwargs).result()
        except BrokenProcessPool:
            raise WorkerCrashed(
                f"{getattr(function, '__name__', 'work')} crashed in a native library (ANTs/ITK); the input image may be unusual"
            ) from None
