"""One prediction run (preprocessing, ensemble, occlusion map) in a child process, polled by a GUI.

The Slicer widget polls with a Qt timer and the web page with an asyncio task: neither freezes,
and a crash in a native library or a cancel never takes the GUI down. The child is
``case_process`` (``pipeline.run_case``); its results are the files it writes.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..case_process import spec
from ..core.progress import STAGE_GROUPS, stage_group
from ..core.worker import PYTHON_ENV, child_environment, hidden_console
from ..pipeline import CaseOptions

#: Device choices of both skins: torch device name -> label ("auto": a GPU where torch sees one).
DEVICES = {
    "cpu": "CPU",
    "auto": "GPU where available, else CPU",
    "cuda": "NVIDIA GPU (CUDA)",
    "mps": "Apple GPU (Metal)",
}


@dataclass
class JobStatus:
    """Where a run stands: ``state`` is "running", "done", "failed" or "cancelled";
    ``stages`` maps each group of ``STAGE_GROUPS`` to its completed fraction in [0, 1];
    ``message`` is the current stage or, when failed, the one-line error."""

    state: str
    stages: dict[str, float] = field(default_factory=dict)
    message: str = ""


def case_command(source: Path | dict[str, Path], out_dir: Path, bundle: Path, options: CaseOptions, python: str | None = None) -> list[str]:
    """The command line of a run: ``python -m BrainImageNetADLib.case_process SPEC``
    (``source``: a T1 file, or SPM maps ``{"GMD": wc1, "GMV": mwc1}``)."""
    return [python or sys.executable, "-m", "BrainImageNetADLib.case_process", spec(source, out_dir, bundle, options)]


def _new_process_group() -> dict:
    """Popen arguments that start the child in its own process group (so that a cancel reaches
    the workers it starts and never the GUI) and, on Windows, without a console window."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}


def kill_tree(pid: int) -> None:
    """End process ``pid`` and its descendants: its process group on POSIX (``PredictionJob``
    starts it as a group leader), ``taskkill /T`` on Windows, where terminating the launcher
    (PythonSlicer) alone would leave the real interpreter running."""
    if os.name == "posix":
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True, **hidden_console())


class PredictionJob:
    """A running ``predict`` child process.

    ``poll()`` never blocks: it returns the latest ``JobStatus``; ``cancel()`` stops the child and
    its own workers. The results are in ``out_dir`` (``result.json`` and the maps) once the state
    is "done".
    """

    def __init__(
        self,
        source: Path | dict[str, Path],
        out_dir: Path,
        bundle: Path,
        options: CaseOptions | None = None,
        python: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.command = case_command(source, self.out_dir, Path(bundle), options or CaseOptions(), python)
        env = child_environment()
        env[PYTHON_ENV] = self.command[0]  # the run's own workers start the same way
        self._process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            env=env,
            **_new_process_group(),
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._cancelled = False
        self._errors: list[str] = []
        self.status = JobStatus("running", dict.fromkeys(STAGE_GROUPS, 0.0), "starting")

    def _read(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._lines.put(line.rstrip("\n"))

    def poll(self) -> JobStatus:
        """Read the child's new output and return the current status."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line.startswith("progress: "):
                stage, _, fraction = line[len("progress: ") :].rpartition(" ")
                group = stage_group(stage)
                if group is not None:
                    self.status.stages[group] = float(fraction)
                    self.status.message = stage
            elif line.strip():
                self._errors.append(line.strip())
        code = self._process.poll()
        if code is None or self.status.state != "running" or self._reader.is_alive():
            return self.status
        if self._cancelled:
            self.status.state, self.status.message = "cancelled", "cancelled"
        elif code == 0:
            self.status.state, self.status.message = "done", "done"
        else:
            errors = [e for e in self._errors if e.startswith("error: ")]
            self.status.state = "failed"
            self.status.message = errors[-1][len("error: ") :] if errors else f"prediction failed (exit code {code}): {self._errors[-1:]}"
        return self.status

    def warnings(self) -> list[str]:
        """Lines the child printed that are neither progress nor the final error (warnings of the
        libraries it ran; the QC warnings are in the result)."""
        return [e for e in self._errors if not e.startswith("error: ")]

    def cancel(self) -> None:
        """Stop the run, the child and every process it started (its preprocessing worker);
        ``poll()`` then reports "cancelled"."""
        if self._process.poll() is None:
            self._cancelled = True
            kill_tree(self._process.pid)

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the run ends (scripts and tests); return the final status."""
        self._process.wait(timeout)
        self._reader.join(timeout)
        return self.poll()
