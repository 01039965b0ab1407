"""The demonstration ensemble, made end to end by the project's own commands: a synthetic
training cohort and an independent synthetic cohort, a sex classifier pretrained on the first,
the AD network transferred from it with leave-sites-out folds, its risk template, and an evaluation on the
second.

Every stage writes into its own folder under the demo folder and is skipped when already
complete, so an interrupted demo resumes. ``demo.json`` records each stage's wall time and the
headline figures.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from BrainImageNetADLib.core.atomic import write_json_atomic
from BrainImageNetADLib.core.errors import InputError
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback

from .synth import write_cohort
from .training import TrainConfig, train


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo: training and independent cohort sizes and sites, the preset, and
    epochs and learning rates of the two trainings (the AD network trains above a frozen
    pretrained stem, which is what makes the whole demo fit in minutes on a CPU)."""

    subjects: int = 300
    sites: int = 10
    datasets: int = 3
    independent_subjects: int = 100
    independent_sites: int = 4
    preset: str = "tiny"
    pretrain_epochs: int = 3
    pretrain_validation: int = 60
    transfer_epochs: int = 30
    transfer_lr: float = 0.01
    transfer_validation: int = 40
    seed: int = 0


TRAINING_DATA = (
    "Synthetic cohort from brainimagenet-train synth (MNI152 tissue maps with random anatomy, "
    "age, sex, site effects and AD-like atrophy in three planted subtypes: medial-temporal, parietal, frontal); "
    "no patient data"
)


def run_demo(
    out: str | Path,
    settings: DemoSettings = DemoSettings(),
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Make the demo ensemble in ``out``: ``train/`` and ``independent/`` cohorts, ``pretrain/``
    and ``transfer/`` run folders (the ensemble is ``transfer/bundle``), ``risk_template.json``
    (the template's card entry, or why none could be made), ``evaluation/``, and ``demo.json``
    with the settings, stage times (s; a stage done by an earlier run keeps its time) and figures. Returns ``demo.json``'s content."""
    out = Path(out)
    seconds: dict[str, float] = {}
    earlier = json.loads((out / "demo.json").read_text(encoding="utf-8"))["seconds"] if (out / "demo.json").exists() else {}

    def stage(name: str, done: Path, work: Callable[[], object]) -> None:
        started = time.perf_counter()
        if done.exists():
            log(f"demo: {name}: already done")
            seconds[name] = earlier.get(name, 0.0)  # the time it took when it was done
            return
        log(f"demo: {name}")
        work()
        seconds[name] = round(time.perf_counter() - started, 1)

    s = settings
    stage(
        "synthetic training cohort",
        out / "train" / "manifest.csv",
        lambda: write_cohort(out / "train", s.subjects, s.sites, s.datasets, s.seed),
    )
    stage(
        "synthetic independent cohort",
        out / "independent" / "manifest.csv",
        lambda: write_cohort(out / "independent", s.independent_subjects, s.independent_sites, min(2, s.independent_sites), s.seed + 1),
    )
    common = {"preset": s.preset, "seed": s.seed, "demo": True, "training_data": TRAINING_DATA}
    pretrain = TrainConfig(task="sex", folds=0, epochs=s.pretrain_epochs, validation=s.pretrain_validation, **common)
    stage(
        "pretraining (sex)",
        out / "pretrain" / "bundle",
        lambda: train(pretrain, out / "train" / "manifest.csv", out / "pretrain", progress, should_cancel, log),
    )
    transfer = TrainConfig(
        task="ad",
        epochs=s.transfer_epochs,
        lr=s.transfer_lr,
        validation=s.transfer_validation,
        freeze_stem=True,
        base=str(out / "pretrain"),
        card_name=f"demo-{s.preset}",
        **common,
    )
    stage(
        "transfer to AD (5 leave-sites-out folds)",
        out / "transfer" / "bundle",
        lambda: train(transfer, out / "train" / "manifest.csv", out / "transfer", progress, should_cancel, log),
    )
    from .evaluation import evaluate
    from .risk_template import make_risk_template

    def risk_template() -> None:
        try:
            outcome = make_risk_template(
                out / "transfer" / "bundle", out / "train" / "manifest.csv", progress=progress, should_cancel=should_cancel
            )
        except InputError as error:  # an ensemble that scores the mean AD and NC maps alike has no template
            log(f"demo: no risk template, so no risk maps from this bundle: {error}")
            outcome = {"error": str(error)}
        write_json_atomic(out / "risk_template.json", outcome)

    stage("risk template", out / "risk_template.json", risk_template)
    stage(
        "evaluation on the independent cohort",
        out / "evaluation" / "evaluation.json",
        lambda: evaluate([out / "transfer" / "bundle"], out / "independent" / "manifest.csv", out / "evaluation", permutations=2000),
    )
    metrics = json.loads((out / "transfer" / "metrics.json").read_text(encoding="utf-8"))
    evaluation = json.loads((out / "evaluation" / "evaluation.json").read_text(encoding="utf-8"))
    summary = {
        "settings": asdict(settings),
        "seconds": {**seconds, "total": round(sum(seconds.values()), 1)},
        "cross_validation": {"pooled": metrics["pooled"], "mci": metrics.get("analysis", {}).get("mci")},
        "independent": {"table": evaluation["table"], "mci": evaluation["analyses"][0].get("mci")},
        "bundle": str(out / "transfer" / "bundle"),
    }
    write_json_atomic(out / "demo.json", summary)
    return summary


def export_bundle(demo_dir: str | Path, destination: str | Path) -> Path:
    """Copy the demo ensemble (``transfer/bundle``) to ``destination``, replacing it whole."""
    source = Path(demo_dir) / "transfer" / "bundle"
    destination = Path(destination)
    staging = destination.with_name(f".{destination.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    if destination.exists():
        shutil.rmtree(destination)
    staging.replace(destination)
    return destination
