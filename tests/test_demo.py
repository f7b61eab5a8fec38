"""The demo pipeline on a tiny budget: real Trainer, real digits, real offline W&B runs, no mocks.

The examples are scripts in examples/ that import each other by file name, as ``python examples/demo.py`` does:
these tests put that folder on the import path; nothing comes through the ``rankme`` package.
"""

from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import reference_rankme

from rankme import RankMeCollapseGuard, WarmupEarlyStopping, WarmupModelCheckpoint

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import sweep  # noqa: E402
from cli import main as cli_main  # noqa: E402
from demo import main  # noqa: E402
from digits import DigitsDataModule, spearman  # noqa: E402
from vicreg import VICReg  # noqa: E402

DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
SWEEP_CONFIG = ROOT / "configs" / "sweep.yaml"


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, with every folder it writes to under tmp_path."""
    root = tmp_path / "wandb-home"
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        folder = root / var.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(var, str(folder))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return root


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _offline_run_file(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("run-*.wandb"))


@pytest.mark.slow
def test_demo_smoke_writes_a_consistent_summary(tmp_path: Path, offline_wandb: Path, keep_threads: None) -> None:
    out = tmp_path / "demo"
    argv = ["--out", str(out), "--max-epochs", "3", "--warmup-epochs", "1", "--limit-train-batches", "2"]
    returned = main(argv)

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(returned))
    for key in ("epochs", "selected_epoch", "selected_checkpoint", "label_best_epoch", "wandb_run_dir"):
        assert key in summary

    # Candidates are the epochs after the warm-up; the warm-up epochs are reported apart.
    epochs = summary["epochs"]
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert [row["epoch"] for row in summary["warmup_epochs"]] == [0]
    for row in epochs + summary["warmup_epochs"]:
        assert set(row) >= {"epoch", "rankme", "rankme_projector", "probe_accuracy"}
        assert 0.0 <= row["probe_accuracy"] <= 1.0
        assert 1.0 <= row["rankme"] <= 64.0  # D = 64 backbone features, N = 360 validation images
        assert 1.0 <= row["rankme_projector"] <= 128.0

    rankmes = [row["rankme"] for row in epochs]
    accuracies = [row["probe_accuracy"] for row in epochs]
    assert summary["selected_epoch"] == epochs[int(np.argmax(rankmes))]["epoch"]
    assert summary["label_best_epoch"] == epochs[int(np.argmax(accuracies))]["epoch"]
    selected = next(row for row in epochs if row["epoch"] == summary["selected_epoch"])
    best = next(row for row in epochs if row["epoch"] == summary["label_best_epoch"])
    assert summary["gap_points"] == pytest.approx(100 * (best["probe_accuracy"] - selected["probe_accuracy"]))
    # A plain ModelCheckpoint on rankme ran beside the warm-up one: it kept the arg-max over every epoch.
    every = summary["warmup_epochs"] + epochs
    plain = summary["plain_checkpoint_pick"]
    assert plain["epoch"] == every[int(np.argmax([row["rankme"] for row in every]))]["epoch"]
    assert plain["probe_accuracy"] == next(row for row in every if row["epoch"] == plain["epoch"])["probe_accuracy"]
    expected_rho = spearman(rankmes, accuracies)
    assert (math.isnan(expected_rho) and summary["spearman_rankme_probe"] is None) or (
        summary["spearman_rankme_probe"] == pytest.approx(expected_rho)
    )

    checkpoint = Path(summary["selected_checkpoint"])
    assert checkpoint.is_file()
    assert checkpoint.parent == out / "checkpoints"
    assert f"epoch={summary['selected_epoch']:03d}" in checkpoint.name
    assert sorted(p.name for p in (out / "checkpoints").glob("*.ckpt")) == sorted(
        Path(row["checkpoint"]).name for row in epochs
    )

    # The logged rankme is the true RankMe of that checkpoint's backbone on the validation images.
    model = VICReg()
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"])
    datamodule = DigitsDataModule()
    features = model.features(datamodule.val_images()).numpy()
    assert selected["rankme"] == pytest.approx(reference_rankme(features), rel=1e-5)

    run_dir = Path(summary["wandb_run_dir"])
    assert run_dir.is_dir()
    assert run_dir.name.startswith("offline-run-")
    assert run_dir.is_relative_to(out)
    assert _offline_run_file(run_dir)
    assert summary["wandb_mode"] == "offline"

    png = out / "rankme_vs_probe.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_lightning_cli_config_logs_rankme_and_skips_the_warmup(
    tmp_path: Path, offline_wandb: Path, keep_threads: None
) -> None:
    import wandb

    save_dir = tmp_path / "cli"
    args = [
        "fit",
        "--config",
        str(DEMO_CONFIG),
        "--trainer.max_epochs=3",
        "--model.warmup_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
    ]
    try:
        cli = cli_main(args)
        run_dir = Path(wandb.run.dir).parent if wandb.run is not None else None
    finally:
        wandb.finish()

    metrics = cli.trainer.callback_metrics
    for key in ("rankme", "rankme_normalized", "rankme_num_samples", "rankme_projector"):
        assert key in metrics
    assert 1.0 <= float(metrics["rankme"]) <= 64.0
    assert float(metrics["rankme_num_samples"]) == 360.0

    checkpoints = [cb for cb in cli.trainer.callbacks if isinstance(cb, WarmupModelCheckpoint)]
    stoppers = [cb for cb in cli.trainer.callbacks if isinstance(cb, WarmupEarlyStopping)]
    assert len(checkpoints) == 1
    assert len(stoppers) == 1
    checkpoint = checkpoints[0]
    assert checkpoint.monitor == "rankme"
    assert checkpoint.mode == "max"
    assert stoppers[0].monitor == "rankme"
    # The warm-up epoch 0 (start_epoch taken from model.warmup_epochs) is neither saved nor ranked.
    saved = sorted(Path(path).name for path in checkpoint.best_k_models)
    assert saved
    assert all(not name.startswith("epoch=000") for name in saved)
    assert Path(checkpoint.best_model_path).is_file()
    # The pooled feature map (transform: rankme.transforms.global_avg_pool by dotted path) at the last epoch.
    model = cli.model.eval()
    with torch.no_grad():
        feature_map = model.backbone[:10](cli.datamodule.val_images())
    assert feature_map.shape[1:] == (64, 4, 4)
    assert float(metrics["rankme_conv"]) == pytest.approx(reference_rankme(feature_map.mean(dim=(2, 3))), rel=1e-5)
    guards = [cb for cb in cli.trainer.callbacks if isinstance(cb, RankMeCollapseGuard)]
    assert [guard.monitor for guard in guards] == ["rankme"]
    assert save_dir in Path(checkpoint.best_model_path).parents

    assert run_dir is not None
    assert _offline_run_file(run_dir)
    assert save_dir in run_dir.parents


def test_sweep_yaml_targets_rankme_and_real_model_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    sweep = yaml.safe_load(SWEEP_CONFIG.read_text())
    assert sweep["metric"] == {"name": "rankme", "goal": "maximize"}
    assert sweep["method"] in ("grid", "random", "bayes")
    assert (ROOT / sweep["program"]).is_file()
    command = sweep["command"]
    assert command[-1] == "${args}"
    assert (ROOT / command[command.index("--config") + 1]).resolve() == DEMO_CONFIG

    # Every swept parameter is a real constructor argument, and the CLI accepts and applies every value.
    signatures = {
        "model": inspect.signature(VICReg.__init__).parameters,
        "data": inspect.signature(DigitsDataModule.__init__).parameters,
    }
    fixed = [arg for arg in command[command.index("fit") + 1 : -1]]
    fixed[fixed.index("--config") + 1] = str(DEMO_CONFIG)
    monkeypatch.chdir(tmp_path)  # the config's relative save_dir lands here, if anything is written
    assert sweep["parameters"]
    for key, spec in sweep["parameters"].items():
        section, _, name = key.partition(".")
        assert name in signatures[section], f"{key} is not an argument of the {section} class"
        values = spec["values"] if "values" in spec else [spec["value"]]
        assert values
        for value in values:
            cli = cli_main([*fixed, f"--{key}={value}"], run=False)
            target = cli.model if section == "model" else cli.datamodule
            assert target.hparams[name] == value
    with pytest.raises(SystemExit):
        cli_main([*fixed, "--model.not_an_argument=1"], run=False)


@pytest.mark.slow
def test_sweep_example_ranks_configurations_by_rankme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_threads: None
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    names = ["default 25/25/1", "invariance only 25/0/0"]
    argv = ["--out", str(tmp_path), "--max-epochs", "2", "--warmup-epochs", "1", "--limit-train-batches", "2"]
    summary = sweep.main([*argv, "--configs", *names])

    rows = summary["configs"]
    assert sorted(row["config"] for row in rows) == sorted(names)
    assert [row["rank_by_rankme"] for row in rows] == [1, 2]
    assert rows[0]["rankme"] >= rows[1]["rankme"]
    assert summary["selected_config"] == rows[0]["config"]
    best = max(rows, key=lambda row: row["probe_accuracy"])
    assert summary["gap_points"] == pytest.approx(100 * (best["probe_accuracy"] - rows[0]["probe_accuracy"]))
    for row in rows:
        assert 0.0 <= row["probe_accuracy"] <= 1.0
        assert Path(row["checkpoint"]).is_file()
        assert row["selected_epoch"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["selected_config"] == summary["selected_config"]


def test_demo_script_is_wired_to_the_module() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py"), "--help"], capture_output=True, text=True, check=True
    )
    for option in ("--max-epochs", "--out", "--limit-train-batches", "--seed", "--wandb-online"):
        assert option in result.stdout


def test_spearman_is_undefined_for_constant_input() -> None:
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == -1.0
