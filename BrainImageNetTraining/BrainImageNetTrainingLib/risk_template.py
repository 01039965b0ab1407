"""The risk template of a bundle: the whole-brain input every risk map starts from
(``BrainImageNetADLib.explain.riskmap``). As in Lu et al. 2024 it blends the mean maps of the AD and the
normal-control scans the bundle was trained on, ``w * mean_AD + (1 - w) * mean_NC``, with the
weight ``w`` found by bisection so that the ensemble scores the template at 0.5. ``w`` lies in
[0, 1] when the ensemble scores the mean NC map below 0.5 and the mean AD map above; a mean map
is smoother than any scan (it averages over individual anatomy), and a network that reads a
cortex-wide loss of contrast as atrophy can score both means above 0.5 (or both below). Then the
line through the two means is followed beyond them, up to ``EXTRAPOLATION`` times their
distance (``w`` in [-1, 0] or [1, 2]), the maps kept non-negative and GMD at most 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback, check_cancel
from BrainImageNetADLib.model.bundle import RISK_TEMPLATE_NAME, write_risk_template
from BrainImageNetADLib.model.ensemble import Ensemble

from .cards import subject_digest
from .data import MapStore
from .manifest import read_manifest

#: The template's score is 0.5 within this (probability units).
SCORE_TOLERANCE = 0.01
#: How far beyond the mean NC or mean AD map the blend may go, in units of their distance.
EXTRAPOLATION = 1.0


def make_risk_template(
    bundle_dir: str | Path,
    manifest: str | Path,
    tolerance: float = SCORE_TOLERANCE,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> dict[str, Any]:
    """Make the risk template of the bundle in ``bundle_dir`` from the AD and NC scans of
    ``manifest`` that the bundle was trained on (all of them when its card lists no training
    subjects), store it in the bundle (``risk_template.safetensors``, float16, and the card's
    ``risk_template`` entry) and return that entry. The score is measured on the stored (float16)
    template. Raises InputError when the manifest lacks AD or NC training scans, or when no blend
    reaches 0.5 within ``tolerance``."""
    ensemble = Ensemble.from_bundle(bundle_dir)
    trained_on = set(ensemble.card.data.get("training_subjects_sha256", []))
    scans = [
        s for s in read_manifest(manifest) if s.diagnosis in ("AD", "NC") and (not trained_on or subject_digest(s.subject) in trained_on)
    ]
    groups = {d: [i for i, s in enumerate(scans) if s.diagnosis == d] for d in ("AD", "NC")}
    if not groups["AD"] or not groups["NC"]:
        raise InputError(
            f"{manifest}: the risk template needs AD and NC scans the bundle was trained on; found "
            f"{len(groups['AD'])} AD and {len(groups['NC'])} NC"
        )
    store = MapStore(scans, ensemble.card.channels, cache=False)
    means = {}
    for d, indices in groups.items():
        total = np.zeros((len(ensemble.card.channels), *grid.MODEL_SHAPE))
        for n, i in enumerate(indices):
            check_cancel(should_cancel, "risk template")
            total += store.one(i)
            if progress is not None:
                progress(f"risk template: mean {d} maps", (n + 1) / len(indices))
        means[d] = total / len(indices)

    upper = np.array([1.0 if c == "GMD" else np.inf for c in ensemble.card.channels])[:, None, None, None]

    def blend(w: float) -> np.ndarray:
        mixed = np.clip(w * means["AD"] + (1 - w) * means["NC"], 0.0, upper)
        return mixed.astype(np.float16).astype(np.float32)  # as stored

    def score(w: float) -> float:
        return float(ensemble.predict_proba(blend(w)[None])[0][0])

    at_nc, at_ad = score(0.0), score(1.0)
    if at_nc >= 0.5 and at_ad > at_nc:
        low, high = -EXTRAPOLATION, 0.0
    elif at_ad <= 0.5 and at_ad > at_nc:
        low, high = 1.0, 1.0 + EXTRAPOLATION
    else:
        low, high = 0.0, 1.0
    at_low, at_high = score(low), score(high)
    if not at_low < 0.5 < at_high:
        raise InputError(
            f"no blend of the mean NC and AD maps scores 0.5 (w from {-EXTRAPOLATION:g} to {1 + EXTRAPOLATION:g}): the mean NC map "
            f"scores {at_nc:.3f}, the mean AD map {at_ad:.3f}, w = {low:g} {at_low:.3f} and w = {high:g} {at_high:.3f}"
        )
    w, at_w = (low, at_low) if abs(at_low - 0.5) < abs(at_high - 0.5) else (high, at_high)
    for _ in range(40):
        if abs(at_w - 0.5) <= tolerance / 4:
            break
        w = (low + high) / 2
        at_w = score(w)
        low, high = (w, high) if at_w < 0.5 else (low, w)
    if abs(at_w - 0.5) > tolerance:
        raise InputError(f"the blend closest to 0.5 scores {at_w:.4f}, more than {tolerance} from it")
    made = (
        f"w * mean AD + (1 - w) * mean NC maps, w = {w:.4f}, over the bundle's training scans in {Path(manifest).name} "
        f"({len(groups['AD'])} AD, {len(groups['NC'])} NC); stored as float16 in {RISK_TEMPLATE_NAME}"
    )
    entry = write_risk_template(bundle_dir, blend(w), at_w, made)
    return {**entry, "blend_weight": w}
