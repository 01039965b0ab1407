"""Atomic file output: write to a temporary file in the target folder, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer to fill; on success it replaces
    ``path`` in one rename, on any error it is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # after the writer, which may have made the file anew (safetensors does)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def write_nifti_atomic(path: str | os.PathLike[str], data: Any, affine: Any, description: str = "") -> Path:
    """Write a NIfTI-1 image (``.nii.gz``: gzip with a fixed timestamp, so identical data give
    identical bytes) atomically. ``data`` keeps its dtype; ``affine`` maps voxels to RAS mm."""
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = description.encode()[:79]
    return write_bytes_atomic(path, gzip.compress(image.to_bytes(), compresslevel=6, mtime=0))


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Put the finished folder ``staging`` in place of ``target`` by renames: the old folder is
    renamed aside, the new one renamed in, then the old one removed (readers never see a folder
    half written; a crash between the renames leaves the old one beside, removed by
    ``remove_leftovers``)."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        old.rmdir()
        target.rename(old)
    staging.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def remove_leftovers(folder: str | os.PathLike[str]) -> None:
    """Remove what writes interrupted in ``folder`` left: ``replacing``'s ``.NAME.*.tmp`` files
    and ``.NAME.*`` staging or old folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.glob(".*"):
        if path.is_file() and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        elif path.is_dir() and (".old." in path.name or path.name.startswith(".transforms.")):
            shutil.rmtree(path, ignore_errors=True)
