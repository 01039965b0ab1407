"""The names of the heat-map methods, importable without numpy or torch (the command line's
parser and the pipeline's options read them at start-up)."""

#: How an occlusion map is computed (``occlusion.occlusion_map``): exact by incremental inference,
#: coarse to fine, naive full passes (the reference), gradient x input.
OCCLUSION_METHODS = ("incremental", "approximate", "naive", "gradient")
#: How a risk map is computed (``riskmap.risk_map``): the occlusion methods without the gradient.
RISK_METHODS = ("incremental", "approximate", "naive")
