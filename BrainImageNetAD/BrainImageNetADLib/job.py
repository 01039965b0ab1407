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
from .worker import PYTHON_ENV, child_environment, hidden_console

#: The heat-map methods of one case (``occlusion.occlusion_map``): exact occlusion by incremental
#: inference, coarse to fine, naive full passes (the reference), gradient x input.
OCCLUSION_METHODS = ("incremental", "approximate", "naive", "gradient")
#: Heat-map kinds of one case and the key of ``result.json`` that holds each: the occlusion map
#: (drop in AD probability when a cube is masked) and the risk map (``riskmap``: AD probability of
#: the model's template with one cube taken from the subject).
HEAT_MAP_KEYS = {"occlusion": "occlusion", "risk": "risk_map"}
#: Heat-map choices of both skins: name -> (label, kind, method, fold model or None for all).
HEAT_MAPS = {
    "ensemble": ("Occlusion, whole ensemble (exact)", "occlusion", "incremental", None),
    "approximate": ("Occlusion, whole ensemble (approximate, about 4x faster)", "occlusion", "approximate", None),
    "fold": ("Occlusion, first fold model (about 5x faster)", "occlusion", "incremental", 0),
    "gradient": ("Gradient x input (seconds, a preview)", "occlusion", "gradient", None),
    "risk": ("Risk map, whole ensemble (exact)", "risk", "incremental", None),
    "risk-approximate": ("Risk map, whole ensemble (approximate preview)", "risk", "approximate", None),
    "none": ("No heat map", "occlusion", "none", None),
}


def heat_map_section(result: dict) -> dict:
    """The heat-map section of a ``result.json`` (one per run: its risk map or its occlusion
    map), or {} when the run made none."""
    for key in HEAT_MAP_KEYS.values():
        if result.get(key):
            return result[key]
    return {}


#: Device choices of both skins: torch device name -> label ("auto": a GPU where torch sees one).
DEVICES = {
    "cpu": "CPU",
    "auto": "GPU where available, else CPU",
    "cuda": "NVIDIA GPU (CUDA)",
    "mps": "Apple GPU (Metal)",
}


@dataclass
class RunOptions:
    """What a run computes.

    preset: preprocessing preset ("fast" or "accurate"); heat_map: a kind of ``HEAT_MAP_KEYS``;
    occlusion: the heat map's method, "incremental" (exact),
    "approximate" (coarse to fine), "gradient" (seconds, a preview) or "none"; occlusion_fold: map one fold model instead of the
    whole ensemble (about 5x faster); force: predict even when preprocessing QC fails; threshold: the decision threshold on the
    AD probability (None: the model card's "balanced" preset); device: torch device ("cpu", "cuda", "cuda:1", "mps").
    """

    preset: str = "fast"
    heat_map: str = "occlusion"
    occlusion: str = "incremental"
    occlusion_fold: int | None = None
    force: bool = False
    threads: int | None = None
    threshold: float | None = None
    device: str = "cpu"

    @classmethod
    def for_heat_map(cls, name: str, force: bool = False, device: str = "cpu") -> RunOptions:
        """Options of a ``HEAT_MAPS`` choice (``force``: predict even when QC fails; ``device``: a
        ``DEVICES`` name)."""
        _, kind, method, fold = HEAT_MAPS[name]
        return cls(heat_map=kind, occlusion=method, occlusion_fold=fold, force=force, device=device)


@dataclass
class JobStatus:
    """Where a run stands: ``state`` is "running", "done", "failed" or "cancelled";
    ``stages`` maps each group of ``STAGE_GROUPS`` to its completed fraction in [0, 1];
    ``message`` is the current stage or, when failed, the one-line error."""

    state: str
    stages: dict[str, float] = field(default_factory=dict)
    message: str = ""


def predict_command(
    source: Path | dict[str, Path], out_dir: Path, bundle: Path, options: RunOptions, python: str | None = None
) -> list[str]:
    """The command line of a run: ``python -m BrainImageNetADLib.cli predict T1 --out DIR ...``
    (``source``: a T1 file, or SPM maps ``{"GMD": wc1, "GMV": mwc1}``)."""
    inputs = ["--gmd", str(source["GMD"]), "--gmv", str(source["GMV"])] if isinstance(source, dict) else [str(source)]
    command = [python or sys.executable, "-m", "BrainImageNetADLib.cli", "predict", *inputs, "--out", str(out_dir)]
    command += ["--model", str(bundle), "--preset", options.preset, "--occlusion", options.occlusion, "--progress"]
    if options.heat_map != "occlusion":
        command += ["--heat-map", options.heat_map]
    if options.occlusion_fold is not None:
        command += ["--occlusion-fold", str(options.occlusion_fold)]
    if options.threads:
        command += ["--threads", str(options.threads)]
    if options.threshold is not None:
        command += ["--threshold", repr(float(options.threshold))]
    if options.device != "cpu":
        command += ["--device", options.device]
    if options.force:
        command.append("--force")
    return command


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
        options: RunOptions | None = None,
        python: str | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.command = predict_command(source, self.out_dir, Path(bundle), options or RunOptions(), python)
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
