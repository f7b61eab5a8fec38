"""The metric side by side with the usual approach: update cost, epoch-end latency, whole cost, memory, sync bytes.

Every route sees the same stream of float32 batches, each a fresh tensor (as an encoder would produce it):

- ``gram``: ``rankme.RankMe(mode="gram")``, float64 running ``Z^T Z`` (its lower block triangle), ``eigvalsh`` at
  compute;
- ``embeddings``: ``rankme.RankMe(mode="embeddings")``, float64 rows kept, float64 SVD at compute;
- ``usual``: keep the batches in a list, ``torch.cat`` + float32 ``torch.linalg.svdvals`` at the end, then the
  paper's formula.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import common
import torch
from common import EPS, PeakMemory, rankme_of_spectrum, release_freed_memory, synchronize
from torch import Tensor

from rankme import RankMe

ROUTES = ("gram", "embeddings", "usual")


@dataclass
class RouteResult:
    route: str
    n: int
    d: int
    update_s: float
    latency_s: float
    whole_s: float
    peak_bytes: int
    state_bytes: int
    sync_bytes: int
    value: float
    repeats: int = 1
    runs: list[tuple[float, float]] = field(default_factory=list)


def make_pool(d: int, batch: int, batches: int, seed: int = 0) -> list[Tensor]:
    """Distinct float32 batches with a power-law column scale (a realistic decaying spectrum), on ``common.DEVICE``
    (drawn on the CPU, so every device sees the same numbers)."""
    generator = torch.Generator().manual_seed(seed + d)
    scale = torch.arange(1, d + 1, dtype=torch.float32).pow(-0.5)
    return [torch.randn(batch, d, generator=generator).mul_(scale).to(common.DEVICE) for _ in range(batches)]


def usual_rankme(stored: Sequence[Tensor], eps: float = EPS) -> Tensor:
    """The usual approach at epoch end: stack everything, float32 svdvals, then the paper's formula."""
    return rankme_of_spectrum(torch.linalg.svdvals(torch.cat(list(stored))), eps)


def _tensor_bytes(value: Any) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def metric_state_bytes(metric: RankMe) -> int:
    """Bytes held by the metric's registered states (what a sync sends from each rank)."""
    return sum(_tensor_bytes(getattr(metric, name)) for name in metric._defaults)


def _make_metric(route: str) -> RankMe:
    return RankMe(mode=route).to(common.DEVICE)


def run_route(route: str, pool: Sequence[Tensor], n: int) -> RouteResult:
    """Feed ``n`` rows in the pool's batches to one route, then compute; time and measure it."""
    batch, d = pool[0].shape
    steps = math.ceil(n / batch)
    release_freed_memory()
    update_s = 0.0
    with PeakMemory() as memory:
        stored: list[Tensor] = []
        metric = None if route == "usual" else _make_metric(route)
        update: Callable[[Tensor], Any] = stored.append if metric is None else metric.update
        for step in range(steps):
            rows = min(batch, n - step * batch)
            z = pool[step % len(pool)][:rows].clone()  # a fresh encoder output, not timed
            synchronize()
            start = time.perf_counter()
            update(z)
            synchronize()
            update_s += time.perf_counter() - start
            del z
        start = time.perf_counter()
        value = usual_rankme(stored) if metric is None else metric.compute()
        synchronize()
        latency_s = time.perf_counter() - start
    if metric is None:
        state_bytes = _tensor_bytes(stored)
        sync_bytes = state_bytes  # under DDP the usual approach gathers every rank's float32 rows
    else:
        state_bytes = sync_bytes = metric_state_bytes(metric)
    result = RouteResult(
        route=route,
        n=n,
        d=d,
        update_s=update_s,
        latency_s=latency_s,
        whole_s=update_s + latency_s,
        peak_bytes=memory.peak_delta,
        state_bytes=state_bytes,
        sync_bytes=sync_bytes,
        value=float(value),
    )
    del stored, metric
    release_freed_memory()
    return result


def median_result(results: Sequence[RouteResult]) -> RouteResult:
    first = results[0]
    return RouteResult(
        route=first.route,
        n=first.n,
        d=first.d,
        update_s=statistics.median(r.update_s for r in results),
        latency_s=statistics.median(r.latency_s for r in results),
        whole_s=statistics.median(r.whole_s for r in results),
        peak_bytes=max(r.peak_bytes for r in results),
        state_bytes=first.state_bytes,
        sync_bytes=first.sync_bytes,
        value=first.value,
        repeats=len(results),
        runs=[(r.update_s, r.latency_s) for r in results],
    )


def run_cell(
    n: int,
    d: int,
    routes: Sequence[str],
    batch: int = 512,
    max_repeats: int = 3,
    repeat_budget_s: float = 4.0,
    log: Callable[[str], None] = print,
) -> dict[str, RouteResult]:
    """Run the routes at (n, d), interleaved, repeating while one round costs less than ``repeat_budget_s``."""
    pool = make_pool(d, batch, min(16, math.ceil(n / batch)))
    runs: dict[str, list[RouteResult]] = {route: [] for route in routes}
    for repeat in range(max_repeats):
        round_start = time.perf_counter()
        for route in routes:
            runs[route].append(run_route(route, pool, n))
        round_s = time.perf_counter() - round_start
        log(
            f"  N={n} D={d} round {repeat + 1}: "
            + ", ".join(f"{r} {runs[r][-1].update_s:.2f}+{runs[r][-1].latency_s:.2f}s" for r in routes)
        )
        if round_s > repeat_budget_s:
            break
    del pool
    release_freed_memory()
    results = {route: median_result(rs) for route, rs in runs.items()}
    values = [r.value for r in results.values()]  # float32 values: compare loosely
    spread = (max(values) - min(values)) / max(values)
    if spread > 1e-3:  # the float32 usual approach may differ a little; the two modes must agree
        log(f"  warning: values differ by {spread:.2e} relative at N={n} D={d}: {values}")
    return results


def sync_bytes_formula(route: str, n: int, d: int) -> int:
    """Bytes each sync sends in total, from the state shapes (independent of how they were measured)."""
    if route == "gram":  # uncentred: Z^T Z and N (center=True adds the D-vector of means)
        return 8 * (d * d + 1)
    if route == "embeddings":
        return 8 * (n * d + 1)
    return 4 * n * d


def loglog_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of log(y) against log(x): the growth exponent."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else None
