"""Three-class tissue segmentation (CSF, GM, WM) of a T1 on the MNI grid with template priors."""

from __future__ import annotations

import numpy as np

TISSUES = ("CSF", "GM", "WM")


def segment_tissues(
    t1: np.ndarray, priors: np.ndarray, mask: np.ndarray, prior_weight: float = 1.0, iterations: int = 15
) -> tuple[np.ndarray, dict[str, float]]:
    """Gaussian-mixture segmentation with spatial priors, fitted by EM.

    ``t1``: bias-corrected T1 intensities on the MNI grid, shape (I, J, K); ``priors``: template
    probabilities of CSF, GM, WM, shape (I, J, K, 3); ``mask``: boolean brain mask (I, J, K).
    Each class has one Gaussian intensity model with a variance shared by the three classes (so
    that no class absorbs the tails of the others, such as sulcal CSF into a broad GM class); the
    posterior of class k at a voxel is proportional to prior_k ** prior_weight *
    N(intensity; mean_k, sd). Returns posteriors of shape (I, J, K, 3) (zero outside the mask,
    summing to 1 inside) and the fitted model: class means ``CSF_mean``, ``GM_mean``, ``WM_mean``
    and the shared standard deviation ``sd``, in the T1's intensity units.
    """
    if t1.shape != mask.shape or priors.shape != (*mask.shape, 3):
        raise ValueError(f"shapes differ: t1 {t1.shape}, priors {priors.shape}, mask {mask.shape}")
    x = t1[mask].astype(np.float64)
    p_prior = priors[mask].astype(np.float64)
    p_prior /= np.maximum(p_prior.sum(axis=1, keepdims=True), 1e-6)
    log_prior = prior_weight * np.log(p_prior + 1e-4)
    posterior = p_prior.copy()
    means = np.zeros(3)
    sd = 1.0
    for _ in range(iterations):
        weight = posterior.sum(axis=0) + 1e-9
        means = (posterior * x[:, None]).sum(axis=0) / weight
        sd = float(np.sqrt((posterior * (x[:, None] - means) ** 2).sum() / weight.sum())) + 1e-6 * (float(np.abs(means).max()) + 1)
        log_like = -0.5 * ((x[:, None] - means) / sd) ** 2 + log_prior
        log_like -= log_like.max(axis=1, keepdims=True)
        posterior = np.exp(log_like)
        posterior /= posterior.sum(axis=1, keepdims=True)
    out = np.zeros((*mask.shape, 3), dtype=np.float32)
    out[mask] = posterior
    return out, {**{f"{t}_mean": float(m) for t, m in zip(TISSUES, means, strict=True)}, "sd": sd}
