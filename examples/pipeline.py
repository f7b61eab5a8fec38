"""The pipeline every example runs: train without labels under RankMe callbacks, then probe the checkpoints.

:func:`fit_ssl` trains a :class:`digits.DigitsSSL` model with two :class:`rankme.RankMeCallback` instances
(``rankme`` on the backbone, ``rankme_projector`` on the projector), the library's
:class:`rankme.WarmupModelCheckpoint` (every epoch from ``select_from_epoch`` on; its ``best_model_path`` is
RankMe's pick) and :class:`rankme.WarmupEarlyStopping`, plus a plain ``ModelCheckpoint`` on ``rankme`` for
comparison (what Lightning alone would keep). :func:`probe_checkpoints` then scores saved epochs with the linear
probe: the only use of labels. The W&B, plot and report helpers are shared by the example scripts.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digits import DigitsDataModule, DigitsSSL, ProbeSplits, linear_probe
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from typing_extensions import override

from rankme import RankMeCallback, WarmupEarlyStopping, WarmupModelCheckpoint

__all__ = [
    "RunResult",
    "batches_per_epoch",
    "epoch_of",
    "finite_or_none",
    "fit_ssl",
    "log_results_to_wandb",
    "make_wandb_logger",
    "plot_rankme_vs_probe",
    "probe_checkpoints",
    "quiet_lightning_logs",
    "resolve_wandb_mode",
    "selection_callbacks",
]

_LOG = logging.getLogger(__name__)


def selection_callbacks(checkpoint_dir: Path | str, start_epoch: int = 10, patience: int = 10) -> dict[str, Callback]:
    """RankMe on backbone and projector; the library's warm-up checkpointing and early stopping on ``rankme``.

    ``WarmupModelCheckpoint(monitor="rankme", mode="max", save_top_k=-1)`` keeps the checkpoint of every epoch
    from ``start_epoch`` on (so that the probe can score each of them) and its ``best_model_path`` is RankMe's
    pick; ``WarmupEarlyStopping(monitor="rankme", mode="max")`` stops when ``rankme`` has not improved for
    ``patience`` epochs. Both ignore the epochs before ``start_epoch``: a barely trained network has a high RankMe.

    Example:
        >>> sorted(selection_callbacks("checkpoints"))
        ['checkpoint', 'early_stopping', 'rankme', 'rankme_projector']
    """
    return {
        "rankme": RankMeCallback(module="backbone", name="rankme"),
        "rankme_projector": RankMeCallback(module="projector", name="rankme_projector"),
        "checkpoint": WarmupModelCheckpoint(
            start_epoch=start_epoch,
            dirpath=str(checkpoint_dir),
            filename="epoch={epoch:03d}-rankme={rankme:.3f}",
            auto_insert_metric_name=False,
            monitor="rankme",
            mode="max",
            save_top_k=-1,
            save_weights_only=True,
        ),
        "early_stopping": WarmupEarlyStopping(start_epoch=start_epoch, monitor="rankme", mode="max", patience=patience),
    }


class _SaveWarmupWeights(Callback):
    """Save the weights of each epoch before ``stop_epoch`` (the warm-up), so the probe can score them too."""

    def __init__(self, dirpath: Path, stop_epoch: int) -> None:
        self.dirpath = dirpath
        self.stop_epoch = stop_epoch
        self.paths: dict[int, str] = {}

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.stop_epoch:
            path = self.dirpath / f"epoch={epoch:03d}.ckpt"
            trainer.save_checkpoint(path, weights_only=True)
            self.paths[epoch] = str(path)


class _EpochPrinter(Callback):
    """One terse line per training epoch (the examples turn the progress bar off)."""

    def __init__(self, select_from_epoch: int = 0) -> None:
        self.select_from_epoch = select_from_epoch
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        keys = ("train_loss", "rankme", "rankme_projector")
        parts = [f"{key}={float(metrics[key]):7.3f}" for key in keys if key in metrics]
        phase = "warm-up " if trainer.current_epoch < self.select_from_epoch else "        "
        elapsed = time.perf_counter() - self._start
        print(f"  epoch {trainer.current_epoch:3d} {phase} " + "  ".join(parts) + f"  ({elapsed:.0f} s)", flush=True)


@dataclass
class RunResult:
    """What one :func:`fit_ssl` run leaves behind for selection and the probe."""

    rankme: dict[int, float]
    """``rankme`` (backbone) of every trained epoch, warm-up included."""
    rankme_projector: dict[int, float]
    """``rankme_projector`` of every trained epoch, warm-up included."""
    checkpoints: dict[int, str]
    """The candidates: checkpoints of the epochs from ``select_from_epoch`` on."""
    warmup_checkpoints: dict[int, str]
    """Weights of the warm-up epochs: logged and probed, but not candidates."""
    selected_checkpoint: str
    """``WarmupModelCheckpoint.best_model_path``: the arg-max of ``rankme`` over the candidates."""
    plain_checkpoint: str
    """``best_model_path`` of a plain ``ModelCheckpoint`` on ``rankme``: the arg-max over every epoch."""
    select_from_epoch: int
    """The first candidate epoch."""
    seconds: float
    """Wall time of the training."""

    @property
    def selected_epoch(self) -> int:
        """The epoch that the warm-up checkpoint kept as its best."""
        return epoch_of(self.selected_checkpoint)

    @property
    def plain_epoch(self) -> int:
        """The epoch that the plain ``ModelCheckpoint`` kept as its best."""
        return epoch_of(self.plain_checkpoint)

    @property
    def all_checkpoints(self) -> dict[int, str]:
        """The weights of every trained epoch, warm-up included, by epoch."""
        return dict(sorted({**self.warmup_checkpoints, **self.checkpoints}.items()))


def epoch_of(path: str) -> int:
    """The epoch in a checkpoint name written by these examples.

    Example:
        >>> epoch_of("runs/demo/checkpoints/epoch=012-rankme=7.250.ckpt")
        12
    """
    match = re.search(r"epoch=(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"Cannot read the epoch from checkpoint name {path!r}.")
    return int(match.group(1))


def fit_ssl(
    model: DigitsSSL,
    datamodule: DigitsDataModule,
    out_dir: Path | str,
    max_epochs: int,
    select_from_epoch: int | None = None,
    limit_train_batches: int | float = 1.0,
    patience: int = 10,
    logger: Logger | None = None,
    verbose: bool = True,
) -> RunResult:
    """Train ``model`` without labels under :func:`selection_callbacks` and return what a selection needs.

    Candidates are the epochs from ``select_from_epoch`` on (default: the model's ``warmup_epochs``, at most
    ``max_epochs - 1``); their checkpoints go to ``out_dir/checkpoints``, the warm-up epochs' weights to
    ``out_dir/warmup_checkpoints`` and the plain ``ModelCheckpoint``'s best to ``out_dir/plain_checkpoint``.
    Checkpoints a previous run left in those folders are deleted first, so that runs never mix.
    """
    if max_epochs < 1:
        raise ValueError(f"Expected argument `max_epochs` to be >= 1, but got {max_epochs!r}.")
    out_dir = Path(out_dir)
    folders = {name: out_dir / name for name in ("checkpoints", "warmup_checkpoints", "plain_checkpoint")}
    for folder in folders.values():
        for stale in folder.glob("*.ckpt"):
            stale.unlink()
    if select_from_epoch is None:
        select_from_epoch = int(model.hparams["warmup_epochs"])
    select_from_epoch = min(max(select_from_epoch, 0), max_epochs - 1)
    callbacks = selection_callbacks(folders["checkpoints"], start_epoch=select_from_epoch, patience=patience)
    plain = ModelCheckpoint(
        dirpath=str(folders["plain_checkpoint"]),
        filename="epoch={epoch:03d}",
        auto_insert_metric_name=False,
        monitor="rankme",
        mode="max",
        save_top_k=1,
        save_weights_only=True,
    )
    warmup_saver = _SaveWarmupWeights(folders["warmup_checkpoints"], stop_epoch=select_from_epoch)
    extra: list[Callback] = [plain, warmup_saver, *([_EpochPrinter(select_from_epoch)] if verbose else [])]
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        num_sanity_val_steps=0,
        callbacks=[*callbacks.values(), *extra],
        logger=logger if logger is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=False,  # deterministic CPU kernels are ~10x slower here; seeding keeps runs repeatable
        log_every_n_steps=1,
        default_root_dir=str(out_dir),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start

    checkpoint_cb = callbacks["checkpoint"]
    rankme_cb, projector_cb = callbacks["rankme"], callbacks["rankme_projector"]
    assert isinstance(checkpoint_cb, ModelCheckpoint)
    assert isinstance(rankme_cb, RankMeCallback)
    assert isinstance(projector_cb, RankMeCallback)
    return RunResult(
        rankme={int(h["epoch"]): float(h["value"]) for h in rankme_cb.history},
        rankme_projector={int(h["epoch"]): float(h["value"]) for h in projector_cb.history},
        checkpoints=dict(sorted((epoch_of(path), path) for path in checkpoint_cb.best_k_models)),
        warmup_checkpoints=dict(sorted(warmup_saver.paths.items())),
        selected_checkpoint=checkpoint_cb.best_model_path,
        plain_checkpoint=plain.best_model_path,
        select_from_epoch=select_from_epoch,
        seconds=seconds,
    )


def probe_checkpoints(model: DigitsSSL, splits: ProbeSplits, checkpoints: dict[int, str]) -> dict[int, float]:
    """The linear probe's accuracy (see :func:`digits.linear_probe`) of each checkpoint, by epoch."""
    return {epoch: linear_probe(model, splits, path) for epoch, path in sorted(checkpoints.items())}


def batches_per_epoch(text: str) -> float | int:
    """``--limit-train-batches``: a fraction (<= 1) of the batches, or a number of them (> 1), as Lightning takes it."""
    value = float(text)
    return int(value) if value > 1 else value


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined values (a Spearman correlation of constant data) are written as null.

    Example:
        >>> finite_or_none(0.5), finite_or_none(float("nan"))
        (0.5, None)
    """
    return value if math.isfinite(value) else None


def quiet_lightning_logs() -> None:
    """Drop Lightning's start-up chatter and two warnings that do not apply to the in-memory digits."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def resolve_wandb_mode(online: bool = False) -> str:
    """The W&B mode: ``online=True`` wins, then the user's ``WANDB_MODE``, else ``"offline"`` (no account needed).

    Raises:
        SystemExit: for an online run without W&B credentials (``wandb login`` first).
    """
    mode = "online" if online else os.environ.get("WANDB_MODE", "offline")
    if mode == "dryrun":
        mode = "offline"
    if mode in ("online", "run"):
        import wandb

        if not wandb.login(prompt=False, verify=False):
            raise SystemExit(
                "An online W&B run needs an account: run `wandb login` first, or drop --wandb-online /"
                " WANDB_MODE=online to log offline (no account needed) and `wandb sync` later."
            )
    return mode


def make_wandb_logger(
    out: Path | str, name: str, mode: str, config: dict[str, Any] | None = None, group: str | None = None
) -> WandbLogger | None:
    """A W&B logger in ``mode`` saving under ``out/wandb`` (project ``rankme-demo``); None when disabled.

    Its run folder is ``Path(logger.experiment.dir).parent``.
    """
    if mode == "disabled":
        return None
    # `mode=` goes to wandb.init; WandbLogger(offline=True) would set WANDB_MODE for the whole process instead.
    logger = WandbLogger(project="rankme-demo", name=name, save_dir=str(out), mode=mode, group=group)
    if config:
        logger.experiment.config.update(config, allow_val_change=True)
    return logger


def plot_rankme_vs_probe(
    rows: list[dict[str, Any]], selected: int, label_best: int, select_from: int, path: Path, title: str
) -> None:
    """RankMe of backbone and projector (top) and probe accuracy (bottom) per epoch, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6), dpi=120, height_ratios=(3, 2))
    series = (
        (top, "rankme", 1.0, "o-", "tab:blue", "RankMe, backbone (monitored)"),
        (top, "rankme_projector", 1.0, "s--", "tab:cyan", "RankMe, projector"),
        (bottom, "probe_accuracy", 100.0, "^-", "tab:red", "linear probe accuracy"),
    )
    for ax, key, scale, style, color, label in series:
        ax.plot(epochs, [scale * row[key] for row in rows], style, ms=3, color=color, label=label)
    for ax in (top, bottom):
        if select_from > 0:
            ax.axvspan(-0.5, select_from - 0.5, color="0.92", label="warm-up: not candidates")
        ax.axvline(selected, color="tab:blue", linestyle=":", label=f"RankMe's pick (epoch {selected})")
        ax.axvline(label_best, color="tab:red", linestyle="-.", alpha=0.6, label=f"best by labels (epoch {label_best})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    top.set_ylabel("RankMe (no labels)")
    bottom.set_ylabel("probe accuracy (%)\nheld-out digits")
    bottom.set_xlabel("epoch")
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def log_results_to_wandb(logger: WandbLogger, rows: list[dict[str, Any]], summary: dict[str, Any], png: Path) -> None:
    """Attach the per-epoch probe table, two charts, the plot and the selection summary to the logger's run."""
    import wandb

    run = logger.experiment
    columns = ["epoch", "candidate", "rankme", "rankme_projector", "probe_accuracy"]
    table = wandb.Table(columns=list[str | int](columns), data=[[row[key] for key in columns] for row in rows])
    payload: dict[str, Any] = {
        "probe/table": table,
        "probe/accuracy_vs_epoch": wandb.plot.line(table, "epoch", "probe_accuracy", title="probe accuracy"),
        "probe/rankme_vs_accuracy": wandb.plot.scatter(table, "rankme", "probe_accuracy", title="RankMe vs probe"),
    }
    try:
        payload["probe/plot"] = wandb.Image(str(png))
    except Exception as err:  # wandb.Image needs Pillow; the PNG is on disk anyway
        _LOG.warning("Could not attach the plot to the W&B run: %s", err)
    run.log(payload)
    for key in ("selected_epoch", "label_best_epoch", "gap_points", "selected_probe_accuracy", "spearman_rankme_probe"):
        run.summary[f"selection/{key}"] = summary[key]
