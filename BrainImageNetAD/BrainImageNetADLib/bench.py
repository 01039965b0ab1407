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


def bench_train(presets: list[str], batch: int = 2, steps: int = 2, device: str = "cpu") -> list[dict[str, float | str]]:
    """Training throughput: one SGD step (forward, backward, update; binary cross-entropy) on
    random maps (``batch``, 2, 96, 120, 86), in samples per second, for each preset and for the
    three trainings of the procedure: the sex base network, the AD transfer network trained
    whole, and the AD network above a frozen stem (stem outputs computed once per scan, as
    ``--freeze-stem`` does). Each is timed in channels_last_3d (what training uses) and in the
    default layout, side by side; on CUDA also with bf16 autocast. Returns one row per network."""
    from .ensemble import resolve_device

    dev = resolve_device(device)
    x = torch.from_numpy(np.random.default_rng(0).random((batch, 2, *grid.MODEL_SHAPE), dtype=np.float32)).to(dev)
    y = torch.tensor([float(i % 2) for i in range(batch)], device=dev)
    rows: list[dict[str, float | str]] = []
    for preset in presets:
        for architecture, frozen in (("sex", False), ("ad_transfer", False), ("ad_transfer", True)):
            model = build_network(architecture, preset, 2).to(dev)
            if frozen:
                model.stem.requires_grad_(False)
                with torch.inference_mode():
                    inputs = model.stem(x).clone()
                forward = model.forward_from_stem
            else:
                inputs, forward = x, model
            optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4, momentum=0.9, nesterov=True)

            def step(layout: torch.memory_format, bf16: bool = False, inputs=inputs, forward=forward, optimizer=optimizer) -> None:
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                    output = forward(inputs.contiguous(memory_format=layout))
                loss = torch.nn.functional.binary_cross_entropy_with_logits(output.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if dev.type == "cuda":
                    torch.cuda.synchronize()

            model.train()
            model.to(memory_format=torch.channels_last_3d)
            last = _seconds(lambda s=step: s(torch.channels_last_3d), steps)
            model.to(memory_format=torch.contiguous_format)
            default = _seconds(lambda s=step: s(torch.contiguous_format), steps)
            row: dict[str, float | str] = {
                "preset": preset,
                "network": architecture + (" (frozen stem)" if frozen else ""),
                "batch": float(batch),
                "samples_per_s": batch / last,
                "default_layout_samples_per_s": batch / default,
                "channels_last_speedup": default / last,
            }
            if dev.type == "cuda":
                model.to(memory_format=torch.channels_last_3d)
                row["bf16_samples_per_s"] = batch / _seconds(lambda s=step: s(torch.channels_last_3d, True), steps)
                row["bf16_speedup"] = float(row["bf16_samples_per_s"]) / float(row["samples_per_s"])
                row["peak_gpu_MB"] = torch.cuda.max_memory_allocated(dev) / 2**20
            else:
                row["peak_MB"] = peak_memory_mb()
            rows.append(row)
            del model, optimizer, inputs
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


def signal_preserving_init(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """He-normal convolution weights and varied batch-norm statistics, so that a random network's
    output responds to its input as a trained one does (PyTorch's default initialisation fades
    the signal over depth and makes every occlusion drop ~0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                fan_in = module.in_channels * int(np.prod(module.kernel_size))
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm3d):
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) * 2 + 1)
    return model.eval()


def bench_occlusion(presets: list[str], positions: int = 24, batch: int = 8) -> tuple[list[dict[str, float | str]], str]:
    """Occlusion map speed of one subject: the incremental method against the naive loop of
    batched forward passes (mask, full pass, for every one of the ~4,000 cubes), side by side in
    this run, for one AD network per preset (random weights, see ``signal_preserving_init``) on
    the sample case's maps.

    Both methods are timed on the same ``positions`` cubes spread over the brain (and their drops
    compared); a whole map costs the naive loop its per-cube time x all cubes, and the
    incremental method its unoccluded pass + per-cube time x the cubes that hold brain (measured
    for tiny/small, from the per-cube time for paper). Returns (rows, last line ``speedup X, max
    abs diff Y``: the smallest speed-up and the largest difference over the presets)."""
    from .maps import load_model_input
    from .occlusion import OcclusionSettings, changing_cubes, cube_positions, occlusion_map
    from .resources import sample_maps

    x, _ = load_model_input(sample_maps(), ["GMD", "GMV"])
    every = cube_positions()
    brain = every[changing_cubes(x, every, OcclusionSettings())]
    chosen = brain[np.linspace(0, len(brain) - 1, positions).round().astype(int)]
    settings = OcclusionSettings(batch_size=batch)
    rows: list[dict[str, float | str]] = []
    for preset in presets:
        model = signal_preserving_init(build_network("ad_transfer", preset, 2), seed=1)
        occlusion_map([model], x, settings, positions=chosen[:batch])  # warm-up
        fast = occlusion_map([model], x, settings, positions=chosen)
        naive = occlusion_map([model], x, settings, "naive", positions=chosen)
        naive_per_cube = (naive.seconds - naive.stats["unoccluded_pass_seconds"]) / positions
        fast_per_cube = (fast.seconds - fast.stats["unoccluded_pass_seconds"]) / positions
        if preset == "paper":
            whole, how = fast.stats["unoccluded_pass_seconds"] + fast_per_cube * len(brain), "estimated"
        else:
            whole, how = occlusion_map([model], x, settings).seconds, "measured"
        rows.append(
            {
                "preset": preset,
                "naive_s_per_cube": naive_per_cube,
                "fast_s_per_cube": fast_per_cube,
                "naive_map_s": naive_per_cube * len(every),
                "fast_map_s": whole,
                "fast_map": how,
                "speedup": naive_per_cube * len(every) / whole,
                "max_abs_diff": float(np.abs(fast.drops - naive.drops).max()),
                "largest_drop": float(np.abs(naive.drops).max()),
                "share_of_naive_macs": float(fast.stats["share_of_naive_macs"]),
            }
        )
    worst = min(float(r["speedup"]) for r in rows)
    diff = max(float(r["max_abs_diff"]) for r in rows)
    return rows, f"speedup {worst:.1f}x, max abs diff {diff:.1e}"
