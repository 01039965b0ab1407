"""What the classifier looks at: occlusion maps, individualized risk maps and the AAL atlas
regions they are summarised in.

Modules: ``methods`` (the method names), ``occlusion`` (occlusion sensitivity maps), ``riskmap``
(reverse occlusion on the bundle's template), ``atlas`` (AAL regions, the hippocampus, native
outlines).
"""

from ..core.exports import lazy_exports

_EXPORTS = {
    "OCCLUSION_METHODS": "methods",
    "RISK_METHODS": "methods",
    "OcclusionSettings": "occlusion",
    "occlusion_map": "occlusion",
    "region_summary": "occlusion",
    "RiskSettings": "riskmap",
    "risk_map": "riskmap",
    "REGIONS": "atlas",
    "build_atlas": "atlas",
    "region_names": "atlas",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
