"""RankMe benchmarks on this machine: ``make bench`` (= ``python benchmarks/run.py``).

Sections (all measured side by side in one run, ratios from that run):

1. streaming at N=25600, D=2048, batches of 512: the metric ("gram") against the usual approach (stack all batches,
   float32 ``torch.linalg.svdvals``, the paper's formula): epoch-end latency and whole cost;
2. the N x D grid: "gram", "embeddings" and the usual approach: update cost, epoch-end latency, whole cost,
   peak memory, state and bytes per sync, and how each grows with N and D;
3. closeness to the limit: the update's FLOP rate against float64 ``torch.mm`` measured in the same run; the shipped
   lower-triangle update against the full product of the same batch, and a block-size sweep (where symmetry pays);
4. the two callbacks' cost on a validation epoch of a conv encoder (a real ``Trainer.validate``);
5. float32 accumulation: speed against float64 and error on the hard spectra;
6. the paper's size (N=25600, D=8192): float32 ``svdvals`` against the Gram route, with the float64 SVD of the
   same rows as the reference (``--full``, and by default on an accelerator; ``--quick`` runs a toy stand-in).

``--quick`` is a smoke check at toy sizes (< 30 s, numbers meaningless); the default set takes several minutes;
``--full`` adds the largest cell (N=102400, D=4096) and section 6. The default run writes docs/benchmarks.md.

``--device cuda`` runs every section on the GPU (tensors, metrics, the Trainer of section 4), with the GPU's
work synchronised into every timing and peak memory read from ``torch.cuda.max_memory_allocated``; its default
report is docs/benchmarks-cuda.md. On an accelerator no grid cell is skipped, the CPU contention probe is left
out, section 5 adds TF32 products, and section 6 runs. On the workplace's lent GPU machine (torch, lightning,
torchmetrics and numpy are there; one command may run 10 minutes), from the repository root, in three calls,
each writing its own part:

    PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/run.py --device cuda \
        --only limits streaming precision callback --markdown $OUT/cuda-1.md
    ... --only grid --markdown $OUT/cuda-2.md
    ... --only paper --markdown $OUT/cuda-3.md
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import common  # noqa: E402
import torch  # noqa: E402
from common import (  # noqa: E402
    Machine,
    Table,
    describe_machine,
    fmt_bytes,
    fmt_ratio,
    fmt_seconds,
    load_average,
    memory_bandwidth_gbs,
    on_accelerator,
    profile_table,
    set_device,
)

if TYPE_CHECKING:
    from metric_bench import RouteResult

ROOT = HERE.parent
ROUTE_LABELS = {"gram": "gram", "embeddings": "embeddings", "usual": "usual"}
ROUTES = ("gram", "embeddings", "usual")
DEFAULT_MARKDOWN = ROOT / "docs" / "benchmarks.md"
DEFAULT_MARKDOWN_CUDA = ROOT / "docs" / "benchmarks-cuda.md"
PAPER_SIZE = (25600, 8192)
SECTIONS = ("limits", "streaming", "grid", "precision", "callback", "paper")


@dataclass
class Preset:
    name: str
    streaming: tuple[int, int]
    streaming_repeats: int
    grid_n: Sequence[int]
    grid_d: Sequence[int]
    skip: dict[tuple[int, int], tuple[Sequence[str], str]]
    limit_d: Sequence[int]
    limit_square: Sequence[int]
    callback: dict[str, object]
    precision_nd: tuple[int, int]
    precision_speed_d: Sequence[int]
    profile: bool
    contention: tuple[int, int] | None = None
    paper: tuple[int, int] | None = None
    few_rows: Sequence[tuple[int, int]] = ()
    limit_repeats: int = 5
    limit_buffers: int = 4
    eig_options_d: int | None = None
    precision_steps: int = 8
    precision_repeats: int = 3
    repeat_budget_s: float = 4.0
    notes: list[str] = field(default_factory=list)


_SLOW_SVD = (
    "skipped by default (--full runs it): its gram updates alone take ~20 s and the float32/float64 SVDs of the"
    " 102400 x 4096 matrix minutes and ~10 GiB on 2 cores"
)
PRESETS = {
    "quick": Preset(
        name="quick",
        streaming=(2048, 256),
        streaming_repeats=1,
        grid_n=(1024, 2048),
        grid_d=(64, 256),
        skip={},
        limit_d=(64, 256),
        limit_square=(256,),
        limit_buffers=1,
        eig_options_d=256,
        callback={"images": 256, "batch_size": 128, "blocks": (1,), "widths": (8,), "projector_dim": 64, "pairs": 1},
        precision_nd=(512, 64),
        precision_speed_d=(128,),
        profile=False,
        paper=(1024, 512),
        few_rows=((64, 256),),
        limit_repeats=3,
        repeat_budget_s=0.5,
        notes=["--quick: toy sizes for a smoke check; the numbers say nothing about the targets."],
    ),
    "default": Preset(
        name="default",
        streaming=(25600, 2048),
        streaming_repeats=3,
        grid_n=(4096, 25600, 102400),
        grid_d=(256, 1024, 2048, 4096),
        skip={(102400, 4096): (ROUTES, _SLOW_SVD)},
        limit_d=(256, 1024, 2048, 4096),
        limit_square=(2048,),
        eig_options_d=8192,
        callback={"images": 4096, "batch_size": 256, "blocks": (1, 1, 1, 1), "pairs": 5},
        precision_nd=(4096, 256),
        precision_speed_d=(1024, 2048),
        profile=True,
        contention=(25600, 2048),
        few_rows=((512, 2048), (1024, 4096), (2048, 4096)),
    ),
}
PRESETS["full"] = Preset(**{**PRESETS["default"].__dict__, "name": "full", "skip": {}, "paper": PAPER_SIZE})


def for_accelerator(preset: Preset) -> Preset:
    """The preset as run on a GPU: every grid cell (the CPU's reasons to skip do not hold), no CPU contention
    probe, more work per timing (64 buffers of rows per update-rate timing) and more repeats, so a measurement lasts
    milliseconds rather than microseconds, the float32-accumulation speed up to D=8192, and the paper's size;
    --quick stays as it is."""
    if preset.name == "quick":
        return preset
    changes = {
        "skip": {},
        "contention": None,
        "paper": PAPER_SIZE,
        "limit_buffers": 64,
        "precision_speed_d": (1024, 2048, 4096, 8192),
        "precision_steps": 64,
        "precision_repeats": 10,
    }
    return Preset(**{**preset.__dict__, **changes})


def _status(met: bool | str | None) -> str:
    if isinstance(met, str):
        return met
    if met is None:
        return "n/a (quick)"
    return "met" if met else "MISSED"


class Report:
    def __init__(self, machine: Machine, command: str, preset: Preset) -> None:
        self.machine = machine
        self.command = command
        self.preset = preset
        self.tables: list[Table] = []
        self.targets: list[tuple[str, str, bool | str | None, str]] = []  # target, measured, met, why
        self.profiles: list[tuple[str, str]] = []
        self.findings: list[str] = []

    def add(self, table: Table) -> None:
        self.tables.append(table)
        print("\n" + table.text(), flush=True)

    def target(self, name: str, measured: str, met: bool | str | None, why: str = "") -> None:
        self.targets.append((name, measured, met, why))

    def targets_table(self) -> Table:
        table = Table("Targets", ["target", "measured", "status", "by how much / why"])
        for name, measured, met, why in self.targets:
            table.add(name, measured, _status(met), why)
        return table

    def markdown(self, elapsed_s: float) -> str:
        out = ["# RankMe benchmarks", ""]
        out += [
            "Measured by `benchmarks/run.py` on the machine below; every ratio compares routes measured side by side"
            " in the same run (same process, interleaved, median of the repeats shown).",
            "",
            "## Machine and run",
            "",
        ]
        out += [f"- {line}" for line in self.machine.lines()]
        out += [f"- Command: `{self.command}` (preset `{self.preset.name}`, {elapsed_s / 60:.1f} min)"]
        out += [f"- {note}" for note in self.preset.notes]
        out += [
            "",
            "Reproduce: `make bench` (= `.venv/bin/python benchmarks/run.py`, the default set, writes"
            " docs/benchmarks.md); `--quick` is a smoke check at toy sizes (< 30 s); `--full` adds the N=102400,"
            " D=4096 cell and the paper's size; `--device cuda` runs it all on a GPU (writes"
            " docs/benchmarks-cuda.md); `--only "
            + " ".join(SECTIONS)
            + "` runs some sections; `--quick` and `--only` runs print only, unless `--markdown PATH`."
            + (
                " Timings on a shared 2-core VM move with the neighbours' load: compare ratios within one run."
                if not self.machine.accelerator
                else " Compare ratios within one run."
            ),
        ]
        if self.machine.accelerator:
            out += [
                "",
                "On an accelerator: the targets below were set for the 2-core CPU; they are evaluated here"
                " for comparison only.",
            ]
        out += ["", "## Targets met / missed", "", self.targets_table().markdown(level=3).split("\n", 2)[2], ""]
        out += [
            "Every row measures the shipped `rankme.RankMe` (`src/rankme/metric.py`). Its gram update:",
            "",
            "- takes max |z| of each batch in one reduction (its finiteness test, and for float64 input its"
            " power-of-two scale), casts the batch into a float64 buffer of 2048 rows and multiplies a full buffer"
            " in one product, so small batches still make large GEMMs (memory independent of N);",
            "- computes only the lower triangle of `Z^T Z` (`_add_gram_`: the off-diagonal block of the two halves in"
            " one GEMM, recursively, down to diagonal squares of at most `leaf` features), about half the FLOP of"
            " the full product; `torch.linalg.eigvalsh` reads only the lower triangle. The leaf (or the full"
            " product) is chosen per D from this machine's timings of the metric's first products. Float32 (and"
            " narrower) rows are multiplied as they are, with the state in units of 1: their squares cannot leave"
            " float64's range. Only float64 input (or a state that arrived at another scale) is rescaled, exactly,"
            " by a power of two: one more pass over the buffer and the state.",
            "",
        ]
        if self.findings:
            out += ["## Findings", ""] + [f"- {finding}" for finding in self.findings] + [""]
        out += ["## Results", ""]
        for table in self.tables:
            out += [table.markdown(level=3), ""]
        if self.profiles:
            out += ["## Profiles", ""]
            for title, text in self.profiles:
                out += [f"### {title}", "", "```", text.rstrip(), "```", ""]
        return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- sections


def section_limits(report: Report, preset: Preset) -> dict[int, float]:
    from limit_bench import (
        check_tril_exact,
        eigvalsh_options,
        eigvalsh_seconds,
        leaf_candidates,
        matmul_rates,
        tril_flops,
        update_overhead,
        update_rates,
    )

    from rankme.metric import _BUFFER_ROWS, _TUNER

    print("\n[3] closeness to the limit: float64 matrix-product rate vs the update path", flush=True)
    batch = 512
    rates = matmul_rates(preset.limit_d, _BUFFER_ROWS, preset.limit_square, repeats=preset.limit_repeats)
    peak = max(rate.gflops for rate in rates)
    table = Table(
        f"Float64 matrix-product rate of this machine (torch.mm, same run, best of {preset.limit_repeats})",
        ["product", "time", "GFLOP/s"],
    )
    for rate in rates:
        table.add(rate.label, fmt_seconds(rate.seconds), f"{rate.gflops:.1f}")
    table.notes.append(f"limit used below: the best of these, {peak:.1f} GFLOP/s")
    report.add(table)

    updates = update_rates(preset.limit_d, batch, buffers=preset.limit_buffers, repeats=preset.limit_repeats)
    table = Table(
        f"Update path throughput: the update's fraction of this machine's float64 mm rate (float32 batches of {batch}"
        f" rows; best of {preset.limit_repeats}, taking turns)",
        [
            "D",
            "rows",
            "RankMe.update",
            "executed GFLOP/s (% of limit)",
            "effective GFLOP/s (% of limit)",
            "lower-triangle GFLOP/s (% of limit)",
            "shipped product alone (leaf)",
            "same, contiguous layout",
            "full product",
            "shipped vs full",
        ],
    )
    for u in updates:
        table.add(
            u.d,
            u.rows,
            fmt_seconds(u.metric_s),
            f"{u.metric_executed_gflops:.1f} ({u.metric_executed_gflops / peak:.0%})",
            f"{u.metric_effective_gflops:.1f} ({u.metric_effective_gflops / peak:.0%})",
            f"{u.metric_triangle_gflops:.1f} ({u.metric_triangle_gflops / peak:.0%})",
            f"{fmt_seconds(u.kernel_s)} (" + ("full" if u.leaf is None else f"leaf {u.leaf}") + ")",
            f"{fmt_seconds(u.dense_kernel_s)} ("
            + ("full" if u.dense_leaf is None else f"leaf {u.dense_leaf}")
            + f"; {u.dense_kernel_s / u.kernel_s:.2f}x the shipped time)",
            f"{fmt_seconds(u.full_s)} ({u.full_gflops / peak:.0%} of limit)",
            f"{u.full_s / u.kernel_s:.2f}x; {1 - u.shipped_flop / u.full_flop:.0%} fewer FLOP",
        )
    exact = check_tril_exact()
    table.notes += [
        "executed: the FLOP the shipped update performs (the lower triangle down to its leaves, about"
        " n*D^2*(1+leaf/D)) per second of RankMe.update, float32 batch in (max |z|, cast into the float64 buffer,"
        " product of each full buffer, the final flush): the hardware efficiency; effective:"
        " the full product's 2*n*D^2 FLOP per second, the rate the user gets; lower-triangle: the triangle's own"
        " n*D*(D+1) FLOP per second, whatever the leaf, the targets' measure (a larger leaf executes more FLOP, so"
        " the executed rate can rise while the update gets no faster)",
        f"shipped product alone: rankme.metric._add_gram_ on float64 buffers of {_BUFFER_ROWS} rows at the leaf this"
        " machine's timings chose, with buffer and state rows an odd number of 64-byte lines apart as the metric"
        " lays them out (rankme.metric._float64_rows); contiguous layout: the product with rows D float64 apart"
        " (at D=2048 and 4096 a power-of-two stride, whose blocks alias in the CPU caches), at whichever leaf (or"
        " the full product) is fastest in that layout; full product:"
        " gram.addmm_(z.T, z) of the same buffers",
        "eigvalsh of the triangular state vs of the full product (D=320): max relative eigenvalue difference"
        f" {exact:.1e}",
    ]
    report.add(table)

    all_leaves = sorted({k for u in updates for k in u.tril if k is not None})
    sweep = Table(
        f"Leaf sweep of the lower-triangle product ({_BUFFER_ROWS}-row float64 buffers; speed-up over the full"
        f" addmm_; best of {preset.limit_repeats}, taking turns) and the tuner's timings",
        ["D", *[f"leaf {k}" for k in all_leaves], "chosen", "tuner's timings per product"],
    )
    for u in updates:
        cells = []
        for k in all_leaves:
            if k in u.tril:
                seconds, speedup = u.tril[k]
                saved = 1 - tril_flops(_BUFFER_ROWS, u.d, k) / (2 * _BUFFER_ROWS * u.d * u.d)
                cells.append(f"{fmt_seconds(seconds)} ({speedup:.2f}x; {saved:.0%} fewer FLOP)")
            else:
                cells.append("-")
        timings = _TUNER.timings.get((common.DEVICE.type, u.d), {})
        tuner = "; ".join(
            ("full" if k is None else str(k)) + ": " + ", ".join(fmt_seconds(t) for t in times)
            for k, times in timings.items()
        )
        sweep.add(u.d, *cells, "full product" if u.leaf is None else u.leaf, tuner or "one candidate")
    sweep.notes.append(
        "leaf: the largest diagonal square computed as a full product; the tuner (rankme.metric._TUNER) times the"
        " metric's first full-buffer products at each D, three per candidate in turn (the full product and leaves"
        f" {', '.join(str(k) for k in leaf_candidates(max(preset.limit_d))[1:])} at the largest D), and keeps the"
        " lowest median for the process"
    )
    report.add(sweep)

    overhead = update_overhead(preset.limit_d, batch)
    table = Table(
        f"Per-batch cost of RankMe.update besides the product ({batch} finite float32 rows; best of 20, taking turns)",
        [
            "D",
            "RankMe.update (share of the product included)",
            "product share",
            "max |z| (aminmax)",
            "cast into the buffer",
            "mask (zero a bad batch)",
            "overhead: update - product",
        ],
    )
    for o in overhead:
        rest = max(o.update_s - o.product_s, 0.0)
        table.add(
            o.d,
            fmt_seconds(o.update_s),
            fmt_seconds(o.product_s),
            fmt_seconds(o.abs_max_s),
            fmt_seconds(o.cast_s),
            fmt_seconds(o.mask_s),
            f"{fmt_seconds(rest)} ({rest / o.update_s:.0%})",
        )
    table.notes.append(
        "max |z| is one reduction that gives the batch's finiteness (NaN or infinity make it non-finite); the batch"
        " is cast into the float64 buffer, and zeroed there if it was not finite (a device-side mask, so nothing is"
        " read back); float32 rows need no scaling pass. The overhead also holds torchmetrics' wrapper and the"
        " counters"
    )
    report.add(table)

    if preset.eig_options_d is not None:
        d = preset.eig_options_d
        print(f"  epoch-end options at D={d} ...", flush=True)
        options = eigvalsh_options(d)
        table = Table(
            f"Epoch-end eigvalsh options at D={d} (Gram matrices of {d} float32 rows; one run each)",
            ["spectrum", "float64 eigvalsh (shipped)", "float32 eigvalsh", "speed-up", "RankMe", "float32 error"],
        )
        for o in options:
            table.add(
                o.spectrum,
                fmt_seconds(o.float64_s),
                fmt_seconds(o.float32_s),
                f"{o.float64_s / o.float32_s:.2f}x",
                f"{o.value:.6g}",
                f"{o.float32_error:.1e}",
            )
        table.notes.append(
            "float32 eigenvalues of a Gram matrix lose everything below about 1e-7 of the largest (the square of the"
            " spectrum's range): the shipped epoch end stays float64, the only option that keeps the 1e-6 exactness"
        )
        report.add(table)

    gpu = on_accelerator()
    eig = Table(
        "eigvalsh of a D x D float64 Gram matrix (the gram route's epoch-end cost; best of 3)",
        ["D", f"on {common.DEVICE}"] if gpu else ["D", f"{torch.get_num_threads()} threads", "1 thread"],
    )
    eig_times = {}
    for d in preset.limit_d:
        eig_times[d] = eigvalsh_seconds(d)
        one_thread = [] if gpu else [fmt_seconds(eigvalsh_seconds(d, threads=1))]
        eig.add(d, fmt_seconds(eig_times[d]), *one_thread)
    report.add(eig)

    if preset.contention is not None:
        from limit_bench import contention

        n, d = preset.contention
        print(f"  contention probe at N={n}, D={d} (one busy-loop subprocess) ...", flush=True)
        probe = contention(n, d)
        table = Table(
            f"Epoch-end work quiet vs with one competing CPU-bound process (N={n}, D={d}; median of 3)",
            ["work", "quiet", "1 busy process", "slow-down"],
        )
        for work, times in probe.items():
            quiet, busy = times["quiet"], times["1 busy process"]
            table.add(work, fmt_seconds(quiet), fmt_seconds(busy), f"{busy / quiet:.1f}x")
        table.notes.append(
            "the busy process is `python -c 'while True: pass'`, started and stopped by the benchmark; it stands for"
            " another job or a data-loader worker sharing the 2 cores"
        )
        report.add(table)
        eig2 = next(v for k, v in probe.items() if k.startswith("eigvalsh") and not k.endswith(", 1 thread"))
        svd2 = next(v for k, v in probe.items() if k.startswith("svdvals") and not k.endswith(", 1 thread"))
        report.findings.append(
            f"Contention: with one competing CPU-bound process, eigvalsh(D={d}) at 2 threads slows down"
            f" {eig2['1 busy process'] / eig2['quiet']:.1f}x and float32 svdvals({n}x{d})"
            f" {svd2['1 busy process'] / svd2['quiet']:.1f}x; the latency ratio usual/gram becomes"
            f" {svd2['1 busy process'] / eig2['1 busy process']:.1f}x (quiet: {svd2['quiet'] / eig2['quiet']:.1f}x)."
        )

    real = preset.name != "quick"
    for target_d in [d for d in (2048, 4096) if d in preset.limit_d] or [preset.limit_d[-1]]:
        at = next(u for u in updates if u.d == target_d)
        triangle = at.metric_triangle_gflops / peak  # the target's measure: the lower triangle's FLOP, any leaf
        why = ""
        if triangle < 0.85:
            kernel = at.rows * target_d * (target_d + 1) / at.kernel_s / 1e9
            why = (
                f"short by {85 - 100 * triangle:.0f} points: the product alone computes the triangle at"
                f" {kernel / peak:.0%} of the limit (GEMMs on blocks of the triangle run below the rate of one large"
                " GEMM; torch exposes no syrk), and the per-batch work (max |z|, cast, mask: table 'Per-batch cost of"
                " RankMe.update besides the product') adds the rest"
            )
        report.target(
            f"update >= 85% of float64 mm (D={target_d})",
            f"lower-triangle FLOP: {triangle:.0%} ({at.metric_triangle_gflops:.1f} of {peak:.1f} GFLOP/s);"
            f" executed FLOP (leaf {at.leaf}): {at.metric_executed_gflops / peak:.0%}; full-product equivalent:"
            f" {at.metric_effective_gflops / peak:.0%}",
            (triangle >= 0.85) if real else None,
            why,
        )
    per_d = ", ".join(
        f"D={u.d}: {u.metric_triangle_gflops / peak:.0%} lower-triangle, {u.metric_executed_gflops / peak:.0%}"
        f" executed, {u.metric_effective_gflops / peak:.0%} effective"
        for u in updates
    )
    report.findings.append(
        f"Update throughput as a fraction of the float64 mm limit ({peak:.1f} GFLOP/s), RankMe.update with float32"
        f" batches of {batch}: {per_d}."
    )
    pays = [
        f"D={u.d}: " + ("full product" if u.leaf is None else f"leaf {u.leaf}, {u.full_s / u.kernel_s:.2f}x")
        for u in updates
    ]
    report.findings.append(
        "Where exploiting symmetry pays (the chosen product alone, speed-up over the full addmm_ of the same rows): "
        + "; ".join(pays)
        + "."
    )
    return eig_times


def routes_table(title: str, results: dict[str, RouteResult], extra: dict[str, Callable[[RouteResult], str]]) -> Table:
    """One row per route: updates, epoch-end latency, whole cost and their ratios to the usual approach, then the
    ``extra`` columns."""
    usual = results["usual"]
    table = Table(
        title,
        [
            "route",
            "updates",
            "epoch-end latency",
            "whole cost",
            "latency usual / route",
            "whole route / usual",
            *extra,
        ],
    )
    for route in ROUTES:
        r = results[route]
        table.add(
            ROUTE_LABELS[route],
            fmt_seconds(r.update_s),
            fmt_seconds(r.latency_s),
            fmt_seconds(r.whole_s),
            f"{usual.latency_s / r.latency_s:.2f}x",
            f"{r.whole_s / usual.whole_s:.2f}x",
            *[cell(r) for cell in extra.values()],
        )
    return table


def section_streaming(report: Report, preset: Preset) -> dict[str, object]:
    from metric_bench import run_cell

    n, d = preset.streaming
    print(f"\n[1] streaming: N={n}, D={d}, batches of 512, gram vs the usual approach", flush=True)
    results = run_cell(
        n, d, ("gram", "usual", "embeddings"), max_repeats=preset.streaming_repeats, repeat_budget_s=float("inf")
    )
    usual = results["usual"]
    table = routes_table(
        f"Streaming vs stack + float32 svdvals: N={n}, D={d}, batches of 512 (median of {results['gram'].repeats})",
        results,
        {"value": lambda r: f"{r.value:.4f}"},
    )
    table.notes.append("targets: latency at least 3x lower (usual / gram >= 3), whole cost at least 1.8x lower")
    table.notes.append(
        "runs (update s, latency s): "
        + "; ".join(f"{k}: {[(round(u, 3), round(v, 3)) for u, v in results[k].runs]}" for k in results)
    )
    report.add(table)
    real = preset.name != "quick"
    r = results["gram"]
    latency_ratio = usual.latency_s / r.latency_s
    whole_ratio = r.whole_s / usual.whole_s
    report.target(
        f"epoch-end latency >= 3x lower than stack + svdvals ({n}x{d})",
        f"{latency_ratio:.2f}x ({fmt_seconds(r.latency_s)} vs {fmt_seconds(usual.latency_s)})",
        latency_ratio >= 3 if real else None,
        "" if latency_ratio >= 3 else f"short by {3 / latency_ratio:.2f}x: the latency is one eigvalsh of D x D",
    )
    below = 1 / whole_ratio
    report.target(
        f"whole streaming cost >= 1.8x below stack + float32 svdvals ({n}x{d})",
        f"{below:.2f}x below ({fmt_seconds(r.whole_s)} vs {fmt_seconds(usual.whole_s)}; updates"
        f" {fmt_seconds(r.update_s)}, epoch end {fmt_seconds(r.latency_s)})",
        below >= 1.8 if real else None,
        "" if below >= 1.8 else f"short by {1.8 / below:.2f}x: see the update-path tables for where the time goes",
    )
    return {"results": results}


def section_grid(report: Report, preset: Preset, reuse: dict[tuple[int, int], dict]) -> dict:
    from metric_bench import loglog_slope, run_cell, sync_bytes_formula

    print("\n[2] the N x D grid", flush=True)
    grid: dict[tuple[int, int], dict] = {}
    skipped: list[str] = []
    for n in preset.grid_n:
        for d in preset.grid_d:
            skip_routes, why = preset.skip.get((n, d), ((), ""))
            routes = [r for r in ROUTES if r not in skip_routes]
            if skip_routes:
                which = "all routes" if set(skip_routes) == set(ROUTES) else ", ".join(skip_routes)
                skipped.append(f"N={n} D={d}: {which} {why}")
            if not routes:
                continue
            if (n, d) in reuse:
                grid[(n, d)] = dict(reuse[(n, d)])
                print(f"  N={n} D={d}: reusing section 1's runs", flush=True)
                continue
            grid[(n, d)] = run_cell(n, d, routes, repeat_budget_s=preset.repeat_budget_s)

    routes_all = ROUTES
    table = Table(
        "N x D grid: time per epoch (updates / epoch-end latency / whole cost), batches of 512",
        ["N", "D", *[ROUTE_LABELS[r] for r in routes_all], "reps"],
    )
    ratios = Table(
        "N x D grid: ratios from the same runs (latency: usual / route, > 1 favours the route; whole: route / usual,"
        " < 1 favours the route)",
        [
            "N",
            "D",
            "latency usual/gram",
            "latency usual/emb",
            "whole gram/usual",
            "whole emb/usual",
        ],
    )
    for (n, d), res in grid.items():

        def cell(route: str, res: dict = res) -> str:
            r = res.get(route)
            if r is None:
                return "skipped"
            return f"{fmt_seconds(r.update_s)} / {fmt_seconds(r.latency_s)} / {fmt_seconds(r.whole_s)}"

        def ratio(a: str, b: str, attr: str, res: dict = res) -> str:
            if a not in res or b not in res:
                return "-"
            return fmt_ratio(getattr(res[a], attr) / getattr(res[b], attr))

        reps = max(r.repeats for r in res.values())
        table.add(n, d, *[cell(r) for r in routes_all], reps)
        ratios.add(
            n,
            d,
            ratio("usual", "gram", "latency_s"),
            ratio("usual", "embeddings", "latency_s"),
            ratio("gram", "usual", "whole_s"),
            ratio("embeddings", "usual", "whole_s"),
        )
    table.notes += skipped
    report.add(table)
    report.add(ratios)

    mem = Table(
        "N x D grid: memory (state held, peak "
        + ("device memory" if on_accelerator() else "heap growth")
        + " during the epoch) and bytes sent per sync",
        [
            "N",
            "D",
            "state gram",
            "state emb",
            "state usual",
            "peak gram",
            "peak emb",
            "peak usual",
            "sync gram",
            "sync emb",
        ],
    )
    for (n, d), res in grid.items():
        g, e, u = res.get("gram"), res.get("embeddings"), res.get("usual")
        mem.add(
            n,
            d,
            fmt_bytes(g.state_bytes) if g else "-",
            fmt_bytes(e.state_bytes) if e else "-",
            fmt_bytes(u.state_bytes) if u else "-",
            fmt_bytes(g.peak_bytes) if g else "-",
            fmt_bytes(e.peak_bytes) if e else "-",
            fmt_bytes(u.peak_bytes) if u else "-",
            fmt_bytes(sync_bytes_formula("gram", n, d)),
            fmt_bytes(sync_bytes_formula("embeddings", n, d)),
        )
    mem.notes += [
        "state: bytes of the metric's registered states after the epoch (usual: the kept float32 batches)",
        (
            "peak: the most device memory allocated by torch above the start of the epoch"
            " (torch.cuda.max_memory_allocated, exact): the kept rows, float64 copies, torch.cat results, solver"
            " workspaces, each batch (a fresh tensor, as an encoder's output would be)"
            if on_accelerator()
            else "peak: the most bytes in use on the malloc heap (glibc mallinfo2) above the start of the epoch,"
            " sampled every 5 ms in a thread: the kept rows, float64 copies, torch.cat results, LAPACK workspaces,"
            " each batch (a fresh tensor, as an encoder's output would be); spikes shorter than 5 ms can be missed."
            " Not the RSS: glibc reuses resident memory freed by the previous route, which hid whole allocations in"
            " an RSS delta"
        ),
        "sync: what each rank sends per sync, from the state shapes: gram 8*(D^2+1) bytes whatever N is (+8*D centred);"
        " embeddings 8*(N*D+1) (all_gather of the rows); the usual approach would gather 4*N*D",
    ]
    report.add(mem)

    # state independent of N
    by_d: dict[int, set[int]] = {}
    for (_, d), res in grid.items():
        if "gram" in res:
            by_d.setdefault(d, set()).add(res["gram"].state_bytes)
    constant = all(len(sizes) == 1 for sizes in by_d.values())
    report.target(
        "gram state and bytes per sync independent of N",
        "; ".join(f"D={d}: {fmt_bytes(next(iter(s)))}" for d, s in by_d.items() if len(s) == 1) or "no data",
        constant,
        "" if constant else "state size varies with N",
    )

    growth = Table(
        "N x D grid: growth exponents (log-log slope: cost ~ N^a at fixed D, ~ D^b at fixed N)",
        ["route", "quantity", *[f"a (D={d})" for d in preset.grid_d], *[f"b (N={n})" for n in preset.grid_n]],
    )
    for route in ROUTES:
        for attr, label in (
            ("update_s", "updates"),
            ("latency_s", "latency"),
            ("whole_s", "whole"),
            ("peak_bytes", "peak"),
        ):
            a_cells = []
            for d in preset.grid_d:
                pts = [(n, getattr(grid[(n, d)][route], attr)) for n in preset.grid_n if route in grid.get((n, d), {})]
                slope = loglog_slope(pts)
                a_cells.append("-" if slope is None else f"{slope:.2f}")
            b_cells = []
            for n in preset.grid_n:
                pts = [(d, getattr(grid[(n, d)][route], attr)) for d in preset.grid_d if route in grid.get((n, d), {})]
                slope = loglog_slope(pts)
                b_cells.append("-" if slope is None else f"{slope:.2f}")
            growth.add(ROUTE_LABELS[route], label, *a_cells, *b_cells)
    growth.notes.append(
        "expected: gram updates ~ N D^2 (about N D^2 (1 + b/D) FLOP, the lower block triangle), gram latency ~ D^3"
        " and independent of N; usual latency ~ N D^2 (tall SVD),"
        " embeddings likewise plus the float64 copies; memory: gram ~ D^2, the others ~ N D"
    )
    report.add(growth)

    real = preset.name != "quick"
    for n, d, need in ((102400, 2048, 10.0), (25600, 2048, 3.0)):
        res = grid.get((n, d))
        if not res or "gram" not in res or "usual" not in res:
            if real:
                report.target(f"epoch-end latency >= {need:.0f}x lower at {n}x{d}", "not measured", None, "")
            continue
        ratio = res["usual"].latency_s / res["gram"].latency_s
        report.target(
            f"epoch-end latency >= {need:.0f}x lower at {n}x{d}",
            f"{ratio:.1f}x ({fmt_seconds(res['gram'].latency_s)} vs {fmt_seconds(res['usual'].latency_s)})",
            ratio >= need if real else None,
            ""
            if ratio >= need
            else f"short by {need / ratio:.2f}x: one eigvalsh of {d} x {d} against the SVD of the stacked rows",
        )
    key_cells = [(n, d) for n, d in ((25600, 2048), (102400, 2048)) if (n, d) in grid]
    cells = [(n, d) for (n, d), res in grid.items() if "gram" in res and "usual" in res]
    whole = {c: grid[c]["gram"].whole_s / grid[c]["usual"].whole_s for c in cells}
    over = [f"{n}x{d}: {r:.2f}x" for (n, d), r in whole.items() if r > 1]
    worst = max(whole.items(), key=lambda item: item[1]) if whole else None
    report.target(
        "whole cost no more than the usual approach's (every grid cell)",
        "; ".join(
            [f"{n}x{d}: {whole[(n, d)]:.2f}x" for n, d in key_cells]
            + ([f"worst {worst[0][0]}x{worst[0][1]}: {worst[1]:.2f}x"] if worst else [])
            + [f"cells over 1.0x: {len(over)} of {len(cells)}"]
        ),
        (not over) if real and cells else None,
        (
            "over in "
            + ", ".join(over)
            + ": where N >> D the float64 updates (about N*D^2 FLOP) take about as long as the float32 SVD of the"
            " tall matrix (see Findings)"
        )
        if over
        else "",
    )
    return grid


def section_few_rows(report: Report, preset: Preset) -> None:
    """Cells below the grid, N < D, where the Gram route's D x D eigvalsh can cost more than an SVD of the few rows
    (and the value is capped by N; the metric warns)."""
    import warnings

    from metric_bench import run_cell

    from rankme import RankMeWarning

    print("\n[2b] below the grid: fewer rows than features", flush=True)
    table = Table(
        "Fewer rows than features (N < D): time per epoch (updates / epoch-end latency / whole cost), batches of 512",
        ["N", "D", *[ROUTE_LABELS[r] for r in ROUTES], "whole gram/usual", "whole emb/usual"],
    )
    worst: list[str] = []
    gram_loses: list[str] = []
    gram_wins: list[str] = []
    for n, d in preset.few_rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankMeWarning)  # "N < D: the value is capped by N", expected here
            res = run_cell(n, d, ROUTES, max_repeats=1)
        cells = [
            f"{fmt_seconds(res[r].update_s)} / {fmt_seconds(res[r].latency_s)} / {fmt_seconds(res[r].whole_s)}"
            for r in ROUTES
        ]
        usual = res["usual"].whole_s
        table.add(n, d, *cells, fmt_ratio(res["gram"].whole_s / usual), fmt_ratio(res["embeddings"].whole_s / usual))
        worst.append(
            f"{n}x{d}: gram {res['gram'].whole_s / usual:.2f}x, embeddings {res['embeddings'].whole_s / usual:.2f}x"
        )
        (gram_loses if res["gram"].whole_s > res["embeddings"].whole_s else gram_wins).append(f"{n}x{d}")
    table.notes.append(
        "outside the grid (N >= 4096 there); one run each. The gram route's epoch end is one eigvalsh of"
        " D x D whatever N is, while an SVD of N x D rows costs about N^2 D: the fewer the rows, the cheaper the"
        " SVD"
    )
    report.add(table)
    report.findings.append(
        "Fewer rows than features (whole cost against the usual approach, one run each): "
        + "; ".join(worst)
        + ". Gram mode cost more than embeddings mode at "
        + (", ".join(gram_loses) or "none of these cells")
        + " and less at "
        + (", ".join(gram_wins) or "none")
        + ". An automatic switch (keep the rows while they are few, fold them into the Gram matrix after) would pay"
        " only where gram mode loses. It is not built: with N < D the value is capped by N and the metric warns that"
        " runs are not comparable, the paper uses N = 25600 >= D, and mode='embeddings' can be chosen for that case."
    )


def explain_grid(report: Report, grid: dict[tuple[int, int], dict]) -> None:
    """Why the ratios come out as they do, with the numbers of this run."""

    def get(n: int, d: int, route: str) -> object | None:
        return grid.get((n, d), {}).get(route)

    ns = sorted({n for n, _ in grid})
    for n in ns:
        per_d = [
            f"D={d}: {grid[(n, d)]['usual'].whole_s / grid[(n, d)]['gram'].whole_s:.2f}x"
            for d in sorted(d for m, d in grid if m == n)
            if "gram" in grid[(n, d)] and "usual" in grid[(n, d)]
        ]
        if per_d:
            report.findings.append(
                f"Whole streaming cost (all updates and the epoch end) below stack + float32 svdvals, N={n}: "
                + ", ".join(per_d)
                + " (usual / gram; > 1 favours the metric)."
            )
    d = 2048 if any(k[1] == 2048 for k in grid) else max(k[1] for k in grid)
    lat = [(n, get(n, d, "gram"), get(n, d, "usual")) for n in ns]
    lat = [(n, g, u) for n, g, u in lat if g is not None and u is not None]
    if len(lat) >= 2:
        report.findings.append(
            f"Latency: at D={d} the gram route's epoch-end work is one eigvalsh of a {d} x {d} matrix whatever N is ("
            + ", ".join(f"N={n}: {fmt_seconds(g.latency_s)}" for n, g, _ in lat)  # type: ignore[attr-defined]
            + "), while the usual approach's SVD of the stacked N x D matrix grows with N ("
            + ", ".join(f"{fmt_seconds(u.latency_s)}" for _, _, u in lat)  # type: ignore[attr-defined]
            + "): the latency ratio grows with N. At small N and large D (4096 x 4096) the two are both O(D^3) and"
            " the ratio is smallest."
        )
    whole = [
        (n, dd, res["gram"].whole_s / res["usual"].whole_s)
        for (n, dd), res in grid.items()
        if "gram" in res and "usual" in res
    ]
    if whole:
        over = [(n, dd, r) for n, dd, r in whole if r > 1]
        worst = max(whole, key=lambda item: item[2])
        why = (
            "the usual approach's float32 SVD of the tall N x D matrix (a QR first) does work of the same order at the"
            " float32 rate, about twice as fast per FLOP on this CPU. So where the updates dominate (N >> D) the two"
            " whole costs are close"
            if not on_accelerator()
            else "the usual approach's float32 SVD of the tall N x D matrix runs in the GPU's solver (cuSOLVER):"
            " the ratios above say how the two compare on this GPU"
        )
        report.findings.append(
            "Whole cost: the gram route's updates compute the lower block triangle of Z^T Z, about N*D^2*(1+b/D)"
            " float64 FLOP (b: the leaf the tuner chose), at close to the float64 GEMM rate; "
            + why
            + "; cells where the gram route costs more: "
            + (", ".join(f"{n}x{dd}: {r:.2f}x" for n, dd, r in over) if over else "none in this run")
            + f"; worst cell {worst[0]}x{worst[1]}: {worst[2]:.2f}x."
        )


def section_precision(report: Report, preset: Preset) -> None:
    from precision_bench import precision_errors, precision_speed

    print("\n[5] float32 accumulation: speed and error", flush=True)
    steps = preset.precision_steps
    speed = precision_speed(preset.precision_speed_d, steps=steps, repeats=preset.precision_repeats)
    tf32 = ["tf32 product", "tf32 speed-up over the metric"] if on_accelerator() else []
    table = Table(
        f"Float32 vs float64 accumulation: {steps} updates of 512 float32 rows (the shipped lower-triangle product in"
        " both)",
        [
            "D",
            "f64: upcast + product (the metric)",
            "f64 product alone",
            "f32 product",
            "f32 speed-up over the metric",
            *tf32,
        ],
    )
    for s in speed:
        tf32_cells = [] if s.tf32_s is None else [fmt_seconds(s.tf32_s), f"{s.f64_s / s.tf32_s:.2f}x"]
        table.add(
            s.d,
            fmt_seconds(s.f64_s),
            fmt_seconds(s.f64_bare_s),
            fmt_seconds(s.f32_s),
            f"{s.speedup:.2f}x",
            *tf32_cells,
        )
    report.add(table)

    n, d = preset.precision_nd
    rows = precision_errors(n, d)
    routes = list(rows[0].errors)
    table = Table(
        f"Relative error of RankMe vs a float64 numpy SVD of the same float32 data (N={n}, D={d}, batches of 512)",
        ["spectrum", "N", "reference", *routes],
    )
    for row in rows:
        table.add(row.spectrum, row.n, f"{row.reference:.6g}", *[f"{row.errors[r]:.1e}" for r in routes])
    table.notes.append(
        "gram f32 acc: float32 Z^T Z summed in float32, float64 eigvalsh; gram f32 all: also float32 eigvalsh;"
        " f32 products, f64 sum: each batch's product in float32, running sum in float64"
        + ("; gram tf32 acc: gram f32 acc with TF32 matrix products allowed" if on_accelerator() else "")
    )
    report.add(table)
    worst = {r: max(row.errors[r] for row in rows) for r in routes}
    report.findings.append(
        "Float32 accumulation: speed-up "
        + ", ".join(f"D={s.d}: {s.speedup:.2f}x" for s in speed)
        + "; worst relative error over the hard spectra: "
        + ", ".join(f"{r}: {e:.1e}" for r, e in worst.items())
        + " (the exactness requirement is 1e-6)."
    )


def section_callback(report: Report, preset: Preset) -> object:
    from callback_bench import callback_cost

    print("\n[4] callbacks on a validation epoch (lightning Trainer.validate)", flush=True)
    result = callback_cost(**preset.callback)  # type: ignore[arg-type]
    table = Table(
        "Two RankMeCallbacks (backbone + projector) on a validation epoch, with vs without, taking turns",
        [
            "run",
            "epoch (median)",
            "vs without (median of the rounds' ratios)",
            "vs without (best of)",
            "inside the callbacks' metrics",
            "of which updates",
            "of which epoch end",
            "accounted cost",
        ],
    )
    without = statistics.median(result.without_s)
    table.add("without callbacks", fmt_seconds(without), "1.000x", "1.000x", "-", "-", "-", "-")
    inside = statistics.median(u + e for u, e in zip(result.update_s, result.epoch_end_s, strict=True))
    extra, accounted = result.paired_ratio - 1, inside / without
    table.add(
        "with callbacks",
        fmt_seconds(statistics.median(result.with_s)),
        f"{result.paired_ratio:.3f}x",
        f"{result.best_ratio:.3f}x",
        fmt_seconds(inside),
        fmt_seconds(statistics.median(result.update_s)),
        fmt_seconds(statistics.median(result.epoch_end_s)),
        f"+{accounted:.1%}",
    )
    table.notes.append(
        f"encoder: {result.encoder}; {result.images} synthetic 32x32x3 images in batches of {result.batch_size};"
        f" {len(result.with_s)} rounds, the order rotating from round to round"
    )
    table.notes.append(
        f"runs without: {[round(s, 2) for s in result.without_s]}, with: {[round(s, 2) for s in result.with_s]}"
    )
    table.notes.append(
        "inside the callbacks' metrics: time in the two metrics' update() (forward hooks) and summary() (eigvalsh)"
        " during a run with callbacks; accounted cost = that / the median epoch without callbacks, an estimate"
        f" that does not depend on run-to-run noise; values: {result.values}"
    )
    report.add(table)
    real = preset.name != "quick"
    per_image = statistics.median(result.update_s) / result.images
    fixed = statistics.median(result.epoch_end_s)
    forward = without / result.images
    backbone_d = preset.callback.get("widths", (64, 128, 256, 512))[-1]  # type: ignore[index]
    projector_d = preset.callback.get("projector_dim", 2048)
    from limit_bench import shipped_flops

    flop_per_image = (shipped_flops(1, backbone_d) + shipped_flops(1, projector_d)) / 1e6  # type: ignore[arg-type]
    report.findings.append(
        f"Callbacks: the two metrics cost {per_image * 1e3:.3f} ms per image in updates (lower triangle of the float64"
        f" Gram of the {backbone_d}-d and {projector_d}-d outputs: {flop_per_image:.1f} MFLOP per"
        f" image) plus {fmt_seconds(fixed)} per epoch at the end (two eigvalsh), against {forward * 1e3:.2f} ms"
        f" per image for this encoder's validation step. They stay within 5% only if the epoch has at least"
        f" {fixed / max(0.05 - per_image / forward, 1e-9):.0f} s of encoder work at this per-image rate"
        f" (here {without:.1f} s), i.e. a larger encoder or a larger validation set; the per-image part alone is"
        f" {per_image / forward:.1%}."
    )
    wall_ok, accounted_ok = extra <= 0.05, accounted <= 0.05
    status: bool | str | None = None
    why = ""
    if real:
        status = wall_ok if wall_ok == accounted_ok else "borderline"
        if status == "borderline":
            why = (
                f"the wall-clock ratio is {'within' if wall_ok else 'over'} 5% but the time inside the callbacks"
                f" is {accounted:.1%} of the epoch: within the run-to-run noise; see the profile"
            )
        elif not wall_ok:
            why = f"over by {max(extra, accounted) - 0.05:.1%} points; see the profile"
    report.target(
        "two callbacks add <= 5% to a validation epoch",
        f"{extra:+.1%} wall clock (median of {len(result.with_s)} rounds' ratios); +{accounted:.1%} accounted",
        status,
        why,
    )
    return result


def section_paper(report: Report, preset: Preset) -> None:
    from metric_bench import run_cell

    assert preset.paper is not None
    n, d = preset.paper
    print(f"\n[6] the paper's size: N={n}, D={d}, float32 svdvals vs the gram route (float64 SVD: reference)")
    results = run_cell(n, d, ("gram", "usual", "embeddings"), max_repeats=1)
    usual, reference = results["usual"], results["embeddings"].value
    table = routes_table(
        f"The paper's size{'' if (n, d) == PAPER_SIZE else ' (a toy stand-in with --quick)'}: N={n}, D={d},"
        f" batches of 512, on {common.DEVICE} (one run)",
        results,
        {
            "peak memory": lambda r: fmt_bytes(r.peak_bytes),
            "value": lambda r: f"{r.value:.4f}",
            "relative difference from the float64 SVD": lambda r: (
                "reference" if r.route == "embeddings" else f"{abs(r.value - reference) / reference:.1e}"
            ),
        },
    )
    table.notes.append(
        "embeddings: the metric's float64 SVD of the stacked rows, the exact value; values are the metric's float32"
        " output (rounding about 6e-8 relative); peak memory: "
        + ("device memory allocated by torch above the start" if on_accelerator() else "malloc heap growth")
    )
    report.add(table)
    gram = results["gram"]
    report.findings.append(
        f"The paper's size ({n} x {d}) on {common.DEVICE}: the gram route's epoch-end latency is"
        f" {fmt_seconds(gram.latency_s)} against {fmt_seconds(usual.latency_s)} for float32 svdvals"
        f" ({usual.latency_s / gram.latency_s:.1f}x lower), whole cost {gram.whole_s / usual.whole_s:.2f}x; relative"
        f" difference from the float64 SVD: gram {abs(gram.value - reference) / reference:.1e}, float32 svdvals"
        f" {abs(usual.value - reference) / reference:.1e}."
    )


def profile_gram_epoch(n: int, d: int) -> str:
    """torch.profiler of one gram epoch (updates + compute): where the time goes."""
    from metric_bench import make_pool

    from rankme import RankMe

    pool = make_pool(d, 512, 8)
    metric = RankMe().to(common.DEVICE)

    def epoch() -> None:
        for step in range(n // 512):
            metric.update(pool[step % len(pool)])
        metric.compute()

    return profile_table(epoch, row_limit=12)


def profile_usual(n: int, d: int) -> str:
    from metric_bench import make_pool, usual_rankme

    pool = make_pool(d, 512, 8)
    stored = [pool[step % len(pool)] for step in range(n // 512)]
    return profile_table(lambda: usual_rankme(stored), row_limit=8)


def profile_callback(preset: Preset) -> str:
    """torch.profiler of one validation epoch with the two callbacks: where the epoch's time goes."""
    from callback_bench import profile_validate

    kwargs = {k: v for k, v in preset.callback.items() if k != "pairs"}
    return profile_validate(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- main


_BEGIN = "<!-- machine: {} -->"
_END = "<!-- end of machine: {} -->"
_MACHINE_LINE = re.compile(r"<!-- machine: (.+?) -->\n(.*?)<!-- end of machine: \1 -->\n?", re.S)


def merge_machine_section(previous: str, key: str, report: str) -> str:
    """The benchmarks file with this machine's section replaced and every other machine's kept.

    Sections are keyed by the CPU model (or the accelerator); each is one run's full report with its headings
    one level down. A file written before sections existed becomes the section of the CPU named in it.
    """
    sections = {name: body for name, body in _MACHINE_LINE.findall(previous)}
    if previous.strip() and not sections:
        legacy = re.search(r"^- CPU: (.+?)(?: \(|, |$)", previous, re.M)
        sections[legacy.group(1).strip() if legacy else "an earlier machine"] = _demote(previous)
    sections[key] = _demote(report)
    out = [
        "# RankMe benchmarks",
        "",
        "One section per machine (CPU model or accelerator), each the latest `benchmarks/run.py` report measured"
        " there; `make bench` replaces the section of the machine it runs on and keeps the others.",
        "",
        *[f"- [{name}](#{_anchor(name)})" for name in sections],
        "",
    ]
    for name, body in sections.items():
        out += [_BEGIN.format(name), f"## {name}", "", body.strip(), _END.format(name), ""]
    return "\n".join(out)


def _demote(markdown: str) -> str:
    """One report's headings one level down, its own title dropped."""
    lines = [line for line in markdown.splitlines() if not line.startswith("# ")]
    return "\n".join("#" + line if line.startswith("#") else line for line in lines)


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def markdown_target(args: argparse.Namespace) -> Path | None:
    """Where the report goes: ``--markdown``, else docs/benchmarks.md for a complete default or full run only; a
    ``--quick`` or ``--only`` run would replace the recorded numbers with toy or partial ones, so it prints only."""
    if args.no_markdown:
        return None
    if args.markdown is not None:
        return args.markdown
    if args.quick or args.only:
        return None
    return DEFAULT_MARKDOWN if torch.device(args.device).type == "cpu" else DEFAULT_MARKDOWN_CUDA


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="toy sizes, a smoke check (< 30 s)")
    size.add_argument("--full", action="store_true", help="also the N=102400, D=4096 cell (long)")
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="write the results here (default: docs/benchmarks.md, or docs/benchmarks-cuda.md with --device cuda;"
        " none with --quick or --only)",
    )
    parser.add_argument("--no-markdown", action="store_true", help="print only")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:index]: where every section runs")
    parser.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    set_device(args.device)
    preset = PRESETS["quick" if args.quick else "full" if args.full else "default"]
    if on_accelerator():
        preset = for_accelerator(preset)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sections = set(args.only or [s for s in SECTIONS if s != "paper" or preset.paper is not None])
    if "paper" in sections and preset.paper is None:
        preset = Preset(**{**preset.__dict__, "paper": PAPER_SIZE})

    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = describe_machine()
    machine.bandwidth_start = memory_bandwidth_gbs(64 if args.quick else 512)
    report = Report(machine, command.strip(), preset)
    print("RankMe benchmarks, preset", preset.name)
    for line in machine.lines():
        print(" ", line)
    start = time.perf_counter()

    # warm-up: MKL, OpenMP pool, LAPACK paths
    w = torch.randn(1024, 256, device=common.DEVICE)
    torch.linalg.svdvals(w)
    torch.linalg.eigvalsh((w.T @ w).double())
    common.synchronize()

    if "limits" in sections:
        section_limits(report, preset)
    reuse: dict[tuple[int, int], dict] = {}
    if "streaming" in sections:
        streaming = section_streaming(report, preset)
        reuse[preset.streaming] = streaming["results"]  # type: ignore[assignment]
    grid = section_grid(report, preset, reuse) if "grid" in sections else {}
    if grid:
        explain_grid(report, grid)
        if preset.few_rows:
            section_few_rows(report, preset)
    if "precision" in sections:
        section_precision(report, preset)
    if "callback" in sections:
        section_callback(report, preset)
    if "paper" in sections:
        section_paper(report, preset)

    if preset.profile and "streaming" in sections:  # profiles of section 1's cell, once per set of runs
        n, d = preset.streaming
        print("\nprofiling one gram epoch and one usual compute ...", flush=True)
        report.profiles.append((f"torch.profiler: one gram epoch, N={n}, D={d}", profile_gram_epoch(n, d)))
        report.profiles.append((f"torch.profiler: the usual approach's compute, N={n}, D={d}", profile_usual(n, d)))
        missed_callback = any(t[0].startswith("two callbacks") and t[2] is not True for t in report.targets)
        if missed_callback:
            print("profiling one validation pair (callback target missed) ...", flush=True)
            report.profiles.append(
                ("torch.profiler: one validation epoch with the two callbacks", profile_callback(preset))
            )

    machine.load_end = load_average()
    machine.bandwidth_end = memory_bandwidth_gbs(64 if args.quick else 512)
    elapsed = time.perf_counter() - start
    print("\n" + report.targets_table().text())
    for finding in report.findings:
        print("  *", finding)
    print(f"\nload average at start {machine.load_start}, at end {machine.load_end}; {elapsed:.0f} s")
    target = markdown_target(args)
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        key = machine.accelerator or machine.cpu
        previous = target.read_text() if target.exists() else ""
        target.write_text(merge_machine_section(previous, key, report.markdown(elapsed)))
        print(f"wrote {target} (the section of {key}; other machines' sections kept)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
