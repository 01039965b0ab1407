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
weight is held within a factor ``WEIGHT_RANGE`` (2) of the six weights' geometric mean, so no
two differ by more than 4x. The weights are shares over every fitted voxel, and the box that is
fitted takes in the whole head around the brain, as SPM fits the whole field of view
(``preprocess.BOX_MARGIN``). Voxels of intensity 0 (outside the field of view, or removed by skull
stripping) are left out of the fit, as SPM does; SPM's clean-up and Markov random field are not
applied.

How the weight range, the clean-up and the Gaussians per class were chosen, with the figures:
docs/decisions/tissue-classification.md.
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
WEIGHT_RANGE = 2.0


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
