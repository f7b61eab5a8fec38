"""A real offline W&B run: one rankme point per epoch and the spectrum plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from callback_models import Encoder, loader
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from rankme import RankMeCallback

wandb = pytest.importorskip("wandb")
from lightning.pytorch.loggers import WandbLogger  # noqa: E402
from wandb.proto import wandb_internal_pb2  # noqa: E402

BLOCK = 32768
HEADER = 7  # ":W&B", a 2-byte key and a version byte


def read_history(run_file: Path) -> list[dict[str, object]]:
    """The history rows of a .wandb file (LevelDB log format framing W&B protobuf records)."""
    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    payloads, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            payloads.append(pending + chunk)
    rows = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def offline_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WandbLogger:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return WandbLogger(project="rankme-tests", save_dir=str(tmp_path), offline=True)


def make_trainer(logger: WandbLogger, callbacks: list[Callback], max_epochs: int) -> Trainer:
    return Trainer(
        max_epochs=max_epochs,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(callback, ModelCheckpoint) for callback in callbacks),
        accelerator="cpu",
    )


def finish(logger: WandbLogger) -> tuple[Path, list[dict[str, object]]]:
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()
    wandb.teardown()  # stops the service, so the run file is complete before it is read
    return run_dir, read_history(next(run_dir.glob("run-*.wandb")))


def chart_curves(run_dir: Path, rows: list[dict[str, object]]) -> dict[str, list[tuple[int, float]]]:
    """The one spectrum chart of a run: its curves, by label."""
    paths = [row["rankme_spectrum_chart_table/path"] for row in rows if "rankme_spectrum_chart_table/path" in row]
    assert len(paths) == 1  # one table per run, whatever the number of epochs
    assert len(list((run_dir / "files" / "media" / "table").rglob("*.json"))) == 1
    table = json.loads((run_dir / "files" / str(paths[0])).read_text())
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    curves: dict[str, list[tuple[int, float]]] = {}
    for k, key, value in table["data"]:
        curves.setdefault(key, []).append((k, value))
    return curves


def test_offline_run_holds_one_point_and_one_spectrum_record_per_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = offline_logger(tmp_path, monkeypatch)
    callback = RankMeCallback(module="backbone")
    make_trainer(logger, [callback], max_epochs=10).fit(Encoder(), loader(), loader(64))
    run_dir, rows = finish(logger)

    points = [row["rankme"] for row in rows if "rankme" in row]
    assert points == pytest.approx([entry["value"] for entry in callback.history], rel=1e-6)
    assert len(points) == 10
    # one small record per epoch: a histogram whose bars are s_k / sum(s) at log-spaced k
    histograms = [row for row in rows if "rankme_spectrum/_type" in row]
    assert len(histograms) == 10
    for histogram, kept in zip(histograms, callback.spectra, strict=True):
        assert histogram["rankme_spectrum/_type"] == "histogram"
        assert histogram["rankme_spectrum/values"] == pytest.approx(kept["values"])
        assert len(histogram["rankme_spectrum/bins"]) == len(kept["values"]) + 1
        assert kept["k"][:3] == [1, 2, 3]  # log-spaced k keeps the head of the spectrum in full detail
        assert kept["k"][-1] == 24  # up to min(N, D) = D
        values = kept["values"]
        assert values == sorted(values, reverse=True)
        assert 0 < values[-1] <= values[0] < 1
    # and one chart for the run, with a bounded number of curves: first, latest, and between
    curves = chart_curves(run_dir, rows)
    assert len(curves) == 8
    assert {"epoch 0", "epoch 9"} <= set(curves)
    assert [value for _, value in curves["epoch 9"]] == pytest.approx(callback.spectra[-1]["values"])


def test_spectrum_chart_after_resume_covers_the_epochs_before_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = RankMeCallback(module="backbone")
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    logger = offline_logger(tmp_path / "first", monkeypatch)
    make_trainer(logger, [first, checkpoint], max_epochs=3).fit(Encoder(), loader(), loader(64))
    finish(logger)

    resumed = RankMeCallback(module="backbone")
    logger = offline_logger(tmp_path / "resumed", monkeypatch)
    make_trainer(logger, [resumed, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], max_epochs=5).fit(
        Encoder(), loader(), loader(64), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    run_dir, rows = finish(logger)

    assert resumed.spectra[:3] == first.spectra  # kept in the checkpoint
    assert [entry["epoch"] for entry in resumed.spectra] == [0, 1, 2, 3, 4]
    assert len([row for row in rows if "rankme_spectrum/_type" in row]) == 2  # this run's own epochs
    curves = chart_curves(run_dir, rows)
    assert set(curves) == {f"epoch {epoch}" for epoch in range(5)}
    assert [value for _, value in curves["epoch 0"]] == pytest.approx(first.spectra[0]["values"])


def test_other_loggers_get_scalars_and_no_error(tmp_path: Path) -> None:
    trainer = Trainer(
        max_epochs=2,
        logger=CSVLogger(tmp_path),
        callbacks=[RankMeCallback(module="backbone", log_spectrum=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(Encoder(), loader(), loader())
    metrics = (Path(trainer.logger.log_dir) / "metrics.csv").read_text().splitlines()
    assert "rankme" in metrics[0].split(",")
    assert len([line for line in metrics[1:] if line.split(",")[metrics[0].split(",").index("rankme")]]) == 2
