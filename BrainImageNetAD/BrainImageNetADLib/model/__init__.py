"""The classifier: 3D Inception-ResNet-V2 networks, model bundles with their cards, inference
engines and the five-fold ensemble.

Modules: ``networks`` (the networks of Lu et al.), ``bundle`` (safetensors bundles and model
cards), ``engines`` (PyTorch and OpenVINO inference), ``ensemble`` (the fold models run
together), ``prediction`` (the answer for one subject, importable without torch), ``maps``
(GMD/GMV input checks), ``incremental`` (inference on inputs that differ in one cube),
``keras_import`` (the authors' Keras models).
"""

from ..core.exports import lazy_exports

_EXPORTS = {
    "build_network": "networks",
    "ARCHITECTURES": "networks",
    "ModelCard": "bundle",
    "read_card": "bundle",
    "save_bundle": "bundle",
    "load_fold_models": "bundle",
    "Ensemble": "ensemble",
    "Prediction": "prediction",
    "classify": "prediction",
    "load_model_input": "maps",
    "check_map": "maps",
    "IncrementalNetwork": "incremental",
    "import_keras_bundle": "keras_import",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
