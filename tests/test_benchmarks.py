"""`benchmarks/run.py --quick` runs end to end and prints every table (no timing asserts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    markdown = tmp_path_factory.mktemp("bench") / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--markdown", str(markdown)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, markdown.read_text()


TITLES = [
    "Float64 matrix-product rate of this machine",
    "Update path throughput",
    "Leaf sweep of the lower-triangle product",
    "Per-batch cost of RankMe.update besides the product",
    "Epoch-end eigvalsh options at D=256",
    "eigvalsh of a D x D float64 Gram matrix",
    "Streaming vs stack + float32 svdvals: N=2048, D=256",
    "N x D grid: time per epoch",
    "N x D grid: ratios",
    "N x D grid: memory",
    "N x D grid: growth exponents",
    "Fewer rows than features (N < D)",
    "Float32 vs float64 accumulation",
    "Relative error of RankMe vs a float64 numpy SVD",
    "Two RankMeCallbacks (backbone + projector)",
    "The paper's size",
    "Targets",
]


@pytest.mark.slow
def test_quick_prints_every_table(quick_run: tuple[str, str]) -> None:
    stdout, _ = quick_run
    for title in TITLES:
        assert title in stdout, title
    assert "CPU:" in stdout
    assert "torch threads: 2" in stdout


@pytest.mark.slow
def test_quick_rows(quick_run: tuple[str, str]) -> None:
    stdout, _ = quick_run
    lines = stdout.splitlines()
    streaming = lines[lines.index(next(line for line in lines if line.startswith("Streaming vs stack"))) :]
    for route in ("gram", "embeddings", "usual"):
        assert any(line.startswith(route + " ") for line in streaming[:10]), route
    grid_rows = [line.split() for line in lines if line.split()[:2] in (["1024", "64"], ["2048", "256"])]
    assert len(grid_rows) >= 4  # time and memory tables, two cells each
    for spectrum in ("rank 1 + 1e-6 noise", "offset 1e3", "post-ReLU", "scale 1e6", "N<D"):
        assert any(line.startswith(spectrum) for line in lines), spectrum
    for target in (
        "epoch-end latency >= 3x lower than stack",
        "whole streaming cost >= 1.8x below",
        "whole cost no more",
        "update >= 85% of float64 mm",
        "two callbacks",
        "gram state and bytes per sync",
    ):
        assert any(line.startswith(target) for line in lines), target
    assert "tuner's timings per product" in stdout


@pytest.mark.slow
def test_quick_has_no_prototype_rows(quick_run: tuple[str, str]) -> None:
    """The lower-triangle update is shipped: no prototype route, no 'proposed' rows or columns."""
    stdout, markdown = quick_run
    for text in (stdout, markdown):
        assert "tril*" not in text
        assert "TrilRankMe" not in text
        assert "proposed" not in text.lower()


@pytest.mark.slow
def test_quick_markdown(quick_run: tuple[str, str]) -> None:
    _, markdown = quick_run
    assert markdown.startswith("# RankMe benchmarks")
    for heading in ("## Machine and run", "## Targets met / missed", "## Results"):
        assert heading in markdown
    for title in TITLES[:-1]:
        assert f"### {title}" in markdown, title
    assert "| gram |" in markdown


def _run_module():  # benchmarks/ is not a package: import run.py the way `python benchmarks/run.py` sees it
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import run
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return run


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], "docs"),
        (["--full"], "docs"),
        (["--quick"], None),
        (["--only", "limits"], None),  # a partial run must not replace the recorded numbers
        (["--only", "limits", "--markdown", "out.md"], "out.md"),
        (["--no-markdown"], None),
        (["--device", "cuda"], "docs-cuda"),  # a GPU run keeps its own record next to the CPU's
    ],
)
def test_markdown_target(argv: list[str], expected: str | None) -> None:
    run = _run_module()
    target = run.markdown_target(run.parse_args(argv))
    if expected == "docs":
        assert target == ROOT / "docs" / "benchmarks.md"
    elif expected == "docs-cuda":
        assert target == ROOT / "docs" / "benchmarks-cuda.md"
    else:
        assert target == (None if expected is None else Path(expected))


def _bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.slow
def test_only_runs_leave_the_record_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process, at toy sizes: a complete run writes the record, an --only run does not."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the sections import their modules lazily
    run = _run_module()
    record = tmp_path / "benchmarks.md"
    monkeypatch.setattr(run, "DEFAULT_MARKDOWN", record)
    monkeypatch.setitem(run.PRESETS, "default", run.PRESETS["quick"])
    threads = torch.get_num_threads()
    try:
        assert run.main(["--only", "limits"]) == 0
        assert not record.exists()
        assert run.main([]) == 0  # the same patched path is written by a complete run
        assert record.read_text().startswith("# RankMe benchmarks")
        record.unlink()
        assert run.main(["--only", "precision", "--markdown", str(tmp_path / "part.md")]) == 0
        assert not record.exists()
        assert "Float32 vs float64 accumulation" in (tmp_path / "part.md").read_text()
    finally:
        torch.set_num_threads(threads)


def test_a_cuda_index_past_the_last_device_is_refused() -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    proc = _bench("--quick", "--device", f"cuda:{count}")
    assert proc.returncode != 0
    expected = (
        f"this machine has {count} CUDA device(s)" if count else "torch.cuda.is_available() is False on this machine"
    )
    assert f"--device cuda:{count}: {expected}" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_a_gpu_says_so() -> None:
    proc = _bench("--quick", "--device", "cuda")
    assert proc.returncode != 0
    assert "--device cuda: torch.cuda.is_available() is False on this machine; use --device cpu" in proc.stderr


@pytest.mark.parametrize("device", ["gpu", "mps"])
def test_unknown_device_says_what_is_expected(device: str) -> None:
    proc = _bench("--quick", "--device", device)
    assert proc.returncode != 0
    assert f"--device {device}: expected cpu, cuda or cuda:INDEX" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_on_cuda(tmp_path: Path) -> None:
    markdown = tmp_path / "cuda.md"
    proc = _bench("--quick", "--device", "cuda", "--markdown", str(markdown))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for title in TITLES:
        assert title in proc.stdout, title
    assert "Accelerator (every tensor and metric of this run): " in proc.stdout
    assert "gram tf32 acc" in proc.stdout
    assert "tf32 speed-up over the metric" in proc.stdout
    assert "on cuda" in proc.stdout
    assert "evaluated here for comparison only" in markdown.read_text()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_benchmark_routes_really_run_on_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import common
    from metric_bench import make_pool, run_route

    common.set_device("cuda")
    try:
        pool = make_pool(256, 512, 2)
        assert all(z.is_cuda for z in pool)
        for route in ("gram", "embeddings", "usual"):
            result = run_route(route, pool, 1024)
            assert result.peak_bytes > 0, route  # device memory was allocated: the route ran on the GPU
    finally:
        common.set_device("cpu")


def test_the_benchmarks_file_keeps_one_section_per_machine() -> None:
    run = _run_module()
    legacy = (
        "# RankMe benchmarks\n\n## Machine and run\n\n- CPU: Old Xeon (x86_64), 2 cores\n\n### Table\n\nold numbers\n"
    )
    first = run.merge_machine_section(legacy, "New EPYC", "# RankMe benchmarks\n\n## Machine and run\n\nnew numbers\n")
    assert "<!-- machine: Old Xeon -->" in first
    assert "old numbers" in first
    assert "#### Table" in first  # the old report's headings one level down, under its machine
    assert "new numbers" in first
    again = run.merge_machine_section(first, "New EPYC", "# RankMe benchmarks\n\nnewer numbers\n")
    assert "old numbers" in again
    assert "newer numbers" in again
    assert "new numbers\n" not in again
    assert again.count("<!-- machine: ") == 2
    assert again.startswith("# RankMe benchmarks")
