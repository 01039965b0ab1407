"""Model bundles: a folder with one safetensors file per fold and a ``model_card.json``.

Loading never unpickles anything: weights are read with safetensors only, every file's sha256 is
checked against the card, and the tensors must match the architecture the card names.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..core import grid
from ..core.atomic import replacing, write_json_atomic
from ..core.errors import BundleError
from .networks import ARCHITECTURES, PRESETS, build_network

CARD_NAME = "model_card.json"
INPUT_MASK_NAME = "input_mask.safetensors"
RISK_TEMPLATE_NAME = "risk_template.safetensors"
SCHEMA_VERSION = 1
#: Suffixes of files that hold pickled Python objects: never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".h5", ".npy", ".npz", ".joblib")
_REQUIRED_KEYS = ("name", "architecture", "preset", "input", "folds", "demo", "trained", "intended_use")


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class OperatingPoint:
    """One point of a ROC curve: at ``threshold`` on the AD probability, the sensitivity and
    specificity measured on held-out data (fractions in [0, 1])."""

    threshold: float
    sensitivity: float
    specificity: float


@dataclass
class ModelCard:
    """The parsed ``model_card.json`` of a bundle (see docs/model-cards.md for every field)."""

    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def architecture(self) -> str:
        return str(self.data["architecture"])

    @property
    def preset(self) -> str:
        return str(self.data["preset"])

    @property
    def channels(self) -> list[str]:
        return list(self.data["input"]["channels"])

    @property
    def demo(self) -> bool:
        return bool(self.data["demo"])

    @property
    def trained(self) -> bool:
        return bool(self.data["trained"])

    @property
    def intended_use(self) -> str:
        return str(self.data["intended_use"])

    @property
    def operating_points(self) -> list[OperatingPoint]:
        points = [
            OperatingPoint(float(p["threshold"]), float(p["sensitivity"]), float(p["specificity"]))
            for p in self.data.get("operating_points", [])
        ]
        return sorted(points, key=lambda p: p.threshold)

    @property
    def classes(self) -> tuple[str, str]:
        """Names of the negative and positive class (output near 0 and near 1): ("NC", "AD") unless
        the card says otherwise (the sex network: ("female", "male"))."""
        negative, positive = self.data.get("classes", ["NC", "AD"])
        return str(negative), str(positive)

    @property
    def conventions(self) -> dict[str, Any]:
        """Input conventions applied to the maps before the networks see them (``input.conventions``):
        ``mask`` (a file of the bundle multiplied into every channel) and ``round_float16``. Empty
        for bundles trained here."""
        return dict(self.data["input"].get("conventions", {}))

    @property
    def risk_template(self) -> dict[str, Any] | None:
        """The card's ``risk_template`` entry (file, sha256, score, made), or None: a bundle
        without one cannot make risk maps."""
        entry = self.data.get("risk_template")
        return dict(entry) if entry else None

    @property
    def threshold_presets(self) -> dict[str, float]:
        return {str(k): float(v) for k, v in self.data.get("threshold_presets", {"balanced": 0.5}).items()}

    def threshold(self, chosen: float | None = None) -> float:
        """The decision threshold on the AD probability: ``chosen``, or the card's "balanced"
        preset when None (0.5 when the card has none)."""
        return self.threshold_presets.get("balanced", 0.5) if chosen is None else chosen


def operating_point_at(card: ModelCard, threshold: float) -> OperatingPoint | None:
    """Sensitivity and specificity at ``threshold`` (probability in [0, 1]), linearly interpolated
    between the card's ROC operating points and held constant beyond them; None when the card
    records no operating points (an untrained model, for instance)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    points = card.operating_points
    if not points:
        return None
    t = np.array([p.threshold for p in points])
    sens = float(np.interp(threshold, t, [p.sensitivity for p in points]))
    spec = float(np.interp(threshold, t, [p.specificity for p in points]))
    return OperatingPoint(threshold, sens, spec)


def read_card(bundle_dir: str | Path) -> ModelCard:
    """Read and validate ``bundle_dir/model_card.json`` without loading any weights."""
    bundle_dir = Path(bundle_dir)
    card_path = bundle_dir / CARD_NAME
    if not bundle_dir.is_dir():
        raise BundleError(f"model bundle not found: {bundle_dir} is not a folder")
    if not card_path.is_file():
        raise BundleError(f"{bundle_dir} is not a model bundle: it has no {CARD_NAME}")
    if card_path.stat().st_size > MAX_CARD_BYTES:
        raise BundleError(f"{card_path}: {card_path.stat().st_size:,} bytes, more than a model card ever holds ({MAX_CARD_BYTES:,})")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{card_path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise BundleError(f"{card_path}: JSON nested too deeply to be a model card") from None
    try:
        _check_card(data)
    except _CardFieldError as error:
        raise BundleError(f"{card_path}: {error}") from None
    return ModelCard(data)


#: Largest model card read, in bytes (the shipped cards hold a few tens of kB).
MAX_CARD_BYTES = 10_000_000


class _CardFieldError(Exception):
    """A field of a model card has the wrong type or value (the message names it)."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _CardFieldError(message)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def _check_card(data: Any) -> None:
    """Check the fields the tool reads from a model card, their types and ranges; raise
    _CardFieldError naming the first one that is wrong."""
    _require(isinstance(data, dict), "expected a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in data]
    _require(not missing, f"missing fields {missing}")
    for key in ("name", "architecture", "preset", "intended_use"):
        _require(isinstance(data[key], str), f"'{key}' must be a string")
    for key in ("demo", "trained"):
        _require(isinstance(data[key], bool), f"'{key}' must be true or false")
    _require(data["architecture"] in ARCHITECTURES, f"unknown architecture {data['architecture']!r}")
    _require(data["preset"] in PRESETS, f"unknown preset {data['preset']!r} (known: {', '.join(sorted(PRESETS))})")
    spec = data["input"]
    _require(isinstance(spec, dict), "'input' must be an object")
    _require(
        isinstance(spec.get("shape"), list) and spec["shape"] == list(grid.MODEL_SHAPE),
        f"input shape {spec.get('shape')!r} is not the model grid {list(grid.MODEL_SHAPE)}",
    )
    channels = spec.get("channels")
    _require(
        isinstance(channels, list)
        and 1 <= len(channels) <= 2
        and all(c in ("GMD", "GMV") for c in channels)
        and len(set(channels)) == len(channels),
        f"'input.channels' must list GMD and/or GMV, got {channels!r}",
    )
    conventions = spec.get("conventions", {})
    _require(isinstance(conventions, dict), "'input.conventions' must be an object")
    if "mask" in conventions:
        mask = conventions["mask"]
        _require(
            isinstance(mask, dict) and isinstance(mask.get("file"), str) and isinstance(mask.get("sha256"), str),
            "'input.conventions.mask' must be an object with 'file' and 'sha256' strings",
        )
    template = data.get("risk_template")
    if template is not None:
        _require(
            isinstance(template, dict)
            and isinstance(template.get("file"), str)
            and isinstance(template.get("sha256"), str)
            and _is_number(template.get("score"))
            and 0.0 <= template["score"] <= 1.0,
            "'risk_template' must be an object with 'file' and 'sha256' strings and a 'score' in [0, 1]",
        )
    folds = data["folds"]
    _require(isinstance(folds, list), "'folds' must be a list")
    _require(bool(folds), "lists no fold models")
    for index, fold in enumerate(folds):
        _require(
            isinstance(fold, dict) and isinstance(fold.get("file"), str) and isinstance(fold.get("sha256"), str),
            f"'folds[{index}]' must be an object with 'file' and 'sha256' strings",
        )
    points = data.get("operating_points", [])
    _require(isinstance(points, list), "'operating_points' must be a list")
    for index, point in enumerate(points):
        _require(
            isinstance(point, dict)
            and all(_is_number(point.get(k)) and 0.0 <= point[k] <= 1.0 for k in ("threshold", "sensitivity", "specificity")),
            f"'operating_points[{index}]' must hold threshold, sensitivity and specificity in [0, 1]",
        )
    presets = data.get("threshold_presets", {})
    _require(
        isinstance(presets, dict) and all(_is_number(v) and 0.0 <= v <= 1.0 for v in presets.values()),
        "'threshold_presets' must map names to thresholds in [0, 1]",
    )
    classes = data.get("classes", ["NC", "AD"])
    _require(isinstance(classes, list) and len(classes) == 2 and all(isinstance(c, str) for c in classes), "'classes' must be two names")


def _check_weight_file(bundle_dir: Path, fold: dict[str, Any]) -> Path:
    """The verified path of a safetensors file the card lists (``file`` and ``sha256`` in ``fold``)."""
    path = bundle_dir / str(fold.get("file", ""))
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise BundleError(f"{path.name}: refusing to load a pickle-based weight file; bundles hold safetensors only")
    if path.suffix != ".safetensors":
        raise BundleError(f"{path.name}: weight files must be .safetensors")
    if path.resolve().parent != bundle_dir.resolve():
        raise BundleError(f"{path.name}: weight files must lie in the bundle folder")
    if not path.is_file():
        raise BundleError(f"weight file missing from the bundle: {path}")
    digest = sha256_file(path)
    if digest != fold.get("sha256"):
        raise BundleError(f"{path.name}: sha256 {digest[:12]}... does not match the model card; the file is corrupt or was replaced")
    return path


def load_fold_models(bundle_dir: str | Path) -> tuple[ModelCard, list[nn.Module]]:
    """Load every fold model of a bundle in eval mode on the CPU, after verifying checksums and
    tensor shapes. Raises BundleError with a specific message on any mismatch."""
    bundle_dir = Path(bundle_dir)
    card = read_card(bundle_dir)
    models: list[nn.Module] = []
    for fold in card.data["folds"]:
        path = _check_weight_file(bundle_dir, fold)
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise BundleError(f"{path.name}: not a readable safetensors file ({exc})") from None
        model = build_network(card.architecture, card.preset, len(card.channels))
        expected = model.state_dict()
        unexpected = sorted(set(state) - set(expected))
        missing = sorted(set(expected) - set(state))
        if unexpected or missing:
            raise BundleError(
                f"{path.name}: weights do not belong to a {card.preset} {card.architecture} network "
                f"({len(missing)} tensors missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
            )
        for key, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[key].shape):
                raise BundleError(
                    f"{path.name}: tensor {key} has shape {tuple(tensor.shape)}, the {card.preset} "
                    f"{card.architecture} network expects {tuple(expected[key].shape)}"
                )
        model.load_state_dict(state, strict=True)
        models.append(model.eval())
    return card, models


def write_input_mask(bundle_dir: str | Path, mask: np.ndarray, source: str) -> dict[str, Any]:
    """Write the input mask (96, 120, 86) on the model grid as ``input_mask.safetensors`` in
    ``bundle_dir``; return the card's ``conventions.mask`` entry (file, sha256, source)."""
    import torch

    if tuple(mask.shape) != grid.MODEL_SHAPE or not np.isfinite(mask).all():
        raise BundleError(f"input mask must be a finite array of shape {grid.MODEL_SHAPE}, got {mask.shape}")
    path = Path(bundle_dir) / INPUT_MASK_NAME
    with replacing(path) as tmp:
        save_file({"mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))}, str(tmp))
    return {"file": path.name, "sha256": sha256_file(path), "source": source}


def load_input_mask(bundle_dir: str | Path, card: ModelCard) -> np.ndarray | None:
    """The mask (96, 120, 86) float32 that the card's conventions multiply into the maps, after
    checking its sha256; None when the card names no mask."""
    entry = card.conventions.get("mask")
    if not entry:
        return None
    try:
        path = _check_weight_file(Path(bundle_dir), entry)
    except BundleError as error:
        raise BundleError(f"input mask (input.conventions.mask): {error}") from None
    try:
        mask = load_file(str(path))["mask"].numpy()
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{path.name}: not a readable input mask ({exc})") from None
    if tuple(mask.shape) != grid.MODEL_SHAPE:
        raise BundleError(f"{path.name}: input mask has shape {mask.shape}, expected {grid.MODEL_SHAPE}")
    return mask


def write_risk_template(bundle_dir: str | Path, template: np.ndarray, score: float, made: str) -> dict[str, Any]:
    """Store ``template`` (C, 96, 120, 86): the maps on the model grid, in the card's channel
    order, before the card's input conventions) as ``risk_template.safetensors`` (float16) in the
    bundle and record it in the card as ``risk_template`` with its sha256, the ensemble's AD
    probability ``score`` for it and how it was ``made``. Returns the card entry."""
    import torch

    bundle_dir = Path(bundle_dir)
    card = read_card(bundle_dir)
    expected = (len(card.channels), *grid.MODEL_SHAPE)
    if tuple(template.shape) != expected or not np.isfinite(template).all():
        raise BundleError(f"risk template must be a finite array of shape {expected}, got {template.shape}")
    path = bundle_dir / RISK_TEMPLATE_NAME
    with replacing(path) as tmp:
        save_file({"template": torch.from_numpy(np.ascontiguousarray(template, dtype=np.float16))}, str(tmp))
    entry = {"file": path.name, "sha256": sha256_file(path), "channels": card.channels, "score": float(score), "made": made}
    write_json_atomic(bundle_dir / CARD_NAME, {**card.data, "risk_template": entry})
    read_card(bundle_dir)
    return entry


def load_risk_template(bundle_dir: str | Path, card: ModelCard) -> np.ndarray:
    """The risk template (C, 96, 120, 86) float32 of a bundle, after checking its sha256; raises
    BundleError saying how to add one when the card has none."""
    entry = card.risk_template
    if entry is None:
        raise BundleError(
            f"model {card.name} has no risk template, so it cannot make risk maps: add one with "
            "'brainimagenet-train risk-template' (a bundle trained here) or 'import-keras --risk-template GMD GMV' (the authors' models)"
        )
    try:
        path = _check_weight_file(Path(bundle_dir), entry)
        template = load_file(str(path))["template"].float().numpy()
    except BundleError as error:
        raise BundleError(f"risk template: {error}") from None
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise BundleError(f"{RISK_TEMPLATE_NAME}: not a readable risk template ({exc})") from None
    expected = (len(card.channels), *grid.MODEL_SHAPE)
    if tuple(template.shape) != expected:
        raise BundleError(f"{RISK_TEMPLATE_NAME}: shape {template.shape}, expected {expected}")
    return template


def save_bundle(bundle_dir: str | Path, models: list[nn.Module], card: dict[str, Any]) -> Path:
    """Write ``models`` as ``fold{i}.safetensors`` and ``card`` (completed with file names and
    sha256 digests) as ``model_card.json`` into ``bundle_dir``. Returns the bundle folder."""
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    folds = list(card.get("folds") or [{} for _ in models])
    if len(folds) != len(models):
        raise ValueError(f"card lists {len(folds)} folds for {len(models)} models")
    for index, (model, fold) in enumerate(zip(models, folds, strict=True)):
        name = f"fold{index}.safetensors"
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with replacing(bundle_dir / name) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        fold.update(file=name, sha256=sha256_file(bundle_dir / name))
    full = {"schema_version": SCHEMA_VERSION, **card, "folds": folds}
    write_json_atomic(bundle_dir / CARD_NAME, full)
    read_card(bundle_dir)
    return bundle_dir
