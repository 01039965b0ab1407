"""What a scan's own metadata says about its contrast: DICOM tags of a series, or a BIDS file name
and its JSON sidecar. A second source beside the image's tissue contrast (``qc``): either one
saying "not a T1" fails the scan.

Physics behind the rules: T1 weighting uses short echo times (gradient echo 2-5 ms, spin echo
under 20 ms); T2 weighting and FLAIR use 80 ms or more. T1-weighted inversion recovery (MPRAGE,
the first inversion of MP2RAGE) inverts 300-1200 ms before readout at 1.5-7 T, where grey and
white matter are far apart in recovery; a FLAIR inverts 1800-2800 ms before, where CSF's
magnetisation passes through zero.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: BIDS suffixes of anatomical images that are not T1-weighted.
NON_T1_SUFFIXES = {
    "FLAIR": "a FLAIR",
    "T2w": "a T2-weighted scan",
    "inplaneT2": "a T2-weighted scan",
    "PDw": "a proton-density-weighted scan",
    "PD": "a proton-density-weighted scan",
    "T2starw": "a T2*-weighted scan",
    "T2star": "a T2*-weighted scan",
    "dwi": "a diffusion-weighted scan",
    "bold": "a functional (BOLD) series",
    "angio": "an angiogram",
    "T1map": "a T1 map (relaxation times, not a T1-weighted scan)",
}
#: Words of a series description that name a T1-weighted sequence (they win over the rest:
#: "T1 FLAIR" is T1-weighted).
T1_WORDS = {"t1", "t1w", "mprage", "mp2rage", "spgr", "fspgr", "bravo", "tfe", "t1tfe", "tfl", "mpr", "uni"}
#: Words that name another contrast, and what it is.
OTHER_WORDS = {
    "flair": "a FLAIR",
    "t2": "a T2-weighted scan",
    "t2w": "a T2-weighted scan",
    "tse": "a T2-weighted scan",
    "pd": "a proton-density-weighted scan",
    "pdw": "a proton-density-weighted scan",
    "dwi": "a diffusion-weighted scan",
    "dti": "a diffusion-weighted scan",
    "swi": "a susceptibility-weighted scan",
    "tof": "an angiogram",
    "bold": "a functional (BOLD) series",
}
#: Words that name a contrast-enhanced acquisition.
CONTRAST_AGENT_WORDS = {"gd", "gad", "gado", "gadolinium", "postcontrast", "contrast", "post"}
#: Echo time (ms) from which a scan is T2-weighted, whatever else it says.
T2_ECHO_MS = 60.0
#: Inversion time (ms) from which an inversion-recovery scan nulls CSF (a FLAIR).
FLAIR_INVERSION_MS = 1500.0

_DICOM_TAGS = {
    "modality": "0008|0060",
    "series_description": "0008|103e",
    "scanning_sequence": "0018|0020",
    "contrast_agent": "0018|0010",
    "repetition_time_ms": "0018|0080",
    "echo_time_ms": "0018|0081",
    "inversion_time_ms": "0018|0082",
}


def _number(value: Any) -> float | None:
    try:
        return float(str(value).split("\\")[0])
    except (TypeError, ValueError):
        return None


def _dicom_file(path: Path) -> Path | None:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in (".dcm", ".ima", ""))
        return files[0] if files else None
    return path if path.suffix.lower() in (".dcm", ".ima") else None


def dicom_tags(path: str | Path, tags: dict[str, str]) -> dict[str, str] | None:
    """The non-empty values of ``tags`` (name -> DICOM tag "gggg|eeee") in the header of a DICOM
    file, or of the first file (by name) of a DICOM series folder; None where ``path`` holds no
    DICOM file or its header cannot be read."""
    dicom = _dicom_file(Path(path))
    if dicom is None:
        return None
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(dicom))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return {
        name: reader.GetMetaData(tag).strip()
        for name, tag in tags.items()
        if reader.HasMetaDataKey(tag) and reader.GetMetaData(tag).strip()
    }


def read_sequence_info(path: str | Path) -> dict[str, Any]:
    """The acquisition metadata of the scan at ``path`` (a DICOM series folder or file, or a NIfTI
    file with a BIDS name and sidecar): ``source`` ("dicom", "bids" or None), and where present
    ``modality``, ``series_description``, ``scanning_sequence``, ``contrast_agent``, times in ms
    (``repetition_time_ms``, ``echo_time_ms``, ``inversion_time_ms``), ``bids_suffix`` and
    ``bids_ce`` (the contrast-agent entity). Unreadable metadata gives ``{"source": None}``."""
    path = Path(path)
    if _dicom_file(path) is not None:
        values = dicom_tags(path, _DICOM_TAGS)
        if values is None:
            return {"source": None}
        return {"source": "dicom", **{key: _number(v) if key.endswith("_ms") else v for key, v in values.items()}}
    name = path.name.split(".nii")[0] if ".nii" in path.name else path.stem
    entities = name.split("_")
    if len(entities) < 2 or not any("-" in e for e in entities[:-1]):
        return {"source": None}
    info = {"source": "bids", "bids_suffix": entities[-1]}
    ce = [e.split("-", 1)[1] for e in entities[:-1] if e.startswith("ce-")]
    if ce:
        info["bids_ce"] = ce[0]
    sidecar = path.with_name(name + ".json")
    if sidecar.is_file():
        try:
            fields = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            fields = {}
        if isinstance(fields, dict):
            for key, field in (
                ("series_description", "SeriesDescription"),
                ("scanning_sequence", "ScanningSequence"),
                ("modality", "Modality"),
                ("contrast_agent", "ContrastBolusIngredient"),
            ):
                if fields.get(field):
                    info[key] = "\\".join(fields[field]) if isinstance(fields[field], list) else str(fields[field])
            for key, field in (
                ("repetition_time_ms", "RepetitionTime"),
                ("echo_time_ms", "EchoTime"),
                ("inversion_time_ms", "InversionTime"),
            ):
                seconds = _number(fields.get(field))
                if seconds is not None:
                    info[key] = 1000.0 * seconds  # BIDS stores seconds
    return info


def metadata_kind(info: dict[str, Any]) -> str | None:
    """What the metadata (``read_sequence_info``) says the scan is when that is not a plain T1,
    with the evidence ("a FLAIR (series description 't2_flair', ...)"); None when it says a T1 or
    nothing."""
    evidence: list[str] = []
    words = set(re.split(r"[^a-z0-9]+", str(info.get("series_description", "")).lower())) - {""}
    if str(info.get("modality", "")).upper() == "CT":
        return "a CT (modality CT in the metadata)"
    agent = info.get("contrast_agent") or info.get("bids_ce")
    if agent:
        return f"a contrast-enhanced scan (contrast agent {agent!r} in the metadata)"
    if words & CONTRAST_AGENT_WORDS:
        return f"a contrast-enhanced scan (series description {info['series_description']!r})"
    suffix = info.get("bids_suffix")
    if suffix in NON_T1_SUFFIXES:
        return f"{NON_T1_SUFFIXES[suffix]} (BIDS suffix _{suffix})"
    kinds: list[str] = []
    named = sorted(words & OTHER_WORDS.keys())
    if named and not words & T1_WORDS:
        kinds.append("a FLAIR" if "flair" in named else OTHER_WORDS[named[0]])
        evidence.append(f"series description {info['series_description']!r}")
    echo = info.get("echo_time_ms")
    if echo is not None and echo >= T2_ECHO_MS:
        kinds.append("a T2-weighted scan or a FLAIR")
        evidence.append(f"echo time {echo:g} ms, where T1 weighting uses under 20 ms")
    inversion = info.get("inversion_time_ms")
    if inversion is not None and inversion >= FLAIR_INVERSION_MS and not words & T1_WORDS:
        kinds.insert(0, "a FLAIR")  # the inversion time is the physics: it wins over a name
        evidence.append(f"inversion time {inversion:g} ms, which nulls CSF, where T1-weighted inversion recovery uses 300-1200 ms")
    kind = kinds[0] if kinds else None
    return f"{kind} ({'; '.join(evidence)})" if kind else None
