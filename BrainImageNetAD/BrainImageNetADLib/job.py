"""One prediction run (preprocessing, ensemble, occlusion map) in a child process, polled by a GUI.

The Slicer widget polls with a Qt timer and the web page with an asyncio task: neither freezes,
and a crash in a native library or a cancel never takes the GUI down. The child is the command
line (``brainimagenet-ad predict --progress``); its results are the files it writes.
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

from .progress import STAGE_GROUPS, stage_group

#: Heat-map choices of both skins: name -> (label, occlusion method, fold model or None for all).
HEAT_MAPS = {
    "ensemble": ("Occlusion, whole ensemble (exact)", "incremental", None),
    "approximate": ("Occlusion, whole ensemble (approximate, about 4x faster)", "approximate", None),
    "fold": ("Occlusion, first fold model (about 5x faster)", "incremental", 0),
    "gradient": ("Gradient x input (seconds, a preview)", "gradient", None),
    "none": ("No heat map", "none", None),
}


@dataclass
class RunOptions:
    """What a run computes.

    preset: preprocessing preset ("fast" or "accurate"); occlusion: "incremental" (exact),
    "approximate" (coarse to fine), "gradient" (seconds, a preview) or "none"; occlusion_fold: map one fold model instead of the
    whole ensemble (about 5x faster); force: predict even when preprocessing QC fails.
    """

    preset: str = "fast"
    occlusion: str = "incremental"
    occlusion_fold: int | None = None
    force: bool = False
    threads: int | None = None

    @classmethod
    def for_heat_map(cls, name: str, force: bool = False) -> RunOptions:
        """Options of a ``HEAT_MAPS`` choice (``force``: predict even when QC fails)."""
        _, method, fold = HEAT_MAPS[name]
        return cls(occlusion=method, occlusion_fold=fold, force=force)


@dataclass
class JobStatus:
    """Where a run stands: ``state`` is "running", "done", "failed" or "cancelled";
    ``stages`` maps each group of ``STAGE_GROUPS`` to its completed fraction in [0, 1];
    ``message`` is the current stage or, when failed, the one-line error."""

    state: str
    stages: dict[str, float] = field(default_factory=dict)
    message: str = ""


def predict_command(t1: Path, out_dir: Path, bundle: Path, options: RunOptions, python: str | None = None) -> list[str]:
    """The command line of a run: ``python -m BrainImageNetADLib.cli predict T1 --out DIR ...``."""
    command = [python or sys.executable, "-m", "BrainImageNetADLib.cli", "predict", str(t1), "--out", str(out_dir)]
    command += ["--model", str(bundle), "--preset", options.preset, "--occlusion", options.occlusion, "--progress"]
    if options.occlusion_fold is not None:
        command += ["--occlusion-fold", str(options.occlusion_fold)]
    if options.threads:
        command += ["--threads", str(options.threads)]
    if options.force:
        command.append("--force")
    return command


def _new_process_group() -> dict:
    """Popen arguments that start the child in its own process group, so that a cancel reaches
    the workers it starts and never the GUI."""
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}


class PredictionJob:
    """A running ``predict`` child process.

    ``poll()`` never blocks: it returns the latest ``JobStatus``; ``cancel()`` stops the child and
    its own workers. The results are in ``out_dir`` (``result.json`` and the maps) once the state
    is "done".
    """

    def __init__(self, t1: Path, out_dir: Path, bundle: Path, options: RunOptions | None = None, python: str | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.command = predict_command(Path(t1), self.out_dir, Path(bundle), options or RunOptions(), python)
        env = dict(os.environ)
        library_root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [library_root, env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            self.command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
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
        """Stop the run (the child and its workers); ``poll()`` then reports "cancelled"."""
        if self._process.poll() is None:
            self._cancelled = True
            if os.name == "posix":
                try:
                    os.killpg(self._process.pid, signal.SIGTERM)  # the child and its preprocessing worker
                except ProcessLookupError:
                    pass
            else:
                self._process.terminate()

    def wait(self, timeout: float | None = None) -> JobStatus:
        """Block until the run ends (scripts and tests); return the final status."""
        self._process.wait(timeout)
        self._reader.join(timeout)
        return self.poll()
