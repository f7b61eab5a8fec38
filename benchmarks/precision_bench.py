"""Does float32 accumulation of ``Z^T Z`` buy speed on this CPU, and what does it cost in accuracy?

Speed: the metric's float64 path (upcast the float32 batch, the shipped lower-triangle product ``_add_gram_`` in
float64) against the same product in float32 on the batch as it comes. Error: the value on the hard spectra of the
metric's tests, against an independent float64 numpy SVD of the very float32 data that was fed, for

- ``gram f64``: the metric as it is (float64 accumulation, float64 ``eigvalsh``);
- ``gram f32 acc``: float32 ``Z^T Z`` accumulated in float32, ``eigvalsh`` in float64;
- ``gram f32 all``: the same with a float32 ``eigvalsh``;
- ``f32 products, f64 sum``: each batch's product in float32, summed in float64;
- ``usual f32 svdvals``: stack, float32 ``svdvals``;
- on a CUDA device also ``gram tf32 acc``: ``gram f32 acc`` with TF32 matrix products allowed (the tensor-core
  float32 path of Ampere and later GPUs, ``torch.backends.cuda.matmul.allow_tf32``).

Everything runs on ``common.DEVICE``; the inputs are drawn on the CPU, so every device sees the same numbers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import common
import numpy as np
import torch
from common import median_time, rankme_of_spectrum
from torch import Tensor

from rankme import RankMe, RankMeWarning
from rankme.metric import _TUNER, _add_gram_


def _value(s: Tensor) -> float:
    return float(rankme_of_spectrum(s))


def _from_gram(gram: Tensor, n: int) -> float:
    eig = torch.linalg.eigvalsh(gram).flip(0)[: min(n, gram.shape[0])]
    return _value(eig.clamp(min=0).sqrt())


@contextlib.contextmanager
def tf32_products() -> Iterator[None]:
    """Allow TF32 in CUDA float32 matrix products inside the block (torch's default is off): the
    ``fp32_precision`` setting where torch has it, else the older ``allow_tf32`` flag (never both)."""
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(matmul, "fp32_precision") else ("allow_tf32", True)
    previous = getattr(matmul, name)
    setattr(matmul, name, value)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def reference_value(z: Tensor) -> float:
    """RankMe by a float64 numpy SVD: the reference the routes are measured against."""
    return _value(torch.from_numpy(np.linalg.svd(z.double().cpu().numpy(), compute_uv=False)))


def hard_spectra(n: int, d: int, seed: int = 0) -> dict[str, Tensor]:
    """The spectra of the metric's exactness tests, as float32 (n, d) inputs."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    rank1 = randn(n, 1) @ randn(1, d)
    low = randn(n, 8) @ randn(8, d)
    small_n = max(2, d // 2)
    return {
        "gaussian": randn(n, d).float(),
        "rank 1 + 1e-6 noise": (rank1 + 1e-6 * randn(n, d)).float(),
        "rank 8 + 1e-5 noise": (low + 1e-5 * randn(n, d)).float(),
        "offset 1e3 + N(0,1)": (1e3 + randn(n, d)).float(),
        "post-ReLU": torch.relu(randn(n, d) @ randn(d, d) / d**0.5).float(),
        "scale 1e6": (1e6 * randn(n, d)).float(),
        f"N<D (N={small_n})": randn(small_n, d).float(),
    }


@dataclass
class PrecisionRow:
    spectrum: str
    n: int
    d: int
    reference: float
    errors: dict[str, float]


def _routes(batch: int) -> dict[str, Callable[[Tensor], float]]:
    def metric(z: Tensor) -> float:
        m = RankMe().to(common.DEVICE)
        for chunk in z.split(batch):
            m.update(chunk)
        # the value from the float64 spectrum: compute() returns the default dtype (float32), whose rounding
        # (~6e-8) would hide the accumulation error measured here
        return _value(m.summary().singular_values)

    def f32_acc(z: Tensor, f64_eig: bool) -> float:
        gram = torch.zeros(z.shape[1], z.shape[1], device=z.device)
        for chunk in z.split(batch):
            _add_gram_(gram, chunk, _TUNER.default(gram.device, gram.shape[0]))
        return _from_gram(gram.double() if f64_eig else gram, z.shape[0])

    def f32_products(z: Tensor) -> float:
        gram = torch.zeros(z.shape[1], z.shape[1], dtype=torch.float64, device=z.device)
        for chunk in z.split(batch):
            gram += (chunk.T @ chunk).double()
        return _from_gram(gram, z.shape[0])

    def tf32_acc(z: Tensor) -> float:
        with tf32_products():
            return f32_acc(z, True)

    routes: dict[str, Callable[[Tensor], float]] = {
        "gram f64": metric,
        "gram f32 acc": lambda z: f32_acc(z, True),
        "gram f32 all": lambda z: f32_acc(z, False),
        "f32 products, f64 sum": f32_products,
        "usual f32 svdvals": lambda z: _value(torch.linalg.svdvals(z)),
    }
    if common.on_accelerator():
        routes["gram tf32 acc"] = tf32_acc
    return routes


def precision_errors(n: int, d: int, batch: int = 512) -> list[PrecisionRow]:
    rows = []
    routes = _routes(batch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)
        for name, z in hard_spectra(n, d).items():
            ref = reference_value(z)
            z = z.to(common.DEVICE)
            errors = {route: abs(fn(z) - ref) / ref for route, fn in routes.items()}
            rows.append(PrecisionRow(name, z.shape[0], d, ref, errors))
    return rows


@dataclass
class PrecisionSpeed:
    d: int
    f64_s: float
    f32_s: float
    f64_bare_s: float
    tf32_s: float | None = None  # CUDA only

    @property
    def speedup(self) -> float:
        return self.f64_s / self.f32_s


def precision_speed(ds: Sequence[int], batch: int = 512, steps: int = 8, repeats: int = 3) -> list[PrecisionSpeed]:
    """Seconds per ``steps`` updates of float32 batches: upcast + float64 product vs the float32 product (both the
    shipped lower-triangle kernel ``_add_gram_``), and on CUDA the float32 product with TF32 allowed."""
    out = []
    for d in ds:
        pool = [torch.randn(batch, d, device=common.DEVICE) for _ in range(4)]
        g64 = torch.zeros(d, d, dtype=torch.float64, device=common.DEVICE)
        g32 = torch.zeros(d, d, device=common.DEVICE)

        def f64(g64: Tensor = g64, pool: list[Tensor] = pool) -> None:
            for step in range(steps):
                z = pool[step % 4].double()
                _add_gram_(g64, z, _TUNER.default(g64.device, g64.shape[0]))

        def f32(g32: Tensor = g32, pool: list[Tensor] = pool) -> None:
            for step in range(steps):
                z = pool[step % 4]
                _add_gram_(g32, z, _TUNER.default(g32.device, g32.shape[0]))

        pool64 = [z.double() for z in pool]

        def f64_bare(g64: Tensor = g64, pool64: list[Tensor] = pool64) -> None:
            for step in range(steps):
                z = pool64[step % 4]
                _add_gram_(g64, z, _TUNER.default(g64.device, g64.shape[0]))

        def tf32(f32: Callable[[], None] = f32) -> None:
            with tf32_products():
                f32()

        out.append(
            PrecisionSpeed(
                d,
                median_time(f64, repeats=repeats),
                median_time(f32, repeats=repeats),
                median_time(f64_bare, repeats=repeats),
                median_time(tf32, repeats=repeats) if common.on_accelerator() else None,
            )
        )
    return out
