"""BrainImageNet-AD library: everything below the Slicer widget, importable without Slicer or Qt.

Packages by concern, each importing only those listed before it: ``core`` (errors, atomic
writes, progress, child processes, the model grid, resources), ``preprocessing`` (T1 to GMD/GMV
maps, QC), ``model`` (networks, bundles, ensemble), ``explain`` (occlusion and risk maps, atlas
regions), then ``pipeline`` (one case from a T1 or maps to a ``CaseResult``: ``run_case``) and
``case_process`` (its child-process entry point), then ``cohort`` (many subjects) and ``viewer``
(the workflow both skins drive), and ``cli`` (``brainimagenet-ad``) on top.
"""

__version__ = "0.1.0"
