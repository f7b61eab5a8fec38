"""Draw docs/rankme_plot.png: `RankMe.plot()` over ten synthetic epochs and `RankMe.plot_spectrum()` of the last.

Each "epoch" is 4096 x 256 Gaussian embeddings whose singular values follow k^-a with a decreasing from 3 to 0.1,
so the spectrum flattens and RankMe rises, as in a healthy run.

    .venv/bin/python examples/plot_figure.py [--out docs/rankme_plot.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from rankme import RankMe


def epoch_embeddings(power: float, n: int = 4096, d: int = 256, seed: int = 0) -> torch.Tensor:
    """(n, d) rows with singular values proportional to k^-power (a random rotation of a scaled Gaussian)."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, d + 1, dtype=torch.float64) ** -power
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return (torch.randn(n, d, generator=generator, dtype=torch.float64) * scale) @ rotation


def main(out: Path) -> None:
    metric = RankMe()
    values = []
    for power in torch.linspace(3.0, 0.1, 10).tolist():
        metric.reset()
        metric.update(epoch_embeddings(power))
        values.append(metric.compute())
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    metric.plot(values, ax=left)
    left.set_xlabel("epoch")
    left.set_title("RankMe per validation epoch (metric.plot(values))")
    metric.plot_spectrum(ax=right)
    right.set_title(f"Last epoch: {right.get_title()}\n(metric.plot_spectrum())", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"Wrote {out}: RankMe {float(values[0]):.1f} -> {float(values[-1]):.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "rankme_plot.png")
    main(parser.parse_args().out)
