"""MRML scene helpers shared by the Slicer module and the tests (slicer-core, no Qt).

Volume arrays returned here are in (i, j, k) voxel order, with the node's IJK-to-RAS matrix as
the affine (mm), the same convention as a NIfTI file read by nibabel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core import grid
from ..core.errors import InputError


def read_volume_node(path: str | Path, scene: object, name: str | None = None, class_name: str = "vtkMRMLScalarVolumeNode") -> object:
    """Read an image file (NIfTI, NRRD, ...) into a new volume node of ``scene`` (``class_name``:
    a scalar or a label map volume) through Slicer's volume archetype storage node, after checking
    its header (``imageheader.check_image_header``); return it."""

    from ..core.imageheader import check_image_header

    path = Path(path)
    if not path.exists():
        raise InputError(f"Slicer could not read {path}: no such file")
    check_image_header(path)
    node = scene.AddNewNodeByClass(class_name, name or path.name.split(".")[0])
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node.SetAndObserveStorageNodeID(storage.GetID())
    if not storage.ReadData(node):
        scene.RemoveNode(node)
        scene.RemoveNode(storage)
        raise InputError(f"Slicer could not read {path}")
    return node


def volume_node_array(node: object) -> tuple[np.ndarray, np.ndarray]:
    """The voxels of a scalar (or label map) volume node as float32 (I, J, K) and its IJK-to-RAS
    affine (4x4, mm)."""
    import slicer.util
    import vtk

    if node is None or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
        raise InputError("expected a scalar volume node with image data")
    data = slicer.util.arrayFromVolume(node)
    if data.ndim != 3:
        raise InputError(f"{node.GetName()}: expected a 3D scalar volume, got array of shape {data.shape}")
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    affine = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32), affine


def model_input_from_nodes(nodes: dict[str, object], channels: list[str]) -> np.ndarray:
    """Stack the maps held by volume nodes (keys ``GMD``/``GMV``) into (C, 96, 120, 86) float32,
    checked and reordered onto the model grid as ``maps.load_model_input`` does for files."""
    from ..model.maps import check_map

    arrays = []
    for kind in channels:
        node = nodes.get(kind)
        if node is None:
            raise InputError(f"the model needs a {kind} volume")
        data, affine = volume_node_array(node)
        model_data = grid.to_model_grid(data, affine, kind)
        check_map(model_data, kind, kind)
        arrays.append(model_data)
    return np.stack(arrays)
