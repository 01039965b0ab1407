"""Model cards of the bundles this module writes (base networks and AD ensembles, the demonstration one included)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from BrainImageNetADLib.core import grid

from . import __version__

INTENDED_USE = "Research and teaching only. Not a medical device; not for diagnosis or any clinical decision."
DEMO_USE = (
    "DEMONSTRATION MODEL trained on synthetic data made by this project's cohort generator, not on patients: "
    "for demonstration and teaching only. "
)


def subject_digest(subject: str) -> str:
    """Short one-way digest of a subject identifier (16 hex digits), stored in cards so that
    evaluation can refuse subjects a model was trained on without the card listing identifiers."""
    return hashlib.sha256(subject.encode()).hexdigest()[:16]


def model_card(
    name: str,
    architecture: str,
    preset: str,
    channels: list[str],
    training_data: str,
    *,
    demo: bool,
    trained: bool,
    intended_use: str,
    folds: list[dict[str, Any]],
    training_subjects: Iterable[str] = (),
    **extra: Any,
) -> dict[str, Any]:
    """A model card (see ``BrainImageNetADLib.model.bundle``): the fields every bundle has, plus
    ``extra`` (metrics, operating_points, threshold_presets, training settings...)."""
    return {
        "name": name,
        "version": __version__,
        "architecture": architecture,
        "preset": preset,
        "input": {
            "channels": list(channels),
            "grid": "MNI152, 1.5 mm, SPM/DARTEL 121x145x121 grid cropped [12:108, 13:133, 16:102]",
            "shape": list(grid.MODEL_SHAPE),
            "affine": grid.MODEL_AFFINE.tolist(),
        },
        "training_data": training_data,
        "demo": demo,
        "trained": trained,
        "intended_use": intended_use,
        "licence": "Apache-2.0",
        "folds": folds,
        "training_subjects_sha256": sorted({subject_digest(s) for s in training_subjects}),
        **extra,
    }
