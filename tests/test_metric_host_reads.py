"""What the metric reads back from its device, and the warnings it emits.

A read back to the host (``bool(t)``, ``t.item()``, ``int(t)``, ...) makes a GPU pipeline wait for all work
queued before it; conftest's ``host_reads_from_rankme`` counts the reads made from the package's own code.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import host_reads_from_rankme, make_embeddings, reference_rankme

import rankme
from rankme import RankMe, RankMeWarning

PACKAGE_DIR = str(Path(rankme.__file__).parent)


def reads_for(batches: int, **kwargs: Any) -> tuple[list[str], float]:
    z = make_embeddings("relu", n=batches * 16, d=24)
    metric = RankMe(**kwargs)
    with host_reads_from_rankme() as calls:
        for batch in z.split(16):
            metric.update(batch)
        value = metric.compute()
    return calls, value.item()


@pytest.mark.parametrize("d", [24, 300])  # the full product, and the blocked lower triangle
def test_default_propagate_update_reads_nothing_back_per_batch(d: int) -> None:
    counts = {}
    for batches in (10, 40):
        z = make_embeddings("relu", n=batches * 16, d=d)
        metric = RankMe(nan_strategy="propagate")
        with host_reads_from_rankme() as calls:
            for batch in z.split(16):
                metric.update(batch)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RankMeWarning)
                value = metric.compute().item()
        counts[batches] = len(calls)
        assert value == pytest.approx(reference_rankme(z), rel=1e-6)
    assert counts[10] == counts[40]


def test_default_propagate_update_reads_nothing_back_even_for_bad_and_huge_batches() -> None:
    z = make_embeddings("gaussian", n=80, d=8)
    metric = RankMe(nan_strategy="propagate")
    with host_reads_from_rankme() as calls:
        for batch in (z[:40], torch.full((5, 8), math.nan), z[40:] * 1e300, torch.full((5, 8), math.inf)):
            metric.update(batch)
    assert calls == []


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"nan_strategy": "ignore"}, {"nan_strategy": "propagate", "max_samples": 10**6}, {"center": True}],
    ids=["error", "ignore", "max_samples", "centred"],
)
def test_the_counter_sees_the_reads_of_the_options_documented_to_read(kwargs: dict[str, Any]) -> None:
    # the counter is not blind: the options the docstring says read back per batch are seen doing so
    few, _ = reads_for(10, **kwargs)
    many, _ = reads_for(40, **kwargs)
    assert len(many) > len(few)


def test_every_warning_of_the_metric_and_the_function_is_a_rankme_warning() -> None:
    z = make_embeddings("gaussian", n=40, d=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rankme.rankme(z[:4])  # N < D: capped
        rankme.rankme(torch.zeros(5, 3))  # complete collapse
        capped = RankMe()
        capped.update(z[:4])
        capped.compute()
        dropping = RankMe(nan_strategy="ignore")
        dropping.update(torch.cat([z, torch.full((1, 8), math.nan)]))  # dropped rows
        propagating = RankMe(nan_strategy="propagate")
        propagating.update(torch.full((2, 8), math.inf))
        propagating.compute()  # NaN: a batch was left out
    ours = [w for w in caught if w.filename.startswith(PACKAGE_DIR) or issubclass(w.category, RankMeWarning)]
    messages = sorted(str(w.message).split(":")[0].split(" N=")[0] for w in ours)
    assert messages == [
        "All embeddings are zero (complete collapse)",
        "Dropped 1 of 41 rows holding NaN or infinity.",
        "RankMe is NaN",
        "RankMe is computed on",
        "RankMe is computed on",
    ]
    assert all(issubclass(w.category, RankMeWarning) for w in ours)
    # and none of them points into the package: each names the user's line
    assert not any(w.filename.startswith(PACKAGE_DIR) for w in ours)
