"""The warm-up monitors and the collapse guard under real DDP: two CPU processes (ddp_spawn, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from test_selection import RANKS, ScriptedEncoder, best_epoch, saved_epoch, stop_epoch

from rankme import RankMeCallback, RankMeCollapseGuard, WarmupEarlyStopping, WarmupModelCheckpoint

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


class WriteStopPerRank(Callback):
    """Each rank writes where it stopped and what its guard decided, so the main process can compare ranks."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        guards = [cb for cb in trainer.callbacks if isinstance(cb, RankMeCollapseGuard)]
        stoppers = [cb for cb in trainer.callbacks if isinstance(cb, WarmupEarlyStopping)]
        record = {
            "current_epoch": trainer.current_epoch,
            "guard_stopped": guards[0].stopped_epoch if guards else None,
            "early_stopped": stoppers[0].stopped_epoch if stoppers else None,
        }
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def ddp_fit(tmp_path: Path, model: ScriptedEncoder, callbacks: list[Callback], max_epochs: int) -> None:
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        num_sanity_val_steps=0,
        callbacks=[RankMeCallback(module="backbone"), *callbacks, WriteStopPerRank(tmp_path)],
    )
    trainer.fit(model)


def per_rank(tmp_path: Path) -> list[dict[str, int | None]]:
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_warmup_monitors_under_ddp(tmp_path: Path) -> None:
    model = ScriptedEncoder(RANKS)  # 64 rows: 32 per rank, no sampler padding
    values = model.expected(len(RANKS))
    expected_stop = stop_epoch(values, 2, 2)
    assert expected_stop is not None
    checkpoint = WarmupModelCheckpoint(
        start_epoch=2, dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", filename="{epoch}", save_top_k=-1
    )
    stopping = WarmupEarlyStopping(start_epoch=2, monitor="rankme", mode="max", patience=2)
    ddp_fit(tmp_path, model, [checkpoint, stopping], max_epochs=len(RANKS))

    for record in per_rank(tmp_path):
        assert record["early_stopped"] == expected_stop
        assert record["current_epoch"] == expected_stop + 1
    files = {saved_epoch(p): p for p in (tmp_path / "ckpt").iterdir()}
    assert sorted(files) == list(range(2, expected_stop + 1))
    best = best_epoch(values[: expected_stop + 1], 2)
    assert saved_epoch(checkpoint.best_model_path) == best  # ddp_spawn returns the best path to the main process
    weight = torch.load(files[best], weights_only=False)["state_dict"]["backbone.weight"]
    assert torch.equal(weight, torch.diag(model.scales(best)))


def test_collapse_guard_stops_every_rank_at_the_same_epoch(tmp_path: Path) -> None:
    ranks = (8.0, 2.0, 3.0, 5.0, 6.0, 2.0, 6.0, 6.0)  # after the warm-up, epoch 5 falls below half of epoch 4
    ddp_fit(tmp_path, ScriptedEncoder(ranks), [RankMeCollapseGuard(start_epoch=2)], max_epochs=len(ranks))
    for record in per_rank(tmp_path):
        assert record["guard_stopped"] == 5
        assert record["current_epoch"] == 6
