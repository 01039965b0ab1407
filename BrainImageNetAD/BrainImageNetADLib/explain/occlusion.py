"""Occlusion sensitivity maps, as in Lu et al.: an 18 mm cube (12 voxels on the 1.5 mm model
grid) moved in 9 mm steps (6 voxels); the importance of a place is how much the AD probability
drops when that cube of the input is masked.

Maps live on the model grid (96, 120, 86), MNI voxel order; ``to_native`` brings them onto the
patient's T1 grid. Methods behind one interface:

- ``incremental`` (default): exact; cubes without brain (every masked voxel already equal to the
  mask value, so the input does not change) are skipped; in the others only the box of voxels
  that masking changes is a patch (smaller than the cube at the edge of the brain); patches are
  batched, alike sizes together, and computed by incremental inference
  (``incremental.IncrementalNetwork``);
- ``approximate``: coarse to fine, for a quick look at a large model, fold network by fold
  network: the cubes on every second lattice position (18 mm steps, about 1/8 of them) are
  computed exactly, the others are interpolated linearly along the lattice, except the share
  ``refine`` whose coarse neighbours differ most in that fold, which are computed exactly too;
  the ensemble's map is the mean of the folds'. ``bench occlusion`` measures its difference from
  the exact map;
- ``naive``: mask, full forward pass, for every cube (the reference; slow);
- ``gradient``: gradient x input, a fast preview that is not an occlusion map.

Memory: the recorded unoccluded activations of one network (about 2.3 GB for the paper preset,
0.1 GB for tiny) plus ``batch_size`` patches; it does not grow with the number of cubes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core import grid, templates
from ..core.progress import CancelCallback, ProgressCallback, check_cancel
from ..model.incremental import IncrementalNetwork, Patch
from .methods import OCCLUSION_METHODS


@dataclass(frozen=True)
class OcclusionSettings:
    """``cube`` and ``stride`` in voxels of the model grid (paper: 12 and 6, i.e. 18 and 9 mm);
    ``mask_value`` written into the cube (paper: 0) in the ``channels`` given (indices; None:
    all); ``batch_size`` cubes computed together; ``refine``: for the approximate method, the
    share of the cubes between the coarse lattice's that are computed exactly (those whose
    coarse neighbours differ most), the rest being interpolated."""

    cube: int = 12
    stride: int = 6
    mask_value: float = 0.0
    channels: tuple[int, ...] | None = None
    batch_size: int = 16
    refine: float = 0.1


@dataclass
class OcclusionMap:
    """``importance``: (96, 120, 86) float32, the mean drop in AD probability over the cubes
    covering each voxel (0 where no cube changed the input); ``positions`` (P, 3) cube starts and
    ``drops`` (P,) the drop of each cube (probability units); ``probability`` unoccluded;
    ``computed`` (P,) which drops were computed (the others are zero, for cubes without brain, or
    interpolated by the approximate method)."""

    importance: np.ndarray
    positions: np.ndarray
    drops: np.ndarray
    probability: float
    method: str
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)
    computed: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def cube_positions(cube: int = 12, stride: int = 6, shape: tuple[int, ...] = grid.MODEL_SHAPE) -> np.ndarray:
    """Cube starts (P, 3): every ``stride`` voxels along each axis, plus one flush with the far
    edge where the steps stop short of it, so that every voxel is covered."""
    axes = []
    for n in shape:
        starts = list(range(0, n - cube + 1, stride))
        if starts[-1] + cube < n:
            starts.append(n - cube)
        axes.append(starts)
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _masked_channels(x: np.ndarray, settings: OcclusionSettings) -> list[int]:
    return list(range(x.shape[0])) if settings.channels is None else list(settings.channels)


def changed_boxes(x: np.ndarray, positions: np.ndarray, settings: OcclusionSettings) -> tuple[np.ndarray, np.ndarray]:
    """For each cube of ``positions`` (P, 3), the smallest box holding the voxels of ``x``
    (C, 96, 120, 86) that masking it changes: first voxels (P, 3) and sizes (P, 3), in voxels of
    the model grid; size 0 where masking changes nothing (a cube without brain)."""
    c = _masked_channels(x, settings)
    return boxes_of_change((x[c] != settings.mask_value).any(axis=0), positions, settings.cube)


def boxes_of_change(differs: np.ndarray, positions: np.ndarray, cube: int) -> tuple[np.ndarray, np.ndarray]:
    """For each cube of side ``cube`` starting at ``positions`` (P, 3), the smallest box holding
    the voxels where ``differs`` (96, 120, 86) is true: first voxels (P, 3) and sizes (P, 3), in
    voxels of the model grid; size 0 where the cube holds none."""
    first = np.zeros((len(positions), 3), np.int64)
    size = np.zeros((len(positions), 3), np.int64)
    for n, (i, j, m) in enumerate(positions):
        inside = differs[i : i + cube, j : j + cube, m : m + cube]
        if inside.any():
            for d in range(3):
                along = np.flatnonzero(inside.any(axis=tuple(a for a in range(3) if a != d)))
                first[n, d] = positions[n, d] + along[0]
                size[n, d] = along[-1] - along[0] + 1
    return first, size


def changing_cubes(x: np.ndarray, positions: np.ndarray, settings: OcclusionSettings) -> np.ndarray:
    """Which cubes of ``positions`` (P, 3) change the maps ``x`` (C, 96, 120, 86) at all when
    masked (boolean (P,)); the others leave the output unchanged and are skipped."""
    return changed_boxes(x, positions, settings)[1].all(axis=1)


def occluded_patch(x: torch.Tensor, cubes: np.ndarray, first: np.ndarray, size: np.ndarray, settings: OcclusionSettings) -> Patch:
    """The changed boxes (``first``, ``size``: (B, 3)) of the cubes starting at ``cubes`` (B, 3),
    padded to one size, with the cubes masked: a ``Patch`` of ``x`` (1, C, 96, 120, 86)."""
    return replaced_patch(x, settings.mask_value, _masked_channels(x[0], settings), cubes, first, size, settings.cube)


def replaced_patch(
    base: torch.Tensor,
    fill: torch.Tensor | float,
    channels: list[int],
    cubes: np.ndarray,
    first: np.ndarray,
    size: np.ndarray,
    cube: int,
) -> Patch:
    """A ``Patch`` of ``base`` (1, C, 96, 120, 86): the changed boxes (``first``, ``size``:
    (B, 3), voxels) of the cubes of side ``cube`` starting at ``cubes`` (B, 3), padded to one
    size, with each cube's ``channels`` replaced by ``fill`` (a value, or a volume shaped like
    ``base`` whose voxels are copied)."""
    box = size.max(axis=0)
    starts = np.minimum(first, np.array(base.shape[2:]) - box)
    data = torch.stack([base[0, :, i : i + box[0], j : j + box[1], m : m + box[2]] for i, j, m in starts]).clone()
    for b in range(len(cubes)):
        lo = np.maximum(cubes[b] - starts[b], 0)
        hi = np.minimum(cubes[b] + cube - starts[b], box)
        target = (b, channels, slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        if isinstance(fill, torch.Tensor):
            at = [slice(starts[b][d] + lo[d], starts[b][d] + hi[d]) for d in range(3)]
            data[target] = fill[(0, channels, *at)]
        else:
            data[target] = fill
    return Patch(data, torch.from_numpy(starts))


def accumulate(drops: np.ndarray, positions: np.ndarray, cube: int, empty: float = 0.0) -> np.ndarray:
    """Per-cube values ``drops`` (P,) at cube starts ``positions`` (P, 3) averaged, voxel by
    voxel, over the cubes covering it: (96, 120, 86) float32, ``empty`` where no cube lies."""
    total = np.zeros(grid.MODEL_SHAPE, np.float64)
    count = np.zeros(grid.MODEL_SHAPE, np.float64)
    for (i, j, m), d in zip(positions, drops, strict=True):
        total[i : i + cube, j : j + cube, m : m + cube] += d
        count[i : i + cube, j : j + cube, m : m + cube] += 1
    return np.where(count > 0, total / np.maximum(count, 1), empty).astype(np.float32)


def occlusion_map(
    models: list[torch.nn.Module],
    x: np.ndarray,
    settings: OcclusionSettings = OcclusionSettings(),
    method: str = "incremental",
    positions: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
) -> OcclusionMap:
    """Occlusion map of one subject for the mean AD probability of ``models`` (fold models, eval
    mode, CPU). ``x``: maps on the model grid, shape (C, 96, 120, 86). ``positions`` (P, 3)
    restricts the cubes (default: ``cube_positions``; ``approximate`` needs the default lattice).
    Returns the map and per-cube drops."""
    check_maps(x, method, positions)
    started = time.perf_counter()
    if method == "gradient":
        return _gradient_x_input(models, x, started)
    positions = cube_positions(settings.cube, settings.stride) if positions is None else np.asarray(positions)
    first, size = changed_boxes(x, positions, settings)
    xt = as_input(x, models)
    runner = CubeRunner(
        models, xt, settings.mask_value, _masked_channels(x, settings), positions, first, size, settings.cube, settings.batch_size
    )
    base, changes, computed, stats = runner.run(method, settings.refine, "occlusion", progress, should_cancel)
    stats.update(cube_mm=settings.cube * 1.5, stride_mm=settings.stride * 1.5, mask_value=settings.mask_value)
    drops = -changes
    return OcclusionMap(
        accumulate(drops, positions, settings.cube), positions, drops, base, method, time.perf_counter() - started, stats, computed
    )


def check_maps(x: np.ndarray, method: str, positions: np.ndarray | None, methods: tuple[str, ...] = OCCLUSION_METHODS) -> None:
    """Raise ValueError unless ``method`` is one of ``methods``, ``x`` holds maps on the model
    grid (C, 96, 120, 86), and ``positions`` is None for the approximate method."""
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {methods}")
    if x.ndim != 4 or tuple(x.shape[1:]) != grid.MODEL_SHAPE:
        raise ValueError(f"expected maps of shape (C, {', '.join(map(str, grid.MODEL_SHAPE))}), got {x.shape}")
    if method == "approximate" and positions is not None:
        raise ValueError("the approximate method computes its own cubes on the whole lattice; positions cannot be given")


def as_input(x: np.ndarray, models: list[torch.nn.Module]) -> torch.Tensor:
    """Maps ``x`` (C, 96, 120, 86) as a float32 batch of one (1, C, 96, 120, 86) on the models' device."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(next(models[0].parameters()).device)


class CubeRunner:
    """The ensemble's mean AD probability for inputs that equal ``base`` (1, C, 96, 120, 86)
    except inside one cube of side ``cube`` (voxels), whose ``channels`` are replaced by ``fill``
    (a value, or a volume like ``base``), for the cubes starting at ``positions`` (P, 3);
    ``first`` and ``size`` (P, 3) bound the voxels each replacement changes (size 0: none).
    Counts the work (MACs, time of the recorded passes of ``base``)."""

    def __init__(
        self,
        models: list[torch.nn.Module],
        base: torch.Tensor,
        fill: torch.Tensor | float,
        channels: list[int],
        positions: np.ndarray,
        first: np.ndarray,
        size: np.ndarray,
        cube: int,
        batch_size: int,
    ) -> None:
        self.models, self.base, self.fill, self.channels = models, base, fill, channels
        self.positions, self.first, self.size, self.cube, self.batch_size = positions, first, size, cube, batch_size
        self.recording = 0.0
        self.macs = 0
        self.naive_macs: dict[int, int] = {}
        self.done = 0
        self._recorded: tuple[int, IncrementalNetwork, float] | None = None

    def run(
        self, method: str, refine: float, stage: str, progress: ProgressCallback | None, should_cancel: CancelCallback | None
    ) -> tuple[float, np.ndarray, np.ndarray, dict[str, Any]]:
        """(the ensemble's probability for ``base``, each cube's change of it (P,), which changes
        were computed (P,) bool, statistics) by ``method``: "incremental" or "naive" compute every
        cube that changes the input; "approximate" goes fold by fold (``_approximate``): the coarse
        lattice, the share ``refine`` of the others whose coarse neighbours differ most in that
        fold, the rest interpolated.
        Cubes that change nothing have change 0. ``stage`` names the progress reports."""
        changing = self.size.all(axis=1)
        changes = np.zeros(len(self.positions))
        engine = "naive" if method == "naive" else "incremental"
        if method == "approximate":
            base, changes, computed, extra = self._approximate(changing, refine, engine, stage, progress, should_cancel)
        else:
            todo = np.flatnonzero(changing)
            base, changes[todo] = self.changes(todo, engine, stage, progress, should_cancel, len(self.models) * len(todo))
            computed, extra = changing, {}
        self._recorded = None
        stats = {
            "positions": len(self.positions),
            "computed_positions": int(computed.sum()),
            **extra,
            "unoccluded_pass_seconds": self.recording,
            "share_of_naive_macs": self.macs / (self.naive_macs_per_cube * len(self.positions)) if self.naive_macs_per_cube else None,
        }
        return base, changes, computed, stats

    def _approximate(
        self,
        changing: np.ndarray,
        refine: float,
        engine: str,
        stage: str,
        progress: ProgressCallback | None,
        should_cancel: CancelCallback | None,
    ) -> tuple[float, np.ndarray, np.ndarray, dict[str, Any]]:
        """The approximate method, fold by fold (each fold network recorded once): the coarse
        lattice computed, the share ``refine`` of the other changing cubes whose coarse neighbours
        differ most in this fold computed too, the rest interpolated; the ensemble's change is the
        mean of the folds'. ``computed`` marks the cubes computed for every fold."""
        lattice = _lattice_index(self.positions)
        nodes = _lattice_nodes(lattice)
        coarse = changing & np.all([np.isin(lattice[:, d], nodes[d]) for d in range(3)], axis=0)
        refined = max(0, round(refine * (int(changing.sum()) - int(coarse.sum()))))
        steps = len(self.models) * (int(coarse.sum()) + refined)
        folds = len(self.models)
        per_fold, bases = np.zeros((folds, len(self.positions))), np.zeros(folds)
        everywhere = np.ones(len(self.positions), bool)
        for f in range(folds):
            bases[f], per_fold[f, coarse] = self.changes(np.flatnonzero(coarse), engine, stage, progress, should_cancel, steps, [f])
            estimate, spread = _interpolate(per_fold[f], coarse, lattice)
            uncertain = np.flatnonzero(changing & ~coarse)
            chosen = uncertain[np.argsort(-spread[uncertain], kind="stable")[:refined]]
            if len(chosen):
                _, per_fold[f, chosen] = self.changes(chosen, engine, stage, progress, should_cancel, steps, [f])
            guessed = changing & ~coarse
            guessed[chosen] = False
            per_fold[f, guessed] = estimate[guessed]
            everywhere &= ~guessed
        computed = changing & everywhere
        extra = {
            "coarse_positions": int(coarse.sum()),
            "refined_positions": refined,
            "interpolated_positions": int(changing.sum()) - int(coarse.sum()) - refined,
        }
        return float(bases.mean()), per_fold.mean(axis=0), computed, extra

    def changes(
        self,
        cubes: np.ndarray,
        engine: str,
        stage: str,
        progress: ProgressCallback | None,
        should_cancel: CancelCallback | None,
        steps: int,
        folds: list[int] | None = None,
    ) -> tuple[float, np.ndarray]:
        """(the mean probability of ``base`` over the fold networks ``folds`` (default: all), the
        change of it (len(cubes),) when each cube indexed by ``cubes`` is replaced) by ``engine``
        "incremental" or "naive" (full passes); ``steps`` is the whole run's number of (fold, cube)
        pairs, for ``progress``. The last fold's recorded pass is kept for the next call."""
        # largest changed boxes first, so that a batch's boxes (padded to one size) are alike
        ranked = np.argsort(-self.size[cubes].prod(axis=1), kind="stable")
        order = cubes[ranked]
        folds = list(range(len(self.models))) if folds is None else folds
        probabilities = np.zeros((len(folds), len(order)))
        base = np.zeros(len(folds))
        for n, f in enumerate(folds):
            network, base[n] = self._recorded_network(f)
            for start in range(0, len(order), self.batch_size):
                check_cancel(should_cancel, f"{stage} map")
                chosen = order[start : start + self.batch_size]
                starts = self.positions[chosen]
                macs = network.macs
                if engine == "incremental":
                    patch = replaced_patch(self.base, self.fill, self.channels, starts, self.first[chosen], self.size[chosen], self.cube)
                    logits = network.forward_patches(patch)
                    self.macs += network.macs - macs
                else:
                    logits = self._naive_forward(self.models[f], starts)
                    self.macs += self.naive_macs[f] * len(chosen)
                probabilities[n, start : start + len(chosen)] = torch.sigmoid(logits).double().cpu().numpy()
                self.done += len(chosen)
                if progress is not None:
                    progress(f"{stage} model {f + 1}/{len(self.models)}", self.done / max(steps, 1))
        out = np.empty(len(cubes))
        out[ranked] = probabilities.mean(axis=0) - base.mean()
        return float(base.mean()), out

    def _recorded_network(self, fold: int) -> tuple[IncrementalNetwork, float]:
        """Fold network ``fold`` with the recorded pass of ``base`` and its probability; one
        recording is kept at a time (about 2.3 GB for the paper preset)."""
        if self._recorded is not None and self._recorded[0] == fold:
            return self._recorded[1], self._recorded[2]
        self._recorded = None
        network = IncrementalNetwork(self.models[fold])
        clock = time.perf_counter()
        probability = float(torch.sigmoid(network.record(self.base))[0])
        self.recording += time.perf_counter() - clock
        self.naive_macs[fold] = network.naive_macs()
        self._recorded = (fold, network, probability)
        return network, probability

    @property
    def naive_macs_per_cube(self) -> int:
        """Multiply-accumulates of full passes of every fold network for one cube (0 before any
        recording)."""
        return sum(self.naive_macs.values()) if len(self.naive_macs) == len(self.models) else 0

    def _naive_forward(self, model: torch.nn.Module, cubes: np.ndarray) -> torch.Tensor:
        """Logits (B,) of full forward passes of ``base`` with each whole cube of ``cubes`` (B, 3)
        replaced: the reference, independent of the patch arithmetic."""
        batch = self.base.repeat(len(cubes), 1, 1, 1, 1)
        k = self.cube
        for b, (i, j, m) in enumerate(cubes.tolist()):
            target = (b, self.channels, slice(i, i + k), slice(j, j + k), slice(m, m + k))
            if isinstance(self.fill, torch.Tensor):
                batch[target] = self.fill[(0, *target[1:])]
            else:
                batch[target] = self.fill
        with torch.inference_mode():
            return model(batch)


def _lattice_index(positions: np.ndarray) -> np.ndarray:
    """Index (P, 3) of each cube start along each axis of the ``cube_positions`` lattice."""
    return np.stack([np.unique(positions[:, d], return_inverse=True)[1] for d in range(3)], axis=1)


def _lattice_nodes(lattice: np.ndarray) -> list[np.ndarray]:
    """The coarse lattice along each axis: every second index, and the last one."""
    return [np.union1d(np.arange(0, n + 1, 2), [n]) for n in lattice.max(axis=0)]


def _interpolate(drops: np.ndarray, known: np.ndarray, lattice: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Estimates (P,) of every cube's drop by linear interpolation along the lattice from the
    coarse-lattice cubes (``_lattice_nodes``; ``known`` marks those computed, the others there
    are cubes without brain, exact zeros), and the spread (P,) of the coarse values around each
    cube (max - min over its 8 surrounding coarse cubes): where the estimate is least certain."""
    nodes = _lattice_nodes(lattice)
    values = np.zeros(tuple(int(n[-1]) + 1 for n in nodes))
    values[tuple(lattice[known].T)] = drops[known]
    estimate = values[np.ix_(*nodes)]
    for d in range(3):  # separable linear interpolation onto every lattice index
        full = np.arange(values.shape[d])
        estimate = np.apply_along_axis(lambda v, d=d, full=full: np.interp(full, nodes[d], v), d, estimate)
    bracket = []
    for d in range(3):
        upper = np.searchsorted(nodes[d], lattice[:, d])
        lower = np.where(nodes[d][upper] == lattice[:, d], upper, upper - 1)
        bracket.append((nodes[d][lower], nodes[d][upper]))
    corners = np.stack([values[bracket[0][a], bracket[1][b], bracket[2][c]] for a, b, c in np.ndindex(2, 2, 2)])
    return estimate[tuple(lattice.T)], corners.max(axis=0) - corners.min(axis=0)


def _gradient_x_input(models: list[torch.nn.Module], x: np.ndarray, started: float) -> OcclusionMap:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].requires_grad_(True)
    probability = torch.stack([torch.sigmoid(m(xt))[0] for m in models]).mean()
    (gradient,) = torch.autograd.grad(probability, xt)
    importance = (gradient * xt).detach()[0].sum(dim=0).numpy().astype(np.float32)
    return OcclusionMap(
        importance, np.zeros((0, 3), int), np.zeros(0), float(probability.detach()), "gradient", time.perf_counter() - started
    )


def region_summary(importance: np.ndarray, top: int = 10, centre: float = 0.0) -> dict[str, Any]:
    """Mean and peak of a heat map on the model grid (96, 120, 86) per AAL region:
    ``hippocampal`` for the regions of ``atlas.REGIONS``, ``top_regions`` the ``top`` regions,
    each ``{label, name, mean, peak, voxels, rank}``. Regions are ranked by how far their mean
    lies from ``centre`` (the value of no effect: 0 for an occlusion map, the template's score for
    a risk map), whatever the side: masking grey matter can lower the AD probability (positive
    drop) or raise it (negative drop: a masked cube looks like atrophy); both mark a place the
    model uses. ``peak`` is the value farthest from ``centre``."""
    from .atlas import REGIONS, region_names

    labels = grid.crop_to_model_grid(templates.aal_labels())
    names = region_names()
    rows = []
    for value, name in names.items():
        inside = importance[labels == value]
        if inside.size:
            rows.append(
                {
                    "label": value,
                    "name": name,
                    "mean": float(inside.mean()),
                    "peak": float(inside[np.abs(inside - centre).argmax()]),
                    "voxels": int(inside.size),
                }
            )
    ranked = sorted(rows, key=lambda r: -abs(r["mean"] - centre))
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return {
        "hippocampal": [r for r in ranked if r["label"] in REGIONS],
        "top_regions": ranked[:top],
        "regions_ranked": len(ranked),
    }
