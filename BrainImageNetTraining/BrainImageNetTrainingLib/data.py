"""Training targets and model inputs of the scans of a manifest.

Tasks: ``sex`` (target 1 = male), ``age`` (years) and ``ad`` (1 = AD, 0 = NC; MCI scans have no
training target but are predicted in the test folds). Inputs are the scans' maps on the model
grid, shape (C, 96, 120, 86) float32, channels as named (``GMD``, ``GMV``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.model.maps import load_model_input

from .manifest import Scan

TASKS = ("sex", "age", "ad")
CHANNELS = ("GMD", "GMV")
#: Above this many bytes of maps, inputs are read from disk each time instead of kept in memory.
CACHE_LIMIT_BYTES = 6 << 30


def target(scan: Scan, task: str) -> float | None:
    """Training target of ``scan`` for ``task``, or None when the scan has none."""
    if task == "ad":
        return {"AD": 1.0, "NC": 0.0}.get(scan.diagnosis)
    if task == "sex":
        return {"M": 1.0, "F": 0.0}.get(scan.sex)
    if task == "age":
        return scan.age
    raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")


def check_channels(scans: Sequence[Scan], channels: Sequence[str]) -> None:
    """Raise InputError when a scan lacks a map for one of ``channels``."""
    for kind in channels:
        if kind not in CHANNELS:
            raise InputError(f"unknown input channel {kind!r}; choose from {list(CHANNELS)}")
        missing = [s.subject for s in scans if getattr(s, kind.lower()) is None]
        if missing:
            raise InputError(f"{len(missing)} scans have no {kind} map (column {kind.lower()}), e.g. {', '.join(missing[:3])}")


class MapStore:
    """Model inputs of the scans, read on demand and kept in memory when they fit.

    ``get(indices)`` returns a float32 tensor (len(indices), C, 96, 120, 86).
    """

    def __init__(self, scans: Sequence[Scan], channels: Sequence[str], cache: bool | None = None) -> None:
        check_channels(scans, channels)
        self.scans = scans
        self.channels = list(channels)
        per_scan = 4 * len(self.channels) * 96 * 120 * 86
        self.cache = len(scans) * per_scan <= CACHE_LIMIT_BYTES if cache is None else cache
        self._memory: dict[int, np.ndarray] = {}

    def one(self, index: int) -> np.ndarray:
        """Maps of scan ``index``, shape (C, 96, 120, 86)."""
        if index in self._memory:
            return self._memory[index]
        scan = self.scans[index]
        try:
            array, _ = load_model_input({"GMD": scan.gmd, "GMV": scan.gmv}, self.channels)
        except InputError as exc:
            raise InputError(f"subject {scan.subject} {scan.session}: {exc}") from None
        if self.cache:
            self._memory[index] = array
        return array

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.one(i) for i in indices]))


class StemFeatures:
    """Outputs of a frozen stem for every scan, computed once (training with ``freeze_stem``)."""

    def __init__(self, store: MapStore, stem: torch.nn.Module, device: torch.device) -> None:
        self._features: dict[int, torch.Tensor] = {}
        self.store, self.stem, self.device = store, stem, device

    def get(self, indices: Sequence[int]) -> torch.Tensor:
        """Stem outputs (len(indices), C', D', H', W') float32 for scans ``indices``."""
        self.stem.eval()
        with torch.inference_mode():
            for i in indices:
                if i not in self._features:
                    x = self.store.get([i]).to(self.device).contiguous(memory_format=torch.channels_last_3d)
                    self._features[i] = self.stem(x)[0].float().cpu()
        return torch.stack([self._features[i] for i in indices])
