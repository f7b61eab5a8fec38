"""How close the Gram update is to the machine's float64 matrix-product rate, and whether symmetry pays.

The update adds ``Z^T Z`` (2 * n * D^2 FLOP for a batch of n rows) to a float64 D x D state. The limit is the
float64 rate of ``torch.mm`` measured in the same run. The Gram matrix is symmetric, so only the blocks on and
below the diagonal are needed: ``tril_update`` computes them with one GEMM per block row of b features (about
``n * D^2 * (1 + b/D)`` FLOP), and ``torch.linalg.eigvalsh`` reads only the lower triangle by default.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from common import best_interleaved, median_time
from torch import Tensor

from rankme import RankMe


def full_update(gram: Tensor, z64: Tensor) -> None:
    """What the metric does now: the whole product."""
    gram.addmm_(z64.T, z64)


def tril_update(gram: Tensor, z64: Tensor, block: int) -> None:
    """Add the lower block triangle of ``z64^T z64`` to ``gram``: one GEMM per block row of ``block`` features.

    Block row ``[start, stop)`` gets ``z[:, start:stop]^T z[:, :stop]``: the diagonal block and everything to its
    left. The strictly-upper blocks of ``gram`` are never touched.
    """
    d = z64.shape[1]
    for start in range(0, d, block):
        stop = min(start + block, d)
        gram[start:stop, :stop].addmm_(z64[:, start:stop].T, z64[:, :stop])


MIN_FEATURES = 256


def auto_block(d: int) -> int:
    """The block size that measured best on this CPU: D/16 features, at least 64 (16 GEMMs per update)."""
    return max(64, d // 16)


def tril_flops(n: int, d: int, block: int) -> float:
    return sum(2.0 * n * (min(start + block, d) - start) * min(start + block, d) for start in range(0, d, block))


@dataclass
class MatmulRate:
    label: str
    seconds: float
    gflops: float


def matmul_rates(ds: Sequence[int], batch: int, square: Sequence[int], repeats: int = 5) -> list[MatmulRate]:
    """float64 torch.mm rates (best of ``repeats``): the update's own shape (D x n) @ (n x D) at each D, and
    square products."""
    rates = []
    for d in ds:
        a = torch.randn(batch, d, dtype=torch.float64)
        at = a.T.contiguous()
        out = torch.empty(d, d, dtype=torch.float64)
        seconds = best_interleaved({"mm": lambda a=a, at=at, out=out: torch.mm(at, a, out=out)}, repeats)["mm"]
        rates.append(MatmulRate(f"mm ({d}x{batch}) @ ({batch}x{d})", seconds, 2 * batch * d * d / seconds / 1e9))
    for m in square:
        a = torch.randn(m, m, dtype=torch.float64)
        out = torch.empty(m, m, dtype=torch.float64)
        seconds = best_interleaved({"mm": lambda a=a, out=out: torch.mm(a, a, out=out)}, repeats)["mm"]
        rates.append(MatmulRate(f"mm ({m}x{m}) @ ({m}x{m})", seconds, 2 * m**3 / seconds / 1e9))
    return rates


@dataclass
class UpdateRate:
    d: int
    rows: int
    metric_s: float
    metric_gflops: float
    raw_s: float
    raw_gflops: float
    tril: dict[int, tuple[float, float]]  # block size -> (seconds, speed-up over the bare full product)


def _loop(fn: Callable[[Tensor], None], pool: Sequence[Tensor], steps: int) -> Callable[[], None]:
    def run() -> None:
        for step in range(steps):
            fn(pool[step % len(pool)])

    return run


def update_rates(
    ds: Sequence[int], batch: int, target_flop: float, blocks: Sequence[int], repeats: int = 5
) -> list[UpdateRate]:
    """The metric's update rate at each D (float32 batches in), the bare float64 addmm_ and the triangular
    variants with the block sizes ``blocks`` (those >= D skipped); best of ``repeats``, taking turns."""
    results = []
    for d in ds:
        steps = max(2, min(64, round(target_flop / (2 * batch * d * d))))
        generator = torch.Generator().manual_seed(d)
        pool32 = [torch.randn(batch, d, generator=generator) for _ in range(min(steps, 8))]
        pool64 = [z.double() for z in pool32]
        flop = 2.0 * steps * batch * d * d
        metric = RankMe()
        gram = torch.zeros(d, d, dtype=torch.float64)
        fns = {
            "metric": _loop(metric.update, pool32, steps),
            "raw": _loop(lambda z, gram=gram: full_update(gram, z), pool64, steps),
        }
        for k in blocks:
            if k < d:
                fns[f"tril{k}"] = _loop(lambda z, gram=gram, k=k: tril_update(gram, z, k), pool64, steps)
        best = best_interleaved(fns, repeats)
        raw_s = best["raw"]
        tril = {k: (best[f"tril{k}"], raw_s / best[f"tril{k}"]) for k in blocks if k < d}
        results.append(
            UpdateRate(
                d=d,
                rows=steps * batch,
                metric_s=best["metric"],
                metric_gflops=flop / best["metric"] / 1e9,
                raw_s=raw_s,
                raw_gflops=flop / raw_s / 1e9,
                tril=tril,
            )
        )
    return results


@dataclass
class Overhead:
    d: int
    update_s: float  # RankMe.update of one float32 batch, all included
    upcast_s: float
    finite_rows_s: float  # the metric's check now: isfinite(z64).all(dim=1), then .all()
    finite_sum_s: float  # proposed fast path: isfinite(z64.sum()), the per-row check only when it fails
    addmm_s: float


def update_overhead(ds: Sequence[int], batch: int, repeats: int = 30) -> list[Overhead]:
    """What one update of a float32 batch spends besides the product (best of ``repeats``, taking turns)."""
    out = []
    for d in ds:
        z = torch.randn(batch, d)
        z64 = z.double()
        gram = torch.zeros(d, d, dtype=torch.float64)
        metric = RankMe()
        metric.update(z)
        best = best_interleaved(
            {
                "update": lambda metric=metric, z=z: metric.update(z),
                "upcast": lambda z=z: z.to(torch.float64),
                "rows": lambda z64=z64: bool(torch.isfinite(z64).all(dim=1).all()),
                "sum": lambda z64=z64: bool(torch.isfinite(z64.sum())),
                "addmm": lambda gram=gram, z64=z64: gram.addmm_(z64.T, z64),
            },
            repeats,
        )
        out.append(Overhead(d, best["update"], best["upcast"], best["rows"], best["sum"], best["addmm"]))
    return out


def check_tril_exact(d: int = 96, n: int = 300, block: int = 40) -> float:
    """Max relative difference of eigvalsh (lower triangle) of the triangular state vs the full product's."""
    z = torch.randn(n, d, dtype=torch.float64)
    full = torch.zeros(d, d, dtype=torch.float64)
    tri = torch.zeros(d, d, dtype=torch.float64)
    for chunk in z.split(64):
        full_update(full, chunk)
        tril_update(tri, chunk, block)
    ref = torch.linalg.eigvalsh(full)
    got = torch.linalg.eigvalsh(tri)  # UPLO="L", the default
    return float((ref - got).abs().max() / ref.abs().max())


def eigvalsh_seconds(d: int, repeats: int = 3, threads: int | None = None) -> float:
    """Best of ``repeats`` eigvalsh of a full-rank D x D float64 Gram matrix."""
    a = torch.randn(2 * d, d, dtype=torch.float64)
    gram = a.T @ a
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return best_interleaved({"eig": lambda: torch.linalg.eigvalsh(gram)}, repeats, warmup=0)["eig"]
    finally:
        torch.set_num_threads(previous)


def contention(n: int, d: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Epoch-end work with the machine quiet and with one competing CPU-bound process (another job, a data
    loader worker): eigvalsh of D x D float64 (gram, median of ``repeats``, at all threads and at 1 thread) and
    float32 svdvals of N x D (usual, once, all threads)."""
    gram = torch.randn(2 * d, d, dtype=torch.float64)
    gram = gram.T @ gram
    z = torch.randn(n, d)
    previous = torch.get_num_threads()
    plural = "s" if previous > 1 else ""
    jobs = [
        (f"eigvalsh D={d} (gram), {previous} thread{plural}", previous, repeats, lambda: torch.linalg.eigvalsh(gram)),
        (f"eigvalsh D={d} (gram), 1 thread", 1, repeats, lambda: torch.linalg.eigvalsh(gram)),
        (f"svdvals f32 {n}x{d} (usual), {previous} thread{plural}", previous, 1, lambda: torch.linalg.svdvals(z)),
    ]
    out: dict[str, dict[str, float]] = {}

    def measure(label: str) -> None:
        for name, threads, reps, job in jobs:
            torch.set_num_threads(threads)
            out.setdefault(name, {})[label] = median_time(job, repeats=reps, warmup=0)
        torch.set_num_threads(previous)

    measure("quiet")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        measure("1 busy process")
    finally:
        busy.terminate()
        busy.wait()
    return out


class TrilRankMe(RankMe):
    """Prototype of the proposed update: the metric's own checks, then only the lower block triangle.

    Uncentred gram mode only (``center=True`` runs the metric unchanged). The upper triangle of the state is
    never written past the diagonal blocks; compute is the metric's own, whose ``eigvalsh`` reads only the lower
    triangle (``UPLO="L"``, the default).
    """

    def __init__(self, block: int | None = None, min_features: int = MIN_FEATURES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block = block
        self.min_features = min_features

    def update(self, z: Tensor) -> None:
        if self.mode != "gram" or self.center or z.shape[-1] < self.min_features:
            super().update(z)
            return
        if self.gram.numel() == 0:  # first batch: let the metric size its states (no rows added)
            super().update(z[:0])
        # the metric's own update with the product captured: checks, NaN policy, quota, N
        gram = self.gram
        rows: list[Tensor] = []
        gram.addmm_ = lambda a, b: rows.append(b)  # type: ignore[method-assign]
        try:
            super().update(z)
        finally:
            del gram.addmm_
        if rows and rows[0].shape[0]:
            tril_update(gram, rows[0], self.block or auto_block(gram.shape[0]))
