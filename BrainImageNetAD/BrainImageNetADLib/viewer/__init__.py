"""The single-case workflow that the Slicer module and the web page drive: the controller, the
child-process run, the MRML scene, the report and the page.

Modules: ``controller`` (the workflow), ``job`` (a run in a child process), ``scene`` and ``mrml``
(Slicer scene nodes), ``report`` (HTML and JSON report), ``web`` (the web page), ``webguard``
(who may use the page's server).
"""

from ..core.exports import lazy_exports

_EXPORTS = {
    "CaseController": "controller",
    "PredictionJob": "job",
    "JobStatus": "job",
    "write_report": "report",
    "serve": "web",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
