"""How close the Gram update is to the machine's float64 matrix-product rate, and where symmetry pays.

The update adds ``Z^T Z`` of a batch of n rows to a float64 D x D state. The limit is the float64 rate of
``torch.mm`` measured in the same run. ``Z^T Z`` is symmetric and ``torch.linalg.eigvalsh`` reads only the lower
triangle, so the shipped update (``rankme.metric._add_gram_``) computes only the blocks on and below the diagonal,
one GEMM per block row of ``max(64, D // 16)`` features (about ``n * D^2 * (1 + b/D)`` FLOP instead of
``2 * n * D^2``), and the full product below 256 features. Here it is measured against the full ``addmm_`` of the
same batch (the update before that change) and against other block sizes (``tril_update``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import common
import torch
from common import best_interleaved, median_time
from torch import Tensor

from rankme import RankMe
from rankme.metric import _TRIANGLE_MIN_FEATURES, _add_gram_


def full_update(gram: Tensor, z64: Tensor) -> None:
    """The full product, as the metric's update did before the lower-triangle change."""
    gram.addmm_(z64.T, z64)


def tril_update(gram: Tensor, z64: Tensor, block: int) -> None:
    """The shipped kernel's algorithm with any block size, for the block-size sweep.

    Block row ``[start, stop)`` gets ``z[:, start:stop]^T z[:, :stop]``: the diagonal block and everything to its
    left. The strictly-upper blocks of ``gram`` are never touched.
    """
    d = z64.shape[1]
    for start in range(0, d, block):
        stop = min(start + block, d)
        gram[start:stop, :stop].addmm_(z64[:, start:stop].T, z64[:, :stop])


def shipped_block(d: int) -> int | None:
    """The block size ``rankme.metric._add_gram_`` uses at D (None: the full product, below 256 features)."""
    return None if d < _TRIANGLE_MIN_FEATURES else max(64, d // 16)


def tril_flops(n: int, d: int, block: int) -> float:
    return sum(2.0 * n * (min(start + block, d) - start) * min(start + block, d) for start in range(0, d, block))


def shipped_flops(n: int, d: int) -> float:
    """FLOP of the shipped update for a batch of n rows at D."""
    block = shipped_block(d)
    return 2.0 * n * d * d if block is None else tril_flops(n, d, block)


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
        a = torch.randn(batch, d, dtype=torch.float64, device=common.DEVICE)
        at = a.T.contiguous()
        out = torch.empty(d, d, dtype=torch.float64, device=common.DEVICE)
        seconds = best_interleaved({"mm": lambda a=a, at=at, out=out: torch.mm(at, a, out=out)}, repeats)["mm"]
        rates.append(MatmulRate(f"mm ({d}x{batch}) @ ({batch}x{d})", seconds, 2 * batch * d * d / seconds / 1e9))
    for m in square:
        a = torch.randn(m, m, dtype=torch.float64, device=common.DEVICE)
        out = torch.empty(m, m, dtype=torch.float64, device=common.DEVICE)
        seconds = best_interleaved({"mm": lambda a=a, out=out: torch.mm(a, a, out=out)}, repeats)["mm"]
        rates.append(MatmulRate(f"mm ({m}x{m}) @ ({m}x{m})", seconds, 2 * m**3 / seconds / 1e9))
    return rates


@dataclass
class UpdateRate:
    d: int
    rows: int
    metric_s: float  # RankMe.update, float32 batches in (upcast, finiteness check, shipped product)
    kernel_s: float  # the shipped product alone (_add_gram_) on float64 batches
    full_s: float  # the full addmm_ of the same batches (the pre-change update's product)
    full_flop: float  # 2 * rows * D^2
    shipped_flop: float  # what the shipped product actually computes
    tril: dict[int, tuple[float, float]]  # block size -> (seconds, speed-up over the full product)

    @property
    def metric_effective_gflops(self) -> float:
        """The full product's FLOP per second of RankMe.update: the rate the user gets."""
        return self.full_flop / self.metric_s / 1e9

    @property
    def metric_executed_gflops(self) -> float:
        """The FLOP the shipped update actually performs, per second of RankMe.update: the hardware's efficiency."""
        return self.shipped_flop / self.metric_s / 1e9

    @property
    def kernel_executed_gflops(self) -> float:
        return self.shipped_flop / self.kernel_s / 1e9

    @property
    def full_gflops(self) -> float:
        return self.full_flop / self.full_s / 1e9


def _loop(fn: Callable[[Tensor], None], pool: Sequence[Tensor], steps: int) -> Callable[[], None]:
    def run() -> None:
        for step in range(steps):
            fn(pool[step % len(pool)])

    return run


def update_rates(
    ds: Sequence[int], batch: int, target_flop: float, blocks: Sequence[int], repeats: int = 5, max_steps: int = 64
) -> list[UpdateRate]:
    """The metric's update rate at each D (float32 batches in), its product alone, the full float64 addmm_ and
    the triangular kernel with the block sizes ``blocks`` (those >= D skipped); best of ``repeats``, taking
    turns."""
    results = []
    for d in ds:
        steps = max(2, min(max_steps, round(target_flop / (2 * batch * d * d))))
        generator = torch.Generator().manual_seed(d)
        pool32 = [torch.randn(batch, d, generator=generator).to(common.DEVICE) for _ in range(min(steps, 8))]
        pool64 = [z.double() for z in pool32]
        metric = RankMe().to(common.DEVICE)
        gram = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
        fns = {
            "metric": _loop(metric.update, pool32, steps),
            "kernel": _loop(lambda z, gram=gram: _add_gram_(gram, z), pool64, steps),
            "full": _loop(lambda z, gram=gram: full_update(gram, z), pool64, steps),
        }
        for k in blocks:
            if k < d:
                fns[f"tril{k}"] = _loop(lambda z, gram=gram, k=k: tril_update(gram, z, k), pool64, steps)
        best = best_interleaved(fns, repeats)
        full_s = best["full"]
        tril = {k: (best[f"tril{k}"], full_s / best[f"tril{k}"]) for k in blocks if k < d}
        results.append(
            UpdateRate(
                d=d,
                rows=steps * batch,
                metric_s=best["metric"],
                kernel_s=best["kernel"],
                full_s=full_s,
                full_flop=2.0 * steps * batch * d * d,
                shipped_flop=steps * shipped_flops(batch, d),
                tril=tril,
            )
        )
    return results


@dataclass
class Overhead:
    d: int
    update_s: float  # RankMe.update of one finite float32 batch, all included
    upcast_s: float
    finite_sum_s: float  # the shipped check: isfinite(z64.sum()), one reduction
    finite_rows_s: float  # the per-row check, isfinite(z64).all(dim=1): only on batches whose sum is not finite
    product_s: float  # the shipped product, _add_gram_


def update_overhead(ds: Sequence[int], batch: int, repeats: int = 30) -> list[Overhead]:
    """What one update of a float32 batch spends besides the product (best of ``repeats``, taking turns)."""
    out = []
    for d in ds:
        z = torch.randn(batch, d, device=common.DEVICE)
        z64 = z.double()
        gram = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
        metric = RankMe().to(common.DEVICE)
        metric.update(z)
        best = best_interleaved(
            {
                "update": lambda metric=metric, z=z: metric.update(z),
                "upcast": lambda z=z: z.to(torch.float64),
                "sum": lambda z64=z64: bool(torch.isfinite(z64.sum())),
                "rows": lambda z64=z64: bool(torch.isfinite(z64).all(dim=1).all()),
                "product": lambda gram=gram, z64=z64: _add_gram_(gram, z64),
            },
            repeats,
        )
        out.append(Overhead(d, best["update"], best["upcast"], best["sum"], best["rows"], best["product"]))
    return out


def check_tril_exact(d: int = 320, n: int = 600) -> float:
    """Max relative difference of eigvalsh (lower triangle) of the shipped triangular state vs the full product's."""
    z = torch.randn(n, d, dtype=torch.float64, device=common.DEVICE)
    full = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
    tri = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
    for chunk in z.split(128):
        full_update(full, chunk)
        _add_gram_(tri, chunk)
    ref = torch.linalg.eigvalsh(full)
    got = torch.linalg.eigvalsh(tri)  # UPLO="L", the default
    return float((ref - got).abs().max() / ref.abs().max())


def eigvalsh_seconds(d: int, repeats: int = 3, threads: int | None = None) -> float:
    """Best of ``repeats`` eigvalsh of a full-rank D x D float64 Gram matrix (``threads``: CPU threads)."""
    a = torch.randn(2 * d, d, dtype=torch.float64, device=common.DEVICE)
    gram = a.T @ a
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        return best_interleaved({"eig": lambda: torch.linalg.eigvalsh(gram)}, repeats, warmup=0)["eig"]
    finally:
        torch.set_num_threads(previous)


def contention(n: int, d: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """CPU only. Epoch-end work with the machine quiet and with one competing CPU-bound process (another job, a data
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
