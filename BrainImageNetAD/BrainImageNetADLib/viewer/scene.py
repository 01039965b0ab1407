"""The MRML side of the single-case workflow: result nodes in a Slicer scene, their display, the
views, and scene bundles (.mrb). Plain MRML (no Qt): the same calls run in the Slicer application
and on slicer-core (the web page, the tests).

All volumes here live in the patient's native space (RAS, mm), on the grid of the input T1.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.atomic import replacing
from ..core.errors import InputError
from ..pipeline import CaseResult

#: Name of the module; its parameter node is the scene's singleton of that tag.
MODULE_NAME = "BrainImageNetAD"
#: Node names of the results (one set per scene; a new run replaces them).
HEAT_MAP_NAME = "AD occlusion map"
REGIONS_NAME = "Hippocampal regions"
TABLE_NAME = "AD occlusion by region"
COLOR_NAME = "BrainImageNetAD occlusion"
#: Entries of the occlusion colour table; its range is [-largest |value|, +largest |value|].
COLOR_ENTRIES = 255
#: Node reference roles of the parameter node.
ROLES = ("InputVolume", "HeatMap", "Regions", "RegionTable")


def parameter_node(scene: Any) -> Any:
    """The module's parameter node (``vtkMRMLScriptedModuleNode``, singleton tag ``MODULE_NAME``):
    the one Slicer's ``ScriptedLoadableModuleLogic.getParameterNode()`` returns, created if absent."""
    node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
        node.UnRegister(None)
        node.SetSingletonTag(MODULE_NAME)
        node.SetModuleName(MODULE_NAME)
        node.SetName(MODULE_NAME)
        node = scene.AddNode(node)
    return node


def read_volume(scene: Any, path: str | Path, name: str, labelmap: bool = False) -> Any:
    """Read an image file into a new scalar (or label map) volume node with a display node."""
    from .mrml import read_volume_node

    node = read_volume_node(path, scene, name, "vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode")
    node.CreateDefaultDisplayNodes()
    return node


def occlusion_color_node(scene: Any, cutoff: float) -> Any:
    """The diverging colour table of occlusion maps (blue: masking raised the AD probability;
    red to yellow: masking lowered it), with entries whose size is below ``cutoff`` (a fraction of
    the largest |value|, in [0, 1]) fully transparent. Created once per scene, updated in place."""
    node = scene.GetFirstNodeByName(COLOR_NAME)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", COLOR_NAME)
        node.SetTypeToUser()
        node.SetNumberOfColors(COLOR_ENTRIES)
        node.SetAttribute("Category", MODULE_NAME)
    half = (COLOR_ENTRIES - 1) / 2
    for index in range(COLOR_ENTRIES):
        v = (index - half) / half  # -1 .. 1
        if v >= 0:
            rgb = (1.0, min(1.0, 2 * v), max(0.0, 2 * v - 1))  # red -> yellow -> white
        else:
            rgb = (max(0.0, -2 * v - 1), min(1.0, -2 * v), 1.0)  # blue -> cyan
        alpha = 0.0 if abs(v) < cutoff or v == 0 else 1.0
        node.SetColor(index, f"{v:+.2f}", *rgb, alpha)
    return node


def show_heat_map(node: Any, title: str, cutoff: float = 0.2, centre: float = 0.0) -> None:
    """Display a heat-map volume with the occlusion colour table, symmetric around ``centre``
    (the value of no effect: 0 for an occlusion map, the template's score for a risk map), hiding
    values whose distance from it is below ``cutoff`` times the largest; the legend is titled
    ``title`` (``HeatMap.legend``)."""
    from slicer.util import arrayFromVolume

    scene = node.GetScene()
    peak = float(np.abs(arrayFromVolume(node) - centre).max()) or 1.0
    display = node.GetDisplayNode()  # made by read_volume
    display.SetAndObserveColorNodeID(occlusion_color_node(scene, cutoff).GetID())
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(centre - peak, centre + peak)
    display.SetInterpolate(True)
    add_color_legend(node, title)


def register_node_classes(scene: Any) -> None:
    """Register the node classes the results use that only some Slicer modules register (the
    colour legend: Slicer's Colors module does in the application, slicer-core's scene does not)."""
    import slicer

    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(slicer.vtkMRMLColorLegendDisplayNode())


def add_color_legend(node: Any, title: str) -> Any:
    """Show the colour scale of a displayable node's colour table in the slice views (a colour
    legend display node, as Slicer's Colors module adds one), titled ``title``; return it."""
    scene = node.GetScene()
    register_node_classes(scene)
    legend = scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", f"{node.GetName()} legend")
    legend.SetAndObservePrimaryDisplayNode(node.GetDisplayNode())
    legend.SetTitleText(title)
    legend.SetVisibility2D(True)
    legend.SetVisibility3D(False)
    node.AddAndObserveDisplayNodeID(legend.GetID())
    return legend


def regions_segmentation(scene: Any, labels: Any, names: dict[int, str]) -> Any:
    """A segmentation node made from a label map volume node: one segment per label of ``names``
    present in it (named after it), shown as outlines in slice views and as surfaces in 3D."""
    import slicer

    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "hippocampal region names")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(names) + 1)
    palette = [(0.2, 1.0, 0.2), (0.2, 0.8, 1.0), (1.0, 0.9, 0.3), (1.0, 0.5, 1.0)]
    for i, (value, name) in enumerate(sorted(names.items())):
        colors.SetColor(value, name, *palette[i % len(palette)], 1.0)
    labels.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", REGIONS_NAME)
    segmentation.CreateDefaultDisplayNodes()
    imported = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    scene.RemoveNode(colors)
    if not imported or segmentation.GetSegmentation().GetNumberOfSegments() == 0:
        scene.RemoveNode(segmentation)
        raise InputError("the hippocampal region labels are empty on this T1's grid")
    display = segmentation.GetDisplayNode()
    display.SetVisibility2DFill(False)
    display.SetVisibility2DOutline(True)
    display.SetSliceIntersectionThickness(2)
    segmentation.CreateClosedSurfaceRepresentation()
    return segmentation


def segmentation_labels(segmentation: Any, reference: Any) -> np.ndarray:
    """The segments of a segmentation node as a label array on ``reference``'s grid: uint8
    (I, J, K) in NIfTI voxel order, segment n (from 0) labelled n + 1."""
    import slicer
    import vtk

    from .mrml import volume_node_array

    scene = segmentation.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "__export__")
    try:
        ids = vtk.vtkStringArray()
        segmentation.GetSegmentation().GetSegmentIDs(ids)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, ids, labelmap, reference):
            raise InputError(f"could not export {segmentation.GetName()} to a label map")
        data, _ = volume_node_array(labelmap)
        return data.astype(np.uint8)
    finally:
        scene.RemoveNode(labelmap)


def region_table(scene: Any, regions: list[dict[str, Any]]) -> Any:
    """A table node of the region summary rows (``occlusion.region_summary``): rank, region, mean
    and peak drop in AD probability, voxels (1.5 mm MNI voxels)."""
    import vtk

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", TABLE_NAME)
    columns = [("Rank", vtk.vtkIntArray, "rank"), ("Region", vtk.vtkStringArray, "name")]
    columns += [("Mean drop", vtk.vtkDoubleArray, "mean"), ("Peak drop", vtk.vtkDoubleArray, "peak")]
    columns += [("Voxels", vtk.vtkIntArray, "voxels")]
    for title, array_type, key in columns:
        array = array_type()
        array.SetName(title)
        for row in regions:
            array.InsertNextValue(row[key])
        table.AddColumn(array)
    table.SetUseColumnTitleAsColumnHeader(True)
    return table


def centroid_ras(labels: Any) -> tuple[float, float, float]:
    """Centre (RAS, mm) of the non-zero voxels of a label map volume node."""
    import vtk
    from slicer.util import arrayFromVolume

    kji = np.argwhere(arrayFromVolume(labels) > 0)
    if not len(kji):
        raise InputError(f"{labels.GetName()} has no labelled voxel")
    i, j, k = kji[:, ::-1].mean(axis=0)
    matrix = vtk.vtkMatrix4x4()
    labels.GetIJKToRASMatrix(matrix)
    ras = matrix.MultiplyPoint((i, j, k, 1.0))
    return float(ras[0]), float(ras[1]), float(ras[2])


def set_up_views(
    app_logic: Any, background: Any, foreground: Any | None, opacity: float, centre: tuple[float, float, float] | None
) -> None:
    """Show ``background`` (the T1) under ``foreground`` (the heat map) at ``opacity`` in every
    slice view, fit the views, then centre them on ``centre`` (RAS, mm), e.g. the hippocampus."""
    scene = app_logic.GetMRMLScene()
    selection = app_logic.GetSelectionNode()
    selection.SetActiveVolumeID(background.GetID())
    selection.SetSecondaryVolumeID(foreground.GetID() if foreground is not None else None)
    app_logic.PropagateVolumeSelection(1)
    set_opacity(scene, opacity)
    if centre is not None:
        for slice_node in _nodes(scene, "vtkMRMLSliceNode"):
            slice_node.JumpSliceByCentering(*centre)


def set_opacity(scene: Any, opacity: float) -> None:
    """Foreground (heat map) opacity in [0, 1] of every slice view."""
    for composite in _nodes(scene, "vtkMRMLSliceCompositeNode"):
        composite.SetForegroundOpacity(float(opacity))


def _nodes(scene: Any, class_name: str) -> list[Any]:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


@dataclass
class SceneState:
    """The workflow's state as the parameter node stores it (a saved scene restores it).

    ``result`` is the run's result (``result.json``; None before a run); ``cutoff`` is a
    fraction of the heat map's largest |value|; ``opacity`` is the heat map layer's opacity.
    """

    model_path: str = ""
    threshold: float = 0.5
    opacity: float = 0.6
    cutoff: float = 0.2
    result: CaseResult | None = None


def save_state(node: Any, state: SceneState) -> None:
    """Write ``state`` into the parameter node (string parameters), as one modification (its
    observers hear one ModifiedEvent)."""
    was_modifying = node.StartModify()
    node.SetParameter("ModelPath", state.model_path)
    node.SetParameter("Threshold", repr(float(state.threshold)))
    node.SetParameter("Opacity", repr(float(state.opacity)))
    node.SetParameter("Cutoff", repr(float(state.cutoff)))
    node.SetParameter("Result", "" if state.result is None else json.dumps(state.result.to_json()))
    node.EndModify(was_modifying)


def load_state(node: Any) -> SceneState:
    """The state stored in a parameter node (defaults where a parameter is absent)."""
    default = SceneState()

    def number(name: str, fallback: float) -> float:
        text = node.GetParameter(name)
        return float(text) if text else fallback

    text = node.GetParameter("Result")
    try:
        result = CaseResult.from_json(json.loads(text)) if text else None
    except (InputError, ValueError):  # a result this version cannot read: the case is run again
        result = None
    return SceneState(
        model_path=node.GetParameter("ModelPath") or default.model_path,
        threshold=number("Threshold", default.threshold),
        opacity=number("Opacity", default.opacity),
        cutoff=number("Cutoff", default.cutoff),
        result=result,
    )


def save_scene_bundle(app_logic: Any, path: str | Path) -> Path:
    """Save the whole scene with its data as a Medical Reality Bundle (``.mrb``), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".mrb":
        raise InputError(f"a scene bundle must end in .mrb, got {path.name}")
    with tempfile.TemporaryDirectory(prefix="brainimagenet-mrb-") as folder:
        bundle_dir = Path(folder) / path.stem
        bundle_dir.mkdir()
        if not app_logic.SaveSceneToSlicerDataBundleDirectory(str(bundle_dir), None):
            raise InputError(f"could not save the scene to {path}")
        with replacing(path) as tmp:
            if not app_logic.Zip(str(tmp), str(bundle_dir)):
                raise InputError(f"could not write {path}")
    return path


def load_scene_bundle(app_logic: Any, path: str | Path) -> None:
    """Replace the scene's content with a ``.mrb`` bundle (its data unpacked to a temporary folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"scene bundle not found: {path}")
    folder = tempfile.mkdtemp(prefix="brainimagenet-mrb-")
    register_node_classes(app_logic.GetMRMLScene())
    if not app_logic.OpenSlicerDataBundle(str(path), folder):
        raise InputError(f"could not open the scene bundle {path}")
