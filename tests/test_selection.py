"""Warm-up monitors and the collapse guard with a real Trainer, the real RankMeCallback and a scripted encoder."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from callback_models import Encoder, loader, make_trainer
from conftest import reference_rankme
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rankme import RankMeCallback, RankMeCollapseGuard, RankMeWarning, WarmupEarlyStopping, WarmupModelCheckpoint

# RankMe per epoch, scripted: epoch 0 (random weights) is the highest, as in the demo; from epoch 2 the best is
# epoch 5, and a patience of 2 ends the run at epoch 7. The tests compute these epochs from the reference values.
RANKS = (8.0, 2.0, 3.0, 5.0, 4.0, 7.0, 6.0, 5.0, 6.0, 7.5)


class ScriptedEncoder(LightningModule):
    """Validation embeddings ``x @ diag(s_epoch)`` with orthonormal columns ``x``: their singular values are s_epoch.

    ``ranks[epoch]`` r sets s to floor(r) ones and one r - floor(r) (RankMe about r); None sets NaN weights.
    The weights in the checkpoint of an epoch are that epoch's, so a test can check which epoch a file holds.
    """

    def __init__(
        self, ranks: Sequence[float | None], features: int = 8, rows: int = 64, warmup_epochs: Any = None
    ) -> None:
        super().__init__()
        if warmup_epochs is not None:
            self.save_hyperparameters("warmup_epochs")
        self.ranks = list(ranks)
        self.backbone = nn.Linear(features, features, bias=False)
        generator = torch.Generator().manual_seed(0)
        q, _ = torch.linalg.qr(torch.randn(rows, features, generator=generator, dtype=torch.float64))
        self.x = q.float()

    def scales(self, epoch: int) -> torch.Tensor:
        rank = self.ranks[min(epoch, len(self.ranks) - 1)]
        s = torch.zeros(self.backbone.in_features)
        if rank is None:
            return s.fill_(math.nan)
        s[: int(rank)] = 1.0
        if rank % 1:
            s[int(rank)] = rank % 1
        return s

    def expected(self, epochs: int) -> list[float]:
        """The reference RankMe of each epoch's validation embeddings (float64 SVD)."""
        return [reference_rankme(self.x.double() @ torch.diag(self.scales(e)).double()) for e in range(epochs)]

    def on_validation_epoch_start(self) -> None:
        with torch.no_grad():
            self.backbone.weight.copy_(torch.diag(self.scales(self.current_epoch)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.backbone(batch[0]).sum() * 0.0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.backbone(batch[0])  # RankMeCallback(module="backbone") captures this output

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=16)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit(tmp_path: Path, model: LightningModule, callbacks: list[Callback], max_epochs: int, **kwargs: Any) -> Trainer:
    callbacks = [RankMeCallback(module="backbone"), *callbacks]
    trainer = make_trainer(
        tmp_path, callbacks, max_epochs=max_epochs, enable_checkpointing=True, num_sanity_val_steps=0
    )
    trainer.fit(model, **kwargs)
    return trainer


def best_epoch(values: Sequence[float], start: int) -> int:
    return max(range(start, len(values)), key=values.__getitem__)


def stop_epoch(values: Sequence[float], start: int, patience: int) -> int | None:
    """Where a max-mode early stop counted from ``start`` ends the run, by its definition."""
    best, wait = -math.inf, 0
    for epoch in range(start, len(values)):
        if values[epoch] > best:
            best, wait = values[epoch], 0
        else:
            wait += 1
            if wait >= patience:
                return epoch
    return None


def saved_epoch(path: str | Path) -> int:
    return int(torch.load(path, weights_only=False)["epoch"])


def holds_value(model: ScriptedEncoder, path: str | Path) -> float:
    """RankMe of the validation embeddings under the weights stored in a checkpoint."""
    weight = torch.load(path, weights_only=False)["state_dict"]["backbone.weight"]
    return reference_rankme(model.x.double() @ weight.double().T)


def test_plain_callbacks_pick_epoch_zero(tmp_path: Path) -> None:
    model = ScriptedEncoder(RANKS)
    values = model.expected(len(RANKS))
    assert best_epoch(values, 0) == 0
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", filename="{epoch}")
    stopping = EarlyStopping(monitor="rankme", mode="max", patience=2)
    trainer = fit(tmp_path, model, [checkpoint, stopping], max_epochs=len(RANKS))
    assert saved_epoch(checkpoint.best_model_path) == 0
    assert stopping.stopped_epoch == stop_epoch(values, 0, 2) == 2
    assert trainer.current_epoch == 3


@pytest.mark.parametrize("on_train_epoch_end", [None, False], ids=["default-hooks", "validation-end-hooks"])
def test_warmup_callbacks_count_from_start_epoch(tmp_path: Path, on_train_epoch_end: bool | None) -> None:
    model = ScriptedEncoder(RANKS)
    values = model.expected(len(RANKS))
    expected_stop = stop_epoch(values, 2, 2)
    assert expected_stop is not None
    expected_best = best_epoch(values[: expected_stop + 1], 2)
    assert expected_best != 0
    checkpoint = WarmupModelCheckpoint(
        start_epoch=2,
        dirpath=tmp_path / "ckpt",
        monitor="rankme",
        mode="max",
        filename="{epoch}",
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=on_train_epoch_end,
    )
    stopping = WarmupEarlyStopping(
        start_epoch=2, monitor="rankme", mode="max", patience=2, check_on_train_epoch_end=on_train_epoch_end
    )
    trainer = fit(tmp_path, model, [checkpoint, stopping], max_epochs=len(RANKS))

    assert stopping.stopped_epoch == expected_stop == expected_best + 2
    assert trainer.current_epoch == expected_stop + 1
    assert saved_epoch(checkpoint.best_model_path) == expected_best
    assert float(checkpoint.best_model_score) == pytest.approx(values[expected_best], rel=1e-6)
    assert holds_value(model, checkpoint.best_model_path) == pytest.approx(values[expected_best], rel=1e-6)
    # nothing before start_epoch was written or ranked; every epoch from it was
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == sorted(["last.ckpt", *(f"epoch={e}.ckpt" for e in range(2, expected_stop + 1))])
    assert saved_epoch(tmp_path / "ckpt" / "last.ckpt") == expected_stop


def test_warmup_checkpoint_alone_picks_the_best_epoch_from_start(tmp_path: Path) -> None:
    model = ScriptedEncoder(RANKS)
    values = model.expected(len(RANKS))
    checkpoint = WarmupModelCheckpoint(start_epoch=2, dirpath=tmp_path / "ckpt", monitor="rankme", mode="max")
    fit(tmp_path, model, [checkpoint], max_epochs=len(RANKS))
    assert saved_epoch(checkpoint.best_model_path) == best_epoch(values, 2) != best_epoch(values, 0)
    assert len(list((tmp_path / "ckpt").iterdir())) == 1


def test_warmup_early_stopping_ignores_thresholds_and_nan_during_warmup(tmp_path: Path) -> None:
    ranks = (8.0, 2.0, None, 4.0, 5.0, 6.0)  # epoch 0 above stopping_threshold, 1 below divergence, 2 NaN
    settings: dict[str, Any] = {
        "monitor": "rankme",
        "mode": "max",
        "patience": 100,
        "stopping_threshold": 7.5,
        "divergence_threshold": 2.5,
        "check_finite": True,
    }
    plain = EarlyStopping(**settings)
    fit(tmp_path / "plain", ScriptedEncoder(ranks), [plain], max_epochs=len(ranks))
    assert plain.stopped_epoch == 0
    for start, stopped in ((3, 0), (2, 2)):  # from epoch 2 on the NaN stops it, as the stock callback does
        stopping = WarmupEarlyStopping(start_epoch=start, **settings)
        trainer = fit(tmp_path / str(start), ScriptedEncoder(ranks), [stopping], max_epochs=len(ranks))
        assert stopping.stopped_epoch == stopped
        assert trainer.current_epoch == (len(ranks) if start == 3 else 3)


def test_step_triggered_and_last_checkpoints_wait_for_start_epoch(tmp_path: Path) -> None:
    steps = WarmupModelCheckpoint(
        start_epoch=2, dirpath=tmp_path / "steps", every_n_train_steps=1, save_top_k=-1, filename="{epoch}-{step}"
    )
    fit(tmp_path, ScriptedEncoder(RANKS), [steps], max_epochs=4)  # 4 batches per epoch
    saved = {saved_epoch(p) for p in (tmp_path / "steps").iterdir()}
    assert saved == {2, 3}
    assert len(list((tmp_path / "steps").iterdir())) == 8
    # save_last would write last.ckpt at the end of fit even without a save: not when the last epoch run (4, while
    # current_epoch is already 5 there) is in the warm-up, whether max_epochs or the guard (NaN at 4) ended the run
    for name, ranks, guard in (
        ("max", RANKS, []),
        ("guard", (8.0, 2.0, 3.0, 5.0, None), [RankMeCollapseGuard(start_epoch=5)]),
    ):
        last = WarmupModelCheckpoint(
            start_epoch=5, dirpath=tmp_path / name, monitor="rankme", mode="max", save_last=True
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankMeWarning)  # the NaN epoch's
            trainer = fit(tmp_path, ScriptedEncoder(ranks), [last, *guard], max_epochs=5 + 5 * len(guard))
        assert trainer.current_epoch == 5
        assert not (tmp_path / name).exists() or not list((tmp_path / name).iterdir())
        assert last.best_model_path == ""


def warm_pair(tmp_path: Path, start: int | None = 2) -> tuple[WarmupModelCheckpoint, WarmupEarlyStopping]:
    checkpoint = WarmupModelCheckpoint(
        start_epoch=start, dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", filename="{epoch}"
    )
    return checkpoint, WarmupEarlyStopping(start_epoch=start, monitor="rankme", mode="max", patience=2)


@pytest.mark.parametrize("interrupted_after", [1, 6], ids=["inside-warmup", "after-warmup"])
def test_state_survives_resume(tmp_path: Path, interrupted_after: int) -> None:
    values = ScriptedEncoder(RANKS).expected(len(RANKS))
    expected_stop = stop_epoch(values, 2, 2)
    assert expected_stop is not None
    resume = ModelCheckpoint(dirpath=tmp_path / "resume", save_last=True)  # the file to resume from
    fit(tmp_path, ScriptedEncoder(RANKS), [*warm_pair(tmp_path), resume], max_epochs=interrupted_after)
    stored = torch.load(tmp_path / "resume" / "last.ckpt", weights_only=False)["callbacks"]
    assert any("start_epoch" in key for key in stored)

    checkpoint, stopping = warm_pair(tmp_path)
    trainer = fit(
        tmp_path,
        ScriptedEncoder(RANKS),
        [checkpoint, stopping],
        max_epochs=len(RANKS),
        ckpt_path=tmp_path / "resume" / "last.ckpt",
    )
    # With the best score lost at the resume after epoch 5, epoch 6 would become the best and the stop move to 8.
    assert stopping.stopped_epoch == expected_stop
    assert trainer.current_epoch == expected_stop + 1
    assert saved_epoch(checkpoint.best_model_path) == best_epoch(values[: expected_stop + 1], 2)


def test_start_epoch_none_is_the_module_warmup_epochs(tmp_path: Path) -> None:
    values = ScriptedEncoder(RANKS).expected(len(RANKS))
    checkpoint, stopping = warm_pair(tmp_path / "hparam", start=None)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*warmup_epochs", category=RankMeWarning)
        fit(tmp_path, ScriptedEncoder(RANKS, warmup_epochs=2), [checkpoint, stopping], max_epochs=len(RANKS))
    assert checkpoint.start_epoch is None
    assert stopping.stopped_epoch == stop_epoch(values, 2, 2)
    assert saved_epoch(checkpoint.best_model_path) == best_epoch(values[: stopping.stopped_epoch + 1], 2)

    checkpoint, stopping = warm_pair(tmp_path / "none", start=None)  # no warmup_epochs hparam: from epoch 0
    with pytest.warns(RankMeWarning, match="has no `warmup_epochs` hyperparameter, so every epoch counts") as record:
        fit(tmp_path, ScriptedEncoder(RANKS), [checkpoint, stopping], max_epochs=len(RANKS))
    assert sum("warmup_epochs" in str(w.message) for w in record) == 2  # once per callback
    assert stopping.stopped_epoch == stop_epoch(values, 0, 2)
    assert saved_epoch(checkpoint.best_model_path) == 0

    with pytest.raises(MisconfigurationException, match="hyperparameter `warmup_epochs` of ScriptedEncoder"):
        fit(tmp_path, ScriptedEncoder(RANKS, warmup_epochs="2"), [WarmupEarlyStopping(monitor="rankme")], max_epochs=1)


@pytest.mark.parametrize("start_epoch", ["2", -1, True, 1.5])
def test_bad_start_epoch_is_a_misconfiguration(start_epoch: Any) -> None:
    for cls in (WarmupModelCheckpoint, WarmupEarlyStopping, RankMeCollapseGuard):
        with pytest.raises(
            MisconfigurationException, match="Expected argument `start_epoch` to be None or an int >= 0"
        ):
            cls(start_epoch=start_epoch, monitor="rankme")


def test_other_arguments_pass_through_unchanged() -> None:
    checkpoint = WarmupModelCheckpoint(start_epoch=1, monitor="m", mode="max", save_top_k=3, every_n_epochs=2)
    assert (checkpoint.monitor, checkpoint.mode, checkpoint.save_top_k, checkpoint.every_n_epochs) == ("m", "max", 3, 2)
    stopping = WarmupEarlyStopping(start_epoch=1, monitor="m", min_delta=0.5, patience=4, mode="max", strict=False)
    assert (stopping.min_delta, stopping.patience, stopping.strict) == (0.5, 4, False)
    assert WarmupModelCheckpoint(start_epoch=1).state_key != WarmupModelCheckpoint(start_epoch=2).state_key
    with pytest.raises(TypeError):
        WarmupModelCheckpoint(2)  # type: ignore[misc]  # start_epoch is keyword-only: dirpath comes first in Lightning


def test_import_loads_no_optional_dependency() -> None:
    # torchmetrics and lightning import scipy/matplotlib themselves when installed; rankme must add none
    code = (
        "import sys\n"
        "import lightning.pytorch, torchmetrics\n"
        "optional = ('scipy', 'sklearn', 'matplotlib')\n"
        "def loaded(): return {m for m in sys.modules if m.split('.')[0] in optional}\n"
        "before = loaded()\n"
        "import rankme, rankme.selection, rankme.transforms\n"
        "rankme.WarmupModelCheckpoint, rankme.WarmupEarlyStopping, rankme.RankMeCollapseGuard, rankme.RankMeCallback\n"
        "print(sorted(loaded() - before))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


# ---- the collapse guard ----------------------------------------------------------------------------------------


def test_guard_does_not_stop_a_healthy_run_that_starts_low(tmp_path: Path) -> None:
    # like the SimCLR run of issue 9: RankMe 2.04 at epoch 0 (0.032 of min(N, D) = 64), rising to 7.68
    ranks = (2.04, 3.0, 4.0, 6.0, 7.68)
    plain = EarlyStopping(monitor="rankme_normalized", mode="max", divergence_threshold=0.05, patience=100)
    fit(tmp_path / "old", ScriptedEncoder(ranks, features=64, rows=128), [plain], max_epochs=len(ranks))
    assert plain.stopped_epoch == 0  # the old fixed-threshold guard stopped this run at once

    guard = RankMeCollapseGuard(start_epoch=0, min_value=1.5)
    callback = RankMeCallback(module="backbone", name="watched", collapse_threshold=0.05)
    with pytest.warns(RankMeWarning, match="below collapse_threshold=0.05 at epoch 0"):
        trainer = fit(tmp_path, ScriptedEncoder(ranks, features=64, rows=128), [callback, guard], max_epochs=len(ranks))
    assert callback.history[0]["normalized"] < 0.05
    assert trainer.current_epoch == len(ranks)
    assert guard.stopped_epoch is None
    assert guard.best_value == pytest.approx(max(e["value"] for e in callback.history))


def test_guard_stops_the_collapsing_encoder_and_says_where(tmp_path: Path) -> None:
    guard = RankMeCollapseGuard()  # the module has no warmup_epochs: it counts from epoch 0
    callback = RankMeCallback(module="backbone", name="rankme")
    trainer = Trainer(
        max_epochs=30,
        callbacks=[callback, guard],
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    with pytest.warns(RankMeWarning, match="RankMeCollapseGuard stopped training at epoch") as record:
        trainer.fit(Encoder(lr=0.5, collapse=True), loader(), loader())
    values = [entry["value"] for entry in callback.history]
    expected = next(e for e in range(1, len(values)) if values[e] < 0.5 * max(values[:e]))
    assert guard.stopped_epoch == expected == len(values) - 1
    assert trainer.current_epoch < 29
    message = str(next(w.message for w in record if "stopped training" in str(w.message)))
    assert f"epoch {expected}: rankme={values[expected]:.4g}" in message
    assert f"best {max(values[:expected]):.4g}" in message


def test_guard_stops_on_nan_even_during_warmup(tmp_path: Path) -> None:
    guard = RankMeCollapseGuard(start_epoch=3)
    with pytest.warns(RankMeWarning, match="stopped training at epoch 1: rankme=nan is not finite"):
        trainer = fit(tmp_path, ScriptedEncoder((8.0, None, 5.0, 6.0)), [guard], max_epochs=4)
    assert guard.stopped_epoch == 1
    assert trainer.current_epoch == 2


def test_guard_honours_warmup_and_its_floor(tmp_path: Path) -> None:
    ranks = (8.0, 2.0, 3.0, 3.0, 1.0, 5.0)  # a fall to a quarter in the warm-up, then one direction at epoch 4
    guard = RankMeCollapseGuard(start_epoch=2, fraction=None, min_value=1.5)
    with pytest.warns(RankMeWarning, match="at epoch 4: rankme=1 is at most min_value=1.5"):
        fit(tmp_path, ScriptedEncoder(ranks), [guard], max_epochs=len(ranks))
    assert guard.stopped_epoch == 4


def test_guard_keeps_its_best_across_resume(tmp_path: Path) -> None:
    ranks = (2.0, 6.0, 5.0, 4.0, 2.5, 4.0)  # epoch 4 is below half of epoch 1's value, not of epoch 3's
    values = ScriptedEncoder(ranks).expected(len(ranks))
    assert values[4] < 0.5 * values[1]
    assert values[4] > 0.5 * values[3]
    resume = ModelCheckpoint(dirpath=tmp_path / "resume", save_last=True)
    fit(tmp_path, ScriptedEncoder(ranks), [RankMeCollapseGuard(start_epoch=1), resume], max_epochs=3)
    guard = RankMeCollapseGuard(start_epoch=1)
    with pytest.warns(RankMeWarning, match="at epoch 4"):
        fit(
            tmp_path,
            ScriptedEncoder(ranks),
            [guard],
            max_epochs=len(ranks),
            ckpt_path=tmp_path / "resume" / "last.ckpt",
        )
    assert guard.best_epoch == 1
    assert guard.stopped_epoch == 4


@pytest.mark.parametrize("bad", [{"best_value": "6.0"}, {"best_value": math.nan}, {"best_epoch": -1}, "not a dict"])
def test_guard_starts_afresh_from_a_malformed_saved_state(tmp_path: Path, bad: Any) -> None:
    ranks = (2.0, 6.0, 5.0, 4.0, 2.5, 4.0)  # from epoch 3 on, nothing falls below half of epoch 3's value
    values = ScriptedEncoder(ranks).expected(len(ranks))
    first = RankMeCollapseGuard(start_epoch=1)
    fit(
        tmp_path, ScriptedEncoder(ranks), [first, ModelCheckpoint(dirpath=tmp_path / "r", save_last=True)], max_epochs=3
    )
    path = tmp_path / "r" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    state = saved["callbacks"][first.state_key]
    assert state["best_epoch"] == 1
    saved["callbacks"][first.state_key] = {**state, **bad} if isinstance(bad, dict) else bad
    torch.save(saved, path)
    guard = RankMeCollapseGuard(start_epoch=1)
    with pytest.warns(RankMeWarning, match="RankMeCollapseGuard.monitor='rankme'. could not restore"):
        trainer = fit(tmp_path, ScriptedEncoder(ranks), [guard], max_epochs=len(ranks), ckpt_path=path)
    assert trainer.current_epoch == len(ranks)  # resumed and ran to the end
    assert (guard.best_epoch, guard.stopped_epoch) == (3, None)
    assert guard.best_value == pytest.approx(values[3], rel=1e-6)


def test_guard_reports_a_missing_key_once_and_keeps_training(tmp_path: Path) -> None:
    guard = RankMeCollapseGuard(monitor="rankme_typo")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = fit(tmp_path, ScriptedEncoder(RANKS), [guard], max_epochs=3)
    missing = [w for w in record if "rankme_typo" in str(w.message)]
    assert len(missing) == 1
    assert missing[0].category is RankMeWarning
    assert trainer.current_epoch == 3


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"fraction": 1.0}, "fraction"),
        ({"fraction": "0.5"}, "fraction"),
        ({"min_value": 0.5}, "min_value"),
        ({"min_value": math.nan}, "min_value"),
        ({"monitor": ""}, "monitor"),
        ({"check_finite": 1}, "check_finite"),
    ],
)
def test_guard_rejects_bad_settings(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(MisconfigurationException, match=f"Expected argument `{argument}`"):
        RankMeCollapseGuard(**kwargs)


@pytest.mark.parametrize("threshold", ["0.05", 0.0, 1.5, math.nan, True])
def test_collapse_threshold_must_be_a_number_in_range(threshold: Any) -> None:
    with pytest.raises(MisconfigurationException, match="Expected argument `collapse_threshold`"):
        RankMeCallback(module="backbone", collapse_threshold=threshold)


def test_collapse_early_stopping_is_the_guard_on_this_callbacks_name() -> None:
    guard = RankMeCallback(module="backbone", name="rankme_backbone").collapse_early_stopping(start_epoch=3)
    assert isinstance(guard, RankMeCollapseGuard)
    assert (guard.monitor, guard.start_epoch, guard.fraction) == ("rankme_backbone", 3, 0.5)


# ---- LightningCLI --------------------------------------------------------------------------------------------

# A value other than the default for every argument of Lightning's callbacks; the trigger arguments of
# ModelCheckpoint exclude each other, so each goes to its own instance.
CHECKPOINT_ARGS: dict[str, Any] = {
    "filename": "{epoch}",
    "monitor": "rankme",
    "verbose": True,
    "save_last": "link",
    "save_top_k": 3,
    "save_on_exception": True,
    "save_weights_only": True,
    "mode": "max",
    "auto_insert_metric_name": False,
    "every_n_epochs": 2,
    "save_on_train_epoch_end": False,
    "enable_version_counter": False,
}
CHECKPOINT_TRIGGERS: dict[str, Any] = {"every_n_train_steps": 5, "train_time_interval": "0:10:00"}
STOPPING_ARGS: dict[str, Any] = {
    "monitor": "rankme",
    "min_delta": 0.5,
    "patience": 7,
    "verbose": True,
    "mode": "max",
    "strict": False,
    "check_finite": False,
    "stopping_threshold": 100.0,
    "divergence_threshold": 1.5,
    "check_on_train_epoch_end": False,
    "log_rank_zero_only": True,
}


def accepted(cls: type, arguments: dict[str, Any]) -> dict[str, Any]:
    """The arguments this Lightning version's ``cls`` has; fails on one that this test gives no value."""
    names = set(inspect.signature(cls.__init__).parameters) - {"self", "dirpath"}
    missing = names - set(arguments) - set(CHECKPOINT_TRIGGERS)
    assert not missing, f"give the test a value for {cls.__name__}'s new arguments {missing}"
    return {name: value for name, value in arguments.items() if name in names}


def stored(callback: Callback, name: str) -> Any:
    value = getattr(callback, name) if hasattr(callback, name) else getattr(callback, f"_{name}")
    return str(value) if isinstance(value, timedelta) else value


def test_lightning_cli_accepts_every_argument(tmp_path: Path) -> None:
    checkpoint_args = accepted(ModelCheckpoint, CHECKPOINT_ARGS)
    stopping_args = accepted(EarlyStopping, STOPPING_ARGS)
    callbacks: list[dict[str, Any]] = [
        {"class_path": "rankme.WarmupModelCheckpoint", "init_args": {"start_epoch": 3, **checkpoint_args}},
        *(
            {"class_path": "rankme.WarmupModelCheckpoint", "init_args": {"monitor": "rankme", name: value}}
            for name, value in CHECKPOINT_TRIGGERS.items()
            if name in inspect.signature(ModelCheckpoint.__init__).parameters
        ),
        {"class_path": "rankme.WarmupEarlyStopping", "init_args": {"start_epoch": 4, **stopping_args}},
        {
            "class_path": "rankme.RankMeCollapseGuard",
            "init_args": {"monitor": "rankme", "start_epoch": 2, "fraction": 0.25, "min_value": 1.2},
        },
    ]
    config = {"model": {"ranks": list(RANKS)}, "trainer": {"logger": False, "callbacks": callbacks}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        ScriptedEncoder, run=False, save_config_callback=None, args=["--config", str(tmp_path / "config.yaml")]
    )
    built = {
        type(cb).__name__: [c for c in cli.trainer.callbacks if type(c) is type(cb)] for cb in cli.trainer.callbacks
    }
    checkpoint, *triggered = built["WarmupModelCheckpoint"]
    assert checkpoint.start_epoch == 3
    for name, value in checkpoint_args.items():
        assert stored(checkpoint, name) == value, name
    for callback, (name, value) in zip(triggered, CHECKPOINT_TRIGGERS.items(), strict=False):
        assert stored(callback, name) == value, name
    stopping = built["WarmupEarlyStopping"][0]
    assert stopping.start_epoch == 4
    for name, value in stopping_args.items():
        assert stored(stopping, name) == value, name
    guard = built["RankMeCollapseGuard"][0]
    assert (guard.start_epoch, guard.fraction, guard.min_value) == (2, 0.25, 1.2)


def test_lightning_cli_fit_with_warmup_from_the_model(tmp_path: Path) -> None:
    config = {
        "model": {"ranks": list(RANKS), "warmup_epochs": 2},
        "trainer": {
            "max_epochs": len(RANKS),
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {"class_path": "rankme.RankMeCallback", "init_args": {"module": "backbone"}},
                {
                    "class_path": "rankme.WarmupModelCheckpoint",
                    "init_args": {"monitor": "rankme", "mode": "max", "filename": "{epoch}", "save_top_k": -1},
                },
                {"class_path": "rankme.WarmupEarlyStopping", "init_args": {"monitor": "rankme", "mode": "max"}},
                {"class_path": "rankme.RankMeCollapseGuard"},
            ],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        ScriptedEncoder, save_config_callback=None, args=["fit", "--config", str(tmp_path / "config.yaml")]
    )
    values = ScriptedEncoder(RANKS).expected(len(RANKS))
    checkpoint = next(cb for cb in cli.trainer.callbacks if isinstance(cb, WarmupModelCheckpoint))
    stop = stop_epoch(values, 2, 3)  # EarlyStopping's default patience
    assert stop is not None
    assert saved_epoch(checkpoint.best_model_path) == best_epoch(values[: stop + 1], 2)
    assert {saved_epoch(p) for p in Path(checkpoint.dirpath).iterdir()} == set(range(2, stop + 1))
    assert cli.trainer.current_epoch == stop + 1  # the guard saw no collapse


def test_state_keys_match_the_ones_in_earlier_checkpoints() -> None:
    # Lightning finds a callback's saved state by this exact string: a new order would drop the state on resume.
    guard = RankMeCollapseGuard(monitor="rankme", start_epoch=2)
    assert (
        guard.state_key
        == "RankMeCollapseGuard{'monitor': 'rankme', 'start_epoch': 2, 'fraction': 0.5, 'min_value': None}"
    )
    stopping = WarmupEarlyStopping(monitor="rankme", mode="max", start_epoch=2)
    assert stopping.state_key == "WarmupEarlyStopping{'monitor': 'rankme', 'mode': 'max', 'start_epoch': 2}"
