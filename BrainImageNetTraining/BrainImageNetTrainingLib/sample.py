"""The quick sample maps shipped in ``Resources/Sample``: the project's own preprocessing (``fast``
preset) of the shipped sample T1, Colin27 with skull (from MRIcron, BSD-3-Clause; see
``Resources/PROVENANCE.md``), so that trying the networks without preprocessing gives what preprocessing gives."""

from __future__ import annotations

import tempfile
from pathlib import Path

from BrainImageNetADLib.core.atomic import write_bytes_atomic
from BrainImageNetADLib.core.resources import sample_t1
from BrainImageNetADLib.core.worker import run_isolated
from BrainImageNetADLib.preprocessing.preprocess import is_done, preprocess_t1


def make_colin27_sample(out_dir: str | Path, preprocessing_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``colin27_gmd.nii.gz`` and ``colin27_gmv.nii.gz`` (121x145x121, MNI 1.5 mm) to ``out_dir``.

    The maps are those of ``preprocess_t1`` on the sample T1 with the ``fast`` preset, run here
    in a worker process (about a minute), or taken from ``preprocessing_dir``, a finished
    preprocessing of that T1 with that preset. Returns ``{"GMD": path, "GMV": path}``.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="brainimagenet-sample-") as scratch:
        source = Path(preprocessing_dir) if preprocessing_dir is not None else Path(scratch)
        if preprocessing_dir is None:
            run_isolated(preprocess_t1, sample_t1(), source, "fast")
        if not is_done(source):
            raise FileNotFoundError(f"{source}: not a finished preprocessing folder")
        return {
            kind.upper(): write_bytes_atomic(out_dir / f"colin27_{kind}.nii.gz", (source / f"{kind}.nii.gz").read_bytes())
            for kind in ("gmd", "gmv")
        }
