"""Manifests: one row per scan (subject, session, dataset, site, scanner, sex, age, diagnosis,
MMSE, paths to GMD/GMV), read from CSV/TSV (or a BIDS ``participants.tsv`` joined with derivatives)
and validated with messages that say what is missing and where."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from BrainImageNetADLib.core.errors import InputError

#: Columns every manifest needs.
REQUIRED_COLUMNS = ("subject", "dataset", "site", "diagnosis")
#: Columns used when present.
OPTIONAL_COLUMNS = ("session", "scanner", "field_strength", "sex", "age", "mmse", "gmd", "gmv", "t1")
DIAGNOSES = ("NC", "AD", "sMCI", "pMCI", "MCI")
SEXES = ("F", "M")


@dataclass(frozen=True)
class Scan:
    """One row of a manifest. ``subject`` identifies a person across sessions and datasets;
    paths are absolute; ``age`` in years; ``mmse`` 0-30; ``field_strength`` in tesla."""

    subject: str
    dataset: str
    site: str
    diagnosis: str
    session: str = ""
    scanner: str = ""
    field_strength: float | None = None
    sex: str = ""
    age: float | None = None
    mmse: float | None = None
    gmd: Path | None = None
    gmv: Path | None = None
    t1: Path | None = None


def _number(value: str, column: str, line: int, path: Path, low: float, high: float) -> float | None:
    if value.strip() in ("", "n/a", "NA", "nan"):
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{path}:{line}: column {column} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise InputError(f"{path}:{line}: column {column} = {number} is outside {low}-{high}")
    return number


def read_manifest(path: str | Path) -> list[Scan]:
    """Read and validate a manifest (CSV, or TSV when the name ends in ``.tsv``).

    Checks: required columns present; every required cell filled; diagnosis in ``DIAGNOSES``;
    sex in ``SEXES``; age 0-120, MMSE 0-30, field strength 0-12 T; image paths (relative to the
    manifest's folder) exist; no (subject, session) listed twice. Raises InputError naming the
    file, line and column.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise InputError(
                f"{path}: missing columns {missing}; a manifest needs {list(REQUIRED_COLUMNS)} and may have {list(OPTIONAL_COLUMNS)}"
            )
        rows = list(reader)
    scans: list[Scan] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in enumerate(rows, start=2):
        for column in REQUIRED_COLUMNS:
            if not (row.get(column) or "").strip():
                raise InputError(f"{path}:{line}: empty {column}")
        if row["diagnosis"] not in DIAGNOSES:
            raise InputError(f"{path}:{line}: diagnosis {row['diagnosis']!r} is not one of {list(DIAGNOSES)}")
        sex = (row.get("sex") or "").strip()
        if sex and sex not in SEXES:
            raise InputError(f"{path}:{line}: sex {sex!r} is not one of {list(SEXES)}")
        key = (row["subject"], (row.get("session") or "").strip())
        if key in seen:
            raise InputError(f"{path}:{line}: subject {key[0]} session {key[1] or '(none)'} already listed on line {seen[key]}")
        seen[key] = line
        files: dict[str, Path | None] = {}
        for column in ("gmd", "gmv", "t1"):
            value = (row.get(column) or "").strip()
            if not value:
                files[column] = None
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            if not file.exists():
                raise InputError(f"{path}:{line}: {column} file not found: {file}")
            files[column] = file
        scans.append(
            Scan(
                subject=row["subject"].strip(),
                dataset=row["dataset"].strip(),
                site=row["site"].strip(),
                diagnosis=row["diagnosis"].strip(),
                session=key[1],
                scanner=(row.get("scanner") or "").strip(),
                field_strength=_number(row.get("field_strength") or "", "field_strength", line, path, 0, 12),
                sex=sex,
                age=_number(row.get("age") or "", "age", line, path, 0, 120),
                mmse=_number(row.get("mmse") or "", "mmse", line, path, 0, 30),
                **files,
            )
        )
    if not scans:
        raise InputError(f"{path}: no rows")
    return scans
