"""Scoring a cohort: many T1 images or map pairs through one ensemble, resumable and shardable.

Each subject gets ``OUT/<subject>/`` with ``preprocessing/`` (for a T1) and ``result.json`` (as
for one case); ``OUT/predictions.tsv`` lists every subject and is rewritten atomically after each
one, so an interrupted run leaves a valid table and, started again, skips finished subjects.
Preprocessing runs in ``jobs`` child processes (one process per subject: a crash in a native
library costs that subject only) while the ensemble scores finished subjects in this process, so
that the network work overlaps the preprocessing. Bad inputs are reported in the table and do not
stop the others.
"""

from __future__ import annotations

import json
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..core.atomic import remove_leftovers, write_bytes_atomic, write_json_atomic
from ..core.errors import BrainImageNetError, InputError, SubjectsFailed
from ..core.progress import ProgressCallback
from ..model.ensemble import Ensemble
from ..pipeline import MAP_FILES, CaseOptions, CaseResult, score_case
from .batch import check_identifier, check_unique, collect_jobs, is_list, listed_path, read_list, subject_folder

#: Columns of ``predictions.tsv``.
PREDICTION_COLUMNS = (
    "subject",
    "status",
    "probability",
    "logit",
    "fold_probabilities",
    "label",
    "threshold",
    "qc_verdict",
    "model",
    "demo",
    "seconds",
    "message",
)
_MAP_SUFFIXES = (".nii", ".nii.gz")
_SPM_PAIR = re.compile(r"^mwc1_?(.+?)\.nii(?:\.gz)?$")


@dataclass(frozen=True)
class Case:
    """One subject of a cohort: a T1 to preprocess, or a pair of GMD/GMV maps."""

    subject: str
    t1: Path | None = None
    gmd: Path | None = None
    gmv: Path | None = None


def _map_pairs(folder: Path) -> list[Case]:
    """SPM's ``wc1<ID>.nii`` / ``mwc1<ID>.nii`` pairs in a folder (the authors' convention; also
    ``wc1_<ID>``), one case per ID."""
    cases = []
    for mwc1 in sorted(folder.iterdir()):
        match = _SPM_PAIR.match(mwc1.name)
        if match and mwc1.is_file():
            wc1 = mwc1.with_name(mwc1.name[1:])
            if not wc1.is_file():
                raise InputError(f"{mwc1}: no matching {wc1.name} (GMD) beside it")
            cases.append(Case(check_identifier(match.group(1), str(mwc1)), gmd=wc1, gmv=mwc1))
    return cases


def collect_cases(inputs: list[Path]) -> list[Case]:
    """Expand inputs into cases, sorted by subject: T1 files, DICOM series folders, folders of T1
    files, BIDS datasets (see ``batch.collect_jobs``), folders of SPM ``wc1``/``mwc1`` pairs, and
    CSV/TSV lists with a ``t1`` column or ``gmd`` and ``gmv`` columns (optional ``subject``;
    relative paths are taken from the list's folder)."""
    cases: list[Case] = []
    t1_inputs: list[Path] = []
    for item in map(Path, inputs):
        if is_list(item):
            rows = read_list(item)
            if rows and {"gmd", "gmv"} <= set(rows[0]):
                for index, row in enumerate(rows):
                    gmd, gmv = (listed_path(item, row[k]) for k in ("gmd", "gmv"))
                    subject = check_identifier(row.get("subject") or f"row{index + 1}", f"{item}: row {index + 1}")
                    cases.append(Case(subject, gmd=gmd, gmv=gmv))
                continue
        elif item.is_dir() and not list(item.glob("sub-*")) and any(_SPM_PAIR.match(p.name) for p in item.iterdir()):
            cases.extend(_map_pairs(item))
            continue
        t1_inputs.append(item)
    if t1_inputs:
        cases.extend(Case(job.subject, t1=job.t1) for job in collect_jobs(t1_inputs))
    check_unique([c.subject for c in cases])
    return sorted(cases, key=lambda c: c.subject)


def _preprocess(case: Case, out_dir: Path, preset: str, overwrite: bool) -> dict:
    """Preprocess a case's T1 in its own child process (or read the finished report)."""
    from ..core.worker import run_isolated
    from ..preprocessing.preprocess import is_done, preprocess_t1

    if is_done(out_dir) and not overwrite:
        return json.loads((out_dir / "qc.json").read_text(encoding="utf-8"))
    return run_isolated(preprocess_t1, case.t1, out_dir, preset)


def _row(case: Case, status: str, message: str = "", result: CaseResult | None = None, seconds: float = 0.0) -> dict[str, str]:
    row = dict.fromkeys(PREDICTION_COLUMNS, "")
    row.update(subject=case.subject, status=status, message=message.replace("\t", " ").replace("\n", " "), seconds=f"{seconds:.1f}")
    if result is not None:
        row.update(
            probability=f"{result.probability:.6f}",
            logit=f"{result.logit:.6f}",
            fold_probabilities=",".join(f"{p:.6f}" for p in result.fold_probabilities),
            label=result.label,
            threshold=f"{result.threshold:g}",
            model=result.model_name,
            demo=str(bool(result.demo)).lower(),
        )
        if result.qc:
            row["qc_verdict"] = str(result.qc["verdict"])
    return row


def _read_table(path: Path) -> dict[str, dict[str, str]]:
    """The rows of an existing ``predictions.tsv`` by subject (none when absent or unreadable)."""
    try:
        return {row["subject"]: row for row in read_list(path) if row.get("subject") and set(row) == set(PREDICTION_COLUMNS)}
    except (InputError, OSError):
        return {}


def _write_table(out_root: Path, rows: dict[str, dict[str, str]]) -> Path:
    """Merge ``rows`` into ``out_root/predictions.tsv`` under a lock on the folder, so that runs
    writing into the same folder at once (the shards of a job array) keep each other's rows."""
    from filelock import FileLock

    table = out_root / "predictions.tsv"
    with FileLock(str(out_root / ".predictions.tsv.lock")):
        for stray in out_root.glob(".predictions.tsv.*.tmp"):  # a writer killed while it held the lock
            stray.unlink(missing_ok=True)
        merged = {**_read_table(table), **rows}
        lines = ["\t".join(PREDICTION_COLUMNS)] + ["\t".join(merged[s][c] for c in PREDICTION_COLUMNS) for s in sorted(merged)]
        return write_bytes_atomic(table, ("\n".join(lines) + "\n").encode())


#: What a cohort folder was made with (``OUT/cohort.json``): a run with other settings refuses it.
SETTINGS_NAME = "cohort.json"


def _check_settings(out_root: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Record the settings of the folder's runs, or refuse a run whose settings differ from those
    the folder was made with (unless ``overwrite``, which records the new ones)."""
    from filelock import FileLock

    path = out_root / SETTINGS_NAME
    with FileLock(str(out_root / ".predictions.tsv.lock")):
        try:
            before = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, json.JSONDecodeError):
            before = None
        if before is not None and before != settings and not overwrite:
            changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v)
            raise InputError(
                f"{out_root} was made with other settings ({changed}); use another --out, or --overwrite to redo every subject"
            )
        if before != settings:
            write_json_atomic(path, settings)


def _finished_result(path: Path) -> CaseResult | None:
    """A subject's ``result.json`` when it is complete, None when absent; a partial or corrupt one
    (an earlier run killed while writing) is reported and removed, so the subject is redone."""
    if not path.is_file():
        return None
    try:
        return CaseResult.read(path)
    except InputError:
        pass
    print(f"{path}: incomplete or corrupt; the subject is done again", file=sys.stderr, flush=True)
    path.unlink(missing_ok=True)
    return None


def predict_cohort(
    cases: list[Case],
    out_root: str | Path,
    ensemble: Ensemble,
    bundle: Path,
    options: CaseOptions,
    jobs: int = 1,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Score ``cases`` with ``ensemble`` (of the bundle folder ``bundle``) into ``out_root``;
    return the path of ``predictions.tsv``. ``options``: preprocessing preset, threshold (None:
    the card's "balanced" preset), force (predict even when preprocessing QC fails; the verdict
    is in the table); no heat maps are made.

    ``jobs``: T1s preprocessed at the same time (each in its own child process); ``overwrite``: redo
    finished subjects and accept settings other than the folder's. One line per subject goes to
    stderr. Subject identifiers must be plain names (``batch.IDENTIFIER``); a folder made with
    another model, threshold or preset is refused (``cohort.json``); runs into one folder at once
    share the table; a corrupt ``result.json`` is redone. Raises SubjectsFailed, after the table
    is written, when any subject failed.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    threshold = ensemble.card.threshold(options.threshold)
    options = replace(options, threshold=threshold, method="none")
    _check_settings(
        out_root,
        {"model": ensemble.card.name, "model_bundle": str(Path(bundle).resolve()), "threshold": threshold, "preset": options.preset},
        overwrite,
    )
    rows: dict[str, dict[str, str]] = {}
    todo: list[Case] = []
    for case in cases:
        folder = subject_folder(out_root, case.subject)
        remove_leftovers(folder)  # what a run killed while writing left in this subject's folder
        result = None if overwrite else _finished_result(folder / "result.json")
        if result is not None:
            rows[case.subject] = _row(case, "done before", "", result)
        else:
            todo.append(case)
    _write_table(out_root, rows)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as threads:
        pending: list[tuple[Case, Future | None]] = [
            (
                case,
                threads.submit(_preprocess, case, subject_folder(out_root, case.subject) / "preprocessing", options.preset, overwrite)
                if case.t1
                else None,
            )
            for case in todo
        ]
        # Map pairs first (nothing to wait for), then T1s in the order their preprocessing ends.
        pending.sort(key=lambda item: item[1] is not None)
        done = 0
        while pending:
            index = next((i for i, (_, f) in enumerate(pending) if f is None or f.done()), None)
            if index is None:
                time.sleep(0.2)
                continue
            case, future = pending.pop(index)
            row = _score(case, future, subject_folder(out_root, case.subject), ensemble, bundle, options)
            rows[case.subject] = row
            _write_table(out_root, rows)
            done += 1
            probability = f" p={row['probability']}" if row["probability"] else ""
            print(
                f"[{done}/{len(todo)}] {case.subject}: {row['status']}{probability} {row['message']}".rstrip(), file=sys.stderr, flush=True
            )
            if progress is not None:
                progress("cohort", done / len(todo))
    table = out_root / "predictions.tsv"
    failed = [s for s, row in rows.items() if row["status"] in ("error", "qc fail")]
    if failed:
        raise SubjectsFailed(
            f"{len(failed)} of {len(rows)} subjects failed ({', '.join(failed[:5])}{', ...' if len(failed) > 5 else ''}); see {table}"
        )
    return table


def _score(case: Case, future: Future | None, out_dir: Path, ensemble: Ensemble, bundle: Path, options: CaseOptions) -> dict[str, str]:
    """Predict one case whose preprocessing (if any) has ended; its table row, with the seconds
    its preprocessing and its prediction took."""
    start = time.perf_counter()
    qc_report = None
    elapsed = 0.0
    try:
        if future is not None:
            qc_report = future.result()
            elapsed = float(qc_report.get("seconds", {}).get("total", 0.0))
            if qc_report["verdict"] == "fail" and not options.force:
                return _row(case, "qc fail", "; ".join(qc_report["failures"]), seconds=elapsed) | {"qc_verdict": "fail"}
            paths = {channel: out_dir / "preprocessing" / name for channel, name in MAP_FILES.items()}
        else:
            paths = {"GMD": case.gmd, "GMV": case.gmv}
        result = score_case(paths, out_dir, ensemble, bundle, options, qc_report, outlines=False)
    except (BrainImageNetError, OSError) as exc:
        return _row(case, "error", str(exc), seconds=elapsed + time.perf_counter() - start)
    warnings = "; ".join(qc_report["warnings"]) if qc_report else ""
    return _row(case, "done", warnings, result, elapsed + time.perf_counter() - start)
