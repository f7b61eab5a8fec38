"""Evidence for the README's advice: which epoch RankMe picks, with and without a warm-up, for two SSL methods.

    python examples/selection_study.py                       # VICReg and SimCLR, seeds 0 1 2 (~10-15 min, 2 CPUs)
    python examples/selection_study.py --help

Each (method, seed) is one training run by the shared pipeline (``pipeline.fit_ssl``): RankMe of the backbone
(``rankme``) and of the projector (``rankme_projector``) every epoch, a plain Lightning ``ModelCheckpoint`` on
``rankme`` (the arg-max over all epochs), the library's ``WarmupModelCheckpoint(start_epoch=...)`` (its
``best_model_path`` is the warm-up monitor's pick), and no early stopping, so every run trains all its epochs.
After training, the linear probe scores every epoch's weights (the only use of labels). Per run it records the
plain pick, the warm-up pick, the best epoch by probe and the last epoch with their gaps to the best in probe
points; the Spearman correlation over epochs of each layer's RankMe with the probe; and what the arg-max of each
layer's RankMe would have picked after other warm-up lengths. Writes the results as JSON and as a markdown
report (default ``docs/selection_study.json`` and ``docs/selection_study.md``); checkpoints go under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from digits import DigitsDataModule, DigitsSSL, spearman
from lightning.pytorch import seed_everything
from pipeline import batches_per_epoch, finite_or_none, fit_ssl, probe_checkpoints, quiet_lightning_logs
from simclr import SimCLR
from vicreg import VICReg

METHODS: dict[str, Callable[..., DigitsSSL]] = {"vicreg": VICReg, "simclr": SimCLR}
LAYERS = {"backbone": "rankme", "projector": "rankme_projector"}


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python examples/selection_study.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/selection_study"), help="checkpoints")
    parser.add_argument("--json", type=Path, default=Path("docs/selection_study.json"), help="the results")
    parser.add_argument("--markdown", type=Path, default=Path("docs/selection_study.md"), help="the report")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=30, help="epochs per run, all trained (default: 30)")
    parser.add_argument("--lr-warmup-epochs", type=int, default=5, help="the models' learning-rate warm-up (5)")
    parser.add_argument(
        "--start-epoch", type=int, default=5, help="WarmupModelCheckpoint's start_epoch (default: 5, the lr warm-up)"
    )
    parser.add_argument(
        "--warmups", nargs="+", type=int, default=[0, 1, 2, 5, 10], help="other warm-up lengths to evaluate"
    )
    parser.add_argument("--limit-train-batches", type=batches_per_epoch, default=1.0)
    args = parser.parse_args(argv)
    if not 0 <= args.start_epoch < args.max_epochs:
        parser.error("--start-epoch must be >= 0 and below --max-epochs")
    return args


def argmax_from(values: dict[int, float], start: int) -> int:
    """The first epoch >= ``start`` with the highest value (as ``ModelCheckpoint`` keeps the first of ties).

    Example:
        >>> argmax_from({0: 9.0, 1: 3.0, 2: 5.0, 3: 5.0}, 0), argmax_from({0: 9.0, 1: 3.0, 2: 5.0, 3: 5.0}, 1)
        (0, 2)
    """
    epochs = [epoch for epoch in sorted(values) if epoch >= start]
    return max(epochs, key=lambda epoch: (values[epoch], -epoch))


def _pick(epoch: int, accuracy: dict[int, float], best: float) -> dict[str, Any]:
    return {"epoch": epoch, "probe_accuracy": accuracy[epoch], "gap_points": 100 * (best - accuracy[epoch])}


def study_run(
    method: str, seed: int, datamodule: DigitsDataModule, out: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """Train one (method, seed) run, probe every epoch, and record every selection rule's pick and gap."""
    seed_everything(seed, workers=True, verbose=False)
    model = METHODS[method](warmup_epochs=args.lr_warmup_epochs)
    result = fit_ssl(
        model,
        datamodule,
        out / method / f"seed{seed}",
        max_epochs=args.max_epochs,
        select_from_epoch=args.start_epoch,
        limit_train_batches=args.limit_train_batches,
        patience=args.max_epochs,  # no early stopping: every run trains all its epochs
        verbose=False,
    )
    accuracy = probe_checkpoints(model, datamodule.probe_splits(), result.all_checkpoints)
    series = {"rankme": result.rankme, "rankme_projector": result.rankme_projector}
    epochs = sorted(accuracy)
    best_epoch = max(epochs, key=lambda epoch: (accuracy[epoch], -epoch))
    best = accuracy[best_epoch]
    if result.plain_epoch != argmax_from(result.rankme, 0):
        raise RuntimeError(f"The plain ModelCheckpoint kept epoch {result.plain_epoch}, not the arg-max of rankme.")
    correlations = {
        layer: {
            "all_epochs": finite_or_none(spearman([series[key][e] for e in epochs], [accuracy[e] for e in epochs])),
            "from_start_epoch": finite_or_none(
                spearman(
                    [series[key][e] for e in epochs if e >= args.start_epoch],
                    [accuracy[e] for e in epochs if e >= args.start_epoch],
                )
            ),
        }
        for layer, key in LAYERS.items()
    }
    return {
        "method": method,
        "seed": seed,
        "epochs": [
            {
                "epoch": e,
                "rankme": result.rankme[e],
                "rankme_projector": result.rankme_projector[e],
                "probe_accuracy": accuracy[e],
            }
            for e in epochs
        ],
        "plain_monitor": _pick(result.plain_epoch, accuracy, best),
        "warmup_monitor": _pick(result.selected_epoch, accuracy, best),
        "best_by_probe": _pick(best_epoch, accuracy, best),
        "last_epoch": _pick(epochs[-1], accuracy, best),
        "spearman_with_probe": correlations,
        "by_warmup": {
            layer: {str(w): _pick(argmax_from(series[key], w), accuracy, best) for w in args.warmups if w < len(epochs)}
            for layer, key in LAYERS.items()
        },
        "train_seconds": result.seconds,
    }


def _mean(values: Sequence[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.fmean(present) if present else None


def aggregate(runs: list[dict[str, Any]], warmups: Sequence[int]) -> dict[str, Any]:
    """Per method: the mean gap of each rule and of each (layer, warm-up length), and the mean correlations."""
    summary: dict[str, Any] = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]
        rules = ("plain_monitor", "warmup_monitor", "last_epoch", "best_by_probe")
        summary[method] = {
            "runs": len(mine),
            "mean_gap_points": {rule: _mean([run[rule]["gap_points"] for run in mine]) for rule in rules},
            "warmup_monitor_vs_last_epoch": {
                outcome: sum(
                    test(run["warmup_monitor"]["probe_accuracy"] - run["last_epoch"]["probe_accuracy"]) for run in mine
                )
                for outcome, test in (
                    ("better", lambda d: d > 0),
                    ("equal", lambda d: d == 0),
                    ("worse", lambda d: d < 0),
                )
            },
            "mean_spearman": {
                layer: {
                    scope: _mean([run["spearman_with_probe"][layer][scope] for run in mine])
                    for scope in ("all_epochs", "from_start_epoch")
                }
                for layer in LAYERS
            },
            "mean_gap_points_by_warmup": {
                layer: {
                    str(w): _mean([run["by_warmup"][layer][str(w)]["gap_points"] for run in mine])
                    for w in warmups
                    if all(str(w) in run["by_warmup"][layer] for run in mine)
                }
                for layer in LAYERS
            },
        }
    return summary


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(pick: dict[str, Any]) -> str:
    return f"{pick['epoch']} ({100 * pick['probe_accuracy']:.2f}%, gap {abs(pick['gap_points']):.2f})"


def markdown(report: dict[str, Any]) -> str:
    """The study as markdown: the settings and machine, one row per run, then the means per method."""
    s = report["settings"]
    lines = [
        "# Which epoch does RankMe pick? VICReg and SimCLR on the offline digits",
        "",
        f"Written by `python examples/selection_study.py` on {report['date']} ({report['machine']}, torch"
        f" {report['torch']}, 1 thread per run; load average {report['load_average'][0]:.1f} at the start and"
        f" {report['load_average'][1]:.1f} at the end on this shared machine), {report['total_seconds']:.0f} s in"
        " all. Each run trains"
        f" {s['max_epochs']} epochs (learning-rate warm-up {s['lr_warmup_epochs']} epochs, no early stopping) on"
        " 1077 unlabelled digit images; RankMe on 360 validation images; the probe (logistic regression on frozen"
        " backbone features, the only use of labels) scores every epoch on 360 held-out images (one image is"
        ' 0.28 points). The plain monitor is Lightning\'s `ModelCheckpoint(monitor="rankme", mode="max")`; the'
        f" warm-up monitor is `rankme.WarmupModelCheckpoint(start_epoch={s['start_epoch']}, ...)` (its"
        " `best_model_path`). Cells: epoch (probe accuracy, gap to the best epoch in points).",
        "",
        "| method | seed | plain monitor | warm-up monitor | best by probe | last epoch"
        " | Spearman backbone (all / from start) | Spearman projector (all / from start) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in report["runs"]:
        rho = run["spearman_with_probe"]
        lines.append(
            f"| {run['method']} | {run['seed']} | {_cell(run['plain_monitor'])} | {_cell(run['warmup_monitor'])}"
            f" | {_cell(run['best_by_probe'])} | {_cell(run['last_epoch'])}"
            f" | {_fmt(rho['backbone']['all_epochs'])} / {_fmt(rho['backbone']['from_start_epoch'])}"
            f" | {_fmt(rho['projector']['all_epochs'])} / {_fmt(rho['projector']['from_start_epoch'])} |"
        )
    warmups = s["warmups"]
    lines += [
        "",
        "Mean gap to the best epoch, in probe points, over the seeds (lower is better):",
        "",
        "| method | plain monitor | warm-up monitor | last epoch | warm-up pick vs last (better/equal/worse)"
        " | mean Spearman backbone (all / from start) | mean Spearman projector (all / from start) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, agg in report["summary"].items():
        gap, rho, versus = agg["mean_gap_points"], agg["mean_spearman"], agg["warmup_monitor_vs_last_epoch"]
        lines.append(
            f"| {method} | {_fmt(gap['plain_monitor'])} | {_fmt(gap['warmup_monitor'])} | {_fmt(gap['last_epoch'])}"
            f" | {versus['better']}/{versus['equal']}/{versus['worse']}"
            f" | {_fmt(rho['backbone']['all_epochs'])} / {_fmt(rho['backbone']['from_start_epoch'])}"
            f" | {_fmt(rho['projector']['all_epochs'])} / {_fmt(rho['projector']['from_start_epoch'])} |"
        )
    lines += [
        "",
        "What the arg-max of each layer's RankMe would have picked after other warm-up lengths: mean gap in probe"
        " points over the seeds (the picks per seed are in the JSON):",
        "",
        "| method | monitored layer | " + " | ".join(f"warm-up {w}" for w in warmups) + " |",
        "| --- | --- | " + " | ".join("---" for _ in warmups) + " |",
    ]
    for method, agg in report["summary"].items():
        for layer, by_warmup in agg["mean_gap_points_by_warmup"].items():
            cells = [_fmt(by_warmup.get(str(w))) for w in warmups]
            lines.append(f"| {method} | {layer} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _machine() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads available"
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the study; return the report that is also written as JSON and markdown."""
    args = _parse_args(argv)
    start = time.perf_counter()
    machine, load = _machine(), os.getloadavg()[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the fastest for these tiny convolutions
    quiet_lightning_logs()
    out: Path = args.out.resolve()
    datamodule = DigitsDataModule(batch_size=64)
    runs = []
    try:
        for method in args.methods:
            for seed in args.seeds:
                run = study_run(method, seed, datamodule, out, args)
                runs.append(run)
                print(
                    f"  {method:<7} seed {seed}: plain {_cell(run['plain_monitor'])}, warm-up"
                    f" {_cell(run['warmup_monitor'])}, best {_cell(run['best_by_probe'])}, last"
                    f" {_cell(run['last_epoch'])}  [{run['train_seconds']:.0f} s]",
                    flush=True,
                )
    finally:
        torch.set_num_threads(threads)
    report = {
        "settings": {
            key: getattr(args, key)
            for key in ("max_epochs", "lr_warmup_epochs", "start_epoch", "warmups", "seeds", "methods")
        }
        | {"limit_train_batches": args.limit_train_batches},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "torch": torch.__version__,
        "load_average": [load, os.getloadavg()[0]],
        "runs": runs,
        "summary": aggregate(runs, args.warmups),
        "total_seconds": time.perf_counter() - start,
    }
    for path, text in ((args.json, json.dumps(report, indent=2) + "\n"), (args.markdown, markdown(report))):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"Wrote {args.json} and {args.markdown} ({report['total_seconds']:.0f} s in all).")
    return report


if __name__ == "__main__":
    main()
