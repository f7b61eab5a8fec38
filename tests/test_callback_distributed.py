"""RankMeCallback under real DDP: two CPU processes (ddp_spawn, gloo)."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_models import IN_FEATURES, Encoder, loader
from conftest import reference_rankme
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import Tensor
from torch.utils.data import DataLoader, Sampler, TensorDataset

from rankme import RankMeCallback, RankMeWarning

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def spawn_trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp_spawn",
        "max_epochs": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
    }
    options.update(kwargs)
    return Trainer(callbacks=callbacks, **options)


def rank_dependent_transform(h: Tensor) -> Tensor:
    """A mistake users make: a transform whose output size depends on the rank."""
    return h if torch.distributed.get_rank() == 0 else h[:, 1:]


class RankMeRecordingErrors(RankMeCallback):
    """Writes, on each rank, the exception its epoch end raised, so the main process can see every rank failed."""

    def __init__(self, folder: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.folder = folder

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            super().on_validation_epoch_end(trainer, pl_module)
        except Exception as err:
            (self.folder / f"rank{trainer.global_rank}.txt").write_text(f"{type(err).__name__}: {err}")
            raise


class WriteLoggedPerRank(Callback):
    """Each rank writes what it sees logged, so the main process can compare ranks."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        path = self.folder / f"rank{trainer.global_rank}-epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps({k: float(v) for k, v in trainer.callback_metrics.items()}))


def test_ddp_value_equals_one_process_over_all_data_on_every_rank(tmp_path: Path) -> None:
    # lr=0 keeps the weights fixed, so the main process can recompute the reference embeddings
    model = Encoder(lr=0.0)
    val = loader(64, batch_size=8, seed=7)  # 64 rows divide evenly over 2 ranks: no sampler padding
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="rankme", mode="max", filename="{epoch}")
    trainer = Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[
            checkpoint,
            EarlyStopping(monitor="rankme", mode="max", patience=5),
            RankMeCallback(module="backbone"),
            RankMeCallback(output_key="z", name="rankme_projector", mode="embeddings"),
            WriteLoggedPerRank(tmp_path),
        ],
    )
    trainer.fit(model, loader(32, batch_size=8), val)

    with torch.no_grad():
        x = val.dataset.tensors[0]
        backbone = reference_rankme(model.backbone(x))
        projector = reference_rankme(model(x))
    for rank in (0, 1):
        for epoch in (0, 1):
            logged = json.loads((tmp_path / f"rank{rank}-epoch{epoch}.json").read_text())
            assert logged["rankme"] == pytest.approx(backbone, rel=1e-6)
            assert logged["rankme_projector"] == pytest.approx(projector, rel=1e-6)
            assert logged["rankme_num_samples"] == 64
    assert float(trainer.callback_metrics["rankme"]) == pytest.approx(backbone, rel=1e-6)
    assert Path(checkpoint.best_model_path).exists()


def test_ranks_feeding_different_d_raise_on_every_rank(tmp_path: Path) -> None:
    callback = RankMeRecordingErrors(tmp_path, module="backbone", transform=rank_dependent_transform)
    trainer = spawn_trainer(tmp_path, [callback], max_epochs=3)
    with pytest.raises(Exception, match=r"D in \[23, 24\]"):
        trainer.fit(Encoder(), loader(32, batch_size=8), loader(32, batch_size=8))
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("MisconfigurationException: RankMeCallback(name='rankme', module='backbone')")
        assert "at epoch 0" in message
        assert "D in [23, 24]" in message


class RecordWarningsPerRank(Callback):
    """Each rank writes the RankMeWarnings it emitted during the run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._catcher: Any = None
        self._caught: list[Any] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._catcher.__exit__(None, None, None)
        messages = [str(w.message) for w in self._caught if issubclass(w.category, RankMeWarning)]
        (self.folder / f"warnings-rank{trainer.global_rank}.json").write_text(json.dumps(messages))


ROWS = 101  # does not divide by 2 ranks: the default DistributedSampler pads rank 1 with a repeated row


def odd_loader(shuffle: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(11)
    return DataLoader(TensorDataset(torch.randn(ROWS, IN_FEATURES, generator=generator)), batch_size=8, shuffle=shuffle)


def sampler_order(shuffle: bool) -> Tensor:
    """The index order DistributedSampler lays out before padding (seed 0, epoch 0)."""
    return torch.randperm(ROWS, generator=torch.Generator().manual_seed(0)) if shuffle else torch.arange(ROWS)


@pytest.mark.parametrize("shuffle", [False, True], ids=["in-order", "shuffled"])
def test_validate_leaves_out_the_sampler_padding(tmp_path: Path, shuffle: bool) -> None:
    model = Encoder()
    callbacks = [
        RankMeCallback(module="backbone"),
        RankMeCallback(output_key="z", name="rankme_embeddings", mode="embeddings"),
        RankMeCallback(module="backbone", name="rankme_capped", max_samples=61),
        RecordWarningsPerRank(tmp_path),
    ]
    val = odd_loader(shuffle)
    trainer = spawn_trainer(tmp_path, callbacks)
    trainer.validate(model, val, verbose=False)

    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    x = val.dataset.tensors[0]
    with torch.no_grad():
        h, z = model.backbone(x), model(x)
    assert logged["rankme_num_samples"] == ROWS
    assert logged["rankme"] == pytest.approx(reference_rankme(h), rel=1e-6)
    assert logged["rankme_embeddings_num_samples"] == ROWS
    assert logged["rankme_embeddings"] == pytest.approx(reference_rankme(z), rel=1e-6)
    # max_samples=61: rank 0 keeps its first 31 real rows, rank 1 its first 30
    order = sampler_order(shuffle)
    kept = torch.cat([order[0::2][:31], order[1::2][:30]])
    assert logged["rankme_capped_num_samples"] == 61
    assert logged["rankme_capped"] == pytest.approx(reference_rankme(h[kept]), rel=1e-6)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"warnings-rank{rank}.json").read_text()) == []


def test_fit_leaves_out_the_sampler_padding_every_epoch(tmp_path: Path) -> None:
    model = Encoder(lr=0.0)  # fixed weights: the main process can recompute the embeddings
    callbacks = [
        RankMeCallback(module="backbone"),
        RankMeCallback(output_key="z", name="rankme_embeddings", mode="embeddings"),
        WriteLoggedPerRank(tmp_path),
    ]
    val = odd_loader()
    spawn_trainer(tmp_path, callbacks, max_epochs=2).fit(model, loader(32, batch_size=8), val)

    x = val.dataset.tensors[0]
    with torch.no_grad():
        backbone, projector = reference_rankme(model.backbone(x)), reference_rankme(model(x))
    for rank in (0, 1):
        for epoch in (0, 1):
            logged = json.loads((tmp_path / f"rank{rank}-epoch{epoch}.json").read_text())
            assert logged["rankme"] == pytest.approx(backbone, rel=1e-6)
            assert logged["rankme_num_samples"] == ROWS
            assert logged["rankme_embeddings"] == pytest.approx(projector, rel=1e-6)
            assert logged["rankme_embeddings_num_samples"] == ROWS


def test_unknown_sampler_is_said_once_on_rank_zero(tmp_path: Path) -> None:
    # without Lightning's DistributedSampler every rank sees every row: the callback cannot know, and says so
    callbacks = [RankMeCallback(module="backbone"), RecordWarningsPerRank(tmp_path)]
    trainer = spawn_trainer(tmp_path, callbacks, max_epochs=2, use_distributed_sampler=False)
    trainer.fit(Encoder(lr=0.0), loader(32, batch_size=8), odd_loader())
    assert float(trainer.callback_metrics["rankme_num_samples"]) == 2 * ROWS
    rank0 = json.loads((tmp_path / "warnings-rank0.json").read_text())
    assert len(rank0) == 1
    assert "SequentialSampler, not a DistributedSampler" in rank0[0]
    assert json.loads((tmp_path / "warnings-rank1.json").read_text()) == []


class Reversed(Sampler[int]):
    """A user's own sampler: Lightning wraps it in a DistributedSamplerWrapper, which pads the same way."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.size - 1, -1, -1))

    def __len__(self) -> int:
        return self.size


def test_custom_sampler_wrapped_by_lightning_is_exact_too(tmp_path: Path) -> None:
    model = Encoder()
    dataset = odd_loader().dataset
    callbacks = [RankMeCallback(module="backbone"), RecordWarningsPerRank(tmp_path)]
    trainer = spawn_trainer(tmp_path, callbacks)
    trainer.validate(model, DataLoader(dataset, batch_size=8, sampler=Reversed(ROWS)), verbose=False)
    with torch.no_grad():
        reference = reference_rankme(model.backbone(dataset.tensors[0]))
    assert float(trainer.callback_metrics["rankme_num_samples"]) == ROWS
    assert float(trainer.callback_metrics["rankme"]) == pytest.approx(reference, rel=1e-6)
    assert json.loads((tmp_path / "warnings-rank0.json").read_text()) == []


def test_a_rank_left_with_only_padding_contributes_nothing(tmp_path: Path) -> None:
    # 3 rows on 2 ranks: rank 1 sees row 1 and a repeat of row 0; with batches of 1 its second batch is all padding
    model = Encoder()
    x = odd_loader().dataset.tensors[0][:3]
    callbacks = [
        RankMeCallback(module="backbone"),
        RankMeCallback(output_key="z", name="rankme_embeddings", mode="embeddings"),
        RecordWarningsPerRank(tmp_path),
    ]
    trainer = spawn_trainer(tmp_path, callbacks)
    trainer.validate(model, DataLoader(TensorDataset(x), batch_size=1), verbose=False)
    # the metric's "N < D" warning, raised alike on both ranks, reaches the user once per callback, from rank zero
    rank0 = json.loads((tmp_path / "warnings-rank0.json").read_text())
    assert sorted(message.split(":")[0] for message in rank0) == [
        "RankMeCallback('rankme')",
        "RankMeCallback('rankme_embeddings')",
    ]
    assert all("N=3 samples of D=" in message for message in rank0)
    assert json.loads((tmp_path / "warnings-rank1.json").read_text()) == []
    with torch.no_grad():
        backbone, projector = reference_rankme(model.backbone(x)), reference_rankme(model(x))
    logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
    assert logged["rankme_num_samples"] == 3
    assert logged["rankme"] == pytest.approx(backbone, rel=1e-6)
    assert logged["rankme_embeddings_num_samples"] == 3
    assert logged["rankme_embeddings"] == pytest.approx(projector, rel=1e-6)
