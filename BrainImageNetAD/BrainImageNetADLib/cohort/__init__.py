"""Many subjects at once: inputs from files, folders, BIDS or lists, batch preprocessing, and a
resumable, shardable cohort prediction.

Modules: ``batch`` (inputs and batch preprocessing), ``scoring`` (cohort prediction).
"""

from ..core.exports import lazy_exports

_EXPORTS = {
    "collect_jobs": "batch",
    "run_batch": "batch",
    "shard": "batch",
    "collect_cases": "scoring",
    "predict_cohort": "scoring",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
