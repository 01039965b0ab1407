"""Cross-validated training of the base networks (sex, age) and of the AD transfer network.

The procedure of Lu et al.: SGD with Nesterov momentum 0.9, learning rate lr0 / (1 + decay x
iteration), binary cross-entropy (age: mean squared error of the standardised age), batch 24,
10 epochs, a validation set taken from the training part, the epoch with the lowest validation
loss kept; five folds leaving datasets (base networks) or sites (AD) out. Each fold's best model
goes into the exported bundle; test predictions of all folds are pooled.

A run lives in one folder (see ``RunFolder``) and resumes after a kill: finished folds are
kept, an interrupted fold restarts from its last end-of-epoch checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from BrainImageNetADLib.core.errors import BundleError, InputError
from BrainImageNetADLib.core.progress import CancelCallback, ProgressCallback, check_cancel
from BrainImageNetADLib.model.bundle import CARD_NAME, load_fold_models
from BrainImageNetADLib.model.ensemble import resolve_device
from BrainImageNetADLib.model.networks import build_network, get_preset, transfer_stem

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .data import TASKS, MapStore, StemFeatures, check_channels, target
from .export import finish_run
from .manifest import Scan, read_manifest
from .runfolder import RunFolder
from .splits import Fold, check_no_leakage, leave_groups_out, validation_split

#: The paper's optimiser settings and split per task; every value can be overridden.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sex": {"lr": 0.01, "decay": 0.003, "split_key": "dataset", "always_train": 3},
    "age": {"lr": 0.01, "decay": 0.003, "split_key": "dataset", "always_train": 3},
    "ad": {"lr": 0.0003, "decay": 0.002, "split_key": "site", "always_train": 0},
}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved as ``config.json``).

    ``folds``: cross-validation folds (0: one model on all scans, validation set only).
    ``validation``: scans held out of each fold's training part (at most a fifth of it).
    ``freeze_stem``: keep the (pretrained) stem fixed and train the layers above it only; its
    outputs are then computed once per scan, which makes training several times cheaper.
    ``base``: a pretraining run folder or bundle whose stem starts the AD network.
    ``precise_bn``: after each epoch, the batch-norm statistics are recomputed with the epoch's
    final weights over this many training scans (0: keep the running averages). Running
    averages lag behind weights that are still moving; a network whose decision rests on small
    differences between large activations then scores well in training mode but is shifted in
    evaluation mode (seen here on the synthetic cohort: pooled leave-sites-out AUC 0.54 without,
    0.90 with). Costs one forward pass over those scans per epoch.
    ``precision``: ``auto`` (bf16 autocast on CUDA, float32 elsewhere), ``fp32`` or ``bf16``.
    ``card_name``, ``demo``, ``training_data``: what the exported bundle's card says.
    """

    task: str
    preset: str = "paper"
    channels: list[str] = field(default_factory=lambda: ["GMD", "GMV"])
    epochs: int = 10
    batch_size: int = 24
    lr: float | None = None
    decay: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    folds: int = 5
    split_key: str | None = None
    always_train: int | None = None
    validation: int = 600
    allocations: int = 10_000
    seed: int = 0
    freeze_stem: bool = False
    precise_bn: int = 1000
    intact: bool = False
    base: str | None = None
    device: str = "auto"
    precision: str = "auto"
    card_name: str | None = None
    demo: bool = False
    training_data: str = ""

    #: Fields that may change when a run resumes.
    RESUMABLE = ("device", "precision", "card_name", "demo", "training_data")

    def resolved(self) -> TrainConfig:
        """A copy with the task's defaults filled in, validated (InputError on bad values)."""
        if self.task not in TASKS:
            raise InputError(f"unknown task {self.task!r}; choose one of {list(TASKS)}")
        get_preset(self.preset)
        defaults = {k: v for k, v in TASK_DEFAULTS[self.task].items() if getattr(self, k) is None}
        config = dataclasses.replace(self, **defaults)
        if config.split_key not in ("dataset", "site"):
            raise InputError(f"split key must be 'dataset' or 'site', got {config.split_key!r}")
        for name in ("epochs", "batch_size"):
            if getattr(config, name) < 1:
                raise InputError(f"{name} must be at least 1")
        if config.precise_bn < 0:
            raise InputError("precise_bn must be 0 (off) or a number of scans")
        if config.folds == 1 or config.folds < 0:
            raise InputError("folds must be 0 (one model, no test folds) or at least 2")
        if not config.lr or config.lr <= 0 or config.decay is None or config.decay < 0:
            raise InputError("learning rate must be > 0 and decay >= 0")
        if config.precision not in ("auto", "fp32", "bf16"):
            raise InputError(f"precision must be auto, fp32 or bf16, got {config.precision!r}")
        if (config.intact or config.base) and config.task != "ad":
            raise InputError("--base and --intact apply to the AD network (task 'ad') only")
        return config

    @property
    def architecture(self) -> str:
        if self.task == "ad":
            return "ad_intact" if self.intact else "ad_transfer"
        return self.task

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _device(config: TrainConfig, processes: distributed.Processes) -> torch.device:
    """The device this process trains on. On CUDA, cuDNN's autotuner is turned on: the maps'
    shape never changes, so the fastest convolution algorithms are picked once (``bench train``
    on an H200, paper networks, bf16: see docs/performance.md)."""
    if config.device == "auto":
        device = torch.device(f"cuda:{processes.local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = resolve_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device


def load_base(path: str | Path, config: TrainConfig) -> tuple[nn.Module, str]:
    """The base network to transfer from and its task (``sex`` or ``age``): from a pretraining
    run folder (its ``bundle/``) or a bundle with the same preset and input channels, the fold
    model the card names as ``base_fold`` (lowest validation loss)."""
    path = Path(path)
    bundle_dir = path if (path / CARD_NAME).is_file() else path / "bundle"
    card, models = load_fold_models(bundle_dir)
    if card.architecture not in ("sex", "age"):
        raise BundleError(f"{bundle_dir}: a base model must be a sex or age network, not {card.architecture}")
    if card.preset != config.preset or card.channels != list(config.channels):
        raise BundleError(
            f"{bundle_dir}: base model is {card.preset} with inputs {card.channels}; this run is {config.preset} with {list(config.channels)}"
        )
    return models[int(card.data.get("base_fold", 0))], card.architecture


def make_folds(scans: Sequence[Scan], config: TrainConfig) -> list[Fold]:
    """The run's folds over ``scans`` (see ``splits.leave_groups_out``); with ``folds == 0`` a
    single fold that trains on everything but the validation set and tests nothing."""
    if config.folds == 0:
        rng = np.random.default_rng(config.seed)
        train, validation = validation_split(scans, list(range(len(scans))), config.validation, rng)
        check_no_leakage(scans, train, validation, "training and validation")
        return [Fold(0, tuple(train), tuple(validation), (), ())]
    return leave_groups_out(scans, config.split_key, config.folds, config.always_train, config.validation, config.allocations, config.seed)


class _FromStem(nn.Module):
    """The layers above a frozen stem, as a module (so DistributedDataParallel sees them)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, stem_output: torch.Tensor) -> torch.Tensor:
        return self.network.forward_from_stem(stem_output)


class _FoldTrainer:
    """Trains one fold: the loop, validation, checkpoints, TensorBoard, test predictions."""

    def __init__(self, run: Run, fold: Fold) -> None:
        self.run, self.fold, self.config = run, fold, run.config
        self.dir = run.folder.fold_dir(fold.index)
        self.train_idx = [i for i in fold.train if run.targets[i] is not None]
        self.val_idx = [i for i in fold.validation if run.targets[i] is not None]
        if not self.train_idx:
            raise InputError(f"fold {fold.index} has no training scans with a {self.config.task} target")
        train_targets = np.array([run.targets[i] for i in self.train_idx], dtype=np.float64)
        if self.config.task == "age":
            self.scale = (float(train_targets.mean()), float(train_targets.std() or 1.0))
        else:
            self.scale = (0.0, 1.0)
            if len(set(train_targets.tolist())) < 2:
                raise InputError(f"fold {fold.index}: the training scans hold one class only")
        torch.manual_seed(self.config.seed * 1000 + fold.index)
        self.model = build_network(self.config.architecture, self.config.preset, len(self.config.channels))
        if run.base is not None:
            if self.config.intact:
                state = {k: v for k, v in run.base.state_dict().items() if not k.startswith("head.")}
                self.model.load_state_dict(state, strict=False)
            else:
                transfer_stem(run.base, self.model)
        self.model.to(run.device, memory_format=torch.channels_last_3d)
        if self.config.freeze_stem:
            self.model.stem.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=self.config.lr, momentum=self.config.momentum, nesterov=self.config.nesterov)
        trainable: nn.Module = _FromStem(self.model) if self.config.freeze_stem else self.model
        if run.processes.world > 1:
            ids = [run.device.index] if run.device.type == "cuda" else None
            trainable = nn.parallel.DistributedDataParallel(trainable, device_ids=ids)
        self.trainable = trainable

    # -- inputs, losses ---------------------------------------------------------------------
    def _inputs(self, indices: Sequence[int]) -> torch.Tensor:
        if self.config.freeze_stem:
            x = self.run.stem_features(self.model, self.fold.index).get(indices)
        else:
            x = self.run.store.get(indices)
        return x.to(self.run.device).contiguous(memory_format=torch.channels_last_3d)

    def _targets(self, indices: Sequence[int]) -> torch.Tensor:
        mean, sd = self.scale
        values = [(self.run.targets[i] - mean) / sd for i in indices]
        return torch.tensor(values, dtype=torch.float32, device=self.run.device)

    def _loss(self, output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.task == "age":
            return F.mse_loss(output.float(), y)
        return F.binary_cross_entropy_with_logits(output.float(), y)

    def _autocast(self) -> torch.autocast:
        device = self.run.device
        bf16 = self.config.precision == "bf16" or (self.config.precision == "auto" and device.type == "cuda")
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def outputs(self, indices: Sequence[int], batch_size: int = 8) -> tuple[np.ndarray, float | None]:
        """Model outputs for scans (probabilities, or ages in years) and the mean loss over the
        scans that have a target. Eval mode, no gradients."""
        self.model.eval()
        raw = []
        with torch.inference_mode(), self._autocast():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                x = self._inputs(chunk)
                out = self.model.forward_from_stem(x) if self.config.freeze_stem else self.model(x)
                raw.append(out.float().cpu())
        logits = torch.cat(raw) if raw else torch.zeros(0)
        have = [k for k, i in enumerate(indices) if self.run.targets[i] is not None]
        loss = None
        if have:
            y = self._targets([indices[k] for k in have]).cpu()
            loss = float(self._loss(logits[have], y))
        mean, sd = self.scale
        values = logits.numpy() * sd + mean if self.config.task == "age" else torch.sigmoid(logits).numpy()
        return values.astype(np.float64), loss

    # -- the loop -----------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        config, run = self.config, self.run
        checkpoint = self.dir / "checkpoint.safetensors"
        state: dict[str, Any] = {"epoch": 0, "iteration": 0, "best_val_loss": None, "best_epoch": None, "history": []}
        if checkpoint.is_file():
            state = load_checkpoint(checkpoint, self.model, self.optimizer)
            run.log(f"fold {self.fold.index + 1}: resuming after epoch {state['epoch']}")
        writer = run.tensorboard(self.fold.index)
        batches_per_epoch = math.ceil(len(self.train_idx) / config.batch_size)
        for epoch in range(state["epoch"], config.epochs):
            self.model.train()
            if config.freeze_stem:
                self.model.stem.eval()
            order = np.random.default_rng([config.seed, self.fold.index, epoch]).permutation(self.train_idx)
            losses = []
            for b in range(batches_per_epoch):
                run.check_cancel()
                batch = order[b * config.batch_size : (b + 1) * config.batch_size].tolist()
                mine = batch[run.processes.rank :: run.processes.world] or batch[:1]
                lr = config.lr / (1.0 + config.decay * state["iteration"])
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                with self._autocast():
                    output = self.trainable(self._inputs(mine))
                loss = self._loss(output, self._targets(mine))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                state["iteration"] += 1
                losses.append(loss.item())
                if writer is not None:
                    writer.add_scalar("train/loss", losses[-1], state["iteration"])
                    writer.add_scalar("train/lr", lr, state["iteration"])
                run.report(self.fold.index, (epoch + (b + 1) / batches_per_epoch) / config.epochs, f"epoch {epoch + 1}/{config.epochs}")
            train_loss = run.processes.all_mean(float(np.mean(losses)))
            if config.precise_bn:
                self._recompute_batch_norm(epoch)
            _, val_loss = self.outputs(self.val_idx)
            record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr}
            state["history"].append(record)
            improved = val_loss is None or state["best_val_loss"] is None or val_loss < state["best_val_loss"]
            if improved:
                state["best_val_loss"], state["best_epoch"] = val_loss, epoch + 1
            state["epoch"] = epoch + 1
            if run.processes.main:
                if improved:
                    best = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
                    save_file(best, str(self.dir / ".best.safetensors.tmp"), metadata={"format": "pt"})
                    (self.dir / ".best.safetensors.tmp").replace(self.dir / "best.safetensors")
                save_checkpoint(checkpoint, self.model, self.optimizer, state)
                if writer is not None and val_loss is not None:
                    writer.add_scalar("validation/loss", val_loss, epoch + 1)
                    writer.flush()
            run.processes.barrier()
            val_text = "n/a" if val_loss is None else f"{val_loss:.4f}"
            run.log(
                f"fold {self.fold.index + 1} epoch {epoch + 1}/{config.epochs}: train loss {train_loss:.4f}, validation loss {val_text}"
            )
        self.model.load_state_dict(load_file(str(self.dir / "best.safetensors")))
        if writer is not None:
            writer.close()
        return self._result(state)

    def _recompute_batch_norm(self, epoch: int) -> None:
        """Precise batch norm: replace the running statistics of the trained batch-norm layers by
        their exact averages over up to ``precise_bn`` training scans (same scans on every
        process, so every replica ends with the same statistics)."""
        config = self.config
        layers = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if config.freeze_stem:
            frozen = set(self.model.stem.modules())
            layers = [m for m in layers if m not in frozen]
        rng = np.random.default_rng([config.seed, self.fold.index, epoch, 1])
        scans = sorted(rng.choice(self.train_idx, min(config.precise_bn, len(self.train_idx)), replace=False).tolist())
        momenta = [m.momentum for m in layers]
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
        self.model.train()
        if config.freeze_stem:
            self.model.stem.eval()
        with torch.no_grad(), self._autocast():
            for start in range(0, len(scans), config.batch_size):
                x = self._inputs(scans[start : start + config.batch_size])
                self.model.forward_from_stem(x) if config.freeze_stem else self.model(x)
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum

    def _result(self, state: dict[str, Any]) -> dict[str, Any]:
        test = list(self.fold.test)
        values, _ = self.outputs(test)
        val_values, _ = self.outputs(self.val_idx)
        return {
            "fold": self.fold.index,
            "test_groups": list(self.fold.test_groups),
            "best_epoch": state["best_epoch"],
            "best_val_loss": state["best_val_loss"],
            "history": state["history"],
            "target_scale": list(self.scale),
            "test": [[int(i), float(v)] for i, v in zip(test, values, strict=True)],
            "validation": [[int(i), float(v)] for i, v in zip(self.val_idx, val_values, strict=True)],
        }


class Run:
    """One training run: configuration, scans, folds, shared inputs and reporting."""

    def __init__(
        self,
        config: TrainConfig,
        manifest: str | Path,
        out: str | Path,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCallback | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.config = config.resolved()
        self.processes = distributed.setup()
        self.device = _device(self.config, self.processes)
        all_scans = read_manifest(manifest)
        # AD runs predict MCI scans in the test folds but never train on them.
        keep = [s for s in all_scans if target(s, self.config.task) is not None or (self.config.task == "ad" and "MCI" in s.diagnosis)]
        if not keep:
            raise InputError(f"{manifest}: no scan has a target for task {self.config.task}")
        self.scans = keep
        check_channels(self.scans, self.config.channels)
        self.targets = [target(s, self.config.task) for s in self.scans]
        self.folds = make_folds(self.scans, self.config)
        self.folder = RunFolder(out)
        if self.processes.main:
            self.folder.start(self.config.to_dict(), self.config.RESUMABLE, manifest, self.scans, self.folds)
        self.processes.barrier()
        self.store = MapStore(self.scans, self.config.channels)
        self.base, self.base_task = None, "none"
        if self.config.base:
            base, self.base_task = load_base(self.config.base, self.config)
            self.base = base.to(self.device)
        if self.config.task == "ad" and self.base is None:
            log("warning: no --base given: the AD network starts from scratch (random stem), without transfer learning")
        if self.config.freeze_stem and self.base is None:
            log("warning: --freeze-stem without --base keeps a random stem fixed")
        self._progress, self._should_cancel, self.log = progress, should_cancel, log
        self._features: StemFeatures | None = None
        self._features_key = 0

    def check_cancel(self) -> None:
        check_cancel(self._should_cancel, "training (run the same command again to resume)")

    def report(self, fold: int, fraction: float, message: str) -> None:
        if self._progress is not None and self.processes.main:
            self._progress(f"fold {fold + 1}/{len(self.folds)} {message}", (fold + fraction) / len(self.folds))

    def tensorboard(self, fold: int):  # noqa: ANN201 - SummaryWriter or None
        if not self.processes.main:
            return None
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.folder.path / "tensorboard" / f"fold{fold}"))

    def stem_features(self, model: nn.Module, fold: int) -> StemFeatures:
        """Stem outputs per scan. With a base model every fold shares the same frozen stem, so
        they are computed once per run; without one each fold has its own random stem."""
        key = -1 if self.base is not None else fold
        if self._features is None or self._features_key != key:
            self._features, self._features_key = StemFeatures(self.store, model.stem, self.device), key
        return self._features

    def train(self) -> dict[str, Any]:
        """Train every fold not finished yet, then pool and export. Returns ``metrics.json``'s content."""
        results = []
        for fold in self.folds:
            result = self.folder.fold_result(fold.index)
            if result is None:
                self.log(
                    f"fold {fold.index + 1}/{len(self.folds)}: {len(fold.train)} training, {len(fold.validation)} validation, {len(fold.test)} test scans"
                )
                result = _FoldTrainer(self, fold).train()
                if self.processes.main:
                    self.folder.save_fold_result(fold.index, result)
                self.processes.barrier()
            results.append(result)
        return finish_run(self, results) if self.processes.main else {}


def train(
    config: TrainConfig,
    manifest: str | Path,
    out: str | Path,
    progress: ProgressCallback | None = None,
    should_cancel: CancelCallback | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the cross-validated training described by ``config`` on the scans of
    ``manifest`` into the run folder ``out``; returns the pooled metrics. ``progress(stage,
    fraction)`` is called after every batch; ``should_cancel()`` is polled before every batch and
    stops the run with Cancelled (the run resumes from the last finished epoch)."""
    return Run(config, manifest, out, progress, should_cancel, log).train()
