"""Where the shipped model bundles and the sample case are found."""

from __future__ import annotations

import os
from pathlib import Path

#: Name of the bundle used when none is given.
DEFAULT_MODEL = "demo-tiny"
#: Environment variable that points to another resources folder (with Models/ and Sample/).
RESOURCES_ENV = "BRAINIMAGENET_AD_RESOURCES"


def resources_dir() -> Path:
    """The folder holding ``Models/`` and ``Sample/``: ``$BRAINIMAGENET_AD_RESOURCES``, the
    source tree's top-level ``Resources/``, or the copy an installed Slicer extension carries."""
    env = os.environ.get(RESOURCES_ENV)
    library = Path(__file__).resolve().parents[1]  # the BrainImageNetADLib folder
    candidates = [Path(env)] if env else []
    candidates += [library.parents[1] / "Resources", library.parent / "Resources" / "Shared"]
    for candidate in candidates:
        if (candidate / "Models").is_dir():
            return candidate
    raise FileNotFoundError(f"no resources folder with Models/ found (looked in {', '.join(map(str, candidates))})")


def default_bundle() -> Path:
    """Folder of the default model bundle."""
    return resources_dir() / "Models" / DEFAULT_MODEL


def sample_t1() -> Path:
    """Path of the bundled sample case: the Colin27 T1 (1 mm, with skull)."""
    return resources_dir() / "Sample" / "colin27_t1.nii.gz"


def sample_maps() -> dict[str, Path]:
    """Paths of the quick sample maps: GMD and GMV of the sample T1 (Colin27) as preprocessing
    makes them (``fast`` preset; MNI 1.5 mm, 121x145x121), for trying the networks without
    preprocessing."""
    sample = resources_dir() / "Sample"
    return {"GMD": sample / "colin27_gmd.nii.gz", "GMV": sample / "colin27_gmv.nii.gz"}
