"""Benchmarks behind ``brainimagenet-bench``: speed and memory, measured side by side in one run."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.model.bundle import ModelCard
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.networks import build_network


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocator and kernel selection
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def macs_per_sample(model: torch.nn.Module, in_channels: int = 2) -> tuple[float, str, float]:
    """Multiply-accumulates of one forward pass of one sample (convolutions and dense layers),
    counted with hooks on a real pass; returns (total GMAC, name of the costliest convolution,
    its GMAC)."""
    counts: dict[str, float] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.Linear):

            def hook(mod, _inputs, output, name=name) -> None:  # noqa: ANN001
                per_output = mod.in_features if isinstance(mod, torch.nn.Linear) else mod.in_channels * int(np.prod(mod.kernel_size))
                counts[name] = output.numel() * per_output / 1e9

            hooks.append(module.register_forward_hook(hook))
    with torch.inference_mode():
        model(torch.zeros(1, in_channels, *grid.MODEL_SHAPE))
    for h in hooks:
        h.remove()
    largest = max(counts, key=counts.get)
    return sum(counts.values()), largest, counts[largest]


#: The costliest convolution of the paper-size networks (stem.conv2: 64 -> 96 channels, 3x3x3,
#: 'same', on the stem's 94 x 118 x 84 grid), about half of the AD network's work.
PEAK_CONVOLUTION = {"in_channels": 64, "out_channels": 96, "size": (94, 118, 84)}


def measured_peak_gflops(seconds: float = 2.0) -> dict[str, float]:
    """fp32 GFLOP/s this machine reaches now with torch's threads: a 2048 x 2048 matmul and the
    paper networks' costliest convolution alone (``PEAK_CONVOLUTION``), in PyTorch
    (channels_last_3d) and, where installed, in OpenVINO (whose kernels come closer to the CPU's
    limit than PyTorch's here). A preset-independent yardstick for ``bench predict``."""
    a = torch.randn(2048, 2048)
    rates = {"matmul": _rate(lambda: a @ a, 2 * 2048**3, seconds)}
    cin, cout, size = PEAK_CONVOLUTION["in_channels"], PEAK_CONVOLUTION["out_channels"], PEAK_CONVOLUTION["size"]
    conv = torch.nn.Conv3d(cin, cout, 3, padding=1, bias=False).to(memory_format=torch.channels_last_3d).eval()
    x = torch.rand(1, cin, *size).contiguous(memory_format=torch.channels_last_3d)
    flops = 2 * float(np.prod(size)) * cout * cin * 27
    with torch.inference_mode():
        rates["convolution"] = _rate(lambda: conv(x), flops, seconds)
    from BrainImageNetADLib.model.engines import openvino_available

    if openvino_available():
        import openvino as ov
        import openvino.opset13 as ops

        node = ops.parameter([1, cin, *size], np.float32)
        graph = ov.Model(
            [ops.convolution(node, ops.constant(conv.weight.detach().numpy()), [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1])], [node]
        )
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        compiled = ov.Core().compile_model(graph, "CPU", config)
        data = x.contiguous().numpy()
        rates["openvino_convolution"] = _rate(lambda: compiled(data), flops, seconds)
    return rates


def _rate(fn, flops: float, seconds: float) -> float:  # noqa: ANN001
    """GFLOP/s of ``fn`` (``flops`` per call), repeated for about ``seconds`` after a warm-up."""
    fn()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 2:
        fn()
        calls += 1
    return flops * calls / (time.perf_counter() - start) / 1e9


def _busy_jiffies() -> tuple[float, float]:
    """(busy, total) CPU time of the whole machine from /proc/stat, in clock ticks."""
    with open("/proc/stat") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values) - idle, sum(values)


class OtherJobs:
    """Share of the machine's CPU time used by other processes while a block runs (0 = quiet)."""

    def __enter__(self) -> OtherJobs:
        self.busy, self.total = _busy_jiffies()
        self.own = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        import os

        busy, total = _busy_jiffies()
        ticks = os.sysconf("SC_CLK_TCK")
        own = (time.process_time() - self.own) * ticks
        self.share = max(0.0, (busy - self.busy - own) / max(total - self.total, 1.0))


def bench_predict(
    presets: list[str], folds: int = 5, batch: int = 4, repeats: int = 3, device: str = "cpu", bf16: bool = True
) -> list[dict[str, float | str]]:
    """Five-fold ensemble of the AD transfer network on the sample case's maps (N, 2, 96, 120, 86), with the
    engines side by side: PyTorch fp32 (the reference), OpenVINO fp32 (where installed) and, with
    ``bf16``, both in bf16. Rounds interleave the engines (``repeats`` rounds, medians), so that a
    busy machine slows them alike; the other processes' CPU share is recorded.

    Per preset and engine: seconds per subject (batch 1) and subjects per hour from maps (a
    cohort's throughput once preprocessed), speed-up over PyTorch, max abs
    difference of the probabilities from PyTorch's, GFLOP/s and its share of the peak measured
    in the same run (the largest of ``measured_peak_gflops``). The networks have random weights
    with He initialisation and varied batch-norm statistics (``signal_preserving_init``: outputs
    that respond to the input as a trained network's do; the cost does not depend on the values). Returns one row per preset and
    engine, then one row of batch-size speed-up per preset for the default engine.
    """
    from BrainImageNetADLib.model.engines import default_engine, openvino_available

    dev = torch.device(device)
    rows: list[dict[str, float | str]] = []
    from BrainImageNetADLib.core.resources import sample_maps
    from BrainImageNetADLib.model.maps import load_model_input

    sample, _ = load_model_input(sample_maps(), ["GMD", "GMV"])
    x = np.repeat(sample[None], batch, axis=0)
    threads = torch.get_num_threads()
    peak = measured_peak_gflops() if dev.type == "cpu" else {}
    best = max(peak.values()) if peak else float("nan")
    print("peak measured now (fp32): " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))
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
        models = [signal_preserving_init(build_network("ad_transfer", preset, 2), seed=fold) for fold in range(folds)]
        gmac, largest, largest_gmac = macs_per_sample(models[0])
        engines = [("torch", "f32")]
        if openvino_available() and dev.type == "cpu":
            engines.append(("openvino", "f32"))
        if bf16:
            engines += [(engine, "bf16") for engine, _ in list(engines)]
        ensembles = {spec: Ensemble(card, models, device, engine=spec[0], threads=threads, precision=spec[1]) for spec in engines}
        times: dict[tuple[str, str], list[float]] = {spec: [] for spec in engines}
        outputs = {spec: ensembles[spec].predict_proba(x[:1], batch_size=1)[1] for spec in engines}  # also the warm-up
        with OtherJobs() as other:
            for _ in range(max(1, repeats)):
                for spec in engines:
                    start = time.perf_counter()
                    ensembles[spec].predict_proba(x[:1], batch_size=1)
                    times[spec].append(time.perf_counter() - start)
        reference = float(np.median(times[("torch", "f32")]))
        for spec in engines:
            seconds = float(np.median(times[spec]))
            rate = 2 * gmac * folds / seconds
            rows.append(
                {
                    "preset": preset,
                    "engine": f"{spec[0]} {spec[1]}",
                    "GMAC_per_fold": gmac,
                    "s_per_subject": seconds,
                    "subjects_per_hour": 3600 / seconds,
                    "speedup": reference / seconds,
                    "max_abs_diff": float(np.abs(outputs[spec] - outputs[("torch", "f32")]).max()),
                    "GFLOP_per_s": rate,
                    "pct_of_peak": 100 * rate / best,
                    "other_jobs_cpu": other.share,
                }
            )
        default = Ensemble(card, models, device, engine=default_engine(dev), threads=threads)
        one = _seconds(lambda e=default: e.predict_proba(x[:1], batch_size=1), 1)
        many = _seconds(lambda e=default: e.predict_proba(x, batch_size=batch), 1) / batch
        rows.append(
            {
                "preset": preset,
                "engine": f"{default.engine} f32 batch {batch}",
                "GMAC_per_fold": gmac,
                "s_per_subject": many,
                "subjects_per_hour": 3600 / many,
                "speedup": one / many,
                "max_abs_diff": float("nan"),
                "GFLOP_per_s": 2 * gmac * folds / many,
                "pct_of_peak": 100 * 2 * gmac * folds / many / best,
                "other_jobs_cpu": float("nan"),
            }
        )
        print(f"{preset}: {gmac:.1f} GMAC per sample per fold ({largest} {100 * largest_gmac / gmac:.0f}%)")
    return rows


def bench_train(
    presets: list[str], batch: int = 2, steps: int = 2, device: str = "cpu", autotune: bool = True
) -> list[dict[str, float | str]]:
    """Training throughput: one SGD step (forward, backward, update; binary cross-entropy) on
    random maps (``batch``, 2, 96, 120, 86), in samples per second, for each preset and for the
    three trainings of the procedure: the sex base network, the AD transfer network trained
    whole, and the AD network above a frozen stem (stem outputs computed once per scan, as
    ``--freeze-stem`` does). Each is timed in channels_last_3d (what training uses) and in the
    default layout, side by side; on CUDA also with bf16 autocast. On CUDA ``autotune`` turns on
    cuDNN's autotuner (``torch.backends.cudnn.benchmark``) as training does; PyTorch keeps the
    convolution plans it picked for the life of the process, so the setting is compared between
    processes, not within one. Returns one row per network."""
    from BrainImageNetADLib.model.ensemble import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = autotune
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
        print("  ".join(_cell(v) for v in row.values()))
    print(f"torch threads {torch.get_num_threads()}, peak memory {peak_memory_mb():.0f} MB")


def write_markdown(path: Path, title: str, command: str, rows: list[dict[str, Any]], lines: list[str]) -> None:
    """Write benchmark ``rows`` as a Markdown table under a ``title`` heading, with the ``command``
    that made them and the summary ``lines`` below, atomically (the tables of ``docs/results``)."""
    from BrainImageNetADLib.core.atomic import write_bytes_atomic

    keys = list(dict.fromkeys(k for row in rows for k in row))
    text = [f"# {title}", "", f"Made by `{command}`; do not edit by hand.", ""]
    text += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    text += ["| " + " | ".join(_cell(row.get(k)).strip() for k in keys) + " |" for row in rows]
    text += ["", *(f"- {line}" for line in lines), ""]
    write_bytes_atomic(path, "\n".join(text).encode())


def _cell(value: float | str | None) -> str:
    if value is None:
        return f"{'-':>22}"
    if isinstance(value, str):
        return f"{value:>22}"
    if value != 0 and abs(value) < 1e-3:
        return f"{value:>22.1e}"
    return f"{value:>22.3f}"


#: deepmriprep's published CPU time for one T1 (seconds), the reference the budget is set against.
DEEPMRIPREP_CPU_SECONDS = 100.0


def _preprocess_with_peak_memory(t1: str, out_dir: str, preset: str) -> tuple[dict, float]:
    from BrainImageNetADLib.preprocessing.preprocess import preprocess_t1

    report = preprocess_t1(t1, out_dir, preset)
    return report, peak_memory_mb()


def bench_preprocess(t1: str, presets: list[str]) -> list[dict[str, float | str]]:
    """Preprocess one T1 with each preset, each in a fresh process; returns per preset the stage
    times (s), total wall time, its ratio to deepmriprep's published ~100 s, peak memory (MB) of
    the process and the GM/template correlation."""
    import tempfile

    from BrainImageNetADLib.core.worker import run_isolated

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


#: The arithmetic of the incremental occlusion method, step by step, as ``bench occlusion``
#: measures it: (label, channels-last, batch norm folded, changed boxes instead of whole cubes).
OCCLUSION_STEPS = (
    ("whole_cubes", False, False, False),
    ("channels_last", True, False, False),
    ("folded_bn", True, True, False),
    ("changed_boxes", True, True, True),
)


def bench_occlusion(presets: list[str], positions: int = 24, batch: int = 16, folds: int = 5) -> tuple[list[dict[str, float | str]], str]:
    """Occlusion map speed of one subject (the sample case's maps), per preset, for AD networks
    with random weights (``signal_preserving_init``), side by side in one run:

    - per cube, on the same ``positions`` cubes spread over the brain, with one fold network:
      the naive loop (mask, full pass) and the incremental method after each step of
      ``OCCLUSION_STEPS``, with the GFLOP/s of the last step and its share of PyTorch's
      convolution peak measured now (``measured_peak_gflops``);
    - whole maps of a ``folds``-network ensemble: exact (incremental, measured) and approximate
      (measured), with the approximate map's correlation and largest difference from the exact
      one over the voxels the exact map covers; the naive whole map is estimated from its per-cube
      time over the cubes that hold brain (the only ones either method computes).

    Returns (rows, last line ``exact X min, approximate Y min (r R), max abs diff D``: the
    largest preset's figures)."""
    from BrainImageNetADLib.core.resources import sample_maps
    from BrainImageNetADLib.explain.occlusion import OcclusionSettings, changed_boxes, cube_positions, occluded_patch, occlusion_map
    from BrainImageNetADLib.model.incremental import IncrementalNetwork
    from BrainImageNetADLib.model.maps import load_model_input

    peak = measured_peak_gflops()["convolution"]
    print(f"PyTorch convolution peak measured now (fp32): {peak:.0f} GFLOP/s", flush=True)
    x, _ = load_model_input(sample_maps(), ["GMD", "GMV"])
    settings = OcclusionSettings(batch_size=batch)
    every = cube_positions()
    first, size = changed_boxes(x, every, settings)
    brain = np.flatnonzero(size.all(axis=1))
    chosen = brain[np.linspace(0, len(brain) - 1, positions).round().astype(int)]
    xt = torch.from_numpy(x)[None]
    rows: list[dict[str, float | str]] = []
    for preset in presets:
        torch.manual_seed(0)  # the layers signal_preserving_init leaves at PyTorch's default initialisation
        models = [signal_preserving_init(build_network("ad_transfer", preset, 2), seed=s) for s in range(folds)]
        row: dict[str, float | str] = {"preset": preset}
        # the naive loop's batch holds full passes: 4 at a time keeps the paper preset within ~6 GB
        naive = occlusion_map(models[:1], x, OcclusionSettings(batch_size=min(batch, 4)), "naive", positions=every[chosen])
        naive_per_cube = (naive.seconds - naive.stats["unoccluded_pass_seconds"]) / positions
        row["naive_s_per_cube"] = naive_per_cube
        for label, channels_last, fold, boxes in OCCLUSION_STEPS:
            engine = IncrementalNetwork(models[0], channels_last, fold)
            engine.record(xt)
            groups = [chosen[i : i + batch] for i in range(0, positions, batch)]
            patches = [
                occluded_patch(xt, every[g], first[g] if boxes else every[g], size[g] if boxes else np.full((len(g), 3), 12), settings)
                for g in groups
            ]
            engine.forward_patches(patches[0])  # warm-up
            engine.macs = 0
            clock = time.perf_counter()
            logits = torch.cat([engine.forward_patches(p) for p in patches])
            seconds = time.perf_counter() - clock
            row[f"{label}_s_per_cube"] = seconds / positions
        drops = float(torch.sigmoid(engine.record(xt))[0]) - torch.sigmoid(logits).double().numpy()
        row["max_abs_diff_vs_naive"] = float(np.abs(drops - naive.drops).max())
        row["patch_GFLOP_s"] = 2 * engine.macs / seconds / 1e9
        row["pct_of_conv_peak"] = 100 * row["patch_GFLOP_s"] / peak
        exact = occlusion_map(models, x, settings)
        fast = occlusion_map(models, x, settings, "approximate")
        naive_min = naive_per_cube * len(brain) * folds / 60
        row.update(whole_map_figures(folds, naive_min, exact, fast, exact.importance, fast.importance, exact.importance != 0))
        row["largest_value"] = float(np.abs(exact.importance).max())
        rows.append(row)
        print(f"{preset}: done", file=sys.stderr, flush=True)
    return rows, whole_map_line(rows[-1], folds)


def whole_map_figures(
    folds: int, naive_min: float, exact: Any, fast: Any, exact_map: np.ndarray, fast_map: np.ndarray, inside: np.ndarray
) -> dict[str, float]:
    """The whole-map columns of ``bench occlusion`` and ``bench risk``: the naive map's estimated
    minutes, the exact and approximate maps' measured minutes (``exact``, ``fast``: results with
    ``seconds`` and ``stats``), the speed-up, the exact method's share of the naive MACs, and the
    approximate map's correlation and largest difference from the exact one (maps (96, 120, 86))
    over the voxels ``inside``."""
    return {
        f"naive_{folds}fold_min": naive_min,
        f"exact_{folds}fold_min": exact.seconds / 60,
        "speedup": naive_min / (exact.seconds / 60),
        "share_of_naive_macs": float(exact.stats["share_of_naive_macs"]),
        f"approx_{folds}fold_min": fast.seconds / 60,
        "approx_r": float(np.corrcoef(fast_map[inside], exact_map[inside])[0, 1]),
        "approx_max_abs_diff": float(np.abs(fast_map - exact_map)[inside].max()),
    }


def whole_map_line(row: dict[str, Any], folds: int) -> str:
    """The last line of ``bench occlusion`` and ``bench risk``: ``exact X min, approximate Y min
    (r R), max abs diff D`` from one row of ``whole_map_figures``."""
    return (
        f"exact {row[f'exact_{folds}fold_min']:.1f} min, approximate {row[f'approx_{folds}fold_min']:.1f} min "
        f"(r {row['approx_r']:.2f}), max abs diff {row['approx_max_abs_diff']:.1e}"
    )


def bench_risk(presets: list[str], positions: int = 12, batch: int = 16, folds: int = 5) -> tuple[list[dict[str, float | str]], str]:
    """Risk map speed (``riskmap``, the authors' 18 mm cubes in 12 mm steps) of one subject, the
    sample case's maps, into the shipped demo bundle's risk template (a real template on the model
    grid), per preset, for AD networks with random weights (``signal_preserving_init``), side by
    side in one run: the naive loop per cube (full passes, on ``positions`` cubes spread over the
    brain, one fold network), and whole maps of a ``folds``-network ensemble, exact (incremental)
    and approximate, both measured, with the approximate map's correlation and largest difference
    from the exact one over the voxels where the exact map departs from the template's score; the
    naive whole map is estimated from its per-cube time over the cubes the exact method computes.

    Returns (rows, last line ``exact X min, approximate Y min (r R), max abs diff D``: the largest
    preset's figures)."""
    from BrainImageNetADLib.core.resources import default_bundle, sample_maps
    from BrainImageNetADLib.explain.riskmap import RiskSettings, risk_map
    from BrainImageNetADLib.model.bundle import load_risk_template, read_card
    from BrainImageNetADLib.model.maps import load_model_input

    x, _ = load_model_input(sample_maps(), ["GMD", "GMV"])
    template = load_risk_template(default_bundle(), read_card(default_bundle()))
    settings = RiskSettings(batch_size=batch)
    rows: list[dict[str, float | str]] = []
    for preset in presets:
        torch.manual_seed(0)
        models = [signal_preserving_init(build_network("ad_transfer", preset, 2), seed=s) for s in range(folds)]
        exact = risk_map(models, x, template, settings)
        computed = np.flatnonzero(exact.computed)
        chosen = exact.positions[computed[np.linspace(0, len(computed) - 1, positions).round().astype(int)]]
        naive = risk_map(models[:1], x, template, RiskSettings(batch_size=min(batch, 4)), "naive", positions=chosen)
        fast = risk_map(models, x, template, settings, "approximate")
        naive_min = (naive.seconds - naive.stats["unoccluded_pass_seconds"]) / positions * len(computed) * folds / 60
        row: dict[str, float | str] = {"preset": preset, "cubes": len(exact.positions), "computed_cubes": len(computed)}
        row.update(whole_map_figures(folds, naive_min, exact, fast, exact.risk, fast.risk, exact.risk != exact.template_score))
        row["largest_departure"] = float(np.abs(exact.risk - exact.template_score).max())
        rows.append(row)
        print(f"{preset}: done", file=sys.stderr, flush=True)
    return rows, whole_map_line(rows[-1], folds)
