"""A small local hyperparameter sweep ranked by RankMe, the paper's main use: pick VICReg's loss weights without labels.

    make sweep                      # or: WANDB_MODE=offline .venv/bin/python examples/sweep.py
    python examples/sweep.py --help

Each configuration of VICReg's loss weights (invariance / variance / covariance) is trained briefly on scikit-learn's
digits without labels by the demo's pipeline (pipeline.fit_ssl: the same callbacks, rankme_projector too). Its score
is the RankMe of its RankMe-selected checkpoint (the arg-max after the warm-up), and configurations are ranked by that
score. After each configuration's training and selection, a linear probe on held-out digits scores its selected
checkpoint, to show how good the label-free choice of configuration was: the probe accuracy of RankMe's pick vs the
best, and the Spearman rank correlation between RankMe and accuracy over the configurations.
Each configuration is an offline W&B run under one group (`wandb sync` the folders printed at the end). Writes
<out>/summary.json. About 2-4 minutes on a 2-core CPU.

The same sweep on W&B's sweep server: configs/sweep.yaml (via examples/cli.py).
"""

from __future__ import annotations

import argparse
import json
import math
import time
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
    make_wandb_logger,
    quiet_lightning_logs,
    resolve_wandb_mode,
)
from vicreg import VICReg

# (name, VICReg loss weights): from the paper's default to the regimes that collapse dimensions or everything.
CONFIGS: dict[str, dict[str, float]] = {
    "default 25/25/1": {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0},
    "strong cov 25/25/5": {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 5.0},
    "no cov 25/25/0": {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 0.0},
    "weak var 25/5/1": {"sim_coeff": 25.0, "std_coeff": 5.0, "cov_coeff": 1.0},
    "weak var, no cov 25/2/0": {"sim_coeff": 25.0, "std_coeff": 2.0, "cov_coeff": 0.0},
    "invariance only 25/0/0": {"sim_coeff": 25.0, "std_coeff": 0.0, "cov_coeff": 0.0},
}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python examples/sweep.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output folder (default: runs/sweep)")
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs per configuration (default: 30)")
    parser.add_argument("--warmup-epochs", type=int, default=5, help="warm-up epochs, not candidates (default: 5)")
    parser.add_argument("--limit-train-batches", type=batches_per_epoch, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs", nargs="*", choices=list(CONFIGS), default=list(CONFIGS), help="a subset of the configurations"
    )
    parser.add_argument("--wandb-online", action="store_true", help="online W&B runs (needs `wandb login`)")
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.max_epochs:
        parser.error("--warmup-epochs must be >= 0 and below --max-epochs")
    return args


def _ranks(values: Sequence[float]) -> list[int]:
    """1 for the largest value."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0] * len(values)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)  # the fastest for these tiny convolutions
    quiet_lightning_logs()
    out: Path = args.out.resolve()
    mode = resolve_wandb_mode(args.wandb_online)
    group = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
    datamodule = DigitsDataModule(batch_size=64)
    splits = datamodule.probe_splits()

    # Each configuration: train without labels, select its checkpoint by RankMe, and only then score that
    # checkpoint with the probe (labels never reach training or selection). Its W&B run is closed before the next
    # one starts (a WandbLogger created while a run is open would log into that run).
    results: list[dict[str, Any]] = []
    for name in args.configs:
        weights = CONFIGS[name]
        slug = name.split(" ")[-1].replace("/", "-")
        run_dir = out / slug
        seed_everything(args.seed, workers=True, verbose=False)
        model = VICReg(
            warmup_epochs=args.warmup_epochs,
            sim_coeff=weights["sim_coeff"],
            std_coeff=weights["std_coeff"],
            cov_coeff=weights["cov_coeff"],
        )
        logger = make_wandb_logger(run_dir, f"sweep {name}", mode, config={"seed": args.seed}, group=group)
        wandb_dir = str(Path(logger.experiment.dir).parent) if logger is not None else None
        result = fit_ssl(
            model,
            datamodule,
            run_dir,
            max_epochs=args.max_epochs,
            select_from_epoch=args.warmup_epochs,
            limit_train_batches=args.limit_train_batches,
            logger=logger,
            verbose=False,
        )
        picked, last = result.selected_epoch, max(result.rankme)
        accuracy = linear_probe(model, splits, result.selected_checkpoint)
        if logger is not None:
            logger.experiment.summary["selected_rankme"] = result.rankme[picked]
            logger.experiment.summary["probe_accuracy"] = accuracy
            logger.experiment.finish()
        results.append(
            {
                "config": name,
                **weights,
                "selected_epoch": picked,
                "rankme": result.rankme[picked],
                "rankme_final": result.rankme[last],
                "rankme_projector": result.rankme_projector[picked],
                "probe_accuracy": accuracy,
                "checkpoint": result.selected_checkpoint,
                "last_epoch": last,
                "wandb_run_dir": wandb_dir,
            }
        )
        print(
            f"  {name:<26} RankMe {result.rankme[picked]:6.2f} at epoch {picked:2d} (final {result.rankme[last]:6.2f})"
            f"  [{result.seconds:.0f} s]",
            flush=True,
        )

    by_rankme = _ranks([row["rankme"] for row in results])
    by_probe = _ranks([row["probe_accuracy"] for row in results])
    for row, rank_rankme, rank_probe in zip(results, by_rankme, by_probe, strict=True):
        row["rank_by_rankme"], row["rank_by_probe"] = rank_rankme, rank_probe
    results.sort(key=lambda row: row["rank_by_rankme"])
    pick, best = results[0], min(results, key=lambda row: row["rank_by_probe"])
    rho = spearman([row["rankme"] for row in results], [row["probe_accuracy"] for row in results])
    rho_text = f"{rho:.2f}" if math.isfinite(rho) else "n/a (constant values)"
    gap = 100 * (best["probe_accuracy"] - pick["probe_accuracy"])

    columns = ("RankMe", 7), ("final", 7), ("probe acc", 10), ("rank (RankMe)", 14), ("rank (probe)", 13)
    print(f"\n{'configuration':<26} " + " ".join(f"{title:>{width}}" for title, width in columns))
    for row in results:
        marks = ("  <- RankMe's pick" if row is pick else "") + ("  <- best by labels" if row is best else "")
        print(
            f"{row['config']:<26} {row['rankme']:7.2f} {row['rankme_final']:7.2f} {100 * row['probe_accuracy']:9.2f}%"
            f" {row['rank_by_rankme']:14d} {row['rank_by_probe']:13d}{marks}"
        )
    print(
        f"\nRankMe's pick without labels: {pick['config']} ({100 * pick['probe_accuracy']:.2f}%); best by labels:"
        f" {best['config']} ({100 * best['probe_accuracy']:.2f}%); gap {gap:.2f} points."
        f" Spearman(RankMe, probe accuracy) over {len(results)} configurations = {rho_text}."
    )
    summary = {
        "configs": results,
        "selected_config": pick["config"],
        "label_best_config": best["config"],
        "gap_points": gap,
        "spearman_rankme_probe": finite_or_none(rho),
        "max_epochs": args.max_epochs,
        "warmup_epochs": args.warmup_epochs,
        "seed": args.seed,
        "total_seconds": time.perf_counter() - start,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Wrote {out / 'summary.json'} ({summary['total_seconds']:.0f} s in all).")
    if mode == "offline":
        folders = " ".join(str(row["wandb_run_dir"]) for row in results if row["wandb_run_dir"])
        print(f"Upload the W&B runs (group {group}) with:  wandb sync {folders}")
        print("  then compare the runs' `rankme` curves and the `probe_accuracy` summary column in the group view.")
    return summary


if __name__ == "__main__":
    main()
