"""`RankMe.plot` (torchmetrics' style: one value, or values over time) and `RankMe.plot_spectrum`, rendered to real
PNG files with matplotlib's Agg backend."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_embeddings, reference_rankme, reference_singular_values

from rankme import RankMe, RankMeWarning

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def saved_png(fig: object, path: Path) -> Path:
    fig.savefig(path)  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000  # axes, ticks and a curve, not an empty canvas
    return path


def test_plot_draws_the_computed_value_and_renders_to_png(tmp_path: Path) -> None:
    z = make_embeddings("relu", n=120, d=16)
    metric = RankMe()
    metric.update(z)
    fig, ax = metric.plot()
    plotted = np.concatenate([line.get_ydata() for line in ax.get_lines() if len(line.get_ydata())])
    assert plotted[0] == pytest.approx(reference_rankme(z), rel=1e-6)
    saved_png(fig, tmp_path / "value.png")


def test_plot_of_values_over_time_draws_each_one(tmp_path: Path) -> None:
    metric = RankMe()
    values = []
    for seed in range(6):
        z = make_embeddings("low_rank" if seed % 2 else "gaussian", n=64, d=8, seed=seed)
        values.append(metric(z))
    fig, ax = metric.plot(values)
    line = max(ax.get_lines(), key=lambda line: len(line.get_ydata()))
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [v.item() for v in values], rtol=1e-6)
    saved_png(fig, tmp_path / "values.png")


def test_plot_draws_on_a_given_axes() -> None:
    metric = RankMe()
    metric.update(make_embeddings("gaussian", n=40, d=8))
    fig, ax = plt.subplots()
    out_fig, out_ax = metric.plot(ax=ax)  # torchmetrics' own _plot gives no figure here; RankMe gives ax's
    assert out_ax is ax
    assert out_fig is fig
    plt.close(fig)


@pytest.mark.parametrize("mode", ["gram", "embeddings"])
def test_plot_spectrum_draws_the_singular_values_with_the_value_in_the_title(mode: str, tmp_path: Path) -> None:
    z = make_embeddings("relu", n=200, d=32)
    metric = RankMe(mode=mode)
    for batch in z.split(50):
        metric.update(batch)
    fig, ax = metric.plot_spectrum()
    (line,) = ax.get_lines()
    expected = reference_singular_values(z)
    positive = expected > 1e-9 * expected[0]  # dead units: zero singular values are off a log axis
    np.testing.assert_allclose(np.asarray(line.get_xdata()), np.arange(1, 33))
    np.testing.assert_allclose(np.asarray(line.get_ydata())[positive], expected[positive], rtol=1e-6)
    assert ax.get_xscale() == "log"
    assert ax.get_yscale() == "log"
    assert f"RankMe = {reference_rankme(z):.4g}" in ax.get_title()
    assert "N=200, D=32" in ax.get_title()
    saved_png(fig, tmp_path / "spectrum.png")


def test_plot_spectrum_of_a_given_summary_on_a_given_axes(tmp_path: Path) -> None:
    metric = RankMe()
    metric.update(make_embeddings("gaussian", n=60, d=12))
    summary = metric.summary()
    fig, (left, right) = plt.subplots(1, 2)
    metric.plot_spectrum(summary, ax=right)
    assert len(right.get_lines()) == 1
    assert len(left.get_lines()) == 0
    saved_png(fig, tmp_path / "two.png")


def test_plot_without_samples_raises_the_no_samples_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchmetrics' "compute before update"
        with pytest.raises(ValueError, match="no samples"):
            RankMe().plot()


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path: Path) -> None:
    # A real interpreter on which matplotlib is not installed: site-packages seen through a folder of links to
    # every entry but matplotlib's own (python -S: no site-packages of its own), so every other import works.
    site_packages = Path(torch.__file__).resolve().parents[1]
    overlay = tmp_path / "site-packages"
    overlay.mkdir()
    for entry in site_packages.iterdir():
        if not entry.name.lower().startswith(("matplotlib", "mpl_toolkits", "pylab")):
            (overlay / entry.name).symlink_to(entry)
    script = (
        "import torch\n"
        "from rankme import RankMe\n"
        "metric = RankMe(); metric.update(torch.eye(4))\n"
        "for call in (metric.plot, metric.plot_spectrum):\n"
        "    try:\n"
        "        call()\n"
        "    except ModuleNotFoundError as err:\n"
        "        print(type(err).__name__, err)\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": f"{src}:{overlay}", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("ModuleNotFoundError") and "`pip install matplotlib`" in line for line in lines)


def test_plot_values_are_rankme_warnings_free_for_n_at_least_d() -> None:
    metric = RankMe()
    metric.update(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RankMeWarning)
        fig, _ = metric.plot()
    plt.close(fig)
