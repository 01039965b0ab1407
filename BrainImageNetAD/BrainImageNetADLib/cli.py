"""``brainimagenet-ad``: single-case prediction from the command line.

Exit codes: 0 success, 2 bad input (one line ``error: ...`` on stderr), 3 a cohort run in which
some subjects failed (their rows say why), 1 internal error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .core.errors import InputError, run_command
from .core.progress import ProgressCallback, progress_for
from .core.resources import default_bundle, sample_t1
from .explain.methods import OCCLUSION_METHODS
from .pipeline import HEAT_MAP_KEYS, HEAT_MAPS, CaseOptions


class OneLineErrorParser(argparse.ArgumentParser):
    """Argument parser whose usage errors are one ``error: ...`` line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def _threshold(value: str) -> float:
    t = float(value)
    if not 0.0 <= t <= 1.0:
        raise argparse.ArgumentTypeError(f"threshold must lie in [0, 1], got {value}")
    return t


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="brainimagenet-ad", description="Alzheimer's disease classifier for brain MRI (research use only).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    predict = sub.add_parser(
        "predict",
        help="AD probability of one subject (a T1 image or its GMD/GMV maps) or of a cohort",
        description="One T1 (or --gmd/--gmv, --sample): DIR/result.json with the heat map. Several inputs, a folder, a BIDS dataset "
        "or a list: one folder per subject and DIR/predictions.tsv (resumable; --jobs, --shard).",
    )
    predict.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        help="T1 images (NIfTI, NRRD, MHA), DICOM series folders, folders of T1 images, BIDS datasets, folders of SPM "
        "wc1*/mwc1* pairs, or CSV/TSV lists (column t1, or columns gmd and gmv; optional subject)",
    )
    predict.add_argument("--jobs", type=int, default=1, help="cohort: T1s preprocessed at the same time (each in its own process)")
    predict.add_argument("--shard", default=None, help="cohort: i/n, score only shard i of n (cluster job arrays)")
    predict.add_argument("--overwrite", action="store_true", help="cohort: redo subjects that are already finished")
    predict.add_argument("--preset", default="fast", choices=["fast", "accurate"], help="preprocessing preset (with a T1)")
    predict.add_argument("--force", action="store_true", help="predict even when preprocessing QC fails")
    predict.add_argument("--progress", action="store_true", help="print 'progress: STAGE FRACTION' lines on stderr")
    predict.add_argument("--gmd", type=Path, help="grey-matter density map (MNI 1.5 mm, 121x145x121 or 96x120x86)")
    predict.add_argument("--gmv", type=Path, help="grey-matter volume map (modulated), same grid")
    predict.add_argument("--sample", action="store_true", help="use the bundled sample case (Colin27 T1), preprocessed first")
    predict.add_argument("--out", type=Path, required=True, help="output folder; result.json is written there")
    predict.add_argument("--model", type=Path, default=None, help="model bundle folder (default: the shipped bundle)")
    predict.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        help="decision threshold on the AD probability (default: the card's 'balanced' preset)",
    )
    predict.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    predict.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, mps, or auto (a GPU where torch sees one)")
    predict.add_argument(
        "--engine",
        choices=["torch", "openvino"],
        default=None,
        help="ensemble engine (default: openvino on a CPU where installed, else torch)",
    )
    predict.add_argument(
        "--precision",
        choices=["f32", "bf16"],
        default="f32",
        help="f32 (default, exact) or bf16 (2-5x faster on CPUs with bf16 units; probabilities move by up to 2e-3, see docs/performance.md)",
    )
    predict.add_argument(
        "--heat-map",
        default="occlusion",
        choices=list(HEAT_MAP_KEYS),
        help="heat map of one case: occlusion (drop in AD probability when an 18 mm cube is masked; default) or risk "
        "(the model's risk template with one cube from the subject: individualized risk map; needs a bundle with a template)",
    )
    predict.add_argument(
        "--occlusion",
        default=None,
        choices=[*OCCLUSION_METHODS, "none"],
        help="how the heat map is computed (default incremental): incremental (exact), approximate (coarse to fine, "
        "about 4x faster, see docs/occlusion.md), naive (full passes, the reference), gradient x input (a quick preview; "
        "occlusion only), or none; a cohort gets none",
    )
    predict.add_argument("--occlusion-fold", type=int, default=None, help="map one fold model instead of the ensemble")
    predict.add_argument("--occlusion-batch", type=int, default=16, help="cube positions computed together (memory grows with it)")
    predict.add_argument("--cube", type=int, default=12, help="heat-map cube side in 1.5 mm voxels (default 12, i.e. 18 mm)")
    predict.add_argument(
        "--step", type=int, default=None, help="heat-map cube step in 1.5 mm voxels (default: occlusion 6, i.e. 9 mm; risk 8, i.e. 12 mm)"
    )
    preprocess = sub.add_parser("preprocess", help="T1 to GMD/GMV on the MNI grid, with transforms and QC")
    preprocess.add_argument(
        "inputs", nargs="+", type=Path, help="T1 files, DICOM folders, folders of T1 files, BIDS datasets or CSV lists (column t1)"
    )
    preprocess.add_argument("--out", type=Path, required=True, help="output folder (one T1) or root of per-subject folders")
    preprocess.add_argument("--preset", default="fast", choices=["fast", "accurate"])
    preprocess.add_argument("--jobs", type=int, default=1, help="parallel worker processes (batch)")
    preprocess.add_argument("--shard", default=None, help="i/n: process only shard i of n (cluster job arrays)")
    preprocess.add_argument("--overwrite", action="store_true", help="redo subjects that are already finished")
    preprocess.add_argument("--progress", action="store_true", help="print 'progress: STAGE FRACTION' lines on stderr (one T1)")
    keras = sub.add_parser(
        "import-keras",
        help="convert the authors' published Keras models (HDF5, from their Docker image) into a model bundle",
        description="Reads the HDF5 files with h5py only (no Keras, no pickle) and writes a bundle (safetensors + model card).",
    )
    keras.add_argument("--ad", nargs="+", type=Path, default=[], help="AD fold models, e.g. 20210106_0_Phase4_Trans_AD_..._Fold{0..4}.h5")
    keras.add_argument("--base", type=Path, help="sex base network 20200427_Phase4_FromScratch_Gender_IncepResN_lr01_AllIn.h5 (optional)")
    keras.add_argument("--mask", type=Path, help="their Reslice_BrainMask_05_91x109x91.img (default: an MNI152 brain mask stands in)")
    keras.add_argument(
        "--risk-template",
        nargs=2,
        type=Path,
        metavar=("GMD", "GMV"),
        help="their risk-map template, Template_wc1_ADNC5050_*.nii and Template_mwc1_ADNC5050_*.nii (without it: no risk maps)",
    )
    keras.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    keras.add_argument("--name", help="bundle name shown in the model chooser (default: the folder's name)")
    keras.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    web = sub.add_parser("web", help="the single-case workflow as a web page with Slicer views (teaching)")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    web.add_argument("--port", type=int, default=8080, help="port to listen on (0: any free port)")
    web.add_argument("--max-upload-mb", type=float, default=200.0, help="largest T1 file accepted for upload, in MB")
    web.add_argument("--heat-map", default="ensemble", choices=list(HEAT_MAPS), help="default heat map of a run")
    web.add_argument("--models", type=Path, default=None, help="folder of more model bundles for the chooser (e.g. made by import-keras)")
    return parser


def run_preprocess(args: argparse.Namespace) -> Path:
    """Run the ``preprocess`` command; return the output folder."""
    from .cohort.batch import collect_jobs, run_batch, shard
    from .core.errors import InputError
    from .core.worker import run_isolated
    from .preprocessing.preprocess import preprocess_t1

    jobs = shard(collect_jobs(args.inputs), args.shard)
    if not jobs:
        raise InputError("no T1 images found in the inputs")
    single = len(args.inputs) == 1 and len(jobs) == 1 and args.shard is None and args.inputs[0] == jobs[0].t1
    if single:
        report = run_isolated(preprocess_t1, jobs[0].t1, args.out, args.preset, progress=progress_for(args.progress))
        if report["verdict"] == "fail":
            raise InputError(f"preprocessing QC failed: {'; '.join(report['failures'])} (outputs kept in {args.out} for inspection)")
        if report["warnings"]:
            print(f"QC warn: {'; '.join(report['warnings'])}", file=sys.stderr)
        return args.out
    rows = run_batch(jobs, args.out, args.preset, args.jobs, args.overwrite)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("pass", "warn", "fail", "error", "done before")}
    print("summary: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n), file=sys.stderr)
    return args.out / "summary.tsv"


def case_options(args: argparse.Namespace) -> CaseOptions:
    """The ``CaseOptions`` of a ``predict`` command line."""
    return CaseOptions(
        preset=args.preset,
        heat_map=args.heat_map,
        method=args.occlusion or "incremental",
        fold=args.occlusion_fold,
        cube=args.cube,
        step=args.step,
        batch_size=args.occlusion_batch,
        force=args.force,
        threshold=args.threshold,
        device=args.device,
        threads=args.threads,
        engine=args.engine,
        precision=args.precision,
    )


def run_predict(args: argparse.Namespace) -> Path:
    """Run the ``predict`` command; return the path of the written ``result.json`` (one case) or
    ``predictions.tsv`` (a cohort)."""
    from .cohort.scoring import collect_cases
    from .pipeline import run_case

    if sum([args.sample, bool(args.inputs), bool(args.gmd or args.gmv)]) != 1:
        raise InputError("give one kind of input: T1 images, folders or lists (see --help), --gmd/--gmv, or --sample")
    bundle = Path(args.model or default_bundle())
    options = case_options(args)
    progress = progress_for(args.progress)
    source: Path | dict[str, Path] = sample_t1() if args.sample else {"GMD": args.gmd, "GMV": args.gmv}
    if args.inputs:
        cases = collect_cases(args.inputs)
        if not cases:
            raise InputError("no T1 images or map pairs found in the inputs")
        single = len(args.inputs) == 1 and len(cases) == 1 and cases[0].t1 == args.inputs[0] and args.shard is None
        if not single:
            return run_cohort(args, cases, bundle, options, progress)
        source = cases[0].t1
    run_case(source, args.out, bundle, options, progress)
    return Path(args.out) / "result.json"


def run_cohort(args: argparse.Namespace, cases: list, bundle: Path, options: CaseOptions, progress: ProgressCallback | None) -> Path:
    """``predict`` over many inputs: ``predictions.tsv`` and one folder per subject (``cohort``)."""
    from .cohort.batch import shard
    from .cohort.scoring import predict_cohort
    from .model.ensemble import Ensemble

    if args.occlusion not in (None, "none"):
        raise InputError("heat maps are made one case at a time (predict T1 --out DIR); for a cohort use brainimagenet-train occlusion")
    ensemble = Ensemble.from_bundle(bundle, options.device, options.threads, options.engine, options.precision)
    cases = shard(cases, args.shard)
    if not cases:
        raise InputError(f"shard {args.shard} holds no subjects")
    return predict_cohort(cases, args.out, ensemble, bundle, options, args.jobs, args.overwrite, progress)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``brainimagenet-ad``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return run_command(lambda: _run(args))


def _run(args: argparse.Namespace) -> None:
    """Run the command ``args.command``, printing its output path."""
    out = getattr(args, "out", None)
    if isinstance(out, Path) and out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; give a folder")
    if args.command == "predict":
        print(run_predict(args))
    elif args.command == "preprocess":
        print(run_preprocess(args))
    elif args.command == "import-keras":
        from .model.keras_import import import_keras_bundle

        print(import_keras_bundle(args.ad, args.out, args.base, args.mask, args.name, args.overwrite, args.risk_template))
    elif args.command == "web":
        from .viewer.web import serve

        serve(args.host, args.port, args.max_upload_mb, args.heat_map, args.models)


if __name__ == "__main__":
    sys.exit(main())
