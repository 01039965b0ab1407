"""``brainimagenet-bench``: the developers' benchmarks (speed, memory, fidelity to SPM12, real
scans), printed as tables and, with ``--markdown``, written under ``docs/results/``. Not part of
the Slicer extension. Exit codes as ``brainimagenet-ad``'s: 0 success, 2 bad input."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from BrainImageNetADLib.cli import OneLineErrorParser
from BrainImageNetADLib.core.errors import run_command
from BrainImageNetADLib.core.resources import sample_t1


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="brainimagenet-bench", description="Benchmarks of BrainImageNet-AD, printed as tables.")
    parser.add_argument(
        "target", choices=["predict", "preprocess", "occlusion", "risk", "train", "fidelity", "realscans", "reach"], help="what to measure"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="fidelity: folder of SPM12 reference maps, one sub-folder per scan, with SPM's *_seg8.mat where available to check its fit (default: ../shared/reference/spm12 beside the source tree)",
    )
    parser.add_argument(
        "--presets",
        nargs="+",
        default=None,
        help="network presets (predict: tiny small paper; occlusion, risk: small paper; train: paper; reach: tiny paper) or preprocessing presets (preprocess: fast accurate)",
    )
    parser.add_argument("--t1", type=Path, default=None, help="T1 for 'preprocess' (default: the sample T1, Colin27)")
    parser.add_argument(
        "--batch",
        type=int,
        default=4,
        help="batch size (predict: compared with batch size 1; occlusion, risk: cubes per pass; train: per step)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="realscans: folder of real scans laid out like shared/realdata (default: ../shared/realdata beside the source tree)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("realscans"),
        help="realscans (and fidelity with --keep): where preprocessing outputs are kept (resumable)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="realscans: scans preprocessed at a time, each in its own worker process")
    parser.add_argument("--keep", action="store_true", help="fidelity: keep each scan's preprocessing under --out/fidelity and reuse it")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write the table and its summary as Markdown to this file (docs/results/)",
    )
    parser.add_argument("--folds", type=int, default=5, help="occlusion, risk: fold networks in the whole-map runs (default 5)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed repeats (predict: interleaved rounds, default 3; train: steps, default 1)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    return parser


#: Heading of each benchmark's table in its Markdown file (``--markdown``).
TITLES = {
    "predict": "Prediction speed",
    "preprocess": "Preprocessing time and memory",
    "occlusion": "Occlusion map speed",
    "risk": "Risk map speed",
    "train": "Training step speed",
    "fidelity": "Fidelity to SPM12",
    "realscans": "Real scans: QC, volumes and contrast",
    "reach": "Where the AD network looks",
}


def measure(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """Run the benchmark ``args.target``; return its table rows and the summary lines below it."""
    from .speed import bench_occlusion, bench_predict, bench_preprocess, bench_risk, bench_train

    shared = Path(__file__).resolve().parents[3] / "shared"
    if args.target == "realscans":
        from concurrent.futures import ThreadPoolExecutor

        from .realscans import RealScan, measure_scan, real_scans, summary

        scans = real_scans(args.data or shared / "realdata")

        def measured(scan: RealScan) -> dict:
            row = measure_scan(scan, args.out / scan.group / scan.name)
            print(f"{scan.name}: {row['verdict']}", file=sys.stderr, flush=True)
            return row

        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            rows = list(pool.map(measured, scans))
        columns = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "reason"]
        lines = [f"{r['scan']}: {r['reason']}" for r in rows if r["reason"]] + summary(rows, scans)
        return [{k: r.get(k) for k in columns} for r in rows], lines
    if args.target == "fidelity":
        from .fidelity import reference_scans, scan_fidelity, summary_line, timing_line

        reference = args.reference or shared / "reference" / "spm12"
        rows = []
        for scan in reference_scans(reference):
            rows.append(scan_fidelity(scan, (args.presets or ["fast"])[0], args.out / "fidelity" / scan.name if args.keep else None))
            print(f"{scan.name}: done", file=sys.stderr, flush=True)
        return rows, [summary_line(rows), timing_line(rows)]
    if args.target == "reach":
        from .reach import bench_reach

        return bench_reach(args.presets or ["tiny", "paper"])
    if args.target == "preprocess":
        return bench_preprocess(str(args.t1 or sample_t1()), args.presets or ["fast", "accurate"]), []
    if args.target == "train":
        return bench_train(args.presets or ["paper"], batch=args.batch, steps=args.repeats or 1, device=args.device), []
    if args.target in ("occlusion", "risk"):
        bench = bench_occlusion if args.target == "occlusion" else bench_risk
        rows, last = bench(args.presets or ["small", "paper"], batch=args.batch, folds=args.folds)
        return rows, [last]
    presets = args.presets or ["tiny", "small", "paper"]
    return bench_predict(presets, batch=args.batch, repeats=args.repeats or 3, device=args.device), []


def run(args: argparse.Namespace) -> None:
    """Run the benchmark ``args.target``, print its table and summary, and with ``--markdown``
    write them to that file (with the CPU count, torch's threads and the peak memory)."""
    import os

    import torch

    from .speed import peak_memory_mb, print_rows, write_markdown

    if args.threads:
        torch.set_num_threads(args.threads)
    rows, lines = measure(args)
    print_rows(rows)
    if lines:
        print("\n".join(lines))
    if args.markdown:
        machine = f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, peak memory {peak_memory_mb():.0f} MB"
        write_markdown(args.markdown, TITLES[args.target], f"brainimagenet-bench {args.target}", rows, [*lines, machine])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brainimagenet-bench``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
