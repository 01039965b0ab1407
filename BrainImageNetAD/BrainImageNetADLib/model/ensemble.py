"""Ensemble prediction: the fold models of a bundle, probabilities averaged, a threshold applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..core import grid
from ..core.errors import InputError
from .bundle import ModelCard, load_fold_models, load_input_mask
from .engines import EnsembleRunner, openvino_runner, resolve_engine, state_digest, torch_runner
from .prediction import Prediction, classify


def resolve_device(device: str) -> torch.device:
    """Parse a torch device name (``cpu``, ``cuda``, ``cuda:1``, ``mps``, or ``auto``: the first
    CUDA GPU, else Apple's GPU, else the CPU) and check it exists here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda" and (not torch.cuda.is_available() or (resolved.index or 0) >= torch.cuda.device_count()):
        raise InputError(f"device {device!r} is not available on this machine (torch sees {torch.cuda.device_count()} CUDA devices)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise InputError("device 'mps' is not available on this machine")
    return resolved


class Ensemble:
    """The fold models of one bundle, ready for inference on the CPU or a GPU.

    Example::

        ensemble = Ensemble.from_bundle("Resources/Models/demo")
        probs, per_fold = ensemble.predict_proba(x)   # x: (N, C, 96, 120, 86)
    """

    def __init__(
        self,
        card: ModelCard,
        models: list[torch.nn.Module],
        device: str = "cpu",
        input_mask: np.ndarray | None = None,
        engine: str | None = None,
        threads: int | None = None,
        precision: str = "f32",
    ) -> None:
        self.card = card
        self.input_mask = input_mask
        self.device = resolve_device(device)
        # channels_last_3d: about twice as fast for 3D convolutions on CPUs (measured with bench predict).
        self.models = [m.to(self.device, memory_format=torch.channels_last_3d).eval() for m in models]
        self.engine = resolve_engine(engine, self.device)
        self.precision = precision
        if self.engine == "openvino":
            self.run: EnsembleRunner = openvino_runner(
                self.models, self._weights_key(), self.n_channels, grid.MODEL_SHAPE, threads or 0, precision
            )
        else:
            self.run = torch_runner(self.models, self.device, precision)

    def _weights_key(self) -> str:
        """Identity of the fold weights for the compiled-graph cache: the card's sha256 of each
        fold file, or a digest of the tensors for networks that do not come from a bundle."""
        folds = self.card.data.get("folds", [])
        if len(folds) == len(self.models) and all("sha256" in f for f in folds):
            return ",".join(str(f["sha256"]) for f in folds)
        return ",".join(state_digest(m) for m in self.models)

    @classmethod
    def from_bundle(
        cls, bundle_dir: str | Path, device: str = "cpu", threads: int | None = None, engine: str | None = None, precision: str = "f32"
    ) -> Ensemble:
        """Load and verify a bundle (see ``bundle.load_fold_models``). ``threads`` sets torch's
        intra-op CPU threads and OpenVINO's (None leaves their defaults); ``engine`` is ``torch`` or
        ``openvino`` (None: ``engines.default_engine``); ``precision`` ``f32`` or ``bf16``."""
        if threads is not None:
            torch.set_num_threads(max(1, int(threads)))
        card, models = load_fold_models(bundle_dir)
        return cls(card, models, device, load_input_mask(bundle_dir, card), engine, threads, precision)

    def fold_models(self, fold: int | None = None) -> list[torch.nn.Module]:
        """The fold networks, or only fold ``fold`` (InputError when the bundle has no such fold)."""
        if fold is None:
            return self.models
        if not 0 <= fold < len(self.models):
            raise InputError(f"fold must lie in 0..{len(self.models) - 1}")
        return [self.models[fold]]

    @property
    def n_channels(self) -> int:
        return len(self.card.channels)

    def check_input(self, x: np.ndarray) -> np.ndarray:
        """Validate a batch (N, C, 96, 120, 86) on the model grid; return it as float32."""
        expected = (self.n_channels, *grid.MODEL_SHAPE)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise InputError(f"expected input of shape (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}")
        if not np.isfinite(x).all():
            raise InputError("input holds NaN or infinite values")
        return np.ascontiguousarray(x, dtype=np.float32)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Validate a batch (N, C, 96, 120, 86) and apply the card's input conventions: multiply
        every channel by the bundle's mask, round to float16 (as the authors' scripts stored
        their inputs). Returns float32. Apply once: ``predict_proba`` applies it itself, and only
        code that runs the networks directly (occlusion) calls it. Bundles trained here have no
        conventions."""
        x = self.check_input(x)
        if self.input_mask is not None:
            x = x * self.input_mask[None, None]
        if self.card.conventions.get("round_float16"):
            x = x.astype(np.float16).astype(np.float32)
        return x

    def predict_proba(self, x: np.ndarray, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """AD probabilities of a batch: returns ``(mean, per_fold)`` of shapes (N,) and (N, F).

        ``x`` has shape (N, C, 96, 120, 86) with the card's channels in order; the card's input
        conventions are applied (``prepare``). Runs on the ensemble's engine; deterministic: eval
        mode (dropout off, batch-norm running statistics), no gradients.
        """
        x = self.prepare(x)
        per_fold = np.zeros((x.shape[0], len(self.models)), dtype=np.float64)
        for start in range(0, x.shape[0], max(1, batch_size)):
            per_fold[start : start + batch_size] = 1.0 / (1.0 + np.exp(-self.run(x[start : start + batch_size])))
        return per_fold.mean(axis=1), per_fold

    def predict(self, channels: np.ndarray, threshold: float = 0.5) -> Prediction:
        """Predict one subject from its maps, shape (C, 96, 120, 86), at ``threshold``."""
        mean, per_fold = self.predict_proba(channels[None])
        return classify(float(mean[0]), per_fold[0].tolist(), self.card, threshold)
