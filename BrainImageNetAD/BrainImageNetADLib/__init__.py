"""BrainImageNet-AD library: everything below the Slicer widget, importable without Slicer or Qt.

Modules: ``grid`` (the model grid), ``networks`` (3D Inception-ResNet-V2 and the AD transfer
network), ``bundle`` (safetensors model bundles and model cards), ``ensemble`` (prediction),
``maps`` (GMD/GMV input checks), ``mrml`` (Slicer scene helpers), ``cli`` (command line).
"""

__version__ = "0.1.0"
