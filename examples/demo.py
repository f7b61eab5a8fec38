"""`make demo`: label-free checkpoint selection with RankMe on real images, offline, on a CPU (about a minute).

A small VICReg model (``vicreg.py``) learns from scikit-learn's digits (``digits.py``: offline, real
augmentations) without labels. Two :class:`rankme.RankMeCallback` instances log RankMe of the backbone
(``rankme``) and of the projector (``rankme_projector``) at every validation epoch, and ``rankme`` drives the
library's ``WarmupModelCheckpoint`` and ``WarmupEarlyStopping``, which ignore the learning-rate warm-up epochs:
a barely trained network has a *high* RankMe (random features are high-rank), so epoch 0 would otherwise win
the arg-max. A plain ``ModelCheckpoint`` runs beside them, and the demo prints what it would have kept.

After training, labels are used for one thing only: a linear probe on the frozen backbone features of every
epoch's checkpoint, to show how good RankMe's label-free pick was. The demo prints a table, writes
``summary.json`` and a plot, and leaves an offline W&B run to ``wandb sync``.

    make demo                                   # WANDB_MODE defaults to offline
    .venv/bin/python examples/demo.py --help    # epochs, seed, output folder, --wandb-online, ...

The same model and data run under LightningCLI with ``python examples/cli.py fit --config configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from digits import DigitsDataModule, linear_probe, spearman
from lightning.pytorch import seed_everything
from pipeline import (
    batches_per_epoch,
    finite_or_none,
    fit_ssl,
    log_results_to_wandb,
    make_wandb_logger,
    plot_rankme_vs_probe,
    probe_checkpoints,
    quiet_lightning_logs,
    resolve_wandb_mode,
)
from vicreg import VICReg

from rankme import rankme


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description=(
            "Train VICReg on scikit-learn's digits without labels, pick a checkpoint by RankMe, and check the pick"
            " with a linear probe (the only use of labels). Logs to W&B offline unless asked otherwise."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--max-epochs", type=int, default=50, help="training epochs at most (default: 50)")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=10,
        help="learning-rate warm-up epochs; they are logged and probed but are not checkpoint candidates (default: 10)",
    )
    parser.add_argument("--patience", type=int, default=10, help="EarlyStopping patience on rankme (default: 10)")
    parser.add_argument(
        "--limit-train-batches",
        type=batches_per_epoch,
        default=1.0,
        help="fraction (<= 1) or number (> 1) of batches per epoch",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: 1, the fastest for these tiny convolutions)"
    )
    parser.add_argument(
        "--wandb-online", action="store_true", help="log an online W&B run (needs `wandb login`; default: offline)"
    )
    args = parser.parse_args(argv)
    if args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    if not 0 <= args.warmup_epochs < args.max_epochs:
        parser.error("--warmup-epochs must be >= 0 and below --max-epochs")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo end to end; return the summary that is also written to ``<out>/summary.json``."""
    args = _parse_args(argv)
    threads, level = torch.get_num_threads(), logging.getLogger("lightning.pytorch").level
    torch.set_num_threads(max(args.threads, 1))
    try:
        with warnings.catch_warnings():
            quiet_lightning_logs()
            return _run(args)
    finally:  # leave the process as it was for callers (tests, notebooks)
        torch.set_num_threads(threads)
        logging.getLogger("lightning.pytorch").setLevel(level)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _print_table(rows: list[dict[str, Any]], initial: dict[str, float], selected: int, label_best: int) -> None:
    header = f"{'epoch':>6} {'rankme':>8} {'rankme_projector':>17} {'probe acc':>10}"
    print(header)
    print("-" * (len(header) + 30))
    print(
        f"{'init':>6} {initial['rankme']:8.2f} {initial['rankme_projector']:17.2f}"
        f" {100 * initial['probe_accuracy']:9.2f}%   random weights, before training"
    )
    for row in rows:
        marks = [] if row["candidate"] else ["warm-up (not a candidate)"]
        if row["epoch"] == selected:
            marks.append("<- RankMe's pick (no labels)")
        if row["epoch"] == label_best:
            marks.append("<- best by labels")
        print(
            f"{row['epoch']:>6} {row['rankme']:8.2f} {row['rankme_projector']:17.2f}"
            f" {100 * row['probe_accuracy']:9.2f}%   {'  '.join(marks)}"
        )


def _run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    mode = resolve_wandb_mode(args.wandb_online)

    seed_everything(args.seed, workers=True, verbose=False)
    datamodule = DigitsDataModule(batch_size=args.batch_size)
    datamodule.setup("fit")
    model = VICReg(lr=args.lr, warmup_epochs=args.warmup_epochs)
    splits = datamodule.probe_splits()
    val_images = datamodule.val_images()
    initial = {
        "rankme": float(rankme(model.features(val_images))),
        "rankme_projector": float(rankme(model.projections(val_images))),
        "probe_accuracy": linear_probe(model, splits),
    }

    config = {
        "seed": args.seed,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
    }
    logger = make_wandb_logger(out, f"vicreg-digits-seed{args.seed}", mode, config)
    wandb_run_dir = str(Path(logger.experiment.dir).parent) if logger is not None else None
    print(
        f"Training VICReg on {len(splits.train_images)} digit images (no labels) for up to {args.max_epochs}"
        f" epochs; RankMe on {len(val_images)} validation images; checkpoint candidates from epoch"
        f" {args.warmup_epochs} on (after the learning-rate warm-up); W&B mode: {mode}."
    )
    result = fit_ssl(
        model,
        datamodule,
        out,
        max_epochs=args.max_epochs,
        select_from_epoch=args.warmup_epochs,
        limit_train_batches=args.limit_train_batches,
        patience=args.patience,
        logger=logger,
    )

    checkpoints = result.all_checkpoints
    print(f"\nLinear probe (the only use of labels) on {len(checkpoints)} checkpoints ...", flush=True)
    accuracy = probe_checkpoints(model, splits, checkpoints)
    rows: list[dict[str, Any]] = [
        {
            "epoch": epoch,
            "candidate": epoch in result.checkpoints,
            "rankme": result.rankme[epoch],
            "rankme_projector": result.rankme_projector[epoch],
            "probe_accuracy": accuracy[epoch],
            "checkpoint": str(Path(path).resolve()),
        }
        for epoch, path in checkpoints.items()
    ]
    eligible = [row for row in rows if row["candidate"]]
    selected = next(row for row in eligible if row["epoch"] == result.selected_epoch)  # the library's pick
    label_best = max(eligible, key=lambda row: row["probe_accuracy"])
    plain = next(row for row in rows if row["epoch"] == result.plain_epoch)  # a plain ModelCheckpoint's pick
    accuracies = [row["probe_accuracy"] for row in eligible]
    gap = 100 * (label_best["probe_accuracy"] - selected["probe_accuracy"])
    last = eligible[-1]

    print()
    _print_table(rows, initial, selected["epoch"], label_best["epoch"])
    keys = ("epoch", "rankme", "rankme_projector", "probe_accuracy", "checkpoint")
    summary: dict[str, Any] = {
        "epochs": [{key: row[key] for key in keys} for row in eligible],
        "selected_epoch": selected["epoch"],
        "selected_checkpoint": selected["checkpoint"],
        "label_best_epoch": label_best["epoch"],
        "wandb_run_dir": wandb_run_dir,
        "selected_probe_accuracy": selected["probe_accuracy"],
        "label_best_probe_accuracy": label_best["probe_accuracy"],
        "gap_points": gap,
        "last_epoch": last["epoch"],
        "last_probe_accuracy": last["probe_accuracy"],
        "mean_probe_accuracy": sum(accuracies) / len(accuracies),
        "spearman_rankme_probe": finite_or_none(spearman([row["rankme"] for row in eligible], accuracies)),
        "warmup_epochs": [{key: row[key] for key in keys} for row in rows if not row["candidate"]],
        "plain_checkpoint_pick": {"epoch": plain["epoch"], "probe_accuracy": plain["probe_accuracy"]},
        "initial": initial,
        "plot": str(out / "rankme_vs_probe.png"),
        "wandb_mode": mode,
        "seed": args.seed,
        "max_epochs": args.max_epochs,
        "train_seconds": result.seconds,
    }
    print(
        f"\nRankMe picked epoch {selected['epoch']} without labels: probe accuracy"
        f" {100 * selected['probe_accuracy']:.2f}%. The best candidate by labels is epoch {label_best['epoch']}:"
        f" {100 * label_best['probe_accuracy']:.2f}%. Gap: {gap:.2f} points"
        f" ({len(splits.test_labels)} test images: one image is {100 / len(splits.test_labels):.2f} points)."
    )
    print(
        f"For reference: the last epoch ({last['epoch']}) scores {100 * last['probe_accuracy']:.2f}%, the mean over"
        f" the candidates is {100 * summary['mean_probe_accuracy']:.2f}%, random weights score"
        f" {100 * initial['probe_accuracy']:.2f}%; Spearman(RankMe, probe accuracy) over the candidates ="
        f" {_fmt(summary['spearman_rankme_probe'])}."
    )
    if not plain["candidate"]:
        print(
            f"A plain ModelCheckpoint on rankme (no warm-up) kept epoch {plain['epoch']}"
            f" ({100 * plain['probe_accuracy']:.2f}%): a barely trained network has a high effective rank, which"
            " is why the warm-up epochs are not candidates (high rank is necessary, not sufficient)."
        )

    png = out / "rankme_vs_probe.png"
    title = "VICReg on scikit-learn digits: label-free RankMe vs a label-based linear probe"
    plot_rankme_vs_probe(rows, selected["epoch"], label_best["epoch"], result.select_from_epoch, png, title)
    summary["total_seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    if logger is not None:
        log_results_to_wandb(logger, rows, summary, png)
        logger.experiment.finish()
    print(f"\nWrote {out / 'summary.json'} and {png} ({summary['total_seconds']:.0f} s in all).")
    if wandb_run_dir is not None:
        if mode == "offline":
            print(f"W&B run saved offline in {wandb_run_dir}\n  upload it with:  wandb sync {wandb_run_dir}")
        else:
            print(f"W&B run: {wandb_run_dir} (online)")
        print(
            "  then look at: the `rankme` and `rankme_projector` curves (the label-free signal that drove\n"
            "  checkpointing and early stopping), `rankme_normalized` (RankMe / min(N, D)), the `rankme_spectrum`\n"
            "  histograms and `rankme_spectrum_chart` (normalised singular values per epoch: a fast drop-off\n"
            "  means few directions carry the features), `train_loss` with its invariance/variance/covariance\n"
            "  terms, and the `probe/*` panels (probe accuracy per epoch, RankMe vs accuracy, this plot)."
        )
    return summary


if __name__ == "__main__":
    main()
