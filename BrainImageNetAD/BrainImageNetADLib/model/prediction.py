"""The ensemble's answer for one subject and its wording for people; importable without numpy
or torch (the case pipeline's result record extends ``Prediction``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bundle import ModelCard


@dataclass
class Prediction:
    """The ensemble's answer for one subject.

    ``probability`` is the mean of the fold models' AD probabilities (``fold_probabilities``),
    ``label`` is the card's positive class (``"AD"``) when ``probability >= threshold``, else its
    negative class (``"NC"``); ``sensitivity`` and
    ``specificity`` are the card's ROC values at that threshold (None when it records none);
    ``logit`` is the mean over the fold models of their output before the sigmoid (the linear
    score the authors relate to cognition and plasma markers).
    """

    probability: float
    fold_probabilities: list[float]
    threshold: float
    label: str
    sensitivity: float | None
    specificity: float | None
    model_name: str
    demo: bool
    trained: bool
    intended_use: str
    logit: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fold_text(fold_probabilities: list[float]) -> str:
    """The fold models' AD probabilities as text for people ("0.412, 0.388, ...")."""
    return ", ".join(f"{p:.3f}" for p in fold_probabilities)


def percent(rate: float | None) -> str:
    """A sensitivity or specificity in [0, 1] as text for people ("87.4%"); "not recorded" for None."""
    return "not recorded" if rate is None else f"{100 * rate:.1f}%"


def classify(probability: float, fold_probabilities: list[float], card: ModelCard, threshold: float) -> Prediction:
    """Apply ``threshold`` to an ensemble probability and read the operating point from ``card``.

    Cheap (no network runs): a threshold slider calls this on every move.
    """
    from .bundle import operating_point_at

    point = operating_point_at(card, threshold)
    return Prediction(
        probability=float(probability),
        fold_probabilities=[float(p) for p in fold_probabilities],
        threshold=float(threshold),
        label=card.classes[1] if probability >= threshold else card.classes[0],
        sensitivity=None if point is None else point.sensitivity,
        specificity=None if point is None else point.specificity,
        model_name=card.name,
        demo=card.demo,
        trained=card.trained,
        intended_use=card.intended_use,
        logit=mean_logit(fold_probabilities),
    )


def mean_logit(fold_probabilities: list[float]) -> float:
    """The mean over folds of log(p / (1 - p)), each fold's output before its sigmoid
    (probabilities held 1e-12 inside (0, 1), where float64 still resolves them)."""
    held = [min(max(float(p), 1e-12), 1 - 1e-12) for p in fold_probabilities]
    return math.fsum(math.log(p) - math.log1p(-p) for p in held) / len(held)
