"""The spectrum in a real TensorBoard event file: one histogram slice per epoch, bucket k holding s_k / sum(s)."""

from __future__ import annotations

from pathlib import Path

import pytest
from callback_models import Encoder, loader
from lightning.pytorch import Trainer

from rankme import RankMeCallback

pytest.importorskip("tensorboard")  # a dev dependency; TensorBoardLogger needs it (or tensorboardX)
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_event_file_holds_the_spectrum_of_every_epoch(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    callback = RankMeCallback(module="backbone")
    trainer = Trainer(
        max_epochs=3,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(Encoder(), loader(), loader(64))
    logger.experiment.flush()

    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    assert [event.value for event in events.Scalars("rankme")] == pytest.approx(
        [entry["value"] for entry in callback.history], rel=1e-6
    )
    slices = events.Histograms("rankme_spectrum")
    assert len(slices) == 3  # one small record per epoch
    for event, kept in zip(slices, callback.spectra, strict=True):
        assert event.step == kept["global_step"]
        assert list(event.histogram_value.bucket_limit) == kept["k"]
        assert list(event.histogram_value.bucket) == pytest.approx(kept["values"])
        assert kept["k"][:3] == [1, 2, 3]
        assert kept["k"][-1] == 24
