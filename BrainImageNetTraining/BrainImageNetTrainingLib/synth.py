"""Synthetic multi-site cohort with known ground truth, for teaching and for testing the training
procedure when no labelled AD data is at hand.

Each subject's maps are built on the MNI grid from the MNI152 2009 tissue probabilities:
- anatomy: a smooth random deformation (the individual shape left after normalisation, SD about
  1 mm) and a head-size factor;
- age: global grey-matter loss and periventricular loss with age;
- sex: larger head size in males and a regional difference (cerebellum, hypothalamus);
- disease: AD-like atrophy in one of three planted subtypes (``SUBTYPES``), drawn for each AD and
  progressive MCI subject: medial-temporal (strongest in hippocampus and parahippocampal gyrus,
  left 20 % stronger, weaker over the temporal lobe: an AD subject loses about 45 % of
  hippocampal grey matter), parietal (lateral parietal cortex and precuneus, as in posterior
  cortical atrophy) and frontal (dorsolateral prefrontal cortex, as in the dysexecutive variant),
  the medial temporal lobe relatively spared in the last two; every subtype adds a mild loss
  everywhere (5-10 % of occipital grey matter). Stable MCI subjects have mild medial-temporal
  atrophy; MCI subjects have partial atrophy (progressive more than stable); MMSE tracks atrophy
  with noise;
- site/scanner: contrast scaling, noise, smoothness and a smooth bias, with a field strength.
GMD is the resulting grey-matter probability; GMV = GMD x Jacobian (head size, individual
deformation, local atrophy), as preprocessing computes it. Maps are written on the 96x120x86
model grid.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from BrainImageNetADLib.core import grid, templates
from BrainImageNetADLib.core.atomic import write_bytes_atomic, write_nifti_atomic
from BrainImageNetADLib.explain.atlas import REGIONS, region_mask

DIAGNOSIS_SHARES = {"NC": 0.4, "AD": 0.3, "sMCI": 0.15, "pMCI": 0.15}
#: Mean severity per diagnosis: the fraction of grey matter the focal component removes at the
#: hippocampal core (the temporal and global components add to it); individuals vary.
ATROPHY = {"NC": 0.0, "sMCI": 0.06, "pMCI": 0.14, "AD": 0.25}
#: Share of the core atrophy lost everywhere (AD brains have about 5 % less grey matter overall).
GLOBAL_ATROPHY = 0.2
#: SD of the individual anatomy left after normalisation to MNI space (voxels of 1.5 mm), as a
#: smooth displacement. DARTEL aligns grey matter to about a millimetre, so a cohort's mean map
#: stays nearly as sharp as one scan's; larger residuals blur the mean, which a network then
#: reads as cortex-wide grey-matter loss.
RESIDUAL_SHAPE = 0.6
#: Planted atrophy subtypes of AD and progressive MCI subjects and their shares.
SUBTYPES = {"medial-temporal": 0.4, "parietal": 0.3, "frontal": 0.3}
#: AAL regions (both sides) of the focus of the cortical subtypes.
SUBTYPE_REGIONS = {
    "parietal": ("Parietal_Sup", "Parietal_Inf", "SupraMarginal", "Angular", "Precuneus"),
    "frontal": ("Frontal_Mid", "Frontal_Inf_Oper", "Frontal_Inf_Tri"),
}
MANIFEST_COLUMNS = (
    "subject",
    "session",
    "dataset",
    "site",
    "scanner",
    "field_strength",
    "sex",
    "age",
    "diagnosis",
    "mmse",
    "atrophy",
    "subtype",
    "gmd",
    "gmv",
)


@dataclass(frozen=True)
class Site:
    """Acquisition effects of one site: intensity gain, noise SD (correlated over ~1 voxel), smoothing SD (voxels), bias
    amplitude, field strength (T), and the dataset it belongs to."""

    name: str
    dataset: str
    gain: float
    noise: float
    smoothing: float
    bias: float
    field_strength: float


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, amplitude: float) -> np.ndarray:
    """Gaussian-smoothed white noise of standard deviation ``amplitude``; smoothed on a grid
    coarser by about sigma / 2 and interpolated back (same statistics, a fraction of the cost)."""
    step = max(1, int(sigma // 2))
    coarse = tuple(-(-n // step) + 1 for n in shape) if step > 1 else tuple(shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / step)
    if step > 1:
        field = ndimage.zoom(field, step, order=1)[tuple(slice(0, n) for n in shape)]
    return field * (amplitude / (field.std() + 1e-9))


def _jacobian_determinant(displacement: list[np.ndarray]) -> np.ndarray:
    """Determinant of I + grad(u) per voxel for a displacement field u (3 arrays, voxels)."""
    g = [np.gradient(d) for d in displacement]
    a = [[g[r][c] + (1.0 if r == c else 0.0) for c in range(3)] for r in range(3)]
    return (
        a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0])
    )


def make_sites(n_sites: int, n_datasets: int, rng: np.random.Generator) -> list[Site]:
    """``n_sites`` sites spread over ``n_datasets`` datasets, each with random acquisition effects."""
    return [
        Site(
            name=f"site{index:02d}",
            dataset=f"DS{index % n_datasets + 1}",
            gain=float(rng.uniform(0.96, 1.04)),
            noise=float(rng.uniform(0.01, 0.03)),
            smoothing=float(rng.uniform(0.0, 1.0)),
            bias=float(rng.uniform(0.0, 0.08)),
            field_strength=float(rng.choice([1.5, 3.0])),
        )
        for index in range(n_sites)
    ]


class CohortGenerator:
    """Draws synthetic subjects on the model grid (arrays (96, 120, 86) float32)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        tm = templates.mni_templates_on_grid()
        self.gm = grid.crop_to_model_grid(tm["GM"]).astype(np.float32)
        self.csf = grid.crop_to_model_grid(tm["CSF"]).astype(np.float32)
        labels = grid.crop_to_model_grid(templates.aal_labels())
        left = np.isin(labels, [k for k, v in REGIONS.items() if v.endswith("_L")])
        right = np.isin(labels, [k for k, v in REGIONS.items() if v.endswith("_R")])
        # Atrophy patterns (fraction of the subject's severity lost per voxel). Medial-temporal:
        # hippocampus and parahippocampal core (left 20 % stronger: each side's core saturates at
        # its own weight), a halo standing for the medial temporal lobe, a broad temporal one, and a
        # mild loss everywhere, as AD brains show.
        medial = sum(
            weight * np.clip(ndimage.gaussian_filter(side.astype(np.float32), 1.5) * 1.5, 0, 1)
            for weight, side in ((1.2, left), (1.0, right))
        )
        medial += 0.3 * ndimage.gaussian_filter((left | right).astype(np.float32), 5.0)
        broad = ndimage.gaussian_filter((left | right).astype(np.float32), 12.0)
        medial += 0.5 * broad / broad.max()
        self.atrophy_patterns = {"medial-temporal": medial + GLOBAL_ATROPHY}
        for subtype, regions in SUBTYPE_REGIONS.items():
            focus = grid.crop_to_model_grid(region_mask(regions))
            focal = np.clip(ndimage.gaussian_filter(focus.astype(np.float32), 2.0) * 1.5, 0, 1.2)
            self.atrophy_patterns[subtype] = focal + 0.1 * medial + GLOBAL_ATROPHY
        shape = grid.MODEL_SHAPE
        z = np.arange(shape[2])[None, None, :]
        y = np.arange(shape[1])[None, :, None]
        # Sex-dimorphic regions (rough boxes on the model grid): cerebellum (posterior-inferior)
        # and hypothalamus (small, central-inferior).
        self.sex_pattern = np.zeros(shape, np.float32)
        self.sex_pattern[:, :40, :30] = 1.0
        self.sex_pattern[40:56, 60:72, 20:32] = 1.0
        self.sex_pattern = ndimage.gaussian_filter(self.sex_pattern, 3.0) * (self.gm > 0.1)
        self.periventricular = ndimage.gaussian_filter((self.csf > 0.6).astype(np.float32) * (z > 20) * (y > 30), 2.0)

    def subject(
        self, diagnosis: str, sex: str, age: float, site: Site, subtype: str = "medial-temporal"
    ) -> tuple[np.ndarray, np.ndarray, float]:
        """GMD, GMV (model grid) and the subject's atrophy severity (fraction lost where the
        ``subtype``'s pattern is strongest; 0 for NC)."""
        rng = self.rng
        severity = max(0.0, ATROPHY[diagnosis] * float(rng.normal(1.0, 0.25)))
        loss = np.minimum(severity * self.atrophy_patterns[subtype], 0.9)
        ageing = 0.003 * max(age - 60.0, 0.0)
        sex_effect = (0.04 if sex == "M" else -0.04) * self.sex_pattern
        gmd = self.gm * (1.0 - loss) * (1.0 - ageing) * (1.0 + sex_effect) * (1.0 - 0.5 * ageing * self.periventricular)
        # Individual shape left after normalisation: a smooth deformation of SD ``RESIDUAL_SHAPE``.
        displacement = [_smooth_field(rng, grid.MODEL_SHAPE, 6.0, RESIDUAL_SHAPE) for _ in range(3)]
        coordinates = np.indices(grid.MODEL_SHAPE, dtype=np.float32) + np.stack(displacement)
        gmd = ndimage.map_coordinates(gmd, coordinates, order=1, mode="nearest")
        local = _jacobian_determinant(displacement)
        head = (1.08 if sex == "M" else 0.95) * float(rng.normal(1.0, 0.05))
        jacobian = head * local * (1.0 - 0.5 * loss)
        # Site and scanner: gain, smooth bias, blur, noise.
        bias = 1.0 + _smooth_field(rng, grid.MODEL_SHAPE, 20.0, site.bias)
        gmd = gmd * site.gain * bias
        if site.smoothing > 0:
            gmd = ndimage.gaussian_filter(gmd, site.smoothing)
        # Segmentation noise is spatially correlated (about one voxel), not white.
        gmd = gmd + _smooth_field(rng, grid.MODEL_SHAPE, 1.0, site.noise) * (self.gm > 0.02)
        gmd = np.clip(gmd, 0.0, 1.0).astype(np.float32)
        gmv = (gmd * np.clip(jacobian, 0.2, 5.0)).astype(np.float32)
        return gmd, gmv, severity


def write_cohort(
    out_dir: str | Path,
    n_subjects: int,
    n_sites: int = 6,
    n_datasets: int = 3,
    seed: int = 0,
    diagnoses: dict[str, float] | None = None,
) -> Path:
    """Write ``n_subjects`` synthetic subjects (GMD/GMV NIfTI on the model grid) across sites and
    datasets, and ``manifest.csv`` (written last; ``subtype`` is the planted atrophy subtype of AD
    and pMCI subjects, empty for the others). ``diagnoses`` gives the share of each diagnosis
    (default ``DIAGNOSIS_SHARES``). Returns the manifest path."""
    out_dir = Path(out_dir)
    generator = CohortGenerator(seed)
    rng = generator.rng
    sites = make_sites(n_sites, n_datasets, rng)
    rows = []
    shares = diagnoses or DIAGNOSIS_SHARES
    unknown = set(shares) - set(ATROPHY)
    if unknown or not np.isclose(sum(shares.values()), 1.0):
        raise ValueError(f"diagnosis shares must sum to 1 over {sorted(ATROPHY)}, got {shares}")
    for index in range(n_subjects):
        site = sites[index % n_sites]
        diagnosis = str(rng.choice(list(shares), p=list(shares.values())))
        sex = str(rng.choice(["F", "M"]))
        age = float(np.clip(rng.normal(74.0 if diagnosis != "NC" else 71.0, 7.0), 55, 95))
        subtype = str(rng.choice(list(SUBTYPES), p=list(SUBTYPES.values()))) if diagnosis in ("AD", "pMCI") else ""
        gmd, gmv, severity = generator.subject(diagnosis, sex, age, site, subtype or "medial-temporal")
        subject = f"sub-c{seed}n{index:04d}"
        paths = {}
        for kind, data in (("gmd", gmd), ("gmv", gmv)):
            path = out_dir / "maps" / f"{subject}_{kind}.nii.gz"
            write_nifti_atomic(path, data, grid.MODEL_AFFINE, f"synthetic {kind.upper()}")
            paths[kind] = path.relative_to(out_dir).as_posix()
        mmse = float(np.clip(np.round(29.5 - 40.0 * severity + rng.normal(0, 1.2)), 0, 30))
        rows.append(
            {
                "subject": subject,
                "session": "ses-1",
                "dataset": site.dataset,
                "site": site.name,
                "scanner": f"{site.name}-scanner",
                "field_strength": site.field_strength,
                "sex": sex,
                "age": round(age, 1),
                "diagnosis": diagnosis,
                "mmse": mmse,
                "atrophy": round(severity, 4),
                "subtype": subtype,
                **paths,
            }
        )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes_atomic(out_dir / "manifest.csv", buffer.getvalue().encode())
