"""Atomic outputs: a reader sees the old file or the whole new one, and a failed writer leaves
neither a half-written file nor a temporary one behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from BrainImageNetADLib.core import grid
from BrainImageNetADLib.core.atomic import replacing, write_bytes_atomic, write_nifti_atomic


def test_a_failed_writer_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_bytes_atomic(tmp_path / "result.json", b"old")
    with pytest.raises(RuntimeError, match="writer failed"), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_finished_writer_replaces_the_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "map.bin"
    with replacing(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and len(list(target.parent.iterdir())) == 1
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_identical_maps_give_identical_files(tmp_path: Path) -> None:
    data = np.arange(np.prod(grid.MNI_SHAPE), dtype=np.float32).reshape(grid.MNI_SHAPE)
    first = write_nifti_atomic(tmp_path / "a.nii.gz", data, grid.MNI_AFFINE).read_bytes()
    second = write_nifti_atomic(tmp_path / "b.nii.gz", data, grid.MNI_AFFINE).read_bytes()
    assert first == second


def test_a_folder_is_replaced_whole_and_leftovers_are_removed(tmp_path: Path) -> None:
    from BrainImageNetADLib.core.atomic import remove_leftovers, replace_dir

    target = tmp_path / "transforms"
    target.mkdir()
    (target / "old.mat").write_text("old")
    staging = tmp_path / ".transforms.new"
    staging.mkdir()
    (staging / "new.mat").write_text("new")
    replace_dir(staging, target)
    assert [p.name for p in target.iterdir()] == ["new.mat"] and not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transforms"]  # the old folder is gone
    # What an interrupted writer leaves: a temporary file, a staging folder, an old folder.
    (tmp_path / ".result.json.abc123.tmp").write_text("{")
    (tmp_path / ".transforms.xyz").mkdir()
    (tmp_path / ".transforms.old.q1").mkdir()
    (tmp_path / "result.json").write_text("{}")
    remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json", "transforms"]
