"""A real offline W&B run: one rankme point per epoch and the spectrum plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from callback_models import Encoder, loader
from lightning.pytorch import Trainer
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


def test_offline_run_holds_one_point_per_epoch_and_the_spectrum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="rankme-tests", save_dir=str(tmp_path), offline=True)
    callback = RankMeCallback(module="backbone")
    trainer = Trainer(
        max_epochs=10,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(Encoder(), loader(), loader(64))
    run_dir = Path(logger.experiment.dir).parent
    wandb.finish()

    rows = read_history(next(run_dir.glob("run-*.wandb")))
    points = [row["rankme"] for row in rows if "rankme" in row]
    assert points == pytest.approx([entry["value"] for entry in callback.history], rel=1e-6)
    assert len(points) == 10
    spectra = [row["rankme_spectrum_table/path"] for row in rows if "rankme_spectrum_table/path" in row]
    assert len(spectra) == 10
    table = json.loads((run_dir / "files" / str(spectra[-1])).read_text())
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    curves = {key for _, key, _ in table["data"]}
    # the plot shows how the spectrum changes, with a bounded number of curves: first, latest, and between
    assert len(curves) == 8
    assert {"epoch 0", "epoch 9"} <= curves
    last = [(k, value) for k, key, value in table["data"] if key == "epoch 9"]
    assert [k for k, _ in last][:3] == [1, 2, 3]  # log-spaced k keeps the head of the spectrum
    assert [k for k, _ in last][-1] == 24  # up to min(N, D) = D
    values = [value for _, value in last]
    assert values == sorted(values, reverse=True)
    assert 0 < values[-1] <= values[0] < 1


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
