"""Shared test helpers: an independent float64 reference of the paper's RankMe, and hard test spectra."""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import strategies as st
from scipy import special


def reference_rankme(z: torch.Tensor | np.ndarray, eps: float = 1e-7, center: bool = False) -> float:
    """The paper's RankMe by a float64 numpy SVD, independent of the package's code."""
    a = np.asarray(z.detach().cpu().double().numpy() if isinstance(z, torch.Tensor) else z, dtype=np.float64)
    if center:
        a = a - a.mean(axis=0, keepdims=True)
    s = np.linalg.svd(a, compute_uv=False)
    if s.sum() == 0:  # all rows zero (after centring): complete collapse, 1 by convention
        return 1.0
    p = s / s.sum() + eps
    return float(np.exp(-special.xlogy(p, p).sum()))  # 0 log 0 = 0 (eps = 0 with exactly zero values)


def reference_singular_values(z: torch.Tensor, center: bool = False) -> np.ndarray:
    """The min(N, D) singular values, descending, by a float64 numpy SVD of the same values."""
    a = z.detach().cpu().double().numpy()
    if center:
        a = a - a.mean(axis=0, keepdims=True)
    return np.linalg.svd(a, compute_uv=False)


SPECTRA = ("gaussian", "near_collapsed", "low_rank", "few_samples", "offset", "relu", "scale_1e6")


def make_embeddings(kind: str, n: int = 240, d: int = 24, seed: int = 0) -> torch.Tensor:
    """A float64 (N, D) test matrix of one of the hard spectra in ``SPECTRA`` (N < D for ``few_samples``)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if kind == "gaussian":
        return randn(n, d)
    if kind == "near_collapsed":  # rank one plus 1e-6 noise
        return randn(n, 1) @ randn(1, d) + 1e-6 * randn(n, d)
    if kind == "low_rank":  # rank three plus tiny noise
        return randn(n, 3) @ randn(3, d) + 1e-6 * randn(n, d)
    if kind == "few_samples":  # N < D: the value is capped by N
        return randn(d // 3, d)
    if kind == "offset":  # a large constant offset dominates the uncentred spectrum
        return randn(n, d) + 1e3
    if kind == "relu":  # post-ReLU features: non-negative, non-zero mean, a few dead (all-zero) units
        h = torch.relu(randn(n, d) @ randn(d, d) + 0.5 * randn(1, d))
        h[:, : d // 8] = 0.0
        return h
    if kind == "scale_1e6":
        return 1e6 * randn(n, d)
    raise ValueError(f"unknown spectrum {kind!r}")


def random_batches(z: torch.Tensor, seed: int = 0, max_batches: int = 6) -> list[torch.Tensor]:
    """``z`` cut into up to ``max_batches`` consecutive batches at random points (empty batches included)."""
    g = torch.Generator().manual_seed(seed)
    n = z.shape[0]
    count = int(torch.randint(1, max_batches + 1, (1,), generator=g))
    cuts = sorted(torch.randint(0, n + 1, (count - 1,), generator=g).tolist())
    bounds = [0, *cuts, n]
    return [z[start:stop] for start, stop in itertools.pairwise(bounds)]


@st.composite
def embedding_matrices(draw: st.DrawFn) -> torch.Tensor:
    """Hypothesis: a float64 (N, D) matrix of random rank with column scales 0.1..10 (spread, uneven spectra)."""
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 12))
    rank = draw(st.integers(1, min(n, d)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scales = 10 ** (2 * torch.rand(d, generator=g, dtype=torch.float64) - 1)
    a = torch.randn(n, rank, generator=g, dtype=torch.float64)
    b = torch.randn(rank, d, generator=g, dtype=torch.float64)
    return a @ b * scales


def value_of(metric: Any) -> float:
    """``metric.compute()`` as a float, ignoring RankMe's warnings (N < D, collapse)."""
    from rankme import RankMeWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        return metric.compute().item()


def state_snapshot(metric: Any) -> dict[str, list[torch.Tensor]]:
    """Copies of every state tensor of a metric (a list state as its list)."""
    return {
        name: [t.clone() for t in value] if isinstance(value, list) else [value.clone()]
        for name, value in metric.metric_state.items()
    }


def assert_same_state(before: dict[str, list[torch.Tensor]], after: dict[str, list[torch.Tensor]]) -> None:
    """Two snapshots are identical: same states, dtypes, shapes and values."""
    assert before.keys() == after.keys()
    for name in before:
        assert len(before[name]) == len(after[name]), name
        for old, new in zip(before[name], after[name], strict=True):
            assert old.dtype == new.dtype, name
            assert old.shape == new.shape, name
            assert torch.equal(old, new), name


HOST_READS = ("__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy")


@contextmanager
def host_reads_from_rankme() -> Iterator[list[str]]:
    """Record ``file:line name`` of every read back to the host (``bool(t)``, ``t.item()``, ...) that the package's
    own code (rankme/*.py) makes inside the block; the Tensor methods are wrapped only for its duration.

    On a GPU each such read waits for all queued work, so a per-batch read would stall a validation pipeline.
    """
    import rankme

    package = str(Path(rankme.__file__).resolve().parent)
    calls: list[str] = []
    saved = {name: vars(torch.Tensor).get(name) for name in HOST_READS}

    def counting(name: str) -> Callable[..., Any]:
        original = getattr(torch.Tensor, name)

        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            caller = sys._getframe(1)
            if str(Path(caller.f_code.co_filename).resolve()).startswith(package):
                calls.append(f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno} {name}")
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, counting(name))
        yield calls
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)
