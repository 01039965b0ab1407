"""BrainImageNet-AD library: everything below the Slicer widget, importable without Slicer or Qt.

Modules: ``grid`` (the model grid), ``networks`` (3D Inception-ResNet-V2 and the AD transfer
network), ``bundle`` (safetensors model bundles and model cards), ``ensemble`` (prediction),
``maps`` (GMD/GMV input checks), ``preprocess`` (T1 to GMD/GMV), ``occlusion`` (heat maps),
``pipeline`` (one case from T1 or maps to ``CaseResult``: ``run_case``), ``cohort`` (many cases),
``controller`` (the single-case workflow both skins drive), ``job`` and ``case_process`` (a run
in a child process),
``scene`` and ``mrml`` (Slicer scene nodes), ``report``, ``web`` (the web page), ``cli``,
``worker`` (native-library work in a child process), ``dependencies`` (the run-time packages and
their installation into Slicer's Python).
"""

__version__ = "0.1.0"
