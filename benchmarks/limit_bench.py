"""How close the Gram update is to the machine's float64 matrix-product rate, and where symmetry pays.

The update adds ``Z^T Z`` of the rows to a float64 D x D state. The limit is the best float64 rate of ``torch.mm``
measured in the same run, with contiguous rows and with rows laid out as the metric lays them. ``RankMe.update``
casts each float32 batch into a float64 buffer of 2048 rows (``rankme.metric._BUFFER_ROWS``), whose rows (like the
state's) lie an odd number of 64-byte lines apart (``rankme.metric._float64_rows``), and multiplies a full buffer
in one product. ``Z^T Z`` is symmetric and
``torch.linalg.eigvalsh`` reads only the lower triangle, so the product (``rankme.metric._add_gram_``) computes the
lower triangle recursively: the off-diagonal block of the two halves in one GEMM, then each half's triangle the same
way, down to diagonal squares of at most ``leaf`` features, which are full products (``1 + leaf / D`` times ``n D^2``
FLOP instead of ``2 n D^2``). The leaf (or the full product) is chosen per D from timed products
(``rankme.metric._TUNER``). Here it is measured against the full ``addmm_`` and against every candidate leaf.
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
from rankme.metric import _BUFFER_ROWS, _TUNER, _add_gram_, _float64_rows


def full_update(gram: Tensor, z64: Tensor) -> None:
    """The full product, as the metric's update did before the lower-triangle change."""
    gram.addmm_(z64.T, z64)


def tril_update(gram: Tensor, z64: Tensor, leaf: int | None) -> None:
    """The shipped product with any leaf size (None: the full product), for the leaf sweep."""
    _add_gram_(gram, z64, block=leaf)


def warm_tuner(d: int) -> None:
    """Feed a throw-away metric full buffers at D until the tuner has chosen its leaf there (a few products)."""
    metric = RankMe(nan_strategy="propagate").to(common.DEVICE)
    half = torch.randn(_BUFFER_ROWS // 2, d, device=common.DEVICE)
    while (common.DEVICE.type, d) not in _TUNER.choice:
        metric.update(half)  # every third batch finds the buffer full: a timed product
    common.synchronize()


def shipped_block(d: int) -> int | None:
    """The leaf size ``RankMe`` uses at D on this machine (None: the full product), as measured by its tuner."""
    warm_tuner(d)
    return _TUNER.default(common.DEVICE, d)


def leaf_candidates(d: int) -> list[int | None]:
    return _TUNER.candidates(d)


def tril_flops(n: int, d: int, leaf: int | None) -> float:
    """FLOP of the recursive lower-triangle product of n rows at D with leaves of at most ``leaf`` features."""

    def lower(size: int) -> float:
        if leaf is None or size <= leaf:
            return 2.0 * n * size * size
        half = size // 2
        return 2.0 * n * half * (size - half) + lower(half) + lower(size - half)

    return lower(d)


def shipped_flops(n: int, d: int) -> float:
    """FLOP of the shipped update for n rows at D."""
    return tril_flops(n, d, shipped_block(d))


@dataclass
class MatmulRate:
    label: str
    seconds: float
    gflops: float


def matmul_rates(ds: Sequence[int], batch: int, square: Sequence[int], repeats: int = 5) -> list[MatmulRate]:
    """float64 torch.mm rates (best of ``repeats``, the two layouts taking turns): the update's own shape
    (D x n) @ (n x D) at each D, and square products; each with contiguous rows and with rows laid out as the metric
    lays them (an odd number of 64-byte lines apart), so that the limit is the faster of the two."""

    def padded(t: Tensor) -> Tensor:
        return _float64_rows(t.shape[0], t.shape[1], common.DEVICE).copy_(t)

    shapes = [(f"({d}x{batch}) @ ({batch}x{d})", d, batch, d) for d in ds] + [
        (f"({m}x{m}) @ ({m}x{m})", m, m, m) for m in square
    ]
    rates = []
    for label, m, k, n in shapes:
        a = torch.randn(m, k, dtype=torch.float64, device=common.DEVICE)
        b = torch.randn(k, n, dtype=torch.float64, device=common.DEVICE)
        out = torch.empty(m, n, dtype=torch.float64, device=common.DEVICE)
        operands = {"contiguous": (a, b, out), "rows padded": (padded(a), padded(b), padded(out))}
        best = best_interleaved(
            {name: lambda a=a, b=b, out=out: torch.mm(a, b, out=out) for name, (a, b, out) in operands.items()},
            repeats,
        )
        for name, seconds in best.items():
            rates.append(MatmulRate(f"mm {label}, {name}", seconds, 2 * m * k * n / seconds / 1e9))
    return rates


@dataclass
class UpdateRate:
    d: int
    rows: int
    metric_s: float  # RankMe.update of float32 batches, with the final flush (check, cast, product)
    kernel_s: float  # the shipped product alone (_add_gram_ at the chosen leaf) on float64 buffers, shipped layout
    dense_kernel_s: float  # the product on contiguous buffer and state (rows D float64 apart), at its best leaf
    dense_leaf: int | None  # that leaf
    full_s: float  # the full addmm_ of the same buffers
    full_flop: float  # 2 * rows * D^2
    shipped_flop: float  # what the shipped product actually computes
    leaf: int | None  # the chosen leaf (None: the full product)
    tril: dict[int | None, tuple[float, float]]  # leaf -> (seconds, speed-up over the full product)

    @property
    def metric_effective_gflops(self) -> float:
        """The full product's FLOP per second of RankMe.update: the rate the user gets."""
        return self.full_flop / self.metric_s / 1e9

    @property
    def metric_executed_gflops(self) -> float:
        """The FLOP the shipped update actually performs, per second of RankMe.update: the hardware's efficiency."""
        return self.shipped_flop / self.metric_s / 1e9

    @property
    def metric_triangle_gflops(self) -> float:
        """The lower triangle's own FLOP (rows * D * (D + 1), whatever the leaf) per second of RankMe.update."""
        return self.rows * self.d * (self.d + 1) / self.metric_s / 1e9

    @property
    def kernel_executed_gflops(self) -> float:
        return self.shipped_flop / self.kernel_s / 1e9

    @property
    def full_gflops(self) -> float:
        return self.full_flop / self.full_s / 1e9


def update_rates(ds: Sequence[int], batch: int, buffers: int = 4, repeats: int = 5) -> list[UpdateRate]:
    """At each D: ``RankMe.update`` over ``buffers`` full buffers of float32 batches of ``batch`` rows, the shipped
    product alone on the same rows as float64 buffers (in the metric's layout, and contiguous), the full addmm_, and
    the product at every candidate leaf; best of ``repeats``, taking turns."""
    results = []
    for d in ds:
        leaf = shipped_block(d)
        rows = buffers * _BUFFER_ROWS
        generator = torch.Generator().manual_seed(d)
        pool32 = [torch.randn(batch, d, generator=generator).to(common.DEVICE) for _ in range(8)]
        dense_chunk = torch.randn(_BUFFER_ROWS, d, generator=generator, dtype=torch.float64).to(common.DEVICE)
        chunk = _float64_rows(_BUFFER_ROWS, d, common.DEVICE).copy_(dense_chunk)  # the metric's buffer layout
        metric = RankMe(nan_strategy="propagate").to(common.DEVICE)
        gram = _float64_rows(d, d, common.DEVICE, torch.zeros)
        dense_gram = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)

        def feed(metric: RankMe = metric, pool32: list[Tensor] = pool32, rows: int = rows) -> None:
            for step in range(rows // batch):
                metric.update(pool32[step % len(pool32)])
            metric._flush()

        def products(fn: Callable[[Tensor], None], chunk: Tensor = chunk) -> Callable[[], None]:
            def run() -> None:
                for _ in range(buffers):
                    fn(chunk)

            return run

        fns = {
            "metric": feed,
            "kernel": products(lambda z, gram=gram, leaf=leaf: tril_update(gram, z, leaf)),
            "full": products(lambda z, gram=gram: full_update(gram, z)),
        }
        for k in leaf_candidates(d):
            fns[f"dense leaf{k}"] = products(lambda z, gram=dense_gram, k=k: tril_update(gram, z, k), dense_chunk)
            if k is not None:
                fns[f"leaf{k}"] = products(lambda z, gram=gram, k=k: tril_update(gram, z, k))
        best = best_interleaved(fns, repeats)
        dense_leaf = min(leaf_candidates(d), key=lambda k: best[f"dense leaf{k}"])
        full_s = best["full"]
        tril: dict[int | None, tuple[float, float]] = {None: (full_s, 1.0)}
        tril.update({k: (best[f"leaf{k}"], full_s / best[f"leaf{k}"]) for k in leaf_candidates(d) if k is not None})
        results.append(
            UpdateRate(
                d=d,
                rows=rows,
                metric_s=best["metric"],
                kernel_s=best["kernel"],
                dense_kernel_s=best[f"dense leaf{dense_leaf}"],
                dense_leaf=dense_leaf,
                full_s=full_s,
                full_flop=2.0 * rows * d * d,
                shipped_flop=tril_flops(rows, d, leaf),
                leaf=leaf,
                tril=tril,
            )
        )
    return results


@dataclass
class Overhead:
    d: int
    update_s: float  # RankMe.update of one finite float32 batch, its share of the buffer's product included
    product_s: float  # that batch's share of the shipped product of a full buffer
    abs_max_s: float  # max |z| by aminmax: the batch's finiteness test (and float64 input's scale), one reduction
    cast_s: float  # the float32 batch cast into the float64 buffer (copy_)
    mask_s: float  # zeroing a non-finite batch's rows on the device (masked_fill_ by a 0-dim mask, every batch)


def update_overhead(ds: Sequence[int], batch: int, repeats: int = 20) -> list[Overhead]:
    """What one update of a float32 batch spends besides the product (best of ``repeats``, taking turns)."""
    out = []
    per_buffer = _BUFFER_ROWS // batch
    for d in ds:
        leaf = shipped_block(d)
        z = torch.randn(batch, d, device=common.DEVICE)
        slot = _float64_rows(batch, d, common.DEVICE)
        chunk = _float64_rows(_BUFFER_ROWS, d, common.DEVICE).copy_(torch.randn(_BUFFER_ROWS, d, dtype=torch.float64))
        gram = _float64_rows(d, d, common.DEVICE, torch.zeros)
        finite = torch.ones((), dtype=torch.bool, device=common.DEVICE)
        metric = RankMe(nan_strategy="propagate").to(common.DEVICE)

        def buffer_of_updates(metric: RankMe = metric, z: Tensor = z, per_buffer: int = per_buffer) -> None:
            for _ in range(per_buffer):
                metric.update(z)
            metric._flush()

        best = best_interleaved(
            {
                "update": buffer_of_updates,
                "product": lambda gram=gram, chunk=chunk, leaf=leaf: _add_gram_(gram, chunk, block=leaf),
                "abs_max": lambda z=z: torch.aminmax(z),
                "cast": lambda slot=slot, z=z: slot.copy_(z),
                "mask": lambda slot=slot, finite=finite: slot.masked_fill_(~finite, 0.0),
            },
            repeats,
        )
        out.append(
            Overhead(
                d,
                best["update"] / per_buffer,
                best["product"] / per_buffer,
                best["abs_max"],
                best["cast"],
                best["mask"],
            )
        )
    return out


@dataclass
class EigvalshOption:
    spectrum: str
    float64_s: float  # eigvalsh of the float64 Gram matrix: the shipped epoch end
    float32_s: float  # eigvalsh of the same matrix cast to float32
    value: float  # RankMe from the float64 eigenvalues
    float32_error: float  # relative error of RankMe from the float32 eigenvalues


def eigvalsh_options(d: int) -> list[EigvalshOption]:
    """The epoch-end options at D on Gram matrices of D float32 rows: float64 ``eigvalsh`` (shipped) and float32
    ``eigvalsh`` of the same matrix (half the memory traffic, faster kernels); time, and what float32 loses in RankMe
    on a power-law spectrum (k^-1) and on rank one plus 1e-3 noise (a near-collapse)."""
    from rankme.functional import _effective_rank

    generator = torch.Generator().manual_seed(d)
    k = torch.arange(1, d + 1, dtype=torch.float32)
    spectra = {
        "power-law k^-1": lambda: torch.randn(d, d, generator=generator) * k.pow(-1.0),
        "rank one + 1e-3 noise": lambda: (
            torch.randn(d, 1, generator=generator) * torch.randn(1, d, generator=generator)
            + 1e-3 * torch.randn(d, d, generator=generator)
        ),
    }

    def rankme_of(eigenvalues: Tensor) -> float:
        return float(_effective_rank(eigenvalues.double().flip(0).clamp(min=0).sqrt(), 1e-7))

    out = []
    for name, make in spectra.items():
        z64 = make().to(common.DEVICE, torch.float64)
        gram = z64.T @ z64
        del z64
        gram32 = gram.float()
        float64_s, eig64 = common.timed(lambda gram=gram: torch.linalg.eigvalsh(gram))
        float32_s, eig32 = common.timed(lambda gram32=gram32: torch.linalg.eigvalsh(gram32))
        value = rankme_of(eig64)
        out.append(EigvalshOption(name, float64_s, float32_s, value, abs(rankme_of(eig32) - value) / value))
    return out


def check_tril_exact(d: int = 320, n: int = 600) -> float:
    """Max relative difference of eigvalsh (lower triangle) of the shipped triangular state vs the full product's."""
    z = torch.randn(n, d, dtype=torch.float64, device=common.DEVICE)
    full = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
    tri = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
    for chunk in z.split(128):
        full_update(full, chunk)
        _add_gram_(tri, chunk, block=64)
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
