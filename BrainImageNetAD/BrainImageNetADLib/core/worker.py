"""Running native-library work (ANTs, ITK) in a child process, so that a crash there becomes a
clear error instead of killing the caller (the CLI, the web app or Slicer).

The child is a plain interpreter started with ``subprocess`` (``python -m
BrainImageNetADLib.core.worker TASK RESULT``), not a ``multiprocessing`` worker: Slicer's launcher
(PythonSlicer) does not support ``multiprocessing``'s spawned workers, and one crashed pool
worker would break every later task. The interpreter is ``$BRAINIMAGENET_AD_PYTHON`` where set (the
Slicer module sets it to PythonSlicer for its runs), else the running one. Task and result travel
as pickles in a private temporary folder that only this process and its child write.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .errors import BrainImageNetError

T = TypeVar("T")
#: Environment variable naming the interpreter of worker processes.
PYTHON_ENV = "BRAINIMAGENET_AD_PYTHON"


class WorkerCrashed(BrainImageNetError):
    """The child process died (for instance a segmentation fault inside ANTs)."""


def worker_python() -> str:
    """The interpreter that runs worker processes: ``$BRAINIMAGENET_AD_PYTHON`` or this one."""
    return os.environ.get(PYTHON_ENV) or sys.executable


def child_environment() -> dict[str, str]:
    """This process's environment with the library's folder first on ``PYTHONPATH``, so that a
    child interpreter imports the same library."""
    env = dict(os.environ)
    library_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, env.get("PYTHONPATH")]))
    return env


def hidden_console() -> dict[str, Any]:
    """Popen arguments that keep a console window from opening for a child on Windows."""
    if os.name != "nt":
        return {}
    return {"creationflags": subprocess.CREATE_NO_WINDOW}


def run_isolated(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``function(*args, **kwargs)`` in a fresh child process and return its result.

    ``function`` and the arguments must be picklable by reference: functions of importable modules
    (not of a script run as ``__main__``), and plain data.
    Exceptions raised by the function come back as they are; a child that dies raises
    WorkerCrashed. The child's standard error (progress lines) is this process's.
    """
    name = getattr(function, "__name__", "work")
    with tempfile.TemporaryDirectory(prefix="brainimagenet-ad-worker-") as folder:
        task, result = Path(folder) / "task.pickle", Path(folder) / "result.pickle"
        task.write_bytes(pickle.dumps((sys.path, pickle.dumps((function, args, kwargs)))))
        command = [worker_python(), "-m", "BrainImageNetADLib.core.worker", str(task), str(result)]
        process = subprocess.Popen(command, env=child_environment(), stdin=subprocess.DEVNULL, **hidden_console())
        try:
            code = process.wait()
        except BaseException:  # interrupted or cancelled: the child goes too
            process.kill()
            process.wait()
            raise
        if not result.is_file():
            if code > 0 and code < 128:  # the interpreter itself stopped with an error: its messages are above
                raise WorkerCrashed(f"the worker process of {name} failed (exit code {code}; its messages are above)")
            raise WorkerCrashed(f"{name} crashed in a native library (ANTs/ITK; exit code {code}); the input image may be unusual")
        succeeded, value = pickle.loads(result.read_bytes())
    if succeeded:
        return value
    raise value


def _main(task: Path, result: Path) -> int:
    """The child's side: take the caller's import path, run the task, write ``(True, value)`` or
    ``(False, exception)``."""
    caller_path, payload = pickle.loads(task.read_bytes())
    sys.path[:] = list(dict.fromkeys([*caller_path, *sys.path]))
    function, args, kwargs = pickle.loads(payload)
    try:
        outcome = (True, function(*args, **kwargs))
    except Exception as error:  # noqa: BLE001 - every failure goes back to the caller
        outcome = (False, error)
    try:
        payload = pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - an exception that does not pickle comes back as text
        payload = pickle.dumps((False, BrainImageNetError("".join(traceback.format_exception_only(outcome[1])).strip())))
    partial = result.with_suffix(".partial")
    partial.write_bytes(payload)
    partial.replace(result)
    return 0


if __name__ == "__main__":
    sys.exit(_main(Path(sys.argv[1]), Path(sys.argv[2])))
