"""In its default configuration RankMeCallback reads nothing back to the host per validation batch.

On a GPU every read (``bool``, ``item``, ``tolist``, ``int``, ``float`` of a tensor) waits for all queued work, so
a per-batch read would stall the validation pipeline once per batch. The reads made from the package's own code
during a real ``trainer.validate`` must therefore not grow with the number of batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from callback_models import Encoder, loader, make_trainer
from conftest import host_reads_from_rankme, reference_rankme

import rankme
from rankme import RankMeCallback


def validate_counting_reads(tmp_path: Path, batches: int, **options: Any) -> tuple[list[str], float, float]:
    model = Encoder()
    trainer = make_trainer(tmp_path, [RankMeCallback(module="backbone", **options)])
    with host_reads_from_rankme() as calls:
        results = trainer.validate(model, loader(8 * batches, batch_size=8), verbose=False)
    return calls, results[0]["rankme"], reference_rankme(torch.cat(model.recorded[0]["backbone"]))


def test_counter_sees_a_read_from_the_package() -> None:
    metric = rankme.RankMe(max_samples=10)  # a configuration that reads the row count back per batch
    with host_reads_from_rankme() as calls:
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
