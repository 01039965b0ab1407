"""The Slicer scene layer on Slicer's real MRML (slicer-core): volume nodes in, prediction out."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import slicer
import vtk

from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.model.ensemble import Ensemble
from BrainImageNetADLib.model.maps import load_model_input
from BrainImageNetADLib.viewer import mrml


@pytest.fixture()
def scene() -> object:
    slicer.mrmlScene = slicer.vtkMRMLScene()
    yield slicer.mrmlScene
    slicer.mrmlScene.Clear(True)


def test_nodes_read_by_slicer_give_the_same_input_and_prediction_as_files(
    scene: object, sample: dict[str, Path], tiny_bundle: Path
) -> None:
    nodes = {kind: mrml.read_volume_node(path, scene) for kind, path in sample.items()}
    assert all(node.IsA("vtkMRMLScalarVolumeNode") for node in nodes.values())
    from_nodes = mrml.model_input_from_nodes(nodes, ["GMD", "GMV"])
    from_files, _ = load_model_input(sample, ["GMD", "GMV"])
    np.testing.assert_array_equal(from_nodes, from_files)
    ensemble = Ensemble.from_bundle(tiny_bundle)
    assert ensemble.predict(from_nodes).probability == ensemble.predict(from_files).probability


def test_volume_node_array_uses_nifti_voxel_order_and_ras_affine(scene: object, sample: dict[str, Path]) -> None:
    node = mrml.read_volume_node(sample["GMD"], scene)
    data, affine = mrml.volume_node_array(node)
    image = nib.load(str(sample["GMD"]))
    ijk = np.array([70, 80, 50])
    world = affine[:3, :3] @ ijk + affine[:3, 3]
    file_ijk = np.rint(np.linalg.solve(image.affine[:3, :3], world - image.affine[:3, 3])).astype(int)
    assert data[tuple(ijk)] == pytest.approx(float(image.dataobj[tuple(file_ijk)]), abs=1e-6)


def test_reoriented_volume_node_gives_the_same_model_input(scene: object, sample: dict[str, Path], tmp_path: Path) -> None:
    image = nib.load(str(sample["GMD"]))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    flipped_affine = image.affine @ np.array([[-1, 0, 0, 120], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    path = tmp_path / "flipped.nrrd"
    # Stored as NRRD with the x axis reversed: Slicer's reader, not nibabel, interprets it.
    node = slicer.util.addVolumeFromArray(np.ascontiguousarray(data[::-1].transpose(2, 1, 0)), name="flipped")
    ijk_to_ras = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            ijk_to_ras.SetElement(r, c, flipped_affine[r, c])
    node.SetIJKToRASMatrix(ijk_to_ras)
    storage = node.CreateDefaultStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    reread = mrml.read_volume_node(path, scene)
    expected, _ = load_model_input(sample, ["GMD"])
    np.testing.assert_array_equal(mrml.model_input_from_nodes({"GMD": reread}, ["GMD"]), expected)


def test_nodes_off_the_grid_or_missing_are_explained(scene: object) -> None:
    node = slicer.util.addVolumeFromArray(np.zeros((10, 10, 10), dtype=np.float32), name="small")
    with pytest.raises(InputError, match="not on the model grid"):
        mrml.model_input_from_nodes({"GMD": node}, ["GMD"])
    with pytest.raises(InputError, match="needs a GMV volume"):
        mrml.model_input_from_nodes({"GMD": node}, ["GMV"])
    with pytest.raises(InputError, match="could not read"):
        mrml.read_volume_node(Path("/nonexistent/gmd.nii.gz"), scene)
