"""The folder of a training run.

config.json        settings, manifest path and sha256 (a resumed run must match them)
environment.json   Python, platform, package versions, devices
splits.json        every fold's training / validation / test scans (subject, session)
fold<k>/           checkpoint.safetensors (last epoch), best.safetensors, result.json (done)
tensorboard/       one event folder per fold (``tensorboard --logdir RUN/tensorboard``)
predictions.tsv, metrics.json, roc.png, bundle/    written when every fold is done
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from BrainImageNetADLib.core.atomic import write_json_atomic
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.model.bundle import sha256_file

from .manifest import Scan
from .splits import Fold

PACKAGES = ("brainimagenet-ad", "torch", "numpy", "scipy", "scikit-learn", "nibabel", "safetensors", "tensorboard")


def environment() -> dict[str, Any]:
    """Python, platform, package versions and the devices torch sees."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": versions,
        "cuda_devices": cuda,
        "cpu_threads": torch.get_num_threads(),
        "command": sys.argv,
    }


class RunFolder:
    """Reads and writes the files of one run folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def fold_dir(self, fold: int) -> Path:
        folder = self.path / f"fold{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def start(
        self, config: dict[str, Any], resumable: Sequence[str], manifest: str | Path, scans: Sequence[Scan], folds: Sequence[Fold]
    ) -> None:
        """Create the folder, or check that the run in it has the same settings (InputError
        naming the differences otherwise); write config, environment and splits."""
        self.path.mkdir(parents=True, exist_ok=True)
        record = {"config": config, "manifest": str(Path(manifest).resolve()), "manifest_sha256": sha256_file(manifest)}
        existing = self.path / "config.json"
        if existing.is_file():
            old = json.loads(existing.read_text(encoding="utf-8"))
            differ = [k for k in config if k not in resumable and old["config"].get(k) != config[k]]
            if old.get("manifest_sha256") != record["manifest_sha256"]:
                differ.append("manifest contents")
            if differ:
                raise InputError(
                    f"{self.path} holds a run with other settings ({', '.join(differ)}); "
                    "use the same settings to resume it, or another --out for a new run"
                )
        write_json_atomic(existing, record)
        write_json_atomic(self.path / "environment.json", environment())

        def named(indices: Sequence[int]) -> list[str]:
            return [f"{scans[i].subject}/{scans[i].session}" if scans[i].session else scans[i].subject for i in indices]

        splits = [
            {
                "fold": f.index,
                "test_groups": list(f.test_groups),
                "train": named(f.train),
                "validation": named(f.validation),
                "test": named(f.test),
            }
            for f in folds
        ]
        write_json_atomic(self.path / "splits.json", splits)

    def fold_result(self, fold: int) -> dict[str, Any] | None:
        """The saved result of a finished fold, or None."""
        path = self.path / f"fold{fold}" / "result.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_fold_result(self, fold: int, result: dict[str, Any]) -> Path:
        return write_json_atomic(self.fold_dir(fold) / "result.json", result)
