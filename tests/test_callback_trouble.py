"""RankMeCallback against settings and saved states that are wrong: a clear error or a warning, never a bare crash."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import callback_models
import pytest
import torch
from callback_models import Encoder, TwoLoaderEncoder, loader
from conftest import reference_rankme
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from rankme import RankMeCallback, RankMeWarning, transforms


def make_trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    return callback_models.make_trainer(tmp_path, callbacks, **{"max_epochs": 1, **kwargs})


@pytest.mark.parametrize(
    ("second", "clash"),
    [
        (RankMeCallback(module="projector"), "'rankme'"),  # same name, another module: the value was max(both)
        (RankMeCallback(output_key="z", name="rankme_normalized"), "'rankme_normalized'"),  # a derived key
    ],
)
def test_two_callbacks_logging_one_key_fail_at_setup_naming_both(
    tmp_path: Path, second: RankMeCallback, clash: str
) -> None:
    model = Encoder()
    first = RankMeCallback(module="backbone")
    with pytest.raises(MisconfigurationException, match=r"name='rankme', module='backbone'\).*" + clash) as info:
        make_trainer(tmp_path, [first, second]).fit(model, loader(), loader())
    assert second._describe() in str(info.value)
    assert model.training_backbone_calls == 0  # before any training


def test_identical_callbacks_are_refused_by_the_trainer() -> None:
    # one state_key twice: Lightning refuses it when the Trainer is built, before our setup could
    with pytest.raises(RuntimeError, match="state_key` must be unique"):
        Trainer(callbacks=[RankMeCallback(module="backbone"), RankMeCallback(module="backbone")], logger=False)


def test_distinct_names_pass_setup(tmp_path: Path) -> None:
    callbacks = [RankMeCallback(module="backbone"), RankMeCallback(module="projector", name="rankme_projector")]
    make_trainer(tmp_path, callbacks).fit(Encoder(), loader(), loader())
    assert all(len(callback.history) == 1 for callback in callbacks)


@pytest.mark.parametrize("entry", ["fit", "validate"])
def test_dataloader_idx_past_the_last_loader_names_index_and_count(tmp_path: Path, entry: str) -> None:
    model = TwoLoaderEncoder()
    trainer = make_trainer(tmp_path, [RankMeCallback(module="backbone", dataloader_idx=2)])
    run = (lambda: trainer.fit(model, loader())) if entry == "fit" else (lambda: trainer.validate(model, verbose=False))
    with pytest.raises(MisconfigurationException, match=r"dataloader_idx=2, but validation has 2 dataloaders"):
        run()
    assert model.training_backbone_calls == 0  # found in the sanity check, before training
    assert not model.backbone._forward_hooks


def test_dataloader_idx_past_a_single_loader_without_sanity_check(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [RankMeCallback(module="backbone", dataloader_idx=1)], num_sanity_val_steps=0)
    with pytest.raises(MisconfigurationException, match=r"dataloader_idx=1, but validation has 1 dataloader \("):
        trainer.fit(Encoder(), loader(), loader())


@pytest.mark.parametrize(
    "bad_state",
    [
        "not a dict",
        {"history": "not a list"},
        {"history": [{"epoch": 0}]},  # missing fields
        {"history": [{"epoch": "0", "global_step": 6, "value": 1.0, "normalized": 0.1, "num_samples": 96}]},
        {"history": [None]},
        {"history": [], "spectra": [{"epoch": 0, "global_step": 6, "k": [1, 2], "values": [0.5]}]},
        {"history": [], "spectra": {"epoch": 0}},
    ],
    ids=["str", "history-str", "missing-fields", "str-field", "none-entry", "spectrum-lengths", "spectra-dict"],
)
def test_malformed_saved_state_warns_and_resumes_with_a_fresh_history(tmp_path: Path, bad_state: Any) -> None:
    first = RankMeCallback(module="backbone")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    make_trainer(tmp_path, [first, checkpoint], enable_checkpointing=True).fit(Encoder(), loader(), loader())
    path = tmp_path / "ckpt" / "last.ckpt"
    saved = torch.load(path, weights_only=False)
    assert saved["callbacks"][first.state_key] == {"history": first.history, "spectra": first.spectra}
    saved["callbacks"][first.state_key] = bad_state
    torch.save(saved, path)

    resumed = RankMeCallback(module="backbone")
    model = Encoder()
    trainer = make_trainer(tmp_path, [resumed], max_epochs=2)
    with pytest.warns(RankMeWarning, match="could not restore its history"):
        trainer.fit(model, loader(), loader(), ckpt_path=str(path))
    assert trainer.current_epoch == 2  # the model and loop state were restored and training went on
    assert [entry["epoch"] for entry in resumed.history] == [1]
    assert [entry["epoch"] for entry in resumed.spectra] == [1]
    reference = reference_rankme(torch.cat(model.recorded[0]["backbone"]))
    assert math.isclose(resumed.history[0]["value"], reference, rel_tol=1e-6)


def test_d_changing_between_batches_raises_and_keeps_the_state(tmp_path: Path) -> None:
    def drop_a_feature_after_two_batches(h: torch.Tensor) -> torch.Tensor:
        drop_a_feature_after_two_batches.calls += 1  # type: ignore[attr-defined]
        return h if drop_a_feature_after_two_batches.calls <= 2 else h[:, 1:]  # type: ignore[attr-defined]

    drop_a_feature_after_two_batches.calls = 0  # type: ignore[attr-defined]
    callback = RankMeCallback(module="backbone", transform=drop_a_feature_after_two_batches)
    with pytest.raises(MisconfigurationException, match=r"Expected 24 features per row.*shape \(16, 23\)"):
        make_trainer(tmp_path, [callback], num_sanity_val_steps=0).fit(Encoder(), loader(), loader())
    # the exception handler resets the metric: nothing half-accumulated leaks into a later run
    assert int(callback.metric.num_rows) == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_spectrum": "yes"}, "log_spectrum"),
        ({"prog_bar": 1}, "prog_bar"),
        ({"every_n_epochs": True}, "every_n_epochs"),
        ({"dataloader_idx": 1.0}, "dataloader_idx"),
        ({"name": 3}, "name"),
        ({"center": "no"}, "center"),
    ],
)
def test_more_bad_settings_raise_at_construction(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=f"Expected argument `{match}`"):
        RankMeCallback(module="backbone", **kwargs)


def test_all_zero_embeddings_log_rankme_one_and_no_nan_spectrum(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    callback = RankMeCallback(module="backbone", transform=torch.zeros_like)  # complete collapse: every row is 0
    logger = TensorBoardLogger(tmp_path, name="tb")
    with pytest.warns(RankMeWarning, match="All embeddings are zero"):
        make_trainer(tmp_path, [callback], logger=logger).fit(Encoder(), loader(), loader())
    assert [entry["value"] for entry in callback.history] == [reference_rankme(torch.zeros(96, 24))] == [1.0]
    assert callback.spectra == [] == callback.state_dict()["spectra"]
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0})
    events.Reload()
    assert "rankme" in events.Tags()["scalars"]
    assert events.Tags()["histograms"] == []


@pytest.mark.parametrize("source", ["module", "output_key"])
def test_a_transform_that_does_not_fit_the_output_is_one_clear_error(tmp_path: Path, source: str) -> None:
    callback = RankMeCallback(**{source: "backbone" if source == "module" else "z"}, transform=transforms.cls_token)
    named = "submodule 'backbone'" if source == "module" else r"validation_step's output\['z'\]"
    expected = r"rankme.transforms.cls_token expects a \(batch, tokens, features\) tensor, but got a tensor of shape"
    with pytest.raises(
        MisconfigurationException, match=f"RankMeCallback on .*{named}: {expected}.*Pass a `transform=`"
    ):
        make_trainer(tmp_path, [callback]).fit(Encoder(), loader(), loader())
