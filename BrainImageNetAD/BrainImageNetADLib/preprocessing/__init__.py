"""T1 preprocessing as SPM12 does it: a raw T1 in native space to GMD and GMV maps on the MNI
1.5 mm grid, with quality control.

Modules: ``t1io`` (reading a T1 and refusing what is not one), ``sequence`` (contrast from the
scan's metadata), ``preprocess`` (the whole chain), ``segment`` (tissue mixture), ``bias_field``
(intensity bias), ``deformation`` (priors aligned to the scan), ``normalise`` (tissue maps onto
the MNI grid), ``qc`` (measures and verdict), ``transforms`` (maps between MNI and native space).
"""

from ..core.exports import lazy_exports

_EXPORTS = {
    "read_t1": "t1io",
    "T1Image": "t1io",
    "preprocess_t1": "preprocess",
    "PreprocessSettings": "preprocess",
    "is_done": "preprocess",
    "assess": "qc",
    "write_native": "transforms",
    "native_to_mni": "transforms",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
