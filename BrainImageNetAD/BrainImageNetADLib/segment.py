"""Tissue classification of a T1 in its own space with SPM12's six tissue priors.

The model is that of SPM12's unified segmentation (Ashburner and Friston, 2005; its bias field is
fitted on this model's likelihood in ``bias_field``, after N4, and so are the priors' affine and
displacement, in ``deformation``): each voxel's intensity comes from a mixture of
Gaussians per tissue class (1, 1, 2, 3, 4 and 2 Gaussians for GM, WM, CSF, bone, soft tissue and
air, SPM's defaults), weighted by the class's prior probability at that voxel (the tissue
probability maps moved onto the scan).
Like SPM, a weight per class rescales the priors (w_k b_k / sum_j w_j b_j, ``weighted_priors``),
fitted in every EM iteration with SPM's update and used wherever the priors are: in the mixture,
the bias field's and the mapping's likelihood (``deformation``) and the final posteriors. SPM's
update lets the weights run away on atrophied elderly brains; here, after each update, every
weight is held within a factor ``WEIGHT_RANGE`` (1.5) of the six weights' geometric mean, so no
two differ by more than 2.25x. What was measured on the way (GMD r against SPM's unsmoothed / at 4
mm, GM volume as a multiple of SPM's, native Dice):
- Uniform weights -> weights pulled towards uniform with a pseudo-count of 0.2 x the fitted
  voxels (fast preset, bias field, ``bench fidelity``): Colin27 0.80/0.90, 1.17x, 0.89
  -> 0.81/0.905, 1.25x, 0.88; MPRAGE 0.88/0.97,
  0.90x, 0.95 -> 0.89/0.97, 0.92x, 0.96; ROBEX reference 0.79/0.93, 0.81x, 0.91 -> 0.81/0.945,
  0.87x, 0.94; IXI012 0.87/0.96, 0.90x, 0.94 -> 0.88/0.97, 0.92x, 0.95; IXI014 0.87/0.96, 0.88x,
  0.94 -> 0.87/0.96, 0.91x, 0.95; IXI048 0.87/0.96, 0.95x, 0.94 -> 0.87/0.96, 0.955x, 0.94;
  NiChart Subj5 0.71/0.94, 1.21x, 0.86 -> 0.73/0.95, 1.13x, 0.90. Closer on every real scan;
  Colin27, the average of 27 scans, further in volume. On the real scans (``bench realscans``)
  the same QC outcomes; against the independent DLMUSE volumes of the eight NiChart people TIV r
  0.96 both, GM r 0.92 -> 0.96, hippocampus r 0.77 -> 0.78, GM fraction vs age r -0.90 -> -0.94;
  Subj12's white matter 391 -> 378 mL. The CSF weight comes out 1.08-1.29 x the mean weight on
  those elderly people, 0.87-1.06 on the young adults (with 0.1: 1.11-1.51 and 0.85-1.10).
- Pull 0.2 -> 0.1 (adopted then) and 0.05, the whole pipeline (``bench fidelity`` and ``bench
  realscans``): MPRAGE 0.89/0.97, 0.92x, 0.96 -> 0.888/0.971, 0.935x, 0.964 and 0.886/0.971,
  0.945x, 0.966; ROBEX reference 0.81/0.945, 0.87x, 0.94 -> 0.818/0.951, 0.897x, 0.951 and
  0.826/0.957, 0.924x, 0.960; IXI012 0.88/0.97, 0.92x, 0.95 -> 0.873/0.968, 0.928x, 0.948 and
  0.867/0.967, 0.937x, 0.950; IXI014 0.87/0.96, 0.91x, 0.95 -> 0.869/0.958, 0.920x, 0.949 and
  0.854/0.956, 0.929x, 0.952; IXI048 0.87/0.96, 0.955x, 0.94 -> 0.851/0.954, 0.957x, 0.942 and
  0.797/0.943, 0.958x, 0.943; Subj5 0.73/0.95, 1.13x, 0.90 -> 0.737/0.954, 1.097x, 0.918 and
  0.728/0.954, 1.068x, 0.931; Colin27 0.81/0.905, 1.25x, 0.88 -> 0.810/0.906, 1.267x, 0.875 and
  0.810/0.908, 1.283x, 0.872. Against DLMUSE: TIV r 0.96 -> 0.95 and 0.92, GM r 0.96 -> 0.97
  and 0.97, hippocampus r 0.78 -> 0.77 and 0.76, GM fraction vs age r -0.94 -> -0.95 and -0.94;
  the same QC outcomes with each. 0.1 brings every real scan's volume closer to SPM's and keeps
  the unsmoothed agreement (IXI048 -0.02, ROBEX reference and Subj5 +0.01); 0.05 closer still in
  volume but IXI048's unsmoothed agreement falls by 0.07 and TIV r to 0.92.
- SPM's own update instead, measured with each version of the mapping, brings young adults'
  volumes closer and breaks elderly scans. With the final mapping and the bias field: ROBEX
  reference 0.82/0.95, 1.00x, Dice 0.97; MPRAGE 0.86/0.96, 0.98x, 0.97; IXI012 0.80/0.95, 0.97x;
  Colin27 0.79/0.90, 1.32x, 0.86; the CSF weight rises on the atrophied NiChart scans and takes
  white or grey matter (Subj12's white matter 225 mL, 391 mL with uniform weights). With an
  earlier mapping (displacement stiffness 10), against the independent DLMUSE volumes of the
  eight NiChart people: TIV r 0.95 -> 0.57, GM r 0.92 -> 0.77. Weights fitted among GM, WM and
  CSF only gave the same gains and the same losses (Subj12's white matter 206 mL); among GM and
  WM only, no gain (ROBEX reference 0.73/0.88) and the same loss (210 mL). With the first mapping
  (a mean-squares affine of the priors' brain, no displacement) the weights ran away the same way
  (bone's weight 0.65, white matter's 0.005 on the elderly scans).
- A pull of 1.0 x the fitted voxels gave about half the gains of 0.2 (ROBEX reference
  0.79/0.935, 0.83x; Colin27 1.20x). A pull of 0.05 brought the young adults' volumes closer
  (ROBEX reference 0.83/0.96, 0.92x, Dice 0.96; MPRAGE 0.89/0.97, 0.945x; IXI012 0.87/0.97,
  0.94x; Colin27 0.81/0.91, 1.28x) and started to give the elderly brain's tissue to CSF again
  (Subj12's CSF weight 1.78 x the mean, white matter 334 mL, GM 509 mL against DLMUSE's 574;
  with 0.2: 1.29, 378 mL, 533 mL; with 0.1: 1.51, 358 mL, 519 mL).
- Weights pulled with 0.1 -> SPM's update held within a factor of 1.5 of the geometric mean
  (adopted), the whole pipeline (``bench fidelity``): MPRAGE 0.888/0.971, 0.935x, 0.964 ->
  0.894/0.974, 0.986x, 0.973; ROBEX reference 0.818/0.951, 0.897x, 0.951 -> 0.825/0.957, 0.945x,
  0.964; IXI012 0.873/0.968, 0.928x, 0.948 -> 0.882/0.966, 0.961x, 0.952; IXI014 0.869/0.958,
  0.920x, 0.949 -> 0.869/0.957, 0.945x, 0.953; IXI048 0.851/0.954, 0.957x, 0.942 -> 0.874/0.958,
  0.957x, 0.940; Subj5 0.737/0.954, 1.097x, 0.918 -> 0.737/0.958, 0.984x, 0.940; Colin27
  0.810/0.906, 1.267x, 0.875 -> 0.813/0.910, 1.270x, 0.876. Every real scan's volume closer to
  SPM's but IXI048's (unchanged), native Dice higher on all but IXI048 (0.942 -> 0.940), no
  unsmoothed or 4 mm agreement lower by more than 0.002. On the real scans (``bench
  realscans``) the same QC outcomes; against DLMUSE TIV/ICV 1.00-1.07 -> 1.00-1.08 (at most 4 %
  from the median), TIV r 0.95 -> 0.93, GM r 0.97 -> 0.92, hippocampus r 0.77 -> 0.79, GM
  fraction vs age r -0.95 both. The CSF weight comes out 1.15-1.47 x the mean weight on the
  elderly NiChart people, 0.77-1.28 on the young adults (GM
  0.63-0.88 and 0.98-1.45); Subj12's white matter 367 mL (358 with the pull, 225 with SPM's free
  update). Subj5's GM 469 mL is SPM's (476 mL) and 0.86 x DLMUSE's 548: the two definitions of
  grey matter differ most on this atrophied brain. A range of 1.6 in the whole pipeline: ROBEX
  reference 0.828/0.958, 0.953x, 0.966; IXI014 0.867/0.956, 0.945x; IXI012 0.964x; Subj5
  0.733/0.957, 0.976x; Colin27 0.812/0.910, 1.274x, 0.875; MPRAGE and IXI048 as with 1.5: the
  ROBEX reference within 5 % of SPM's volume, IXI014 not, the unsmoothed agreement lower by up to
  0.004.

Voxels of intensity 0 (outside the field of view, or removed by skull stripping) are left out of
the fit, as SPM does. SPM's starting point
(one Gaussian per class sharing the pooled within-class variance, fitted, then split) instead of
``initial_model``'s gave the same maps (GMD r and GM volume within 0.004 on Colin27, MPRAGE,
ROBEX reference and Subj5): the fit ends in the same optimum.

Facts measured while choosing this design (Colin27 and real scans against SPM12's own ``c1``):
segmenting at the scan's own resolution instead of on the 1.5 mm MNI grid, and with priors for
bone, soft tissue and air, raised the native Dice of GM from 0.56 to 0.87-0.91. Two steps of SPM's
writing stage lowered agreement with SPM's maps here and are not used: its "light" clean-up (a
brain mask grown from the white matter by erosion and conditional dilation; GMD r at 4 mm 0.886 ->
0.864 on Colin27, 0.818 -> 0.800 on the MPRAGE scan) and its Markov random field. SPM's field
multiplies each class's evidence by exp(strength x the mean of that class's probability over the
six face neighbours, each weighted by 1/voxel size^2 in mm), strength 1, in 10 red-black
mean-field sweeps started from zero, probabilities kept in steps of 1/255. Rebuilt that way on
the pipeline with displacement stiffness 5 (fast preset), it moved GM volume slightly towards
SPM's on the young adults (MPRAGE 0.90x -> 0.93x, ROBEX reference 0.81x -> 0.82x, IXI014 0.88x ->
0.88x) and Colin27's away (1.14x -> 1.15x), native Dice within +0.006, and lowered GMD r
unsmoothed on every scan (Colin27 0.847 -> 0.838, MPRAGE 0.843 -> 0.839, IXI014 0.820 -> 0.817;
ROBEX 0.747 both).

Where Colin27's extra grey matter lies (fast preset, stiffness 10, 867 mL against SPM's 762): at
the boundary with white matter. Binned by the scan's own intensity (grey matter about 86, white
matter about 113), SPM's ``c1`` in the cortex falls from 0.29 (97-103) to 0.01 (103-107) while ours
is 0.73 and 0.44; with N4 replaced by a flat field ours is sharper but still 0.60 and 0.22, so the
boundary between the two classes sits 3-4 intensity units (of the 27 between their means) brighter
than SPM's. N4's field varies 0.91-1.07 across Colin27's grey matter, but neither a flat field (GMD
r 0.86 / 0.89 at 4 mm, volume 1.14x) nor N4 with three or five fitting levels instead of four (0.83
/ 0.88 and 0.83 / 0.90) brings the maps closer to SPM's.

Why, measured with the weight range (each scan's final priors held fixed, the mixture refitted on
the 3 mm lattice; Colin27's intensities in its own units, 0-255): SPM's grey matter is narrower
in intensity than the Gaussian this likelihood fits. (Explained since: SPM's fit of Colin27
failed, its displacement NaN from the first step, and its mixture was refitted with the same
prior at every voxel, GM SD 3.9; where SPM's fit of Colin27 works its GM Gaussian has SD 10.2,
mean 88, its GM 1031 mL, and ours 0.98x that: ``fidelity``'s docstring.) Weighted by SPM's
``c1``, Colin27's grey matter has mean 86 and SD 6.9; the fitted GM Gaussian has SD 8.9 on the raw intensities (9.7 on
ours), the WM Gaussian 5.7 (3.4). Where the GM and WM priors sum to more than 0.9, SPM's ``c1``
is 0.5 at intensity 96 and 0.38 at 70; ours at 99-102 and 0.91. The boundary is a constant shift,
not a field: in 14 regions of the brain SPM's lies at 93-99, ours at 97-105. The broad Gaussian
is the optimum of the likelihood under every set of priors tried: ours (1.28x), the affine alone
(1.27x), and SPM's own mapping of Colin27 (an affine fitted from SPM's ``c1`` to its ``wc1``, r
0.990: 1.33x), on N4-corrected or raw intensities (1.21x); started from a narrow GM (SD 4-6,
WM 7-8; 0.88-1.06x and Dice up to 0.922 before any iteration) EM returns to the broad one within
ten iterations, the log-likelihood 5,000-14,000 higher on 153,000 voxels. On IXI014 the
difference runs the other way: its missing grey matter (633 mL against SPM's 668) lies at the
boundary with white matter, where SPM's ``c1`` exceeds ours (0.55 and 0.16 against 0.46 and 0.08
in the two intensity bins below the WM mean); more EM iterations from the pipeline's model lower
it (0.948x -> 0.940x), a fit started afresh on the final priors raises it (0.953x). Those
figures were measured on the N4-corrected scan; its broad white matter was the cause, and the
scan as read, with only the bias field fitted here, gives 0.996x (``bias_field``). SPM's Markov
random field (as rebuilt above, neighbours weighted 1/voxel size^2) on these refitted posteriors:
IXI014 0.953x -> 0.956x, Colin27 1.280x -> 1.291x; on states captured with the earlier pull
towards uniform weights, refitted with the range: ROBEX reference 0.938x -> 0.948x, Subj5 0.989x
both, MPRAGE 1.008x -> 1.028x; native Dice within 0.004.

Where the young adults' missing grey matter lies (fast preset, class weights; ours 0.87-0.955 of
SPM's): in the native segmentation already (native GM IXI012 714 mL against SPM's ``c1`` 775,
ROBEX reference 607 against 696, MPRAGE 690 against 745; the push to MNI keeps the volume),
spread over every intensity and every height of the brain, most of it where SPM's ``c1`` is
partial (0.5-0.9: ours 22-33 % less) and some where SPM is sure (``c1`` >= 0.9: 4-7 % less). It
goes mostly to CSF: on the ROBEX reference, of SPM's sure GM 505 mL stays GM, 41 mL goes to CSF,
10 mL to WM; of its partial GM 75 mL stays, 49 mL to CSF, 22 mL to WM (IXI012: 19 and 18 mL to
CSF and WM of the sure GM). The fitted CSF Gaussians there are broad and bright (means 476 and
584, SDs 156 and 142, against GM 751 / 108 and WM 1028 / 53): the second reaches into the grey
matter's range and takes its darker voxels. One Gaussian for CSF instead of SPM's two did not
change the ROBEX reference (0.809/0.945, 0.870x, Dice 0.941, the same to three decimals) and moved
the others little (IXI012 0.878/0.968, 0.92x -> 0.879/0.968, 0.93x; Colin27 0.809/0.905, 1.247x
-> 0.811/0.907, 1.253x); on Subj12 it gave GM 592 mL (533 with two; DLMUSE 574), CSF 370 mL (452).
Not adopted on four scans; SPM's two stay.

The pull and the range refitted alone, with each scan's final priors held fixed (the mixture
fitted again from ``initial_model`` on the 3 mm lattice, then the posteriors of every voxel; native
GM volume as a multiple of SPM's ``c1`` and native Dice; the refit at 0.2 reproduces the pipeline
within 0.015x):

| weights | MPRAGE | ROBEX ref. | IXI012 | Subj5 | Colin27 |
|---|---|---|---|---|---|
| pull 0.2 | 0.931x, 0.962 | 0.856x, 0.935 | 0.925x, 0.949 | 1.137x, 0.901 | 1.250x, 0.877 |
| pull 0.1 | 0.947x, 0.966 | 0.880x, 0.944 | 0.935x, 0.951 | 1.098x, 0.918 | 1.274x, 0.873 |
| pull 0.05 | 0.965x, 0.969 | 0.908x, 0.954 | 0.946x, 0.953 | 1.046x, 0.935 | 1.292x, 0.870 |
| ~0 (SPM's) | 1.008x, 0.970 | 0.978x, 0.969 | 0.969x, 0.953 | 0.861x, 0.899 | 1.317x, 0.865 |

| range 1.25 | 0.983x, 0.971 | 0.891x, 0.948 | 0.954x, 0.954 | 1.098x, 0.927 | 1.264x, 0.875 |
| range 1.5 | 1.008x, 0.970 | 0.938x, 0.962 | 0.965x, 0.954 | 0.989x, 0.938 | 1.301x, 0.868 |
| range 1.6 | 1.008x, 0.970 | 0.949x, 0.964 | 0.967x, 0.954 | 0.937x, 0.928 | 1.310x, 0.866 |
| range 1.75 | 1.008x, 0.970 | 0.957x, 0.966 | 0.968x, 0.954 | 0.891x, 0.912 | 1.318x, 0.865 |
| range 2 | 1.008x, 0.970 | 0.975x, 0.968 | 0.969x, 0.953 | 0.876x, 0.906 | 1.318x, 0.865 |

(range: SPM's update, each weight then held within that factor of the geometric mean.) Every
real scan, the atrophied Subj5 included, comes closer to SPM's volume and Dice down to a pull of
0.05; Colin27 moves away at every step; the range 1.5 brings every real scan closer than any pull
(Subj5 to 0.99x with Dice 0.938, where the pulls reach 1.05x and 0.935 at best), wider ranges let
Subj5 run away again. On the eight NiChart people against DLMUSE, GM r / TIV r: pull 0.1 0.983 /
0.961, range 1.25 0.913 / 0.974, 1.5 0.924 / 0.971, 1.6 0.910 / 0.963, 1.75 0.884 / 0.947, 2
0.872 / 0.902. Tempering SPM's weights instead (w^0.5, w^0.7) left the volumes further from SPM's
than the pull (MPRAGE 0.915x and 0.928x, Subj5 1.166x and 1.135x). With the range the refit
reproduces the pipeline within 0.03x (Colin27 1.30x refitted, 1.27x in the pipeline); SPM's
own update overshoots on Subj5 (GM weight 0.47 x the mean, bone 2.28 x), so SPM's fit of that
scan is not the update alone. On the eight
NiChart people the same refit against the independent DLMUSE volumes: GM r 0.970 (0.2), 0.983
(0.1), 0.983 (0.05), 0.921 (~0); TIV r 0.965, 0.961, 0.948, 0.721; our GM 0.95-1.00, 0.93-0.97,
0.89-0.94 and 0.74-0.92 x DLMUSE's. Measured then in the whole pipeline (the mapping refitted
with the weights; figures above), 0.1 was adopted, then the range 1.5 in its place. Segmenting a
box reaching 40 voxels beyond the priors' brain (the whole head, as SPM fits the
whole field of view) instead of 10 changed
nothing (MPRAGE 0.922x, Subj5 1.133x, Subj12's volumes within 6 mL) and did not stop SPM's update
from running away on Subj12 (CSF weight 3.07 x the mean, white matter 253 mL).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Tissue classes of SPM12's TPM.nii, in its order.
CLASSES = ("GM", "WM", "CSF", "bone", "soft tissue", "air")
#: Gaussians per class (SPM12's defaults).
GAUSSIANS = (1, 1, 2, 3, 4, 2)
_CLASS_OF = np.repeat(np.arange(len(CLASSES)), GAUSSIANS)
#: (13, 6): which class each Gaussian belongs to, one-hot.
CLASS_MATRIX = np.eye(len(CLASSES))[_CLASS_OF]


#: How far a class weight may move from the geometric mean of the six: a factor of at most this
#: (SPM12's own update leaves them free).
WEIGHT_RANGE = 1.5


@dataclass
class MixtureModel:
    """Fitted intensity model: per Gaussian (13,) its ``means`` and ``variances`` (in the T1's
    intensity units) and its ``mixing`` share within its class; per class (6,) the ``weights``
    that rescale the priors (``weighted_priors``), 1/6 each when they change nothing."""

    means: np.ndarray
    variances: np.ndarray
    mixing: np.ndarray
    weights: np.ndarray

    def summary(self) -> dict[str, float]:
        """Mean intensity of GM, WM and CSF (mixing-weighted over a class's Gaussians) and the
        pooled standard deviation of GM and WM, in the T1's intensity units; the class weights
        of GM, WM and CSF relative to the mean weight (1: the priors as they are)."""
        out = {}
        for k, name in enumerate(CLASSES[:3]):
            sel = _CLASS_OF == k
            out[f"{name}_mean"] = float((self.mixing[sel] * self.means[sel]).sum())
            out[f"{name}_weight"] = float(self.weights[k] / self.weights.mean())
        out["sd"] = float(np.sqrt(0.5 * (self.variances[0] + self.variances[1])))
        return out


def initial_model(intensities: np.ndarray, priors: np.ndarray) -> MixtureModel:
    """Starting point of the fit: each class's prior-weighted mean and variance, its Gaussians
    spread over half a standard deviation around that mean. ``intensities`` (N,), ``priors`` (N, 6)."""
    means, variances, mixing = (np.zeros(len(_CLASS_OF)) for _ in range(3))
    for k, n in enumerate(GAUSSIANS):
        r = priors[:, k]
        mean = float((r * intensities).sum() / r.sum())
        var = float((r * (intensities - mean) ** 2).sum() / r.sum())
        sel = np.flatnonzero(_CLASS_OF == k)
        means[sel] = mean + (np.arange(n) - (n - 1) / 2) * 0.5 * np.sqrt(var)
        variances[sel] = var
        mixing[sel] = 1.0 / n
    return MixtureModel(means, variances, mixing, uniform_weights())


def uniform_weights() -> np.ndarray:
    """Class weights (6,) that leave the priors as they are."""
    return np.full(len(CLASSES), 1.0 / len(CLASSES))


def weighted_priors(priors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The ``priors`` (N, 6) rescaled by the class ``weights`` (6,), w_k b_k / sum_j w_j b_j: (N, 6),
    each row summing to 1."""
    scaled = priors * weights
    return scaled / scaled.sum(axis=1, keepdims=True)


def gaussian_likelihoods(intensities: np.ndarray, model: MixtureModel) -> np.ndarray:
    """Likelihood (N, 13) of each intensity (N,) under each Gaussian, times its ``mixing`` share
    within its class (summed over a class's Gaussians: the class's likelihood)."""
    z = (intensities[:, None] - model.means) ** 2 / model.variances
    return model.mixing * np.exp(-0.5 * z) / np.sqrt(2 * np.pi * model.variances)


def class_evidence(intensities: np.ndarray, priors: np.ndarray, model: MixtureModel) -> np.ndarray:
    """Unnormalised posterior of each Gaussian, (N, 13): its class's weighted prior at the voxel
    (``weighted_priors``) times the intensity likelihood. ``intensities`` (N,), ``priors`` (N, 6)
    summing to 1 per voxel."""
    return _rescaled_evidence(intensities, weighted_priors(priors, model.weights), model)


def _rescaled_evidence(intensities: np.ndarray, rescaled: np.ndarray, model: MixtureModel) -> np.ndarray:
    """``class_evidence`` from priors already rescaled by the class weights, ``rescaled`` (N, 6)."""
    return rescaled[:, _CLASS_OF] * gaussian_likelihoods(intensities, model)


def fit_mixture(intensities: np.ndarray, priors: np.ndarray, model: MixtureModel, iterations: int) -> MixtureModel:
    """EM iterations of the mixture, starting from ``model``. ``intensities`` (N,) float64 and
    ``priors`` (N, 6) at the sampled voxels.

    The class weights follow SPM12's update, w_k = (sum_i q_ik + 1 / 6) / (sum_i b_ik / sum_j
    w_j b_ij + 1), then are held within a factor ``WEIGHT_RANGE`` of their geometric mean."""
    floor = 1e-6 * float(np.var(intensities))
    for _ in range(iterations):
        rescaled = weighted_priors(priors, model.weights)
        q = _rescaled_evidence(intensities, rescaled, model)
        q /= q.sum(axis=1, keepdims=True) + 1e-300
        counts = q.sum(axis=0) + 1e-9
        means = (q * intensities[:, None]).sum(axis=0) / counts
        variances = (q * (intensities[:, None] - means) ** 2).sum(axis=0) / counts + floor
        class_counts = np.bincount(_CLASS_OF, counts)
        mixing = counts / class_counts[_CLASS_OF]
        share = (rescaled / model.weights).sum(axis=0)
        weights = (class_counts + 1.0 / len(CLASSES)) / (share + 1.0)
        weights = np.clip(weights / np.exp(np.log(weights).mean()), 1.0 / WEIGHT_RANGE, WEIGHT_RANGE)
        model = MixtureModel(means, variances, mixing, weights / weights.sum())
    return model


def posteriors(intensities: np.ndarray, priors: np.ndarray, model: MixtureModel, chunk: int = 1 << 20) -> np.ndarray:
    """Class posteriors (..., 6) float32 of ``intensities`` (...) given ``priors`` (..., 6),
    computed ``chunk`` voxels at a time to bound memory."""
    flat_y = intensities.reshape(-1)
    flat_p = priors.reshape(-1, len(CLASSES))
    out = np.empty((flat_y.size, len(CLASSES)), dtype=np.float32)
    for start in range(0, flat_y.size, chunk):
        part = slice(start, start + chunk)
        evidence = class_evidence(flat_y[part].astype(np.float64), flat_p[part].astype(np.float64), model)
        per_class = evidence @ CLASS_MATRIX
        out[part] = per_class / (per_class.sum(axis=1, keepdims=True) + 1e-300)
    return out.reshape(*intensities.shape, len(CLASSES))
