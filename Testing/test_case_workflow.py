"""The single-case workflow shared by the Slicer widget and the web page, on Slicer's real MRML
(slicer-core) with real views rendered off screen (trame-slicer), and a real prediction run of the
shipped demo ensemble on the sample T1 in a child process."""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
from trame_slicer.core import SlicerApp  # noqa: E402
from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition  # noqa: E402

from BrainImageNetADLib.core.errors import InputError  # noqa: E402
from BrainImageNetADLib.core.progress import STAGE_GROUPS  # noqa: E402
from BrainImageNetADLib.core.resources import default_bundle, sample_t1  # noqa: E402
from BrainImageNetADLib.explain.atlas import REGIONS  # noqa: E402
from BrainImageNetADLib.pipeline import OCCLUSION_LEGEND, CaseOptions, CaseResult  # noqa: E402
from BrainImageNetADLib.viewer import scene as mrml_scene  # noqa: E402
from BrainImageNetADLib.viewer.controller import DEMO_BANNER, CaseController  # noqa: E402
from BrainImageNetADLib.viewer.mrml import volume_node_array  # noqa: E402
from BrainImageNetADLib.viewer.report import standalone_html  # noqa: E402
from conftest import HANG_GUARD_S  # noqa: E402

pytestmark = pytest.mark.slow


class Viewer:
    """A Slicer-like application with real axial, coronal and 3D views rendered off screen."""

    def __init__(self) -> None:
        self.app = SlicerApp()
        slicer.mrmlScene = self.app.scene
        self.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        layouts = [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view(), ViewLayoutDefinition.threed_view()]
        self.views = [self.app.view_manager.create_view(layout) for layout in layouts]
        for view in self.views:
            view.render_window().SetSize(300, 300)

    def controller(self, work_dir: Path | None = None) -> CaseController:
        return CaseController(self.app.scene, self.app.app_logic, work_dir)

    def pixels(self, index: int) -> np.ndarray:
        """The rendered RGB pixels (rows, columns, 3) of a view."""
        import vtk
        from vtk.util.numpy_support import vtk_to_numpy

        view = self.views[index]
        view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(view.render_window())
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]


def coloured(pixels: np.ndarray) -> np.ndarray:
    """Mask of clearly coloured (not grey) pixels: the heat map and the outlines."""
    p = pixels.astype(int)
    return (p.max(axis=2) - p.min(axis=2)) > 60


def wait(controller: CaseController, timeout: float = HANG_GUARD_S) -> None:
    end = time.monotonic() + timeout
    while controller.poll().state == "running":
        assert time.monotonic() < end, "run took too long"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def viewer() -> Viewer:
    return Viewer()


@pytest.fixture(scope="module")
def ran(viewer: Viewer, tmp_path_factory: pytest.TempPathFactory) -> CaseController:
    """The sample case run end to end (one fold's occlusion map, to keep it short)."""
    controller = viewer.controller(tmp_path_factory.mktemp("case"))
    controller.load_sample()
    controller.start(CaseOptions(fold=0))
    seen = []
    end = time.monotonic() + 600
    while (status := controller.poll()).state == "running":
        seen.append(dict(status.stages))
        assert time.monotonic() < end
        time.sleep(0.2)
    assert status.state == "done", status.message
    controller.stages_seen = seen
    return controller


def test_run_reports_each_stage_and_loads_the_results(ran: CaseController) -> None:
    # Progress went up stage by stage while the GUI thread stayed free to poll.
    assert any(0 < s["Preprocessing"] < 1 and s["Heat map"] == 0 for s in ran.stages_seen)
    assert any(s["Preprocessing"] == 1 and 0 < s["Heat map"] < 1 for s in ran.stages_seen)
    assert set(ran.job.status.stages) == set(STAGE_GROUPS) and all(v == 1.0 for v in ran.job.status.stages.values())
    result = ran.state.result
    assert 0 < result.probability < 1 and result.demo is True
    assert result == CaseResult.read(ran.job.out_dir / "result.json")  # what the child wrote, read back whole
    assert result.heat_map.kind == "occlusion" and result.heat_map.fold == 0 and result.regions_native == "regions_native.nii.gz"
    for role in mrml_scene.ROLES:
        assert ran.node(role) is not None, role


def test_heat_map_node_is_the_cli_map_on_the_t1_grid(ran: CaseController) -> None:
    t1, heat = ran.node("InputVolume"), ran.node("HeatMap")
    assert heat.IsA("vtkMRMLScalarVolumeNode") and not heat.IsA("vtkMRMLLabelMapVolumeNode")
    heat_data, heat_affine = volume_node_array(heat)
    t1_data, t1_affine = volume_node_array(t1)
    assert heat_data.shape == t1_data.shape
    np.testing.assert_allclose(heat_affine, t1_affine, atol=1e-4)
    written = nib.load(str(ran.job.out_dir / "occlusion_native.nii.gz"))
    np.testing.assert_allclose(heat_data, np.asanyarray(written.dataobj, dtype=np.float32), atol=1e-7)
    np.testing.assert_allclose(written.affine, nib.load(str(sample_t1())).affine, atol=1e-3)
    display = heat.GetDisplayNode()
    assert display.GetColorNode().GetName() == mrml_scene.COLOR_NAME
    assert display.GetWindowLevelMin() == pytest.approx(-np.abs(heat_data).max(), rel=1e-5)


def test_regions_are_a_segmentation_of_the_atlas_labels(ran: CaseController) -> None:
    segmentation = ran.node("Regions")
    assert segmentation.IsA("vtkMRMLSegmentationNode")
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(4)]
    assert names == [REGIONS[k] for k in sorted(REGIONS)]
    assert segmentation.GetDisplayNode().GetVisibility2DOutline() and not segmentation.GetDisplayNode().GetVisibility2DFill()
    labels = mrml_scene.segmentation_labels(segmentation, ran.node("InputVolume"))
    written = np.asanyarray(nib.load(str(ran.job.out_dir / "regions_native.nii.gz")).dataobj)
    for index, value in enumerate(sorted(REGIONS), start=1):
        assert ((labels == index) == (written == value)).mean() > 0.9999, REGIONS[value]
    table = ran.node("RegionTable")
    regions = ran.state.result.heat_map.regions["top_regions"]
    assert table.GetNumberOfRows() == len(regions)
    assert [table.GetCellText(r, 1) for r in range(table.GetNumberOfRows())] == [r["name"] for r in regions]


def test_views_show_the_heat_map_inside_the_brain_and_follow_the_controls(ran: CaseController, viewer: Viewer) -> None:
    t1 = ran.node("InputVolume")
    heat = ran.node("HeatMap")
    legend = next(
        heat.GetNthDisplayNode(i)
        for i in range(heat.GetNumberOfDisplayNodes())
        if heat.GetNthDisplayNode(i).IsA("vtkMRMLColorLegendDisplayNode")
    )
    legend.SetVisibility(False)
    for composite in mrml_scene._nodes(ran.scene, "vtkMRMLSliceCompositeNode"):
        assert composite.GetBackgroundVolumeID() == t1.GetID()
        assert composite.GetForegroundVolumeID() == ran.node("HeatMap").GetID()
    axial = viewer.pixels(0)
    brain = axial.max(axis=2) > 40
    assert coloured(axial)[brain].mean() > 0.02, "no heat map over the brain"
    assert not coloured(axial)[~brain].any() or coloured(axial)[~brain].mean() < 0.01
    # The cut-off hides the map (outlines stay), the opacity fades it; both without a re-run.
    ran.set_cutoff(1.0)
    hidden = coloured(viewer.pixels(0)).mean()
    ran.set_cutoff(0.2)
    ran.set_opacity(0.0)
    faded = coloured(viewer.pixels(0)).mean()
    ran.set_opacity(0.6)
    # with the map hidden or faded only the outlines stay coloured, and the map adds colour to them
    assert hidden == pytest.approx(faded, abs=0.002) and coloured(axial).mean() > faded + 0.002
    assert coloured(viewer.pixels(0)).mean() == pytest.approx(coloured(axial).mean(), rel=0.05)
    # The colour legend of the map is drawn beside it (hidden above, so that only the map was measured).
    legend.SetVisibility(True)
    assert coloured(viewer.pixels(0)).mean() > coloured(axial).mean() + 0.002, "no colour legend in the slice view"
    # The slice views are centred on the hippocampal regions.
    written = nib.load(str(ran.job.out_dir / "regions_native.nii.gz"))
    centre = nib.affines.apply_affine(written.affine, np.argwhere(np.asanyarray(written.dataobj) > 0).mean(axis=0))
    for slice_node in mrml_scene._nodes(ran.scene, "vtkMRMLSliceNode"):
        origin = [slice_node.GetSliceToRAS().GetElement(r, 3) for r in range(3)]
        np.testing.assert_allclose(origin, centre, atol=1.0)
    assert coloured(viewer.pixels(2)).mean() > 0.005, "no surface of the regions in the 3D view"


def test_threshold_moves_label_sensitivity_and_specificity_from_the_card(ran: CaseController) -> None:
    card = ran.card()
    probability = ran.state.result.probability
    below = ran.set_threshold(max(0.0, probability - 0.001))
    above = ran.set_threshold(min(1.0, probability + 0.001))
    assert below.label == "AD" and above.label == "NC"
    low, high = ran.set_threshold(0.1), ran.set_threshold(0.9)
    assert low.sensitivity >= high.sensitivity and low.specificity <= high.specificity
    assert ran.set_threshold_preset("screening").threshold == card.threshold_presets["screening"]
    assert ran.state.threshold == card.threshold_presets["screening"]
    with pytest.raises(InputError, match="no 'cautious' threshold"):
        ran.set_threshold_preset("cautious")
    with pytest.raises(InputError, match="must lie in"):
        ran.set_threshold(1.5)
    assert ran.notice()["banner"] == DEMO_BANNER and "DEMONSTRATION MODEL" in ran.notice()["intended_use"]
    ran.set_threshold_preset("balanced")


def test_a_threshold_chosen_in_the_scene_survives_loading_results(ran: CaseController) -> None:
    ran.set_threshold(0.42)
    ran.load_results(ran.job.out_dir)
    assert ran.state.threshold == 0.42 and ran.prediction().threshold == 0.42
    ran.set_threshold_preset("balanced")


def test_saved_scene_restores_nodes_and_state(ran: CaseController, tmp_path: Path) -> None:
    ran.set_threshold(0.3)
    path = ran.save_scene(tmp_path / "case.mrb")
    heat_before, _ = volume_node_array(ran.node("HeatMap"))
    other = Viewer()
    mrml_scene.load_scene_bundle(other.app.app_logic, path)
    restored = other.controller(tmp_path / "work")
    assert restored.state.threshold == 0.3 and restored.state.result == ran.state.result
    assert restored.prediction().label == ran.prediction().label
    heat_after, _ = volume_node_array(restored.node("HeatMap"))
    np.testing.assert_allclose(heat_after, heat_before)
    assert restored.node("Regions").GetSegmentation().GetNumberOfSegments() == 4
    assert restored.node("RegionTable").GetNumberOfRows() == ran.node("RegionTable").GetNumberOfRows()
    assert coloured(other.pixels(0)).mean() > 0.01, "the restored views do not show the heat map"
    ran.set_threshold_preset("balanced")


def test_report_has_result_intended_use_and_slices_without_identifiers(ran: CaseController, tmp_path: Path) -> None:
    import io

    from PIL import Image

    from BrainImageNetADLib.viewer.report import slices_png
    from BrainImageNetADLib.viewer.scene import segmentation_labels

    html = ran.write_report(tmp_path).read_text()
    content = json.loads((tmp_path / "report.json").read_text())
    assert content["probability"] == ran.state.result.probability and content["label"] == ran.prediction().label
    assert "DEMONSTRATION MODEL" in html and DEMO_BANNER in html and content["qc"]["verdict"] in ("pass", "warn")
    assert content["heat_map"]["hippocampal"][0]["name"].startswith(("Hippocampus", "ParaHippocampal"))
    for text in (html, json.dumps(content)):
        assert "colin27" not in text.lower() and str(ran.work_dir) not in text and "Sample T1" not in text
    pixels = np.asarray(Image.open(tmp_path / "report_slices.png").convert("RGB"))
    labels = segmentation_labels(ran.node("Regions"), ran.node("InputVolume"))
    outlines = np.asarray(Image.open(io.BytesIO(slices_png(ran.node("InputVolume"), None, labels, ran.state.cutoff))).convert("RGB"))
    assert coloured(outlines).any() and coloured(pixels).mean() > coloured(outlines).mean() + 0.001  # the heat map is drawn
    page = standalone_html(tmp_path / "report.html")
    assert 'src="data:image/png;base64,' in page and "report_slices.png" not in page


def test_cancel_stops_the_run_and_a_bad_input_fails_with_its_message(viewer: Viewer, tmp_path: Path) -> None:
    slicer.mrmlScene = viewer.app.scene
    controller = viewer.controller(tmp_path / "cancel")
    controller.load_t1(sample_t1())
    job = controller.start(CaseOptions(method="none"))
    end = time.monotonic() + 120
    while controller.poll().stages["Preprocessing"] == 0:
        assert time.monotonic() < end
        time.sleep(0.1)
    with pytest.raises(InputError, match="already in progress"):
        controller.start()
    controller.cancel()
    start = time.monotonic()
    wait(controller, 30)
    assert controller.poll().state == "cancelled" and time.monotonic() - start < 30
    assert not (job.out_dir / "result.json").exists()
    # A volume that is not a T1 (all zero) fails with the command line's one-line reason.
    empty = slicer.util.addVolumeFromArray(np.zeros((40, 40, 40), dtype=np.float32), name="empty")
    controller.set_input(empty)
    controller.start()
    wait(controller, 120)
    status = controller.poll()
    assert status.state == "failed" and "Traceback" not in status.message
    assert "input_t1.nii.gz: field of view" in status.message and "too small to hold a whole brain" in status.message
    controller.close()
    assert (tmp_path / "cancel").is_dir()  # a work folder given by the caller is kept


def test_controller_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    viewer = Viewer()
    controller = viewer.controller()
    with pytest.raises(InputError, match="choose an input"):
        controller.start()
    with pytest.raises(InputError, match="file not found"):
        controller.load_t1(tmp_path / "missing.nii.gz")
    table = viewer.app.scene.AddNewNodeByClass("vtkMRMLTableNode")
    with pytest.raises(InputError, match="not a scalar volume"):
        controller.set_input(table)
    with pytest.raises(InputError, match="run the prediction first"):
        controller.write_report(tmp_path)
    assert controller.set_model(None).name == "demo-tiny" and controller.bundle_path() == default_bundle()
    work_dir = controller.work_dir
    controller.close()
    assert not work_dir.exists()


def _descendants(pid: int) -> set[int]:
    """Process ids of the living descendants of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_spm_maps_run_without_preprocessing_with_the_map_and_legend_on_the_mni_grid(viewer: Viewer, tmp_path: Path) -> None:
    from BrainImageNetADLib.core import grid
    from BrainImageNetADLib.core.resources import sample_maps

    own = Viewer()  # a scene of its own: the module-wide case stays as it is
    controller = own.controller(tmp_path / "maps")
    maps = sample_maps()
    gmd = controller.load_maps(maps["GMD"], maps["GMV"])
    assert controller.node("InputVolume") is gmd and controller.input_maps() == maps
    controller.set_threshold(0.42)  # chosen before the run: it must survive it
    job = controller.start(CaseOptions(method="gradient"))
    run = json.loads(job.command[-1])  # the child's spec: the maps, and the threshold chosen in the scene
    assert run["source"] == {k: str(v) for k, v in maps.items()} and run["options"]["threshold"] == 0.42
    wait(controller)
    assert controller.poll().state == "done", controller.poll().message
    assert controller.prediction().threshold == 0.42 and controller.state.result.threshold == 0.42
    heat_data, heat_affine = volume_node_array(controller.node("HeatMap"))
    written = nib.load(str(job.out_dir / "occlusion.nii.gz"))
    assert heat_data.shape == grid.MNI_SHAPE and np.abs(heat_data).max() > 0
    # The node holds the written MNI map voxel for voxel (Slicer may store the axes flipped).
    to_node = nib.orientations.ornt_transform(nib.io_orientation(written.affine), nib.io_orientation(heat_affine))
    on_node_axes = nib.orientations.apply_orientation(np.asanyarray(written.dataobj, dtype=np.float32), to_node)
    np.testing.assert_allclose(heat_data, on_node_axes, atol=1e-7)
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in grid.MNI_SHAPE])))
    for affine in (heat_affine, written.affine):  # both span the same box of the MNI space
        box = np.sort(np.round(nib.affines.apply_affine(affine, corners), 3), axis=0)
        np.testing.assert_allclose(box, np.sort(np.round(nib.affines.apply_affine(grid.MNI_AFFINE, corners), 3), axis=0))
    assert controller.node("Regions").GetSegmentation().GetNumberOfSegments() == 4
    heat = controller.node("HeatMap")
    legends = [heat.GetNthDisplayNode(i) for i in range(heat.GetNumberOfDisplayNodes())]
    legend = next(d for d in legends if d.IsA("vtkMRMLColorLegendDisplayNode"))
    assert (
        legend.GetTitleText() == controller.state.result.heat_map.legend == OCCLUSION_LEGEND
        and legend.GetPrimaryDisplayNode() is heat.GetDisplayNode()
    )
    # Choosing a T1 again leaves the maps.
    controller.set_input(controller.node("InputVolume"))
    assert controller.input_maps() is None
    with pytest.raises(InputError, match="GMV map not found"):
        controller.load_maps(maps["GMD"], tmp_path / "missing.nii")
    controller.close()


def test_the_parameter_node_announces_every_change_the_panel_shows(viewer: Viewer, tmp_path: Path) -> None:
    """The Slicer panel refreshes from the parameter node's ModifiedEvent: every change of the
    workflow, made from the panel or from the Python console, fires it."""
    slicer.mrmlScene = viewer.app.scene
    controller = viewer.controller(tmp_path / "events")
    events: list[str] = []
    node = controller.parameter_node
    tag = node.AddObserver("ModifiedEvent", lambda caller, event: events.append(event))
    volume = slicer.util.addVolumeFromArray(np.zeros((8, 8, 8), dtype=np.float32), name="t1")
    for change in (
        lambda: controller.set_input(volume),
        lambda: controller.set_threshold(0.31),
        lambda: controller.set_opacity(0.4),
        lambda: controller.set_cutoff(0.3),
        lambda: controller.set_model(None),
        lambda: controller.set_input(None),
    ):
        before = len(events)
        change()
        assert len(events) > before
    node.RemoveObserver(tag)
    controller.close()


def test_closing_the_scene_stops_the_run_its_processes_and_removes_its_files(viewer: Viewer, tmp_path: Path, ran: CaseController) -> None:
    other = Viewer()
    controller = other.controller()  # its own temporary work folder
    controller.load_sample()
    job = controller.start(CaseOptions(method="none"))
    end = time.monotonic() + HANG_GUARD_S
    while controller.poll().stages["Preprocessing"] == 0:  # the preprocessing worker is running
        assert time.monotonic() < end
        time.sleep(0.1)
    processes = _descendants(job._process.pid) | {job._process.pid}
    assert len(processes) >= 2, "no worker process under the run"
    other.app.scene.Clear(0)
    controller.scene_closed()
    assert controller.job is None and not list(controller.work_dir.glob("run-*"))
    end = time.monotonic() + 60
    while any(_alive(pid) for pid in processes):
        assert time.monotonic() < end, "processes of the run outlived the scene"
        time.sleep(0.2)
    # Results that arrive for a scene that no longer holds the input are not loaded.
    with pytest.raises(InputError, match="no longer in the scene"):
        controller.load_results(ran.job.out_dir)
    assert controller.node("HeatMap") is None
    work_dir = controller.work_dir
    controller.close()
    assert not work_dir.exists()
