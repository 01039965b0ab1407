"""Raw T1 input from the command line: bad inputs get exit code 2 and one specific line; batch
mode over BIDS/CSV is parallel, resumable and shardable; a crashing worker is reported."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_cli import run_cli

from BrainImageNetADLib.cohort.batch import Job, collect_jobs, shard
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.core.worker import WorkerCrashed, run_isolated
from BrainImageNetADLib.preprocessing import qc
from BrainImageNetADLib.preprocessing.t1io import read_t1
from conftest import COLIN27_T1, HANG_GUARD_S, REALDATA, assert_input_error, needs_realdata

AAL = Path("/usr/share/mricron/templates/aal.nii.gz")


def _colin() -> tuple[np.ndarray, np.ndarray]:
    image = nib.load(str(COLIN27_T1))
    return np.asanyarray(image.dataobj).astype(np.float32), image.affine


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "file not found"),
        ("text", "cannot read it as an image"),
        ("truncated", "cannot read it as an image"),
        ("2d", "a 2D image or a thin slab"),
        ("4d", "a 4D series with 2 volumes"),
        ("label_map", "looks like a label map"),
        ("nan", "NaN or infinite"),
        ("zeros", "the image is constant"),
        ("tiny_voxels", "is outside 0.2-8.0 mm"),
        ("small_field", "too small to hold a whole brain"),
        ("empty_dicom_folder", "holds no DICOM series"),
    ],
)
def test_bad_t1_gets_exit_2_and_one_line(tmp_path: Path, case: str, message: str) -> None:
    data, affine = _colin()
    path = tmp_path / "t1.nii.gz"
    if case == "missing":
        path = tmp_path / "absent.nii.gz"
    elif case == "text":
        path = tmp_path / "t1.nii"
        path.write_text("not an image\n" * 50)
    elif case == "truncated":
        path.write_bytes(COLIN27_T1.read_bytes()[:20000])
    elif case == "2d":
        nib.save(nib.Nifti1Image(data[:, :, 90], affine), str(path))
    elif case == "4d":
        nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), affine), str(path))
    elif case == "label_map":
        path = AAL
    elif case == "nan":
        data[90, 100, 90] = np.nan
        nib.save(nib.Nifti1Image(data, affine), str(path))
    elif case == "zeros":
        nib.save(nib.Nifti1Image(np.zeros_like(data), affine), str(path))
    elif case == "tiny_voxels":
        nib.save(nib.Nifti1Image(data, affine @ np.diag([0.01, 0.01, 0.01, 1.0])), str(path))
    elif case == "small_field":
        nib.save(nib.Nifti1Image(data[60:120, 60:120, 60:120], affine), str(path))
    elif case == "empty_dicom_folder":
        path = tmp_path / "dicom"
        path.mkdir()
        (path / "notes.txt").write_text("no images here")
    assert_input_error(run_cli("preprocess", path, "--out", tmp_path / "out"), message)
    assert not (tmp_path / "out" / "qc.json").exists()


@pytest.mark.slow
def test_a_scan_of_another_contrast_never_reaches_the_networks_even_when_forced(tmp_path: Path) -> None:
    """A scan of another contrast is refused before its maps are made, with the kind named, even
    with ``--force`` (which predicts a T1 whose QC failed: the reversed-header test)."""
    data, affine = _colin()
    inverted = np.where(data > 0, data.max() - data, 0).astype(np.float32)  # T2-like: CSF bright, WM dark
    path = tmp_path / "t2like.nii.gz"
    nib.save(nib.Nifti1Image(inverted, affine), str(path))
    result = run_cli("predict", path, "--out", tmp_path / "out", "--force")
    assert_input_error(result, "tissue contrast is not that of a T1: looks like a T2- or proton-density-weighted scan")
    assert not any((tmp_path / "out" / "preprocessing" / name).exists() for name in ("gmd.nii.gz", "qc.json"))
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_a_noisy_scan_warns_and_a_very_noisy_one_never_reaches_the_networks(tmp_path: Path) -> None:
    """Rician noise at 15 % of the white-matter intensity: usable, with a warning on the
    signal-to-noise ratio measured in the white matter, where the GM map alone (its correlation
    with the template stays high) would not warn (measured: 10.8). At 35 % the tissue
    intensities no longer tell grey from white matter (measured: white 0.3 % brighter than grey):
    refused as a scan without usable grey/white contrast, before any map is made."""
    from BrainImageNetADLib.core.errors import ContrastRefused
    from BrainImageNetADLib.preprocessing.preprocess import preprocess_t1

    data, affine = _colin()
    paths = {}
    for level in (0.15, 0.35):
        rng = np.random.default_rng(0)
        sigma = level * float(np.percentile(data[data > 0], 95))
        noisy = np.hypot(data + rng.normal(0, sigma, data.shape), rng.normal(0, sigma, data.shape)).astype(np.float32)
        paths[level] = tmp_path / f"noisy{level}.nii.gz"
        nib.save(nib.Nifti1Image(noisy, affine), str(paths[level]))
    report = run_isolated(preprocess_t1, paths[0.15], tmp_path / "out")
    assert report["verdict"] == "warn" and report["measures"]["gm_template_correlation"] > qc.GM_CORRELATION_WARN
    assert qc.SIGNAL_TO_NOISE_FAIL < report["measures"]["signal_to_noise"] < qc.SIGNAL_TO_NOISE_WARN
    assert any("signal-to-noise" in warning for warning in report["warnings"]), report["warnings"]
    with pytest.raises(ContrastRefused, match="such as a very noisy one \\(CSF dark, grey and white matter alike\\)"):
        run_isolated(preprocess_t1, paths[0.35], tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


@needs_realdata
def test_a_head_ct_is_refused_as_not_a_t1(tmp_path: Path) -> None:
    ct = REALDATA / "not_t1" / "debian_invesalius_examples_CT_head_ProMED0051_orientation_approx.nii.gz"
    assert_input_error(run_cli("preprocess", ct, "--out", tmp_path / "out"), "looks like a CT, not a T1 MRI")
    assert not (tmp_path / "out" / "qc.json").exists()


@pytest.mark.slow
@needs_realdata
def test_a_header_with_front_and_back_reversed_fails_on_orientation_and_force_still_predicts(tmp_path: Path) -> None:
    """A real scan (IXI012) whose voxels are mirrored front to back under an unchanged header: an
    affine cannot undo a mirror image, and the mirrored scan fits the head template far better.
    QC fails and prediction stops; ``--force`` predicts a T1 anyway, the verdict recorded."""
    image = nib.load(str(REALDATA / "ixi" / "github_CBICA_IXI_IXI012-HH-1211_age38.78_M_T1_2mm.nii.gz"))
    front_back = [axis for axis, code in enumerate(nib.aff2axcodes(image.affine)) if code in "AP"][0]
    path = tmp_path / "reversed.nii.gz"
    nib.save(nib.Nifti1Image(np.flip(np.asarray(image.dataobj, dtype=np.float32), axis=front_back), image.affine), str(path))
    assert_input_error(run_cli("predict", path, "--out", tmp_path / "out"), "preprocessing QC failed: orientation: the scan fits")
    report = json.loads((tmp_path / "out" / "preprocessing" / "qc.json").read_text(encoding="utf-8"))
    assert report["verdict"] == "fail" and report["affine"]["reversed_axis"] == "anterior-posterior"
    assert report["failures"][0].startswith("orientation: the scan fits the head template far better mirrored")
    assert not (tmp_path / "out" / "result.json").exists()
    forced = run_cli("predict", path, "--out", tmp_path / "out", "--force", "--occlusion", "none")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))["qc"]["verdict"] == "fail"


@needs_realdata
def test_thick_clinical_slices_fail_qc_with_the_reason() -> None:
    from BrainImageNetADLib.preprocessing.t1io import read_t1

    thick = read_t1(REALDATA / "other" / "pypi_pyradiomics_sdist_brain2_T1postcontrast_axial_0p78x0p78x6p5mm.nii.gz")
    assert len(thick.failures) == 1 and thick.failures[0].startswith("slice thickness 6.5 mm")
    adult = read_t1(REALDATA / "ixi" / "github_CBICA_IXI_IXI012-HH-1211_age38.78_M_T1_2mm.nii.gz")
    assert adult.failures == [] and adult.warnings == []  # 2 mm isotropic: accepted as it is


def test_collect_jobs_reads_bids_csv_and_folders(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    for subject, session in (("sub-01", None), ("sub-02", "ses-1"), ("sub-02", "ses-2")):
        anat = bids / subject / (session or "") / "anat"
        anat.mkdir(parents=True)
        name = "_".join(p for p in (subject, session) if p) + "_T1w.nii.gz"
        (anat / name).write_bytes(b"x")
    (bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz").write_bytes(b"x")
    assert [j.subject for j in collect_jobs([bids])] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    table = tmp_path / "list.csv"
    table.write_text("subject,t1\nA,bids/sub-01/anat/sub-01_T1w.nii.gz\n")
    assert collect_jobs([table]) == [Job("A", bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")]
    (tmp_path / "bad.csv").write_text("path\nx.nii.gz\n")
    with pytest.raises(InputError, match="expected a 't1' column"):
        collect_jobs([tmp_path / "bad.csv"])


def test_shards_split_the_jobs_without_overlap() -> None:
    jobs = [Job(f"s{i:02d}", Path(f"s{i}.nii.gz")) for i in range(10)]
    parts = [shard(jobs, f"{i}/3") for i in range(3)]
    assert sorted(j.subject for part in parts for j in part) == [j.subject for j in jobs]
    assert [len(p) for p in parts] == [4, 3, 3]
    with pytest.raises(InputError, match="--shard must be i/n"):
        shard(jobs, "3/3")


def test_a_crashing_worker_becomes_a_clear_error() -> None:
    with pytest.raises(WorkerCrashed, match="crashed in a native library"):
        run_isolated(os.abort)
    assert run_isolated(sum, [1, 2, 3]) == 6
    with pytest.raises(InputError, match="no such subject"):
        run_isolated(_refuse, "no such subject")


def _refuse(message: str) -> None:
    raise InputError(message)


def test_the_worker_runs_under_the_interpreter_a_launcher_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slicer's PythonSlicer is a launcher that sets the environment, then starts Python: a worker
    started through such a launcher (``$BRAINIMAGENET_AD_PYTHON``) runs and crashes as cleanly."""
    launcher = tmp_path / "PythonLauncher"
    launcher.write_text(f'#!/bin/sh\nexport LAUNCHED_BY=launcher\nexec "{sys.executable}" "$@"\n')
    launcher.chmod(0o755)
    monkeypatch.setenv("BRAINIMAGENET_AD_PYTHON", str(launcher))
    assert run_isolated(os.getenv, "LAUNCHED_BY") == "launcher"
    with pytest.raises(WorkerCrashed, match="crashed in a native library"):
        run_isolated(os.abort)


@pytest.mark.slow
def test_batch_is_parallel_resumable_and_summarised(tmp_path: Path) -> None:
    data, affine = _colin()
    data, affine = data[::2, ::2, ::2], affine @ np.diag([2.0, 2.0, 2.0, 1.0])  # 2 mm voxels: the batch, not the maps, is tested
    bids = tmp_path / "bids"
    for subject in ("sub-01", "sub-02"):
        (bids / subject / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(data, affine), str(bids / subject / "anat" / f"{subject}_T1w.nii.gz"))
    (bids / "sub-03" / "anat").mkdir(parents=True)
    (bids / "sub-03" / "anat" / "sub-03_T1w.nii.gz").write_bytes(b"broken")
    out = tmp_path / "derivatives"
    first = run_cli("preprocess", bids, "--out", out, "--jobs", "2")
    assert first.returncode == 3, first.stderr  # sub-03 failed: the run says so, after the summary
    assert first.stderr.strip().splitlines()[-1] == f"error: 1 of 3 subjects failed (sub-03); see {out / 'summary.tsv'}"
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    verdicts = {r[0]: r[1] for r in rows}
    assert verdicts["sub-01"] in ("pass", "warn") and verdicts["sub-02"] in ("pass", "warn")
    assert verdicts["sub-03"] == "error" and "cannot read" in rows[2][5]
    assert (out / "sub-01" / "gmd.nii.gz").is_file() and (out / "sub-02" / "qc.json").is_file()
    assert "[3/3]" in first.stderr
    again = run_cli("preprocess", bids, "--out", out)
    assert again.returncode == 3, again.stderr
    rows = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "summary.tsv").read_text().splitlines()[1:]}
    assert rows["sub-01"] == rows["sub-02"] == "done before"


def _write_dicom_series(data: np.ndarray, affine: np.ndarray, folder: Path, series: str = "1.2.826.0.1.3680043.2.1125.1.4242") -> None:
    """Write a 3D volume (RAS affine) as a DICOM series of axial slices with SimpleITK."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    volume = sitk.GetImageFromArray(np.ascontiguousarray(data.T.astype(np.int16)))
    volume.SetSpacing(spacing.tolist())
    volume.SetDirection(direction.ravel().tolist())
    volume.SetOrigin(lps[:3, 3].tolist())
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1]))
    for k in range(volume.GetDepth()):
        image = volume[:, :, k]
        position = volume.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000e", series),
            ("0020|000d", series + ".1"),
            ("0020|0037", orientation),
            ("0020|0032", "\\".join(f"{v:.6f}" for v in position)),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{spacing[2]:.6f}"),
            ("0028|0030", f"{spacing[1]:.6f}\\{spacing[0]:.6f}"),
        ):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series[-4:]}_{k:04d}.dcm"))
        writer.Execute(image)


def test_dicom_series_folder_reads_like_the_nifti(tmp_path: Path) -> None:
    from BrainImageNetADLib.preprocessing.t1io import read_t1

    data, affine = _colin()
    _write_dicom_series(data, affine, tmp_path / "dicom")
    from_dicom = read_t1(tmp_path / "dicom").image
    from_nifti = read_t1(COLIN27_T1).image
    assert from_dicom.shape == from_nifti.shape
    np.testing.assert_allclose(from_dicom.origin, from_nifti.origin, atol=1e-3)
    np.testing.assert_allclose(from_dicom.direction, from_nifti.direction, atol=1e-5)
    np.testing.assert_array_equal(from_dicom.numpy(), from_nifti.numpy())


def test_folder_with_two_dicom_series_is_refused_with_both_listed(tmp_path: Path) -> None:
    data, affine = _colin()
    _write_dicom_series(data[:, :, 60:80], affine, tmp_path / "dicom", series="1.2.3.4.1111")
    _write_dicom_series(data[:, :, 80:90], affine, tmp_path / "dicom", series="1.2.3.4.2222")
    assert_input_error(
        run_cli("preprocess", tmp_path / "dicom", "--out", tmp_path / "out"),
        "holds 2 DICOM series (1.2.3.4.1111: 20 files, 1.2.3.4.2222: 10 files)",
    )


def _huge_nifti(path: Path) -> Path:
    """A file of a few dozen bytes whose header claims 1500x1500x1500 float32 voxels (13.5 GB)."""
    header = nib.Nifti1Header()
    header.set_data_shape((1500, 1500, 1500))
    header.set_data_dtype(np.float32)
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4))
    return path


def test_headers_that_claim_more_than_the_file_or_a_scan_holds_are_refused_before_reading(tmp_path: Path) -> None:
    huge = _huge_nifti(tmp_path / "huge.nii.gz")
    assert huge.stat().st_size < 200
    # In a fresh process: the refusal costs no more memory than importing the libraries (its own
    # peak, VmHWM: ru_maxrss would carry the forking test process's peak across exec).
    script = (
        "import sys\n"
        "from BrainImageNetADLib.core.errors import InputError\n"
        "from BrainImageNetADLib.preprocessing.t1io import read_t1\n"
        "try:\n    read_t1(sys.argv[1])\nexcept InputError as error:\n    print(error)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(huge)], capture_output=True, text=True, timeout=HANG_GUARD_S)
    message, peak_kb = result.stdout.strip().splitlines()
    assert "claims 1500x1500x1500 voxels (3,375 million)" in message
    assert int(peak_kb) < 1_500_000, f"{int(peak_kb) / 1e6:.1f} GB used to refuse it"
    assert_input_error(run_cli("preprocess", huge, "--out", tmp_path / "out"), "claims 1500x1500x1500 voxels")
    assert_input_error(run_cli("predict", "--gmd", huge, "--gmv", huge, "--out", tmp_path / "maps"), "GMD: huge.nii.gz: the header claims")
    # An uncompressed file whose header claims more bytes than it has.
    short = tmp_path / "short.nii"
    header = nib.Nifti1Header()
    header.set_data_shape((256, 256, 256))
    header.set_data_dtype(np.int16)
    short.write_bytes(header.binaryblock + b"\0" * 4 + b"\0" * 1000)
    with pytest.raises(InputError, match=r"claims 33,554,432 bytes but the file holds 1,352; it is truncated"):
        read_t1(short)
    # An NRRD header (read by SimpleITK) claiming a huge image.
    nrrd = tmp_path / "huge.nrrd"
    nrrd.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 2000 2000 2000\nspacings: 1 1 1\nendian: little\nencoding: raw\n\n")
    with pytest.raises(InputError, match="claims 2000x2000x2000 voxels"):
        read_t1(nrrd)


def test_an_image_built_to_exhaust_memory_costs_a_capped_child_not_the_reader(tmp_path: Path) -> None:
    """A legal header (under the voxel limit) over 640 MiB of zeros that compress to 3 MB:
    read in a child whose memory is capped, it fails there with one line; with room enough it
    reads. The caller's own memory is untouched either way."""
    from BrainImageNetADLib.core.imageheader import read_in_child

    header = nib.Nifti1Header()
    header.set_data_shape((640, 512, 512))  # 168 M voxels (under the 268 M limit): 640 MiB as float32
    header.set_data_dtype(np.float32)
    path = tmp_path / "zeros.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as file:
        file.write(header.binaryblock + b"\0" * 4)
        zeros = bytes(2**24)
        for _ in range(640 * 512 * 512 * 4 // len(zeros)):
            file.write(zeros)
    assert path.stat().st_size < 5_000_000  # under the web page's default upload limit many times over
    with pytest.raises(InputError, match=r"zeros.nii.gz: reading it needs more than 0.5 GiB; not a brain scan"):
        read_in_child(path, memory_limit_bytes=2**29)
    read_in_child(path)  # the default cap leaves room for a real image this size
    with pytest.raises(InputError, match="claims 1500x1500x1500 voxels"):
        read_in_child(_huge_nifti(tmp_path / "huge.nii.gz"))


def _retagged_mprage(folder: Path, **tags: str) -> Path:
    """The real MPRAGE series with some DICOM elements replaced (pydicom keywords)."""
    import pydicom

    folder.mkdir()
    for source in sorted((REALDATA / "dicom_siemens_mprage").glob("*.dcm")):
        dataset = pydicom.dcmread(source)
        for keyword, value in tags.items():
            setattr(dataset, keyword, value)
        dataset.save_as(folder / source.name)
    return folder


@needs_realdata
def test_the_real_mprage_series_metadata_says_t1() -> None:
    image = read_t1(REALDATA / "dicom_siemens_mprage")
    assert image.info["sequence"]["series_description"] == "t1_MPRAGEcr_noGRAPPA"
    assert image.info["sequence"]["inversion_time_ms"] == 850.0
    assert image.failures == []


@needs_realdata
@pytest.mark.parametrize(
    ("tags", "kind"),
    [
        (
            {"SeriesDescription": "t2_tirm_tra_dark-fluid", "InversionTime": "2500", "EchoTime": "85"},
            "a FLAIR (series description 't2_tirm_tra_dark-fluid'; echo time 85 ms",
        ),
        ({"SeriesDescription": "AX FLAIR"}, "a FLAIR (series description 'AX FLAIR')"),
        ({"SeriesDescription": "ax_t2_tse", "EchoTime": "95"}, "a T2-weighted scan (series description 'ax_t2_tse'; echo time 95 ms"),
        ({"ContrastBolusAgent": "Gadovist"}, "a contrast-enhanced scan (contrast agent 'Gadovist'"),
    ],
)
def test_a_series_whose_metadata_names_another_contrast_fails_with_the_evidence(tmp_path: Path, tags: dict, kind: str) -> None:
    image = read_t1(_retagged_mprage(tmp_path / "series", **tags))
    assert len(image.failures) == 1, image.failures
    assert image.failures[0].startswith(f"the scan's metadata says it is not a T1: it looks like {kind}"), image.failures


def test_bids_names_and_sidecars_are_read_for_the_contrast(tmp_path: Path) -> None:
    data, affine = _colin()
    cases = {
        "sub-01_FLAIR": ({}, "a FLAIR (BIDS suffix _FLAIR)"),
        "sub-01_ce-gadolinium_T1w": ({}, "a contrast-enhanced scan (contrast agent 'gadolinium'"),
        "sub-01_acq-tse_T1w": ({"EchoTime": 0.1}, "a T2-weighted scan or a FLAIR (echo time 100 ms"),
        "sub-01_acq-mprage_T1w": ({"EchoTime": 0.003, "InversionTime": 0.9, "SeriesDescription": "MPRAGE"}, None),
        "sub-01_T1w": ({}, None),
    }
    for name, (sidecar, kind) in cases.items():
        path = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), str(path))
        if sidecar:
            (tmp_path / f"{name}.json").write_text(json.dumps(sidecar))
        image = read_t1(path)
        assert image.info["sequence"]["source"] == "bids"
        if kind is None:
            assert image.failures == [], name
        else:
            assert len(image.failures) == 1 and image.failures[0].startswith(
                f"the scan's metadata says it is not a T1: it looks like {kind}"
            ), (
                name,
                image.failures,
            )
    assert "sequence" not in read_t1(COLIN27_T1).info  # no BIDS name, no metadata
