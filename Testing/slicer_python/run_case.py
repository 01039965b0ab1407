"""The Slicer module's single-case workflow run in the interpreter that starts this script, as in
Slicer's Python: the module Logic's controller on the bundled sample T1, from T1 to heat map,
scene and report. Slicer's own MRML comes from slicer-core, set up as the Slicer application sets
it up (application logic, colour, volume and segmentation logics).

Usage: python run_case.py OUT_DIR. Writes what the run produced to OUT_DIR/summary.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import slicer

#: Hang guard of the run (it takes a few minutes on two cores).
HANG_GUARD_S = 3600
#: A threshold set before the run, which must survive it.
THRESHOLD = 0.37


def slicer_application():
    """A scene and an application logic with the module logics that Slicer registers at start."""
    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    for name, logic in (("Volumes", slicer.vtkSlicerVolumesLogic()), ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())):
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    slicer.mrmlScene = scene
    return scene, app_logic


def main(out_dir: Path) -> dict:
    from BrainImageNetADLib.pipeline import CaseOptions
    from BrainImageNetADLib.viewer.controller import CaseController

    scene, app_logic = slicer_application()
    controller = CaseController(scene, app_logic, out_dir / "work")
    controller.load_sample()
    controller.set_threshold(THRESHOLD)
    controller.start(CaseOptions(fold=0))
    end = time.monotonic() + HANG_GUARD_S
    while controller.poll().state == "running":
        if time.monotonic() > end:
            controller.cancel()
            raise SystemExit("the run did not end")
        time.sleep(0.5)
    status = controller.poll()
    summary = {"state": status.state, "message": status.message, "python": sys.version.split()[0]}
    if status.state == "done":
        prediction = controller.prediction()
        summary.update(
            probability=prediction.probability,
            threshold=controller.state.threshold,
            label=prediction.label,
            folds=len(prediction.fold_probabilities),
            nodes={role: controller.node(role) is not None for role in ("InputVolume", "HeatMap", "Regions", "RegionTable")},
            report=str(controller.write_report(out_dir / "report")),
            scene=str(controller.save_scene(out_dir / "case.mrb")),
        )
    controller.close()
    return summary


if __name__ == "__main__":
    out = Path(sys.argv[1])
    summary = main(out)
    (out / "summary.json").write_text(json.dumps(summary))
