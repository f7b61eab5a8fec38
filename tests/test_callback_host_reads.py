"""In its default configuration RankMeCallback reads nothing back to the host per validation batch.

On a GPU every read (``bool``, ``item``, ``tolist``, ``int``, ``float`` of a tensor) waits for all queued work, so
a per-batch read would stall the validation pipeline once per batch. The reads made from the package's own code
during a real ``trainer.validate`` must therefore not grow with the number of batches.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from callback_models import Encoder, loader
from conftest import reference_rankme
from lightning.pytorch import Trainer

import rankme
from rankme import RankMeCallback

PACKAGE = str(Path(rankme.__file__).resolve().parent)
READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__")


@contextmanager
def count_package_host_reads() -> Iterator[list[str]]:
    """Wrap the Tensor methods that read a value back to the host; record each call made from ``src/rankme``."""
    calls: list[str] = []
    saved = {name: vars(torch.Tensor).get(name) for name in READS}

    def wrap(name: str) -> Any:
        original = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1).f_code
            if str(Path(caller.co_filename).resolve()).startswith(PACKAGE):
                calls.append(f"{name} in {caller.co_name}")
            return original(self, *args, **kwargs)

        return counted

    try:
        for name in READS:
            setattr(torch.Tensor, name, wrap(name))
        yield calls
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)


def validate_counting_reads(tmp_path: Path, batches: int, **options: Any) -> tuple[list[str], float, float]:
    model = Encoder()
    trainer = Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
        callbacks=[RankMeCallback(module="backbone", **options)],
    )
    with count_package_host_reads() as calls:
        results = trainer.validate(model, loader(8 * batches, batch_size=8), verbose=False)
    return calls, results[0]["rankme"], reference_rankme(torch.cat(model.recorded[0]["backbone"]))


def test_counter_sees_a_read_from_the_package() -> None:
    metric = rankme.RankMe(max_samples=10)  # a configuration that reads the row count back per batch
    with count_package_host_reads() as calls:
        metric.update(torch.randn(4, 3))
    assert calls  # so an empty count below means no read, not a blind counter


def test_default_configuration_reads_nothing_per_batch(tmp_path: Path) -> None:
    few, value_few, reference_few = validate_counting_reads(tmp_path, batches=10)
    many, value_many, reference_many = validate_counting_reads(tmp_path, batches=40)
    assert len(few) == len(many), (few, many)  # the epoch-end reads only: value, N, D, bad-batch count
    assert value_few == pytest.approx(reference_few, rel=1e-6)
    assert value_many == pytest.approx(reference_many, rel=1e-6)


def test_max_samples_reads_once_per_batch(tmp_path: Path) -> None:
    # documented: the cap needs the running row count on the host, so this option reads back per batch
    few, _, _ = validate_counting_reads(tmp_path, batches=10, max_samples=10_000)
    many, _, _ = validate_counting_reads(tmp_path, batches=40, max_samples=10_000)
    assert len(many) > len(few)
