"""RankMeCallback inside a real lightning.Trainer, checked against an independent float64 reference."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_models import BACKBONE_FEATURES, Encoder, TwoLoaderEncoder, loader, make_trainer
from conftest import reference_rankme
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from rankme import RankMeCallback, RankMeWarning

REL = 1e-6


class RecordEpochs(Callback):
    """Keeps, per epoch, the encoder's own record of its validation outputs and what was logged."""

    def __init__(self) -> None:
        self.outputs: list[dict[int, dict[str, torch.Tensor]]] = []
        self.logged: list[dict[str, float]] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        recorded = pl_module.recorded  # type: ignore[attr-defined]
        self.outputs.append({idx: {k: torch.cat(v) for k, v in parts.items()} for idx, parts in recorded.items()})
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def assert_close(value: float, reference: float) -> None:
    assert math.isclose(value, reference, rel_tol=REL), (value, reference)


@pytest.mark.parametrize(
    ("source", "part"),
    [({"module": "backbone"}, "backbone"), ({"output_key": "z"}, "projector")],
)
def test_logged_value_equals_reference_every_epoch(tmp_path: Path, source: dict[str, str], part: str) -> None:
    record = RecordEpochs()
    callback = RankMeCallback(**source)
    make_trainer(tmp_path, [callback, record]).fit(Encoder(), loader(), loader(80, seed=3))

    assert len(record.outputs) == 3
    assert [entry["epoch"] for entry in callback.history] == [0, 1, 2]
    for outputs, logged, entry in zip(record.outputs, record.logged, callback.history, strict=True):
        z = outputs[0][part]
        assert z.shape[0] == 80
        reference = reference_rankme(z)
        assert_close(logged["rankme"], reference)
        assert_close(entry["value"], reference)
        assert_close(logged["rankme_normalized"], reference / min(z.shape))
        assert logged["rankme_num_samples"] == 80
    # the encoder trains, so the values differ between epochs: the test would see a stale value
    assert len({round(entry["value"], 6) for entry in callback.history}) == 3


def test_value_shows_in_progress_bar_unless_disabled(tmp_path: Path) -> None:
    shown = make_trainer(tmp_path, [RankMeCallback(module="backbone")], max_epochs=1)
    shown.fit(Encoder(), loader(), loader())
    hidden = make_trainer(tmp_path, [RankMeCallback(module="backbone", prog_bar=False)], max_epochs=1)
    hidden.fit(Encoder(), loader(), loader())
    assert "rankme" in shown.progress_bar_metrics
    assert "rankme" not in hidden.progress_bar_metrics
    assert "rankme" in hidden.callback_metrics


def test_model_checkpoint_keeps_the_argmax_epoch(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", save_top_k=1, filename="{epoch}-{rankme:.4f}"
    )
    # the checkpoint callback first: Lightning still runs it after the value is logged
    make_trainer(tmp_path, [checkpoint, callback], max_epochs=4, enable_checkpointing=True).fit(
        Encoder(lr=0.2), loader(), loader()
    )
    values = [entry["value"] for entry in callback.history]
    best_epoch = max(range(len(values)), key=values.__getitem__)
    assert Path(checkpoint.best_model_path).name.startswith(f"epoch={best_epoch}-rankme=")
    assert_close(float(checkpoint.best_model_score), max(values))
    assert len(list((tmp_path / "ckpt").iterdir())) == 1


def test_early_stopping_stops_a_collapsing_encoder(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    stopper = EarlyStopping(monitor="rankme", mode="max", patience=1)
    trainer = make_trainer(tmp_path, [stopper, callback], max_epochs=30)
    trainer.fit(Encoder(lr=0.5, collapse=True), loader(), loader())
    values = [entry["value"] for entry in callback.history]
    assert trainer.current_epoch < 29, "EarlyStopping did not stop the collapsing run"
    assert values[-1] < values[0]
    healthy = make_trainer(
        tmp_path,
        [EarlyStopping(monitor="rankme", mode="max", patience=1), RankMeCallback(module="backbone")],
        max_epochs=5,
    )
    healthy.fit(Encoder(lr=0.05), loader(), loader())
    assert healthy.current_epoch == 5  # a run whose rank grows is not stopped


def test_collapse_guard_warns_and_its_early_stopping_stops(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone", collapse_threshold=0.2)
    trainer = make_trainer(tmp_path, [callback, callback.collapse_early_stopping(start_epoch=0)], max_epochs=30)
    with pytest.warns(RankMeWarning, match="below collapse_threshold=0.2"):
        trainer.fit(Encoder(lr=0.5, collapse=True), loader(), loader())
    values = [entry["value"] for entry in callback.history]
    assert values[-1] < 0.5 * max(values[:-1])  # the guard's rule: a fall below half the run's best
    assert trainer.current_epoch < 29


def test_trainer_validate_logs_reference_value(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    model = Encoder()
    results = make_trainer(tmp_path, [callback]).validate(model, loader(64, seed=5), verbose=False)
    z = torch.cat(model.recorded[0]["backbone"])
    assert_close(results[0]["rankme"], reference_rankme(z))


def test_sanity_check_is_skipped(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    trainer = make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=2, limit_train_batches=0)
    trainer.fit(Encoder(), loader(), loader())
    # no training batch ran, so the only validation epoch that can log is the sanity check: nothing is logged
    assert callback.history == []
    assert "rankme" not in trainer.callback_metrics


def test_sanity_check_batches_do_not_leak_into_first_epoch(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    make_trainer(tmp_path, [callback], max_epochs=1, num_sanity_val_steps=2).fit(Encoder(), loader(), loader(64))
    assert callback.history[0]["num_samples"] == 64


def test_two_callbacks_side_by_side(tmp_path: Path) -> None:
    record = RecordEpochs()
    backbone = RankMeCallback(module="backbone", name="rankme_backbone")
    projector = RankMeCallback(module="projector", name="rankme_projector")
    assert backbone.state_key != projector.state_key
    make_trainer(tmp_path, [backbone, projector, record], max_epochs=2).fit(Encoder(), loader(), loader())
    for outputs, logged in zip(record.outputs, record.logged, strict=True):
        assert_close(logged["rankme_backbone"], reference_rankme(outputs[0]["backbone"]))
        assert_close(logged["rankme_projector"], reference_rankme(outputs[0]["projector"]))


@pytest.mark.parametrize("dataloader_idx", [0, 1])
def test_several_validation_dataloaders(tmp_path: Path, dataloader_idx: int) -> None:
    record = RecordEpochs()
    callback = RankMeCallback(module="backbone", dataloader_idx=dataloader_idx)
    make_trainer(tmp_path, [callback, record], max_epochs=1).fit(TwoLoaderEncoder(), loader())
    z = record.outputs[0][dataloader_idx]["backbone"]
    assert z.shape[0] == (64, 48)[dataloader_idx]
    assert_close(record.logged[0]["rankme"], reference_rankme(z))
    assert record.logged[0]["rankme_num_samples"] == z.shape[0]


def test_every_n_epochs(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone", every_n_epochs=2)
    make_trainer(tmp_path, [callback], max_epochs=5).fit(Encoder(), loader(), loader())
    assert [entry["epoch"] for entry in callback.history] == [1, 3]


def test_max_samples_caps_rows_per_epoch(tmp_path: Path) -> None:
    record = RecordEpochs()
    callback = RankMeCallback(module="backbone", max_samples=40)
    make_trainer(tmp_path, [callback, record], max_epochs=1).fit(Encoder(), loader(), loader())
    z = record.outputs[0][0]["backbone"][:40]
    assert record.logged[0]["rankme_num_samples"] == 40
    assert_close(record.logged[0]["rankme"], reference_rankme(z))


def test_transform_maps_a_tuple_output(tmp_path: Path) -> None:
    class TupleBackbone(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.inner(x)
            return h, h.unsqueeze(1)

    class TupleEncoder(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.wrapped = TupleBackbone(self.backbone)

        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            self.wrapped(batch[0])
            return super().validation_step(batch, batch_idx, dataloader_idx)

    record = RecordEpochs()
    callback = RankMeCallback(module="wrapped", transform=lambda out: out[0], name="rankme_tuple")
    make_trainer(tmp_path, [callback, record], max_epochs=1).fit(TupleEncoder(), loader(), loader())
    assert_close(record.logged[0]["rankme_tuple"], reference_rankme(record.outputs[0][0]["backbone"]))


def test_resume_restores_history(tmp_path: Path) -> None:
    first = RankMeCallback(module="backbone")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, [first, checkpoint], max_epochs=2, enable_checkpointing=True).fit(
        Encoder(), loader(), loader()
    )
    resumed = RankMeCallback(module="backbone")
    make_trainer(tmp_path, [resumed], max_epochs=4).fit(
        Encoder(), loader(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert len(first.history) == 2
    assert resumed.history[:2] == first.history
    assert [entry["epoch"] for entry in resumed.history] == [0, 1, 2, 3]


def test_hooks_fire_only_in_validation_and_are_removed(tmp_path: Path) -> None:
    model = Encoder()
    callback = RankMeCallback(module="backbone")
    make_trainer(tmp_path, [callback], max_epochs=2).fit(model, loader(96), loader(32))
    assert model.training_backbone_calls == 12  # the backbone ran in training, yet only validation rows count
    assert [entry["num_samples"] for entry in callback.history] == [32, 32]
    assert not model.backbone._forward_hooks


def test_hook_is_removed_when_validation_raises(tmp_path: Path) -> None:
    class Failing(Encoder):
        def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
            out = super().validation_step(batch, batch_idx, dataloader_idx)
            if self.current_epoch == 1 and batch_idx == 1:
                raise RuntimeError("boom in validation")
            return out

    model = Failing()
    with pytest.raises(RuntimeError, match="boom in validation"):
        make_trainer(tmp_path, [RankMeCallback(module="backbone")], max_epochs=3).fit(model, loader(), loader())
    assert not model.backbone._forward_hooks


class CountTensors(Callback):
    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        gc.collect()
        self.counts.append(sum(1 for obj in gc.get_objects() if torch.is_tensor(obj)))


@pytest.mark.filterwarnings("ignore:.*reduce_op.*:FutureWarning")  # gc.get_objects() touches a deprecated alias
def test_no_graph_or_memory_growth_over_many_epochs(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone", mode="embeddings")
    counter = CountTensors()
    make_trainer(tmp_path, [callback, counter], max_epochs=32, num_sanity_val_steps=0).fit(
        Encoder(), loader(32), loader(32)
    )
    assert len(callback.history) == 32
    assert counter.counts[-1] <= counter.counts[4], counter.counts
    assert callback.metric.embeddings == []  # released after each epoch
    assert not any(t.requires_grad for t in callback.metric.metric_state.values() if torch.is_tensor(t))


# ---------------------------------------------------------------- trouble


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "exactly one source"),
        ({"module": "backbone", "output_key": "z"}, "exactly one source"),
        ({"module": "backbone", "mode": "svd"}, "mode"),
        ({"module": "backbone", "eps": -1.0}, "eps"),
        ({"module": "backbone", "max_samples": 0}, "max_samples"),
        ({"module": "backbone", "every_n_epochs": 0}, "every_n_epochs"),
        ({"module": "backbone", "dataloader_idx": -1}, "dataloader_idx"),
        ({"module": "backbone", "transform": 3}, "transform"),
        ({"module": "backbone", "collapse_threshold": 2.0}, "collapse_threshold"),
        ({"module": ""}, "module"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        RankMeCallback(**kwargs)


def test_unknown_module_fails_in_setup_with_close_matches(tmp_path: Path) -> None:
    model = Encoder()
    with pytest.raises(MisconfigurationException, match=r"no such submodule.*'backbone'"):
        make_trainer(tmp_path, [RankMeCallback(module="backbon")]).fit(model, loader(), loader())
    assert model.training_backbone_calls == 0  # no training time spent


def test_missing_output_key_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"'embedding'.*keys \['z'\]"):
        make_trainer(tmp_path, [RankMeCallback(output_key="embedding")]).fit(Encoder(), loader(), loader())


def test_step_returning_nothing_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(MisconfigurationException, match=r"output_key='z'.*NoneType"):
        make_trainer(tmp_path, [RankMeCallback(output_key="z")]).fit(Encoder(return_outputs=False), loader(), loader())


def test_non_2d_output_suggests_transform(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [RankMeCallback(module="backbone", transform=lambda h: h.unsqueeze(1))])
    with pytest.raises(MisconfigurationException, match=r"\(16, 1, 24\).*transform="):
        trainer.fit(Encoder(), loader(), loader())


class NaNAtEpoch(Encoder):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        x = batch[0]
        if self.current_epoch == 1 and batch_idx == 2:
            x = x.clone()
            x[0, 0] = math.nan
        return super().validation_step([x], batch_idx, dataloader_idx)


def test_non_finite_epoch_logs_nan_and_keeps_checkpoints(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", save_top_k=1)
    trainer = make_trainer(tmp_path, [callback, checkpoint], max_epochs=3, enable_checkpointing=True)
    with pytest.warns(RankMeWarning, match="NaN or infinite"):
        trainer.fit(NaNAtEpoch(), loader(), loader())
    values = [entry["value"] for entry in callback.history]
    assert [math.isnan(value) for value in values] == [False, True, False]
    assert trainer.current_epoch == 3  # the run went on
    assert not Path(checkpoint.best_model_path).name.startswith("epoch=1")
    assert_close(float(checkpoint.best_model_score), max(values[0], values[2]))


def test_early_stopping_check_finite_stops_on_nan_epoch(tmp_path: Path) -> None:
    callback = RankMeCallback(module="backbone")
    stopper = EarlyStopping(monitor="rankme", mode="max", patience=100, check_finite=True)
    trainer = make_trainer(tmp_path, [callback, stopper], max_epochs=5)
    with pytest.warns(RankMeWarning, match="NaN or infinite"):
        trainer.fit(NaNAtEpoch(), loader(), loader())
    assert len(callback.history) == 2


def test_epoch_without_samples_warns_and_logs_nothing(tmp_path: Path) -> None:
    class Unused(Encoder):
        def __init__(self) -> None:
            super().__init__()
            self.unused_head = nn.Linear(BACKBONE_FEATURES, 4)

    callback = RankMeCallback(module="unused_head")
    trainer = make_trainer(tmp_path, [callback], max_epochs=2)
    with pytest.warns(RankMeWarning, match="no samples"):
        trainer.fit(Unused(), loader(), loader())
    assert callback.history == []
    assert "rankme" not in trainer.callback_metrics
    assert trainer.current_epoch == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_computes_on_the_model_device(tmp_path: Path) -> None:
    record = RecordEpochs()
    callback = RankMeCallback(module="backbone")
    make_trainer(tmp_path, [callback, record], max_epochs=1, accelerator="gpu").fit(Encoder(), loader(), loader())
    assert callback.metric.device.type == "cuda"
    assert_close(record.logged[0]["rankme"], reference_rankme(record.outputs[0][0]["backbone"].cpu()))


def test_metric_warnings_reach_the_user_as_rank_zero_rank_me_warnings(tmp_path: Path) -> None:
    # N = 16 rows of D = 24 features: the metric's "capped by N" warning, re-emitted by the callback on rank zero
    callback = RankMeCallback(module="backbone")
    with pytest.warns(RankMeWarning, match=r"RankMeCallback\('rankme'\): .*N=16 samples of D=24"):
        make_trainer(tmp_path, [callback], max_epochs=1).fit(Encoder(), loader(), loader(16))
    assert callback.history[0]["num_samples"] == 16


def test_every_callback_warning_is_a_rank_me_warning(tmp_path: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)  # the one-line filter a user writes
        with pytest.raises(RankMeWarning, match="NaN or infinite"):
            make_trainer(tmp_path, [RankMeCallback(module="backbone")]).fit(NaNAtEpoch(), loader(), loader())
        with pytest.raises(RankMeWarning, match="N=16 samples"):
            make_trainer(tmp_path, [RankMeCallback(module="backbone")]).fit(Encoder(), loader(), loader(16))
