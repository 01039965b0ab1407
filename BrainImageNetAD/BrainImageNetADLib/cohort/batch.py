"""Batch preprocessing for researchers: inputs from files, folders, BIDS datasets or CSV lists;
parallel worker processes; resumable; shardable across the tasks of a cluster job array."""

from __future__ import annotations

import csv
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..core.atomic import write_bytes_atomic
from ..core.errors import BrainImageNetError, InputError, SubjectsFailed
from ..core.worker import WorkerCrashed, run_isolated
from ..preprocessing.preprocess import is_done, preprocess_t1

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class Job:
    """One T1 to preprocess: its subject/session identifier and path."""

    subject: str
    t1: Path


def _is_image(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_list(path: Path) -> bool:
    """Whether ``path`` is a CSV or TSV list of inputs."""
    return path.is_file() and path.suffix.lower() in (".csv", ".tsv")


def read_list(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV or TSV list (by its suffix; a byte-order mark is allowed), as dicts keyed
    by the header. A row with more or fewer fields than the header is refused with its line."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = []
            for row in reader:
                if None in row or None in row.values():
                    fields = len([v for k, v in row.items() if k is not None and v is not None]) + len(row.get(None) or [])
                    raise InputError(f"{path}: line {reader.line_num} has {fields} fields, the header {len(reader.fieldnames or [])}")
                rows.append(row)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: not a readable CSV/TSV list ({exc})") from None
    return rows


#: Subject (and session) identifiers, the names of the output folders: letters, digits, '-', '_'
#: and '.', starting with a letter or digit, at most 128 characters (BIDS labels fit).
IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_identifier(identifier: str, where: str) -> str:
    """Return ``identifier`` if it is a plain name (``IDENTIFIER``), else raise InputError naming
    ``where`` it comes from (a list's row, a file)."""
    if not IDENTIFIER.fullmatch(identifier) or ".." in identifier:
        raise InputError(
            f"{where}: identifier {identifier!r} is not a plain name (letters, digits, '-', '_' or '.', starting with a letter or digit)"
        )
    return identifier


def subject_folder(out_root: Path, identifier: str) -> Path:
    """The output folder of a subject, ``out_root/identifier``, checked to lie inside ``out_root``."""
    folder = Path(out_root) / check_identifier(identifier, "subject")
    if folder.resolve().parent != Path(out_root).resolve():
        raise InputError(f"subject {identifier!r}: its folder would lie outside {out_root}")
    return folder


def listed_path(list_file: Path, value: str) -> Path:
    """A path written in a list: absolute as given, relative to the list's folder otherwise."""
    return Path(value) if Path(value).is_absolute() else list_file.parent / value


def collect_jobs(inputs: list[Path]) -> list[Job]:
    """Expand inputs into jobs, sorted by subject identifier.

    Each input is a T1 file; a DICOM series folder; a BIDS dataset (``sub-*/[ses-*/]anat/*_T1w.*``,
    identifiers ``sub-X[_ses-Y]``); a folder of image files (identifier = file name stem); or a
    CSV file with a ``t1`` column and an optional ``subject`` column (relative paths are taken
    from the CSV's folder).
    """
    jobs: list[Job] = []
    for item in inputs:
        item = Path(item)
        if not item.exists():
            raise InputError(f"file not found: {item}")
        if is_list(item):
            rows = read_list(item)
            if not rows or "t1" not in rows[0]:
                raise InputError(f"{item}: expected a 't1' column (and optionally 'subject')")
            for index, row in enumerate(rows):
                t1 = listed_path(item, row["t1"])
                jobs.append(Job(check_identifier(row.get("subject") or _stem(t1) or f"row{index}", f"{item}: row {index + 1}"), t1))
        elif item.is_dir() and sorted(item.glob("sub-*")):
            for t1 in sorted(item.glob("sub-*/**/anat/*_T1w.*")):
                if _is_image(t1):
                    match = re.match(r"(sub-[^_]+)(_ses-[^_]+)?", t1.name)
                    jobs.append(Job("".join(g for g in match.groups() if g) if match else _stem(t1), t1))
        elif item.is_dir() and not any(_is_image(p) for p in item.iterdir()):
            jobs.append(Job(item.name, item))  # a DICOM series folder
        elif item.is_dir():
            jobs.extend(Job(_stem(p), p) for p in sorted(item.iterdir()) if _is_image(p))
        else:
            jobs.append(Job(_stem(item), item))
    for job in jobs:
        check_identifier(job.subject, str(job.t1))
    check_unique([j.subject for j in jobs])
    return sorted(jobs, key=lambda j: j.subject)


def check_unique(identifiers: list[str]) -> None:
    """Refuse inputs that share an identifier (their outputs would overwrite each other)."""
    duplicates = sorted({s for s in identifiers if identifiers.count(s) > 1})
    if duplicates:
        raise InputError(f"several inputs share the identifier {duplicates[0]!r}; give them distinct names")


def shard(jobs: list[Job], spec: str | None) -> list[Job]:
    """Keep the jobs of shard ``i/n`` (0-based i): every n-th job from the i-th, so that the tasks
    of a cluster job array (e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``) split
    the work without talking to each other."""
    if not spec:
        return jobs
    match = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not match or int(match[1]) >= int(match[2]):
        raise InputError(f"--shard must be i/n with 0 <= i < n, got {spec!r}")
    index, count = int(match[1]), int(match[2])
    return jobs[index::count]


#: Columns of ``summary.tsv``, one row per subject.
SUMMARY_COLUMNS = ("subject", "verdict", "gm_template_correlation", "TIV_ml", "seconds", "message")


def _row(subject: str, verdict: str, message: str, seconds: float = 0.0, report: dict | None = None) -> dict:
    """One summary row; the QC measures come from ``report`` when there is one."""
    return {
        "subject": subject,
        "verdict": verdict,
        "gm_template_correlation": report["measures"]["gm_template_correlation"] if report else "",
        "TIV_ml": report["volumes_ml"]["TIV_ml"] if report else "",
        "seconds": round(seconds, 1),
        "message": message,
    }


def _run_one(job: Job, out_dir: Path, preset: str) -> dict:
    start = time.perf_counter()
    try:
        report = preprocess_t1(job.t1, out_dir, preset)
        return _row(job.subject, report["verdict"], "; ".join(report["failures"] + report["warnings"]), time.perf_counter() - start, report)
    except BrainImageNetError as exc:
        return _row(job.subject, "error", str(exc), time.perf_counter() - start)


def run_batch(jobs: list[Job], out_root: Path, preset: str = "fast", processes: int = 1, overwrite: bool = False) -> list[dict]:
    """Preprocess ``jobs`` into ``out_root/<subject>/`` with ``processes`` worker processes at a
    time (each subject in its own, ``worker.run_isolated``).

    Finished subjects (``qc.json`` present) are skipped unless ``overwrite``; a progress line per
    subject goes to stderr; ``out_root/summary.tsv`` (written atomically) lists every verdict.
    A crash of one worker is reported for its subject and does not stop the others; when any
    subject failed (an error or a failed QC), SubjectsFailed is raised after the summary is written.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    rows: list[dict] = []
    todo = []
    for job in jobs:
        if is_done(subject_folder(out_root, job.subject)) and not overwrite:
            rows.append(_row(job.subject, "done before", "skipped (qc.json exists)"))
        else:
            todo.append(job)
    with ThreadPoolExecutor(max_workers=max(1, processes)) as executor:
        futures = {executor.submit(run_isolated, _run_one, job, subject_folder(out_root, job.subject), preset): job for job in todo}
        for count, future in enumerate(as_completed(futures), start=1):
            job = futures[future]
            try:
                row = future.result()
            except WorkerCrashed:
                row = _row(job.subject, "error", "worker process crashed (native library failure)")
            rows.append(row)
            print(
                f"[{count}/{len(todo)}] {row['subject']}: {row['verdict']} ({row['seconds']} s) {row['message']}",
                file=sys.stderr,
                flush=True,
            )
    rows.sort(key=lambda r: r["subject"])
    lines = ["\t".join(SUMMARY_COLUMNS)] + ["\t".join(str(r[c]) for c in SUMMARY_COLUMNS) for r in rows]
    write_bytes_atomic(out_root / "summary.tsv", ("\n".join(lines) + "\n").encode())
    failed = [r["subject"] for r in rows if r["verdict"] in ("error", "fail")]
    if failed:
        raise SubjectsFailed(
            f"{len(failed)} of {len(rows)} subjects failed ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}); see {out_root / 'summary.tsv'}"
        )
    return rows
