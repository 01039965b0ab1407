"""``brainimagenet-train``: headless commands of the training module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from BrainImageNetADLib.cli import OneLineErrorParser

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="brainimagenet-train", description="Training tools of BrainImageNet-AD.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    placeholder = sub.add_parser("placeholder", help="write the placeholder sample case, untrained bundle and hippocampus atlas")
    placeholder.add_argument("--out", type=Path, required=True, help="resources folder; Models/ and Sample/ are written there")
    placeholder.add_argument("--preset", default="tiny", choices=["tiny", "small", "paper"])
    placeholder.add_argument("--seed", type=int, default=0)
    synth = sub.add_parser("synth", help="write a synthetic multi-site cohort (GMD/GMV maps and manifest.csv)")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--subjects", type=int, default=200)
    synth.add_argument("--sites", type=int, default=6)
    synth.add_argument("--datasets", type=int, default=3)
    synth.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brainimagenet-train``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "synth":
        from .synth import write_cohort

        if args.subjects < 1 or args.sites < 1 or not 1 <= args.datasets <= args.sites:
            print("error: need --subjects >= 1, --sites >= 1 and 1 <= --datasets <= --sites", file=sys.stderr)
            return 2
        print(write_cohort(args.out, args.subjects, args.sites, args.datasets, args.seed))
    if args.command == "placeholder":
        from .placeholder import make_colin27_sample, make_untrained_bundle

        try:
            for path in make_colin27_sample(args.out / "Sample").values():
                print(path)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        from BrainImageNetADLib.atlas import ATLAS_FILE, build_atlas

        print(build_atlas(args.out / "Atlas" / ATLAS_FILE))
        print(make_untrained_bundle(args.out / "Models" / f"placeholder-{args.preset}", args.preset, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
