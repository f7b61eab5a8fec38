"""A validation_step that runs the monitored submodule twice per batch (two augmented views)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_models import Encoder, loader
from conftest import reference_rankme
from lightning.pytorch import Trainer
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from rankme import RankMeCallback, RankMeWarning


class TwoViews(Encoder):
    """Embeds the batch and a noisy view of it with the backbone, recording both."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        x = batch[0]
        noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(batch_idx))
        noisy_view = self.backbone(noisy)
        out = super().validation_step(batch, batch_idx, dataloader_idx)  # the first view, recorded as "backbone"
        if not self.trainer.sanity_checking:
            self.recorded[dataloader_idx].setdefault("noisy", []).append(noisy_view.detach().clone())
        return out


def run(tmp_path: Path, **options: Any) -> tuple[RankMeCallback, TwoViews, list[str]]:
    model = TwoViews()
    callback = RankMeCallback(module="backbone", **options)
    trainer = Trainer(
        max_epochs=2,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        callbacks=[callback],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(model, loader(), loader(64))
    return callback, model, [str(w.message) for w in caught if issubclass(w.category, RankMeWarning)]


def test_default_counts_every_call_and_warns_once(tmp_path: Path) -> None:
    callback, model, messages = run(tmp_path)
    views = [message for message in messages if "ran 2 times in one validation batch" in message]
    assert len(views) == 1  # once per run, not per batch or epoch
    assert "calls_per_batch='first'" in views[0]
    # every step runs the backbone on the noisy view first, then on the batch itself
    rows = torch.cat([torch.cat(model.recorded[0]["noisy"]), torch.cat(model.recorded[0]["backbone"])])
    assert callback.history[-1]["num_samples"] == 128
    assert math.isclose(callback.history[-1]["value"], reference_rankme(rows), rel_tol=1e-6)


def test_first_keeps_one_call_per_batch_without_warning(tmp_path: Path) -> None:
    callback, model, messages = run(tmp_path, calls_per_batch="first")
    assert not [message for message in messages if "times in one validation batch" in message]
    assert callback.history[-1]["num_samples"] == 64
    first_calls = torch.cat(model.recorded[0]["noisy"])  # the noisy view is each step's first backbone call
    assert math.isclose(callback.history[-1]["value"], reference_rankme(first_calls), rel_tol=1e-6)


def test_all_keeps_every_call_without_warning(tmp_path: Path) -> None:
    callback, _, messages = run(tmp_path, calls_per_batch="all")
    assert not [message for message in messages if "times in one validation batch" in message]
    assert callback.history[-1]["num_samples"] == 128


def test_one_call_per_batch_gives_no_warning(tmp_path: Path) -> None:
    trainer = Trainer(
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        accelerator="cpu",
        callbacks=[RankMeCallback(module="backbone")],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)
        trainer.fit(Encoder(), loader(), loader(64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"module": "backbone", "calls_per_batch": "last"}, "calls_per_batch"),
        ({"output_key": "z", "calls_per_batch": "first"}, "applies to `module=`"),
    ],
)
def test_bad_calls_per_batch(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(MisconfigurationException, match=match):
        RankMeCallback(**kwargs)
