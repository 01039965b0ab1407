"""Benchmarks behind ``brainimagenet-ad bench``: speed and memory, measured side by side in one run."""

from __future__ import annotations

import resource
import time

import numpy as np
import torch

from . import grid
from .bundle import ModelCard
from .ensemble import Ensemble
from .networks import build_network, count_parameters


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def bench_predict(
    presets: list[str], folds: int = 5, batch: int = 4, repeats: int = 1, device: str = "cpu"
) -> list[dict[str, float | str]]:
    """Time ensemble prediction of the AD transfer network on random maps (N, 2, 96, 120, 86).

    For each preset: seconds per subject for one fold model (as the ensemble runs it, in
    channels_last_3d, and in PyTorch's default layout, with their ratio) and for a
    ``folds``-model ensemble at batch size 1, and the speed-up of batch size ``batch`` over batch
    size 1, all measured side by side in this run.
    Random weights: the cost does not depend on their values. Returns one row per preset.
    """
    rows: list[dict[str, float | str]] = []
    x = np.random.default_rng(0).random((batch, 2, *grid.MODEL_SHAPE), dtype=np.float32)
    for preset in presets:
        card = ModelCard(
            {
                "name": f"bench {preset}",
                "architecture": "ad_transfer",
                "preset": preset,
                "input": {"channels": ["GMD", "GMV"]},
                "demo": True,
                "trained": False,
                "intended_use": "benchmark",
            }
        )
        models = [build_network("ad_transfer", preset, 2).eval() for _ in range(folds)]
        ensemble = Ensemble(card, models, device)
        single = Ensemble(card, models[:1], device)
        one_fold = _seconds(lambda s=single: s.predict_proba(x[:1], batch_size=1), repeats)
        plain = build_network("ad_transfer", preset, 2).eval()
        one_subject = torch.from_numpy(x[:1])

        def default_layout(model=plain, batch=one_subject) -> None:
            with torch.inference_mode():
                torch.sigmoid(model(batch))

        one_fold_default = _seconds(default_layout, repeats)
        per_subject_b1 = _seconds(lambda e=ensemble: e.predict_proba(x[:1], batch_size=1), repeats)
        per_subject_bn = _seconds(lambda e=ensemble: e.predict_proba(x, batch_size=batch), repeats) / batch
        rows.append(
            {
                "preset": preset,
                "parameters_M": count_parameters(models[0]) / 1e6,
                "one_fold_s": one_fold,
                "one_fold_default_layout_s": one_fold_default,
                "channels_last_speedup": one_fold_default / one_fold,
                "ensemble_s": per_subject_b1,
                f"ensemble_batch{batch}_s_per_subject": per_subject_bn,
                f"batch{batch}_speedup": per_subject_b1 / per_subject_bn,
            }
        )
    return rows


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_rows(rows: list[dict[str, float | str]]) -> None:
    """Print benchmark rows as an aligned table, then torch's thread count and peak memory."""
    keys = list(rows[0])
    print("  ".join(f"{k:>22}" for k in keys))
    for row in rows:
        print("  ".join(f"{v:>22.3f}" if isinstance(v, float) else f"{v!s:>22}" for v in row.values()))
    print(f"torch threads {torch.get_num_threads()}, peak memory {peak_memory_mb():.0f} MB")


#: deepmriprep's published CPU time for one T1 (seconds), the reference the budget is set against.
DEEPMRIPREP_CPU_SECONDS = 100.0


def _preprocess_with_peak_memory(t1: str, out_dir: str, preset: str) -> tuple[dict, float]:
    from .preprocess import preprocess_t1

    report = preprocess_t1(t1, out_dir, preset)
    return report, peak_memory_mb()


def bench_preprocess(t1: str, presets: list[str]) -> list[dict[str, float | str]]:
    """Preprocess one T1 with each preset, each in a fresh process; returns per preset the stage
    times (s), total wall time, its ratio to deepmriprep's published ~100 s, peak memory (MB) of
    the process and the GM/template correlation."""
    import tempfile

    from .worker import run_isolated

    rows: list[dict[str, float | str]] = []
    for preset in presets:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            report, peak = run_isolated(_preprocess_with_peak_memory, t1, out, preset)
            wall = time.perf_counter() - start
        rows.append(
            {
                "preset": preset,
                **{f"{k}_s": float(v) for k, v in report["seconds"].items() if k != "total"},
                "wall_s": wall,
                "vs_deepmriprep": DEEPMRIPREP_CPU_SECONDS / wall,
                "peak_MB": peak,
                "gm_corr": float(report["measures"]["gm_template_correlation"]),
            }
        )
    return rows
