"""``brainimagenet-train``: headless commands of the training module."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from BrainImageNetADLib.cli import OneLineErrorParser
from BrainImageNetADLib.core.errors import run_command
from BrainImageNetADLib.core.progress import progress_for

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="brainimagenet-train", description="Training tools of BrainImageNet-AD.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    shipped = sub.add_parser("resources", help="write the shipped quick sample maps (Sample/) and AAL atlas (Atlas/)")
    shipped.add_argument("--out", type=Path, required=True, help="resources folder, e.g. Resources")
    shipped.add_argument("--aal", type=Path, default=None, help="MRIcron's aal.nii.gz (aal.nii.txt beside it): also rebuild Atlas/ from it")
    synth = sub.add_parser("synth", help="write a synthetic multi-site cohort (GMD/GMV maps and manifest.csv)")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--subjects", type=int, default=200)
    synth.add_argument("--sites", type=int, default=6)
    synth.add_argument("--datasets", type=int, default=3)
    synth.add_argument("--seed", type=int, default=0)
    pretrain = sub.add_parser("pretrain", help="train the base network (sex classifier or age regressor) with cross-validation")
    pretrain.add_argument("--task", choices=["sex", "age"], default="sex")
    _training_options(pretrain, folds_help="leave-datasets-out folds (0: one model, validation only)")
    transfer = sub.add_parser("transfer", help="train the AD classifier (leave-sites-out), optionally from a pretrained base")
    transfer.add_argument("--base", help="pretraining run folder or base bundle whose stem starts the AD network (default: from scratch)")
    transfer.add_argument("--intact", action="store_true", help="keep the whole base network (the paper's 'intact' variant)")
    transfer.add_argument("--demo", action="store_true", help="mark the exported bundle as a demonstration model trained on synthetic data")
    _training_options(transfer, folds_help="leave-sites-out folds")
    evaluate = sub.add_parser("evaluate", help="score independent scans with one or more AD bundles (the paper's Table 2 and MCI analyses)")
    evaluate.add_argument("--model", type=Path, action="append", required=True, help="bundle folder; repeat to compare bundles")
    evaluate.add_argument("--manifest", type=Path, required=True)
    evaluate.add_argument("--out", type=Path, required=True)
    evaluate.add_argument("--threshold", type=float, default=0.5)
    evaluate.add_argument("--device", default="cpu")
    evaluate.add_argument("--permutations", type=int, default=10_000, help="label shuffles of the field-strength test")
    evaluate.add_argument("--progress", action="store_true")
    occlusion = sub.add_parser("occlusion", help="group-level occlusion map: accuracy drop per cube over independent AD and NC scans")
    occlusion.add_argument("--model", type=Path, required=True, help="AD bundle folder")
    occlusion.add_argument("--manifest", type=Path, required=True)
    occlusion.add_argument("--out", type=Path, required=True)
    occlusion.add_argument("--fold", type=int, help="use one fold model instead of the ensemble (5x faster)")
    occlusion.add_argument("--scans", type=int, help="at most this many scans, alternating AD and NC (default: all)")
    occlusion.add_argument("--stride", type=int, default=6, help="cube step in voxels of 1.5 mm (paper: 6, i.e. 9 mm)")
    occlusion.add_argument("--threshold", type=float, default=0.5)
    occlusion.add_argument("--progress", action="store_true")
    template = sub.add_parser(
        "risk-template",
        help="add a risk template to an AD bundle: the blend of its training scans' mean AD and NC maps that it scores at 0.5",
    )
    template.add_argument("--model", type=Path, required=True, help="AD bundle folder (the template is written into it)")
    template.add_argument("--manifest", type=Path, required=True, help="the manifest the bundle was trained on")
    template.add_argument("--progress", action="store_true")
    subtypes = sub.add_parser(
        "subtypes",
        help="AD subtypes: k-means of the AD scans' risk maps, elbow over k = 1..10; MCI scans assigned to the closest centre",
    )
    subtypes.add_argument("--model", type=Path, required=True, help="AD bundle folder with a risk template")
    subtypes.add_argument("--manifest", type=Path, required=True, help="manifest with AD scans (and MCI scans to assign)")
    subtypes.add_argument("--out", type=Path, required=True, help="output folder; an interrupted run resumes from its risk maps")
    subtypes.add_argument("--k", type=int, help="number of subtypes (default: the elbow of the sum of squares over k = 1..10)")
    subtypes.add_argument(
        "--margin",
        type=float,
        default=0.05,
        help="an MCI scan whose best centre correlates less than this above the second stays unassigned",
    )
    subtypes.add_argument("--cube", type=int, default=12, help="risk-map cube edge in 1.5 mm voxels (authors: 12, i.e. 18 mm)")
    subtypes.add_argument("--step", type=int, default=8, help="risk-map cube step in 1.5 mm voxels (authors: 8, i.e. 12 mm)")
    subtypes.add_argument("--fold", type=int, help="risk maps of one fold model instead of the ensemble (5x faster)")
    subtypes.add_argument("--seed", type=int, default=0, help="k-means random state")
    subtypes.add_argument("--threads", type=int, help="CPU threads for torch")
    subtypes.add_argument("--progress", action="store_true")
    demo = sub.add_parser("demo", help="make the demonstration ensemble from synthetic cohorts (pretrain, transfer, evaluate); resumable")
    demo.add_argument("--out", type=Path, required=True, help="demo folder (cohorts, run folders, evaluation, demo.json)")
    demo.add_argument("--subjects", type=int, default=300, help="training cohort size")
    demo.add_argument("--sites", type=int, default=10, help="sites of the training cohort")
    demo.add_argument("--preset", choices=["paper", "small", "tiny"], default="tiny")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, help="CPU threads for torch")
    demo.add_argument("--export", type=Path, help="also copy the ensemble bundle to this folder (e.g. Resources/Models/demo-tiny)")
    demo.add_argument("--progress", action="store_true", help="print 'progress: STAGE FRACTION' lines on stderr")
    return parser


def _training_options(parser: argparse.ArgumentParser, folds_help: str) -> None:
    parser.add_argument("--manifest", type=Path, required=True, help="CSV/TSV manifest (see docs/training.md)")
    parser.add_argument("--out", type=Path, required=True, help="run folder; an interrupted run resumes from it")
    parser.add_argument("--preset", choices=["paper", "small", "tiny"], default="paper")
    parser.add_argument("--channels", default="GMD,GMV", help="input maps, comma-separated: GMD, GMV or GMD,GMV")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, help="initial learning rate (paper: 0.01 base networks, 0.0003 AD)")
    parser.add_argument("--decay", type=float, help="lr = lr0 / (1 + decay x iteration) (paper: 0.003 base, 0.002 AD)")
    parser.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum")
    parser.add_argument("--folds", type=int, default=5, help=folds_help)
    parser.add_argument("--always-train", type=int, help="largest groups never tested (paper: 3 datasets for the base, 0 sites for AD)")
    parser.add_argument("--validation", type=int, default=600, help="validation scans taken from each fold's training part")
    parser.add_argument("--allocations", type=int, default=10_000, help="random fold allocations tried; the most size-balanced is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--freeze-stem", action="store_true", help="train only the layers above the stem (its outputs are computed once)")
    parser.add_argument(
        "--precise-bn",
        type=int,
        default=1000,
        help="training scans over which batch-norm statistics are recomputed after each epoch (0: off)",
    )
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:N")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="auto: bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--threads", type=int, help="CPU threads for torch")
    parser.add_argument("--name", help="name in the exported bundle's model card")
    parser.add_argument("--training-data", default="", help="description of the training data for the model card")
    parser.add_argument("--progress", action="store_true", help="print 'progress: STAGE FRACTION' lines on stderr")


def _train(args: argparse.Namespace, task: str) -> int:
    import torch

    from BrainImageNetADLib.core.cpu import keep_freed_memory

    from .training import TrainConfig, train

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(
        task=task,
        preset=args.preset,
        channels=[c.strip().upper() for c in args.channels.split(",") if c.strip()],
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        decay=args.decay,
        momentum=args.momentum,
        folds=args.folds,
        always_train=args.always_train,
        validation=args.validation,
        allocations=args.allocations,
        seed=args.seed,
        freeze_stem=args.freeze_stem,
        precise_bn=args.precise_bn,
        intact=getattr(args, "intact", False),
        base=getattr(args, "base", None),
        device=args.device,
        precision=args.precision,
        card_name=args.name,
        demo=getattr(args, "demo", False),
        training_data=args.training_data,
    )
    summary = train(config, args.manifest, args.out, progress=progress_for(args.progress), log=_log)
    if summary:  # only the main process of a torchrun job reports
        print(json.dumps(summary["pooled"], indent=2))
        print(args.out / "bundle")
    return 0


def _demo(args: argparse.Namespace) -> int:
    import torch

    from BrainImageNetADLib.core.cpu import keep_freed_memory

    from .demo import DemoSettings, export_bundle, run_demo

    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.subjects < 50 or args.sites < 5:
        print("error: the demo needs --subjects >= 50 and --sites >= 5 (five leave-sites-out folds)", file=sys.stderr)
        return 2
    settings = DemoSettings(subjects=args.subjects, sites=args.sites, preset=args.preset, seed=args.seed)
    summary = run_demo(args.out, settings, progress=progress_for(args.progress), log=_log)
    print(json.dumps({"seconds": summary["seconds"], "cross_validation": summary["cross_validation"]}, indent=2))
    if args.export:
        print(export_bundle(args.out, args.export))
    return 0


def _subtypes(args: argparse.Namespace) -> int:
    import torch

    from BrainImageNetADLib.explain.riskmap import RiskSettings

    from .subtypes import SubtypeSettings, run_subtypes

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cube < 1 or args.step < 1:
        print("error: --cube and --step must be at least 1 voxel", file=sys.stderr)
        return 2
    settings = SubtypeSettings(
        k=args.k, margin=args.margin, seed=args.seed, risk=RiskSettings(cube=args.cube, stride=args.step), fold=args.fold
    )
    summary = run_subtypes(args.model, args.manifest, args.out, settings, progress_for(args.progress))
    chosen = "given" if args.k else "elbow"
    print(
        f"{summary['k']} subtypes ({chosen}) among {summary['ad_scans']} AD scans; {summary['mci_unassigned']} of {summary['mci_scans']} MCI scans unassigned"
    )
    for subtype in summary["subtypes"]:
        regions = ", ".join(r["name"] for r in subtype["highest_regions"][:3])
        print(f"subtype {subtype['subtype']}: {subtype['ad_scans']} AD, {subtype['mci']['assigned']} MCI; highest in {regions}")
    print(args.out / "subtypes.json")
    return 0


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brainimagenet-train``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args), "interrupted; run the same command again to resume")


def _run(args: argparse.Namespace) -> int:
    if args.command in ("pretrain", "transfer"):
        return _train(args, getattr(args, "task", "ad"))
    if args.command == "demo":
        return _demo(args)
    if args.command == "occlusion":
        from BrainImageNetADLib.explain.occlusion import OcclusionSettings

        from .group_occlusion import group_occlusion

        if args.stride < 1:
            print("error: --stride must be at least 1", file=sys.stderr)
            return 2
        summary = group_occlusion(
            args.model,
            args.manifest,
            args.out,
            OcclusionSettings(stride=args.stride),
            args.threshold,
            args.fold,
            args.scans,
            progress_for(args.progress),
        )
        top = summary["regions"]["accuracy_drop"]["top_regions"][:5]
        print(f"accuracy {summary['accuracy']:.3f} on {summary['scans']}; largest accuracy drops: " + ", ".join(r["name"] for r in top))
        print(args.out / "group_occlusion.json")
    if args.command == "risk-template":
        from .risk_template import make_risk_template

        entry = make_risk_template(args.model, args.manifest, progress=progress_for(args.progress))
        print(f"risk template scored {entry['score']:.4f} (blend weight of the AD mean {entry['blend_weight']:.4f})")
        print(args.model / entry["file"])
    if args.command == "subtypes":
        return _subtypes(args)
    if args.command == "evaluate":
        from .evaluation import evaluate, format_table

        result = evaluate(args.model, args.manifest, args.out, args.threshold, args.device, args.permutations, progress_for(args.progress))
        print(format_table(result["table"]), end="")
        print(args.out / "evaluation.json")
    if args.command == "synth":
        from .synth import write_cohort

        if args.subjects < 1 or args.sites < 1 or not 1 <= args.datasets <= args.sites:
            print("error: need --subjects >= 1, --sites >= 1 and 1 <= --datasets <= --sites", file=sys.stderr)
            return 2
        print(write_cohort(args.out, args.subjects, args.sites, args.datasets, args.seed))
    if args.command == "resources":
        from BrainImageNetADLib.explain.atlas import build_atlas

        from .sample import make_colin27_sample

        for path in make_colin27_sample(args.out / "Sample").values():
            print(path)
        if args.aal is not None:
            print(build_atlas(args.out / "Atlas", args.aal))
    return 0


if __name__ == "__main__":
    sys.exit(main())
