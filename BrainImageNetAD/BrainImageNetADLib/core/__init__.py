"""Base services every other package uses: errors, atomic writes, progress, child processes,
the model grid and the shipped resources.

Modules: ``errors`` (exceptions and exit codes), ``atomic`` (atomic file output), ``progress``
(progress and cancel callbacks), ``worker`` (native-library work in a child process), ``cpu``
(CPU settings), ``resources`` (shipped bundles and sample), ``dependencies`` (the run-time
packages and their installation into Slicer's Python), ``grid`` (the MNI grid of the model),
``imageheader`` (header checks before voxels are read), ``templates`` (MNI templates),
``exports`` (lazy package exports).
"""

from .exports import lazy_exports

_EXPORTS = {
    "BrainImageNetError": "errors",
    "InputError": "errors",
    "BundleError": "errors",
    "Cancelled": "errors",
    "SubjectsFailed": "errors",
    "run_command": "errors",
    "write_bytes_atomic": "atomic",
    "write_json_atomic": "atomic",
    "write_nifti_atomic": "atomic",
    "ProgressCallback": "progress",
    "CancelCallback": "progress",
    "check_cancel": "progress",
    "progress_for": "progress",
    "run_isolated": "worker",
    "WorkerCrashed": "worker",
    "resources_dir": "resources",
    "default_bundle": "resources",
    "sample_t1": "resources",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
