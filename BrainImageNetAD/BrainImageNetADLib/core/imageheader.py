"""Checks of an image file's header before its voxels are read: the size it claims must fit a
memory budget and, for uncompressed data, the file's own length, so that a small hostile or broken file
cannot make a reader allocate gigabytes; and the one NIfTI reader, which reads a file only after
that check.

Reads headers only: NIfTI through nibabel (lazily), NRRD, MHA and the others through SimpleITK's
``ReadImageInformation``, a DICOM series from its first file's size times its number of files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

#: Largest image accepted, in voxels (all volumes and components together): 2^28, 1 GiB as
#: float32. A whole head at 0.5 mm is about 0.08 G voxels.
MAX_VOXELS = 2**28


def _refuse_size(name: str, shape: list[int], voxels: int) -> None:
    if voxels > MAX_VOXELS:
        dims = "x".join(str(s) for s in shape)
        raise InputError(
            f"{name}: the header claims {dims} voxels ({voxels / 1e6:,.0f} million), more than the {MAX_VOXELS / 1e6:,.0f} million "
            "any brain scan needs; the file is corrupt or not a brain image"
        )


def check_nifti_header(path: Path) -> None:
    """Refuse a NIfTI (or Analyze) file whose header claims more voxels than ``MAX_VOXELS`` or, when
    uncompressed, more bytes than the file holds (a compressed file's length says nothing certain:
    its reader finds a truncation). Raises InputError; reads the header only."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken headers
        raise InputError(f"{path.name}: cannot read it as an image (NIfTI header: {type(exc).__name__}: {exc})") from None
    shape = [int(s) for s in image.shape]
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    _refuse_size(path.name, shape, voxels)
    header = image.header
    needed = int(header.get_data_offset()) + voxels * np.dtype(header.get_data_dtype()).itemsize
    data_file = Path(image.dataobj.file_like) if isinstance(getattr(image.dataobj, "file_like", None), str) else path
    if not data_file.name.lower().endswith(".gz") and data_file.is_file() and data_file.stat().st_size < needed:
        raise InputError(
            f"{path.name}: cannot read it as an image: the header claims {needed:,} bytes but the file holds "
            f"{data_file.stat().st_size:,}; it is truncated"
        )


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI file after ``check_nifti_header``: (voxels as float32 (I, J, K[, T]) in the
    file's voxel order, voxel-to-RAS affine in mm). nibabel reads every byte, so a truncated
    compressed file fails, and keeps NaNs for the caller to judge. Raises InputError naming the
    file."""
    import nibabel as nib

    check_nifti_header(path)
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(f"{path.name}: cannot read it as an image (NIfTI: {type(exc).__name__}: {exc})") from None
    return data, image.affine


def check_image_header(path: str | Path) -> None:
    """Refuse, from its header alone, an image file (NIfTI, NRRD, MHA, ...) or a DICOM series
    folder that claims more voxels than ``MAX_VOXELS`` or more data than it holds. Raises
    InputError with one line; an unreadable header is left to the reader to report."""
    import SimpleITK as sitk

    path = Path(path)
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # failures are reported as InputError instead
    if path.name.lower().endswith((".nii", ".nii.gz", ".hdr", ".img")):
        check_nifti_header(path)
        return
    reader = sitk.ImageFileReader()
    if path.is_dir():
        files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path))
        if not files:
            return
        reader.SetFileName(files[0])
        count = len(files)
    else:
        reader.SetFileName(str(path))
        count = 1
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return
    shape = [int(s) for s in reader.GetSize()] + ([count] if count > 1 else [])
    voxels = int(np.prod(shape, dtype=np.int64)) * max(1, reader.GetNumberOfComponents())
    _refuse_size(path.name, shape, voxels)


#: Memory a child process may take to read an uploaded image (address space, bytes): a 2^28-voxel
#: float32 image is 1 GiB, and the libraries take some more.
READ_MEMORY_LIMIT_BYTES = 3 * 2**30


def read_in_child(path: str | Path, memory_limit_bytes: int = READ_MEMORY_LIMIT_BYTES) -> None:
    """Check the header of an image file and read all its voxels in a child process whose memory
    is capped (POSIX ``RLIMIT_AS``), so that a file built to exhaust memory costs that process,
    not the caller (the web page's server). Raises InputError when it cannot be read within the
    cap or at all."""
    from .worker import WorkerCrashed, run_isolated

    try:
        run_isolated(_read_with_memory_limit, str(path), memory_limit_bytes)
    except MemoryError:
        raise InputError(f"{Path(path).name}: reading it needs more than {memory_limit_bytes / 2**30:.1f} GiB; not a brain scan") from None
    except WorkerCrashed as error:
        raise InputError(f"{Path(path).name}: {error}") from None


def _read_with_memory_limit(path: str, memory_limit_bytes: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    except (ImportError, ValueError, OSError):  # no such limit on this system: the header check still applies
        pass
    check_image_header(path)
    if Path(path).name.lower().endswith((".nii", ".nii.gz", ".hdr", ".img")):
        import nibabel as nib

        try:
            np.asanyarray(nib.load(path).dataobj)
        except MemoryError:
            raise
        except Exception as exc:  # nibabel raises many types for broken files
            raise InputError(f"{Path(path).name}: cannot read it as an image ({type(exc).__name__}: {exc})") from None
    else:
        import SimpleITK as sitk

        try:
            sitk.ReadImage(path)
        except RuntimeError as exc:
            if "memory" in str(exc).lower() or "bad_alloc" in str(exc):
                raise MemoryError(str(exc)) from None
            raise InputError(f"{Path(path).name}: cannot read it as an image ({str(exc).strip().splitlines()[-1][:200]})") from None
