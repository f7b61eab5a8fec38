"""The second SSL method and the selection study: SimCLR's loss and training, and the study's bookkeeping.

The examples are scripts in examples/ that import each other by file name; these tests put that folder on the
import path, as ``python examples/<script>.py`` does. Real Trainer, real digits, no mocks.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_rankme

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import selection_study  # noqa: E402
from digits import DigitsDataModule, linear_probe  # noqa: E402
from pipeline import fit_ssl  # noqa: E402
from simclr import SimCLR, nt_xent_loss  # noqa: E402


def _reference_nt_xent(z_a: np.ndarray, z_b: np.ndarray, temperature: float) -> float:
    """NT-Xent written out row by row in float64: -log of the positive's softmax share among the other 2B - 1."""
    z = np.concatenate([z_a, z_b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z_a)
    losses = []
    for i in range(n):
        positive = (i + b) % n
        others = [j for j in range(n) if j != i]
        logits = np.array([z[i] @ z[j] / temperature for j in others])
        losses.append(-(z[i] @ z[positive] / temperature) + np.log(np.exp(logits).sum()))
    return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_a_row_by_row_reference(temperature: float) -> None:
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(12, 5, generator=generator, dtype=torch.float64)
    z_b = z_a + 0.3 * torch.randn(12, 5, generator=generator, dtype=torch.float64)
    loss = nt_xent_loss(z_a, z_b, temperature=temperature)["loss"]
    assert float(loss) == pytest.approx(_reference_nt_xent(z_a.numpy(), z_b.numpy(), temperature), rel=1e-10)


def test_simclr_rejects_a_non_positive_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SimCLR(temperature=0.0)


@pytest.mark.slow
def test_simclr_trains_through_the_shared_pipeline(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    datamodule = DigitsDataModule()
    model = SimCLR(warmup_epochs=1)
    try:
        result = fit_ssl(model, datamodule, tmp_path, max_epochs=3, limit_train_batches=4, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert sorted(result.rankme) == [0, 1, 2]
    assert sorted(result.checkpoints) == [1, 2]  # the warm-up epoch 0 is no candidate
    assert result.selected_epoch == max(result.checkpoints, key=lambda epoch: (result.rankme[epoch], -epoch))

    # The logged values are the true RankMe of each layer of the selected weights on the validation images.
    state = torch.load(result.selected_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    images = datamodule.val_images()
    assert result.rankme[result.selected_epoch] == pytest.approx(reference_rankme(model.features(images)), rel=1e-5)
    assert result.rankme_projector[result.selected_epoch] == pytest.approx(
        reference_rankme(model.projections(images)), rel=1e-5
    )
    accuracy = linear_probe(model, datamodule.probe_splits())
    assert 0.5 < accuracy <= 1.0  # ten classes: chance is 0.1


@pytest.mark.slow
def test_selection_study_records_every_rule_consistently(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path / "runs"), "--json", str(tmp_path / "study.json")]
    argv += ["--markdown", str(tmp_path / "study.md"), "--seeds", "0", "--max-epochs", "4"]
    argv += ["--lr-warmup-epochs", "1", "--start-epoch", "2", "--warmups", "0", "1", "3", "9"]
    argv += ["--limit-train-batches", "3"]
    report = selection_study.main(argv)

    assert json.loads((tmp_path / "study.json").read_text()) == json.loads(json.dumps(report))
    assert [(run["method"], run["seed"]) for run in report["runs"]] == [("vicreg", 0), ("simclr", 0)]
    for run in report["runs"]:
        rows = run["epochs"]
        assert [row["epoch"] for row in rows] == [0, 1, 2, 3]  # no early stopping
        rankme = {row["epoch"]: row["rankme"] for row in rows}
        projector = {row["epoch"]: row["rankme_projector"] for row in rows}
        accuracy = {row["epoch"]: row["probe_accuracy"] for row in rows}
        best = max(accuracy.values())
        assert accuracy[run["best_by_probe"]["epoch"]] == best
        # Lightning's plain ModelCheckpoint kept the arg-max over all epochs; the library's warm-up one the
        # arg-max from start_epoch (numpy's argmax keeps the first of ties, as both callbacks do).
        values = [rankme[e] for e in range(4)]
        assert run["plain_monitor"]["epoch"] == int(np.argmax(values))
        assert run["warmup_monitor"]["epoch"] == 2 + int(np.argmax(values[2:]))
        assert run["last_epoch"]["epoch"] == 3
        for rule in ("plain_monitor", "warmup_monitor", "best_by_probe", "last_epoch"):
            pick = run[rule]
            assert pick["probe_accuracy"] == accuracy[pick["epoch"]]
            assert pick["gap_points"] == pytest.approx(100 * (best - accuracy[pick["epoch"]]))
        # Warm-up lengths past the last epoch are left out; each kept one is the arg-max from there, per layer.
        for layer, series in (("backbone", rankme), ("projector", projector)):
            picks = run["by_warmup"][layer]
            assert sorted(picks) == ["0", "1", "3"]
            for w, pick in picks.items():
                tail = [series[e] for e in range(int(w), 4)]
                assert pick["epoch"] == int(w) + int(np.argmax(tail))
        rho = selection_study.spearman(values, [accuracy[e] for e in range(4)])
        recorded = run["spearman_with_probe"]["backbone"]["all_epochs"]
        assert recorded is None if math.isnan(rho) else recorded == pytest.approx(rho)

    vicreg = report["summary"]["vicreg"]
    assert vicreg["runs"] == 1
    assert vicreg["mean_gap_points"]["warmup_monitor"] == report["runs"][0]["warmup_monitor"]["gap_points"]
    difference = (
        report["runs"][0]["warmup_monitor"]["probe_accuracy"] - report["runs"][0]["last_epoch"]["probe_accuracy"]
    )
    expected = {"better": int(difference > 0), "equal": int(difference == 0), "worse": int(difference < 0)}
    assert vicreg["warmup_monitor_vs_last_epoch"] == expected
    text = (tmp_path / "study.md").read_text()
    assert text.count("| vicreg | 0 |") == 1
    assert "| simclr | projector |" in text
