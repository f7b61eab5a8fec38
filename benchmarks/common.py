"""Shared helpers of the benchmarks: timing, memory sampling, the machine's description, tables."""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import gc
import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_LIBC: Any = None

EPS = 1e-7
"""The paper's smoothing constant."""

DEVICE = torch.device("cpu")
"""Where the benchmarks put their tensors and metrics (``run.py --device``); set it with :func:`set_device`."""


def rankme_of_spectrum(singular_values: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The paper's RankMe of a vector of singular values, in float64: the benchmarks' one copy of the formula,
    independent of the package's (``p_k = s_k / sum(s) + eps``, ``exp(-sum p_k log p_k)``)."""
    s = singular_values.double()
    p = s / s.sum() + eps
    return torch.exp(-(p * p.log()).sum())


def set_device(name: str) -> torch.device:
    """Run the benchmarks on ``name`` ("cpu", "cuda", "cuda:1"); an unknown or unavailable device is an error."""
    global DEVICE
    try:
        device = torch.device(name)
    except RuntimeError:
        device = torch.device("meta")  # any type that is refused below
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {name}: expected cpu, cuda or cuda:INDEX")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch.cuda.is_available() is False on this machine; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SystemExit(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    DEVICE = device
    return device


def on_accelerator() -> bool:
    return DEVICE.type == "cuda"


def synchronize() -> None:
    """Wait for the accelerator's queued work, so wall-clock timings cover it (a no-op on the CPU)."""
    if on_accelerator():
        torch.cuda.synchronize(DEVICE)


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def release_freed_memory() -> None:
    """Free what is only held by reference cycles (a torchmetrics ``Metric`` is one: its wrapped methods close over
    it), then hand freed heap memory back to the OS (glibc ``malloc_trim``), so the next measurement starts clean
    and no earlier route's memory is freed inside a later route's timing."""
    gc.collect()
    libc = _libc()
    if libc:
        libc.malloc_trim(0)


def rss_bytes() -> int:
    """The resident set size of this process now, from /proc/self/statm."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * PAGE_SIZE


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages."""
    one, five, fifteen = os.getloadavg()
    return one, five, fifteen


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use() -> int | None:
    """Bytes allocated through malloc and not yet freed (glibc ``mallinfo2``: in-use chunks + mmapped blocks).

    Unlike the RSS it does not hide allocations that reuse memory freed earlier, and it counts every
    allocator that goes through malloc: torch's CPU tensors, MKL/LAPACK workspaces, Python objects.
    """
    libc = _libc()
    if not libc or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class PeakMemory:
    """Sample the heap in use (and the RSS) every ``interval`` seconds in a thread, from the start of the block.

    ``peak_delta`` is the peak of the heap in use above its value at the start (the RSS when mallinfo2 is
    missing); spikes shorter than the interval can be missed. On an accelerator (``DEVICE`` is CUDA) it is the
    peak of the device memory allocated by torch above the start instead (``torch.cuda.max_memory_allocated``,
    exact).
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.start = 0
        self.peak = 0
        self.rss_start = 0
        self.rss_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heap = heap_in_use() is not None

    def _sample(self) -> None:
        current = heap_in_use() if self._heap else rss_bytes()
        self.peak = max(self.peak, current or 0)
        self.rss_peak = max(self.rss_peak, rss_bytes())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        release_freed_memory()
        if on_accelerator():
            synchronize()
            torch.cuda.reset_peak_memory_stats(DEVICE)
            self.start = self.peak = torch.cuda.memory_allocated(DEVICE)
            return self
        self.start = self.peak = (heap_in_use() if self._heap else rss_bytes()) or 0
        self.rss_start = self.rss_peak = rss_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if on_accelerator():
            synchronize()
            self.peak = torch.cuda.max_memory_allocated(DEVICE)
            return
        self._sample()
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    @property
    def peak_delta(self) -> int:
        return max(self.peak - self.start, 0)

    @property
    def rss_peak_delta(self) -> int:
        return max(self.rss_peak - self.rss_start, 0)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by ``fn()``, and its result; on an accelerator, including the work it queued."""
    synchronize()
    start = time.perf_counter()
    result = fn()
    synchronize()
    return time.perf_counter() - start, result


def median_time(fn: Callable[[], Any], repeats: int = 5, warmup: int = 1, budget_s: float | None = None) -> float:
    """The median of ``repeats`` timings of ``fn`` after ``warmup`` calls (fewer when ``budget_s`` runs out)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    for _ in range(repeats):
        seconds, _ = timed(fn)
        times.append(seconds)
        spent += seconds
        if budget_s is not None and spent > budget_s:
            break
    return statistics.median(times)


def best_interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1) -> dict[str, float]:
    """The fastest of ``repeats`` timings of each function, the functions taking turns (so a burst of load from
    elsewhere hits them alike); best-of is the usual estimate of what the hardware can do."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            seconds, _ = timed(fn)
            best[name] = min(best[name], seconds)
    return best


def memory_bandwidth_gbs(mib: int = 512, repeats: int = 5) -> float:
    """Copy bandwidth of this process (read + write bytes of ``dst.copy_(src)`` on ``mib`` MiB, best of
    ``repeats``): on a shared VM it moves with the neighbours' load, and so do memory-bound kernels."""
    src = torch.empty(mib * 2**20 // 4).normal_()
    dst = torch.empty_like(src)
    best = best_interleaved({"copy": lambda: dst.copy_(src)}, repeats)["copy"]
    return 2 * src.numel() * 4 / best / 1e9


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (``platform.processor()`` when it is unreadable)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def blas_backend() -> str:
    config = torch.__config__.show()
    for token in ("BLAS_INFO=", "LAPACK_INFO="):
        if token not in config:
            return "unknown"
    blas = config.split("BLAS_INFO=", 1)[1].split(",", 1)[0]
    lapack = config.split("LAPACK_INFO=", 1)[1].split(",", 1)[0]
    return f"BLAS {blas}, LAPACK {lapack}"


@dataclass
class Machine:
    cpu: str
    cores: int
    cpu_family: str
    simd: str
    memory_gib: float
    torch_version: str
    threads: int
    blas: str
    python: str
    date: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] | None = None
    bandwidth_start: float | None = None
    bandwidth_end: float | None = None
    accelerator: str | None = None

    def lines(self) -> list[str]:
        load_end = "n/a" if self.load_end is None else "{:.2f} {:.2f} {:.2f}".format(*self.load_end)
        return [
            f"CPU: {self.cpu} ({self.cpu_family}), {self.cores} cores visible, SIMD: {self.simd}",
            f"Memory: {self.memory_gib:.1f} GiB",
            f"torch {self.torch_version} ({self.blas}), torch threads: {self.threads}, Python {self.python}",
            *([f"Accelerator (every tensor and metric of this run): {self.accelerator}"] if self.accelerator else []),
            f"Date: {self.date}",
            "Load average (1/5/15 min) at start: {:.2f} {:.2f} {:.2f}; at end: {}".format(*self.load_start, load_end),
            "Memory copy bandwidth (copy_ of 512 MiB, 64 MiB with --quick; best of 5) at start: {}; at end: {}".format(
                *(f"{b:.1f} GB/s" if b else "n/a" for b in (self.bandwidth_start, self.bandwidth_end))
            ),
        ]


def describe_machine() -> Machine:
    family = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        info = handle.read()
        fields = {}
        for line in info.splitlines():
            if ":" in line:
                key, value = line.split(":", 1)
                fields.setdefault(key.strip(), value.strip())
        family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    flags = cpu_flags()
    simd = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in flags) or "none found"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return Machine(
        cpu=cpu_model(),
        cores=os.cpu_count() or 1,
        cpu_family=family,
        simd=simd,
        memory_gib=memory,
        torch_version=torch.__version__,
        threads=torch.get_num_threads(),
        blas=blas_backend(),
        python=platform.python_version(),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        load_start=load_average(),
        accelerator=describe_accelerator(),
    )


def describe_accelerator() -> str | None:
    """The CUDA device of this run, its memory and the CUDA version (None on the CPU)."""
    if not on_accelerator():
        return None
    props = torch.cuda.get_device_properties(DEVICE)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}"


def max_rss_bytes() -> int:
    """This process's RSS high-water mark (ru_maxrss)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_bytes(num: float | None) -> str:
    if num is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if num >= scale:
            return f"{num / scale:.1f} {unit}"
    return f"{num:.0f} B"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


@dataclass
class Table:
    """A titled table, printed as aligned text and written as markdown."""

    title: str
    headers: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(cell) for cell in cells])

    def text(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

        out = [self.title, "=" * len(self.title), line(self.headers), line(["-" * w for w in widths])]
        out += [line(row) for row in self.rows]
        out += [f"  note: {note}" for note in self.notes]
        return "\n".join(out)

    def markdown(self, level: int = 3) -> str:
        out = [f"{'#' * level} {self.title}", ""]
        out.append("| " + " | ".join(self.headers) + " |")
        out.append("|" + "|".join("---" for _ in self.headers) + "|")
        out += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out)


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def profile_table(fn: Callable[[], object], row_limit: int) -> str:
    """torch.profiler table of ``fn()``: top ops by self CPU time, by self device time on an accelerator."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_accelerator() else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize()
    sort_by = "self_device_time_total" if on_accelerator() else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort_by, row_limit=row_limit, max_name_column_width=40)
