"""The end-to-end demo: label-free checkpoint selection with RankMe on real images, offline, on a CPU.

A small VICReg model (Bardes et al., 2022) learns from scikit-learn's ``load_digits`` images (8 x 8 grey
digits that ship inside scikit-learn, so nothing is downloaded) with real augmentations: random affine
crops (scale, rotation, shear, shift), contrast jitter, cutout and pixel noise, all done in torch on
whole batches. Training sees no labels. Two :class:`rankme.RankMeCallback` instances log RankMe of the
backbone (``rankme``) and of the projector (``rankme_projector``) at every validation epoch, and
``rankme`` drives ``ModelCheckpoint(monitor="rankme", mode="max")`` and
``EarlyStopping(monitor="rankme", mode="max")``.

Both ignore the learning-rate warm-up epochs (:class:`WarmupModelCheckpoint`, :class:`WarmupEarlyStopping`):
a barely trained network has a *high* RankMe (random features are high-rank; the paper notes that a high
rank is necessary but not sufficient), so epoch 0 would otherwise win the arg-max. The demo prints those
epochs too, so the effect is visible.

After training, labels are used for one thing only: a linear probe (standardised logistic regression)
on the frozen backbone features of every epoch's checkpoint, fitted on the training images and scored on
a held-out split, to show how good RankMe's label-free pick was. The demo prints a table, writes
``summary.json`` and a plot, and leaves an offline W&B run to ``wandb sync``.

Run it with ``make demo`` or ``python examples/demo.py --help``; a tiny version (as the tests run it) is
``main(["--max-epochs", "3", "--warmup-epochs", "1", "--limit-train-batches", "2", "--out", "/tmp/x"])``.
The same model and data run under LightningCLI with ``python -m rankme.demo_cli fit --config
configs/demo.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger, WandbLogger
from scipy import stats
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from rankme.callback import RankMeCallback
from rankme.metric import RankMe
from rankme.selection import WarmupEarlyStopping, WarmupModelCheckpoint

__all__ = [
    "DigitsAugment",
    "DigitsDataModule",
    "ProbeSplits",
    "RunResult",
    "VICReg",
    "demo_callbacks",
    "fit_ssl",
    "linear_probe",
    "main",
    "make_wandb_logger",
    "quiet_lightning_logs",
    "resolve_wandb_mode",
    "spearman",
    "vicreg_loss",
]

_LOG = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ProbeSplits:
    """Labelled images for the linear probe only: fit on ``train``, score on the held-out ``test``."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


class DigitsDataModule(LightningDataModule):
    """scikit-learn's 1797 handwritten digits (8 x 8, grey) split three ways, with a fixed seed.

    - train (the rest): self-supervised training; its dataloader yields images only, no labels;
    - val (``val_fraction``): what RankMe is computed on, images only;
    - test (``test_fraction``): held out, labelled, used only by the linear probe after training.

    The split is stratified by class so that every split holds every digit; the probe fits its classifier
    on the train images with their labels and scores it on the test images.

    Args:
        batch_size: training batch size (validation uses whole-split batches of up to 512).
        val_fraction: fraction of the images used for RankMe.
        test_fraction: fraction held out for the probe's score.
        split_seed: seed of the split (independent of the training seed).
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < val_fraction < 1 or not 0 < test_fraction < 1 or val_fraction + test_fraction >= 1:
            raise ValueError(
                "Expected `val_fraction` and `test_fraction` in (0, 1) with a sum below 1, but got"
                f" {val_fraction!r} and {test_fraction!r}."
            )
        if batch_size < 2:
            raise ValueError(f"Expected argument `batch_size` to be >= 2 (VICReg needs a batch), got {batch_size!r}.")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self._splits: dict[str, tuple[Tensor, Tensor]] | None = None

    def _load(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self._splits is None:
            from sklearn.datasets import load_digits
            from sklearn.model_selection import train_test_split

            digits = load_digits()
            images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8), [0, 1]
            labels = torch.tensor(digits.target, dtype=torch.long)
            index = list(range(len(labels)))
            rest, test = train_test_split(
                index, test_size=self.test_fraction, stratify=labels.numpy(), random_state=self.split_seed
            )
            train, val = train_test_split(
                rest,
                test_size=self.val_fraction / (1 - self.test_fraction),
                stratify=labels[rest].numpy(),
                random_state=self.split_seed,
            )
            self._splits = {
                name: (images[idx], labels[idx])
                for name, idx in (("train", sorted(train)), ("val", sorted(val)), ("test", sorted(test)))
            }
        return self._splits

    @override
    def setup(self, stage: str) -> None:
        self._load()

    @override
    def train_dataloader(self) -> DataLoader:
        images, _ = self._load()["train"]
        return DataLoader(TensorDataset(images), batch_size=self.batch_size, shuffle=True, drop_last=True)

    @override
    def val_dataloader(self) -> DataLoader:
        images, _ = self._load()["val"]
        return DataLoader(TensorDataset(images), batch_size=512, shuffle=False)

    def val_images(self) -> Tensor:
        """The validation images that RankMe is computed on (no labels)."""
        return self._load()["val"][0]

    def probe_splits(self) -> ProbeSplits:
        """The labelled train and held-out test images, for the linear probe after training."""
        splits = self._load()
        return ProbeSplits(*splits["train"], *splits["test"])


class DigitsAugment(nn.Module):
    """Random views of a batch of (B, 1, H, W) images in [0, 1], each image with its own random draw.

    A random affine map (zoom-in crop of scale ``scale``, rotation up to ``max_rotation`` degrees, shear up to
    ``max_shear``, shift up to ``max_shift`` of the half-width) resampled bilinearly, a contrast/brightness
    jitter, a cutout square with probability ``cutout_p`` and gaussian pixel noise of std ``noise_std``. Every
    draw comes from torch's global generator, so ``seed_everything`` makes the views reproducible.

    Example:
        >>> import torch
        >>> augment = DigitsAugment()
        >>> views = augment(torch.rand(4, 1, 8, 8))
        >>> views.shape, bool(((views >= 0) & (views <= 1)).all())
        (torch.Size([4, 1, 8, 8]), True)
    """

    def __init__(
        self,
        scale: tuple[float, float] = (0.7, 1.1),
        max_rotation: float = 15.0,
        max_shear: float = 0.15,
        max_shift: float = 0.2,
        contrast: float = 0.3,
        cutout_p: float = 0.5,
        noise_std: float = 0.05,
    ) -> None:
        super().__init__()
        self.scale = scale
        self.max_rotation = max_rotation
        self.max_shear = max_shear
        self.max_shift = max_shift
        self.contrast = contrast
        self.cutout_p = cutout_p
        self.noise_std = noise_std

    @override
    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        device = x.device

        def uniform(low: float, high: float, *size: int) -> Tensor:
            return torch.empty(b, *size, device=device).uniform_(low, high)

        zoom = uniform(*self.scale)
        angle = uniform(-self.max_rotation, self.max_rotation) * math.pi / 180
        shear = uniform(-self.max_shear, self.max_shear)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack(
            [
                torch.stack([cos * zoom, (-sin + shear) * zoom, uniform(-self.max_shift, self.max_shift)], dim=1),
                torch.stack([sin * zoom, cos * zoom, uniform(-self.max_shift, self.max_shift)], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        gain = uniform(1 - self.contrast, 1 + self.contrast, 1, 1, 1)
        bias = uniform(-self.contrast / 3, self.contrast / 3, 1, 1, 1)
        out = out * gain + bias

        # Cutout: a 3 x 3 square of zeros at a random place, on a random subset of the batch.
        cy = torch.randint(0, h, (b, 1, 1, 1), device=device)
        cx = torch.randint(0, w, (b, 1, 1, 1), device=device)
        rows = torch.arange(h, device=device).view(1, 1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, 1, w)
        square = ((rows - cy).abs() <= 1) & ((cols - cx).abs() <= 1)
        apply = torch.rand(b, 1, 1, 1, device=device) < self.cutout_p
        out = out.masked_fill(square & apply, 0.0)

        out = out + self.noise_std * torch.randn_like(out)
        return out.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------------------


def vicreg_loss(
    z_a: Tensor, z_b: Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0, cov_coeff: float = 1.0
) -> dict[str, Tensor]:
    """VICReg's loss of two (B, D) batches of projections: invariance, variance and covariance terms.

    Returns a dict with the weighted total under ``"loss"`` and the three unweighted terms.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> z = torch.randn(256, 16)
        >>> terms = vicreg_loss(z, z)
        >>> float(terms["invariance"]), float(terms["variance"]) < 0.1
        (0.0, True)
    """
    invariance = F.mse_loss(z_a, z_b)
    z_a = z_a - z_a.mean(dim=0)
    z_b = z_b - z_b.mean(dim=0)
    std_a = torch.sqrt(z_a.var(dim=0) + 1e-4)
    std_b = torch.sqrt(z_b.var(dim=0) + 1e-4)
    variance = (F.relu(1 - std_a).mean() + F.relu(1 - std_b).mean()) / 2
    n, d = z_a.shape
    cov_a = (z_a.T @ z_a) / (n - 1)
    cov_b = (z_b.T @ z_b) / (n - 1)
    off_diagonal = ~torch.eye(d, dtype=torch.bool, device=z_a.device)
    covariance = cov_a[off_diagonal].pow(2).sum() / d + cov_b[off_diagonal].pow(2).sum() / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    return {"loss": loss, "invariance": invariance, "variance": variance, "covariance": covariance}


class VICReg(LightningModule):
    """VICReg on 8 x 8 digits: a small conv ``backbone`` (64-d features) and an MLP ``projector``.

    Training draws two augmented views of each image and minimises :func:`vicreg_loss` of their
    projections; labels never reach this module. ``validation_step`` embeds the clean validation images
    once (backbone, then projector), which is exactly what the two ``RankMeCallback`` hooks capture.

    Args:
        feature_dim: width of the backbone's output (the representation that is probed).
        projector_dim: width of the projector's hidden and output layers.
        sim_coeff: weight of the invariance term (VICReg's lambda).
        std_coeff: weight of the variance term (mu).
        cov_coeff: weight of the covariance term (nu).
        lr: peak AdamW learning rate: linear warmup over ``warmup_epochs``, then cosine decay to 0 at the
            end of the schedule (updated every step).
        weight_decay: AdamW weight decay.
        augment_strength: multiplies the geometric and photometric ranges of :class:`DigitsAugment`.
        warmup_epochs: epochs of linear learning-rate warmup.

    Example:
        >>> import torch
        >>> model = VICReg()
        >>> model.backbone(torch.rand(3, 1, 8, 8)).shape, model(torch.rand(3, 1, 8, 8)).shape
        (torch.Size([3, 64]), torch.Size([3, 128]))
    """

    def __init__(
        self,
        feature_dim: int = 64,
        projector_dim: int = 128,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        augment_strength: float = 1.0,
        warmup_epochs: int = 10,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8 x 8 -> 4 x 4
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, feature_dim),
            nn.ReLU(inplace=True),  # post-ReLU features, as a ResNet's pooled output
        )
        self.projector = nn.Sequential(
            nn.Linear(feature_dim, projector_dim),
            nn.BatchNorm1d(projector_dim),
            nn.ReLU(inplace=True),
            nn.Linear(projector_dim, projector_dim),
            nn.BatchNorm1d(projector_dim),
            nn.ReLU(inplace=True),
            nn.Linear(projector_dim, projector_dim),
        )
        s = augment_strength
        self.augment = DigitsAugment(
            scale=(1 - 0.3 * s, 1 + 0.1 * s),
            max_rotation=15.0 * s,
            max_shear=0.15 * s,
            max_shift=0.2 * s,
            contrast=min(0.3 * s, 0.9),
            cutout_p=min(0.5 * s, 1.0),
            noise_std=0.05 * s,
        )

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Frozen backbone features of clean images, in eval mode, for the probe."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.backbone(chunk.to(self.device)) for chunk in x.split(batch_size)]).cpu()
        finally:
            self.train(was_training)

    @torch.no_grad()
    def projections(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Projector outputs of clean images, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self(chunk.to(self.device)) for chunk in x.split(batch_size)]).cpu()
        finally:
            self.train(was_training)

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        (images,) = batch  # images only: the training data carries no labels
        with torch.no_grad():
            view_a, view_b = self.augment(images), self.augment(images)
        terms = vicreg_loss(
            self(view_a),
            self(view_b),
            sim_coeff=self.hparams["sim_coeff"],
            std_coeff=self.hparams["std_coeff"],
            cov_coeff=self.hparams["cov_coeff"],
        )
        self.log("train_loss", terms["loss"], prog_bar=True, on_step=False, on_epoch=True)
        for key in ("invariance", "variance", "covariance"):
            self.log(f"train_{key}", terms[key], on_step=False, on_epoch=True)
        return terms["loss"]

    @override
    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        (images,) = batch
        self(images)  # one clean pass: the RankMe hooks on `backbone` and `projector` capture it

    @override
    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )
        steps_per_epoch, max_epochs = 10, 100
        if self._trainer is not None:
            max_epochs = max(self.trainer.max_epochs or 1, 1)
            steps_per_epoch = max(int(self.trainer.estimated_stepping_batches) // max_epochs, 1)
        total = steps_per_epoch * max_epochs
        warmup = min(steps_per_epoch * self.hparams["warmup_epochs"], total - 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


# --------------------------------------------------------------------------------------------------------------
# Training and the probe
# --------------------------------------------------------------------------------------------------------------


class _SaveWarmupWeights(Callback):
    """Save the weights of each epoch before ``stop_epoch`` (the warm-up), so the probe can score them too."""

    def __init__(self, dirpath: Path, stop_epoch: int) -> None:
        self.dirpath = dirpath
        self.stop_epoch = stop_epoch
        self.paths: dict[int, str] = {}

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if epoch < self.stop_epoch:
            path = self.dirpath / f"epoch={epoch:03d}.ckpt"
            trainer.save_checkpoint(path, weights_only=True)
            self.paths[epoch] = str(path)


class _EpochPrinter(Callback):
    """One terse line per training epoch (the demo turns the progress bar off)."""

    def __init__(self, select_from_epoch: int = 0) -> None:
        self.select_from_epoch = select_from_epoch
        self._start = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        keys = ("train_loss", "rankme", "rankme_projector")
        parts = [f"{key}={float(metrics[key]):7.3f}" for key in keys if key in metrics]
        phase = "warm-up " if trainer.current_epoch < self.select_from_epoch else "        "
        elapsed = time.perf_counter() - self._start
        print(f"  epoch {trainer.current_epoch:3d} {phase} " + "  ".join(parts) + f"  ({elapsed:.0f} s)", flush=True)


def demo_callbacks(checkpoint_dir: Path | str, start_epoch: int = 10, patience: int = 10) -> dict[str, Callback]:
    """The demo's callbacks: RankMe on backbone and projector; checkpoints and early stopping on ``rankme``.

    ``ModelCheckpoint(monitor="rankme", mode="max", save_top_k=-1)`` keeps the checkpoint of every epoch from
    ``start_epoch`` on (so that the probe can score each of them) and its ``best_model_path`` is RankMe's pick;
    ``EarlyStopping(monitor="rankme", mode="max")`` stops when ``rankme`` has not improved for ``patience``
    epochs. Both ignore the epochs before ``start_epoch`` (see :class:`WarmupModelCheckpoint`).

    Example:
        >>> sorted(demo_callbacks("checkpoints"))
        ['checkpoint', 'early_stopping', 'rankme', 'rankme_projector']
    """
    return {
        "rankme": RankMeCallback(module="backbone", name="rankme"),
        "rankme_projector": RankMeCallback(module="projector", name="rankme_projector"),
        "checkpoint": WarmupModelCheckpoint(
            start_epoch=start_epoch,
            dirpath=str(checkpoint_dir),
            filename="epoch={epoch:03d}-rankme={rankme:.3f}",
            auto_insert_metric_name=False,
            monitor="rankme",
            mode="max",
            save_top_k=-1,
            save_weights_only=True,
        ),
        "early_stopping": WarmupEarlyStopping(start_epoch=start_epoch, monitor="rankme", mode="max", patience=patience),
    }


@dataclass
class RunResult:
    """What one :func:`fit_ssl` run leaves behind for selection and the probe."""

    rankme: dict[int, float]
    """``rankme`` (backbone) of every trained epoch, warm-up included."""
    rankme_projector: dict[int, float]
    """``rankme_projector`` of every trained epoch, warm-up included."""
    checkpoints: dict[int, str]
    """The candidates: checkpoints of the epochs from ``select_from_epoch`` on."""
    warmup_checkpoints: dict[int, str]
    """Weights of the warm-up epochs: logged and probed, but not candidates."""
    selected_checkpoint: str
    """``ModelCheckpoint.best_model_path``: the arg-max of ``rankme`` over the candidates."""
    select_from_epoch: int
    """The first candidate epoch."""
    seconds: float
    """Wall time of the training."""


def _epoch_of(path: str) -> int:
    match = re.search(r"epoch=(\d+)", Path(path).name)
    if match is None:
        raise ValueError(f"Cannot read the epoch from checkpoint name {path!r}.")
    return int(match.group(1))


def fit_ssl(
    model: VICReg,
    datamodule: DigitsDataModule,
    out_dir: Path | str,
    max_epochs: int,
    select_from_epoch: int | None = None,
    limit_train_batches: int | float = 1.0,
    patience: int = 10,
    logger: Logger | None = None,
    verbose: bool = True,
) -> RunResult:
    """Train ``model`` without labels under :func:`demo_callbacks` and return what a selection needs.

    Candidates are the epochs from ``select_from_epoch`` on (default: the model's ``warmup_epochs``, at most
    ``max_epochs - 1``); their checkpoints go to ``out_dir/checkpoints``, the warm-up epochs' weights to
    ``out_dir/warmup_checkpoints``.
    """
    if max_epochs < 1:
        raise ValueError(f"Expected argument `max_epochs` to be >= 1, but got {max_epochs!r}.")
    out_dir = Path(out_dir)
    if select_from_epoch is None:
        select_from_epoch = int(model.hparams["warmup_epochs"])
    select_from_epoch = min(max(select_from_epoch, 0), max_epochs - 1)
    callbacks = demo_callbacks(out_dir / "checkpoints", start_epoch=select_from_epoch, patience=patience)
    warmup_saver = _SaveWarmupWeights(out_dir / "warmup_checkpoints", stop_epoch=select_from_epoch)
    extra: list[Callback] = [warmup_saver, *([_EpochPrinter(select_from_epoch)] if verbose else [])]
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=max_epochs,
        limit_train_batches=limit_train_batches,
        num_sanity_val_steps=0,
        callbacks=[*callbacks.values(), *extra],
        logger=logger if logger is not None else False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=False,  # deterministic CPU kernels are ~10x slower here; seeding keeps runs repeatable
        log_every_n_steps=1,
        default_root_dir=str(out_dir),
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start

    checkpoint_cb = callbacks["checkpoint"]
    rankme_cb, projector_cb = callbacks["rankme"], callbacks["rankme_projector"]
    assert isinstance(checkpoint_cb, ModelCheckpoint)
    assert isinstance(rankme_cb, RankMeCallback)
    assert isinstance(projector_cb, RankMeCallback)
    return RunResult(
        rankme={int(h["epoch"]): float(h["value"]) for h in rankme_cb.history},
        rankme_projector={int(h["epoch"]): float(h["value"]) for h in projector_cb.history},
        checkpoints=dict(sorted((_epoch_of(path), path) for path in checkpoint_cb.best_k_models)),
        warmup_checkpoints=dict(sorted(warmup_saver.paths.items())),
        selected_checkpoint=checkpoint_cb.best_model_path,
        select_from_epoch=select_from_epoch,
        seconds=seconds,
    )


def linear_probe(model: VICReg, splits: ProbeSplits, checkpoint: str | Path | None = None) -> float:
    """Accuracy in [0, 1] of a standardised logistic regression on frozen backbone features.

    Loads ``checkpoint`` into ``model`` first when given. The classifier is fitted on the train images and
    scored on the held-out test images; this is the only place labels are used.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
    train_x = model.features(splits.train_images).double().numpy()
    test_x = model.features(splits.test_images).double().numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train_x, splits.train_labels.numpy())
    return float(probe.score(test_x, splits.test_labels.numpy()))


def _rankme_of(features: Tensor) -> float:
    metric = RankMe()
    metric.update(features)
    return float(metric.compute())


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: undefined values (a Spearman correlation of constant data) are written as null."""
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy's); NaN when there are fewer than 2 points or either side is constant.

    Example:
        >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
        0.8
    """
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return round(float(stats.spearmanr(x, y).statistic), 12)


# --------------------------------------------------------------------------------------------------------------
# W&B, the report and the command line
# --------------------------------------------------------------------------------------------------------------


def resolve_wandb_mode(online: bool = False) -> str:
    """The W&B mode: ``online=True`` wins, then the user's ``WANDB_MODE``, else ``"offline"`` (no account needed).

    Raises:
        SystemExit: for an online run without W&B credentials (``wandb login`` first).
    """
    mode = "online" if online else os.environ.get("WANDB_MODE", "offline")
    if mode == "dryrun":
        mode = "offline"
    if mode in ("online", "run"):
        import wandb

        if not wandb.login(prompt=False, verify=False):
            raise SystemExit(
                "An online W&B run needs an account: run `wandb login` first, or drop --wandb-online /"
                " WANDB_MODE=online to log offline (no account needed) and `wandb sync` later."
            )
    return mode


def make_wandb_logger(
    out: Path | str, name: str, mode: str, config: dict[str, Any] | None = None, group: str | None = None
) -> WandbLogger | None:
    """A W&B logger in ``mode`` saving under ``out/wandb`` (project ``rankme-demo``); None when disabled.

    Its run folder is ``Path(logger.experiment.dir).parent``.
    """
    if mode == "disabled":
        return None
    # `mode=` goes to wandb.init; WandbLogger(offline=True) would set WANDB_MODE for the whole process instead.
    logger = WandbLogger(project="rankme-demo", name=name, save_dir=str(out), mode=mode, group=group)
    if config:
        logger.experiment.config.update(config, allow_val_change=True)
    return logger


def _print_table(rows: list[dict[str, Any]], initial: dict[str, float], selected: int, label_best: int) -> None:
    header = f"{'epoch':>6} {'rankme':>8} {'rankme_projector':>17} {'probe acc':>10}"
    print(header)
    print("-" * (len(header) + 30))
    print(
        f"{'init':>6} {initial['rankme']:8.2f} {initial['rankme_projector']:17.2f}"
        f" {100 * initial['probe_accuracy']:9.2f}%   random weights, before training"
    )
    for row in rows:
        marks = [] if row["candidate"] else ["warm-up (not a candidate)"]
        if row["epoch"] == selected:
            marks.append("<- RankMe's pick (no labels)")
        if row["epoch"] == label_best:
            marks.append("<- best by labels")
        print(
            f"{row['epoch']:>6} {row['rankme']:8.2f} {row['rankme_projector']:17.2f}"
            f" {100 * row['probe_accuracy']:9.2f}%   {'  '.join(marks)}"
        )


def _plot(rows: list[dict[str, Any]], selected: int, label_best: int, select_from: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 6), dpi=120, height_ratios=(3, 2))
    series = (
        (top, "rankme", 1.0, "o-", "tab:blue", "RankMe, backbone (monitored)"),
        (top, "rankme_projector", 1.0, "s--", "tab:cyan", "RankMe, projector"),
        (bottom, "probe_accuracy", 100.0, "^-", "tab:red", "linear probe accuracy"),
    )
    for ax, key, scale, style, color, label in series:
        ax.plot(epochs, [scale * row[key] for row in rows], style, ms=3, color=color, label=label)
    for ax in (top, bottom):
        if select_from > 0:
            ax.axvspan(-0.5, select_from - 0.5, color="0.92", label="warm-up: not candidates")
        ax.axvline(selected, color="tab:blue", linestyle=":", label=f"RankMe's pick (epoch {selected})")
        ax.axvline(label_best, color="tab:red", linestyle="-.", alpha=0.6, label=f"best by labels (epoch {label_best})")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    top.set_ylabel("RankMe (no labels)")
    bottom.set_ylabel("probe accuracy (%)\nheld-out digits")
    bottom.set_xlabel("epoch")
    top.set_title("VICReg on scikit-learn digits: label-free RankMe vs a label-based linear probe")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _log_results_to_wandb(logger: WandbLogger, rows: list[dict[str, Any]], summary: dict[str, Any], png: Path) -> None:
    import wandb

    run = logger.experiment
    columns = ["epoch", "candidate", "rankme", "rankme_projector", "probe_accuracy"]
    table = wandb.Table(columns=list[str | int](columns), data=[[row[key] for key in columns] for row in rows])
    payload: dict[str, Any] = {
        "probe/table": table,
        "probe/accuracy_vs_epoch": wandb.plot.line(table, "epoch", "probe_accuracy", title="probe accuracy"),
        "probe/rankme_vs_accuracy": wandb.plot.scatter(table, "rankme", "probe_accuracy", title="RankMe vs probe"),
    }
    try:
        payload["probe/plot"] = wandb.Image(str(png))
    except Exception as err:  # wandb.Image needs Pillow; the PNG is on disk anyway
        _LOG.warning("Could not attach the plot to the W&B run: %s", err)
    run.log(payload)
    for key in ("selected_epoch", "label_best_epoch", "gap_points", "selected_probe_accuracy", "spearman_rankme_probe"):
        run.summary[f"selection/{key}"] = summary[key]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description=(
            "Train VICReg on scikit-learn's digits without labels, pick a checkpoint by RankMe, and check the pick"
            " with a linear probe (the only use of labels). Logs to W&B offline unless asked otherwise."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default: runs/demo)")
    parser.add_argument("--max-epochs", type=int, default=50, help="training epochs at most (default: 50)")
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=10,
        help="learning-rate warm-up epochs; they are logged and probed but are not checkpoint candidates (default: 10)",
    )
    parser.add_argument("--patience", type=int, default=10, help="EarlyStopping patience on rankme (default: 10)")
    parser.add_argument(
        "--limit-train-batches", type=float, default=1.0, help="fraction (<= 1) or number (> 1) of batches per epoch"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="default: 64")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (default: 2e-3)")
    parser.add_argument("--seed", type=int, default=0, help="default: 0")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: 1, the fastest for these tiny convolutions)"
    )
    parser.add_argument(
        "--wandb-online", action="store_true", help="log an online W&B run (needs `wandb login`; default: offline)"
    )
    args = parser.parse_args(argv)
    if args.limit_train_batches > 1:
        args.limit_train_batches = int(args.limit_train_batches)
    if args.max_epochs < 1:
        parser.error("--max-epochs must be >= 1")
    if not 0 <= args.warmup_epochs < args.max_epochs:
        parser.error("--warmup-epochs must be >= 0 and below --max-epochs")
    return args


def quiet_lightning_logs() -> None:
    """Drop Lightning's start-up chatter and two warnings that do not apply to the demo's in-memory dataset."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the demo end to end; return the summary that is also written to ``<out>/summary.json``."""
    args = _parse_args(argv)
    threads, level = torch.get_num_threads(), logging.getLogger("lightning.pytorch").level
    torch.set_num_threads(max(args.threads, 1))
    try:
        with warnings.catch_warnings():
            quiet_lightning_logs()
            return _run(args)
    finally:  # leave the process as it was for callers (tests, notebooks)
        torch.set_num_threads(threads)
        logging.getLogger("lightning.pytorch").setLevel(level)


def _run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()

    out: Path = args.out.resolve()
    checkpoint_dir = out / "checkpoints"
    for stale in [*checkpoint_dir.glob("*.ckpt"), *(out / "warmup_checkpoints").glob("*.ckpt")]:
        stale.unlink()  # the last run's checkpoints would mix with this run's
    out.mkdir(parents=True, exist_ok=True)
    mode = resolve_wandb_mode(args.wandb_online)

    seed_everything(args.seed, workers=True, verbose=False)
    datamodule = DigitsDataModule(batch_size=args.batch_size)
    datamodule.setup("fit")
    model = VICReg(lr=args.lr, warmup_epochs=args.warmup_epochs)
    splits = datamodule.probe_splits()
    val_images = datamodule.val_images()
    initial = {
        "rankme": _rankme_of(model.features(val_images)),
        "rankme_projector": _rankme_of(model.projections(val_images)),
        "probe_accuracy": linear_probe(model, splits),
    }

    config = {
        "seed": args.seed,
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
    }
    logger = make_wandb_logger(out, f"vicreg-digits-seed{args.seed}", mode, config)
    wandb_run_dir = str(Path(logger.experiment.dir).parent) if logger is not None else None
    print(
        f"Training VICReg on {len(splits.train_images)} digit images (no labels) for up to {args.max_epochs}"
        f" epochs; RankMe on {len(val_images)} validation images; checkpoint candidates from epoch"
        f" {args.warmup_epochs} on (after the learning-rate warm-up); W&B mode: {mode}."
    )
    result = fit_ssl(
        model,
        datamodule,
        out,
        max_epochs=args.max_epochs,
        select_from_epoch=args.warmup_epochs,
        limit_train_batches=args.limit_train_batches,
        patience=args.patience,
        logger=logger,
    )

    candidates = {**{epoch: (path, False) for epoch, path in result.warmup_checkpoints.items()}}
    candidates.update({epoch: (path, True) for epoch, path in result.checkpoints.items()})
    print(f"\nLinear probe (the only use of labels) on {len(candidates)} checkpoints ...", flush=True)
    rows: list[dict[str, Any]] = [
        {
            "epoch": epoch,
            "candidate": is_candidate,
            "rankme": result.rankme[epoch],
            "rankme_projector": result.rankme_projector[epoch],
            "probe_accuracy": linear_probe(model, splits, path),
            "checkpoint": str(Path(path).resolve()),
        }
        for epoch, (path, is_candidate) in sorted(candidates.items())
    ]
    eligible = [row for row in rows if row["candidate"]]
    selected = max(eligible, key=lambda row: row["rankme"])  # the first of ties, as ModelCheckpoint keeps
    label_best = max(eligible, key=lambda row: row["probe_accuracy"])
    if Path(result.selected_checkpoint).resolve() != Path(selected["checkpoint"]):
        raise RuntimeError(
            f"ModelCheckpoint's best path {result.selected_checkpoint} is not the arg-max of the logged rankme"
            f" ({selected['checkpoint']})."
        )
    overall = max(rows, key=lambda row: row["rankme"])
    accuracies = [row["probe_accuracy"] for row in eligible]
    gap = 100 * (label_best["probe_accuracy"] - selected["probe_accuracy"])
    last = eligible[-1]

    print()
    _print_table(rows, initial, selected["epoch"], label_best["epoch"])
    summary: dict[str, Any] = {
        "epochs": [
            {key: row[key] for key in ("epoch", "rankme", "rankme_projector", "probe_accuracy", "checkpoint")}
            for row in eligible
        ],
        "selected_epoch": selected["epoch"],
        "selected_checkpoint": selected["checkpoint"],
        "label_best_epoch": label_best["epoch"],
        "wandb_run_dir": wandb_run_dir,
        "selected_probe_accuracy": selected["probe_accuracy"],
        "label_best_probe_accuracy": label_best["probe_accuracy"],
        "gap_points": gap,
        "last_epoch": last["epoch"],
        "last_probe_accuracy": last["probe_accuracy"],
        "mean_probe_accuracy": sum(accuracies) / len(accuracies),
        "spearman_rankme_probe": _finite_or_none(spearman([row["rankme"] for row in eligible], accuracies)),
        "warmup_epochs": [
            {key: row[key] for key in ("epoch", "rankme", "rankme_projector", "probe_accuracy", "checkpoint")}
            for row in rows
            if not row["candidate"]
        ],
        "rankme_argmax_with_warmup": {"epoch": overall["epoch"], "probe_accuracy": overall["probe_accuracy"]},
        "initial": initial,
        "plot": str(out / "rankme_vs_probe.png"),
        "wandb_mode": mode,
        "seed": args.seed,
        "max_epochs": args.max_epochs,
        "train_seconds": result.seconds,
    }
    print(
        f"\nRankMe picked epoch {selected['epoch']} without labels: probe accuracy"
        f" {100 * selected['probe_accuracy']:.2f}%. The best candidate by labels is epoch {label_best['epoch']}:"
        f" {100 * label_best['probe_accuracy']:.2f}%. Gap: {gap:.2f} points"
        f" ({len(splits.test_labels)} test images: one image is {100 / len(splits.test_labels):.2f} points)."
    )
    print(
        f"For reference: the last epoch ({last['epoch']}) scores {100 * last['probe_accuracy']:.2f}%, the mean over"
        f" the candidates is {100 * summary['mean_probe_accuracy']:.2f}%, random weights score"
        f" {100 * initial['probe_accuracy']:.2f}%; Spearman(RankMe, probe accuracy) over the candidates ="
        f" {_fmt(summary['spearman_rankme_probe'])}."
    )
    if not overall["candidate"]:
        print(
            f"Counting the warm-up, RankMe's arg-max would be epoch {overall['epoch']}"
            f" ({100 * overall['probe_accuracy']:.2f}%): a barely trained network has a high effective rank, which"
            " is why the warm-up epochs are not candidates (high rank is necessary, not sufficient)."
        )

    png = out / "rankme_vs_probe.png"
    _plot(rows, selected["epoch"], label_best["epoch"], result.select_from_epoch, png)
    summary["total_seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    if logger is not None:
        _log_results_to_wandb(logger, rows, summary, png)
        logger.experiment.finish()
    print(f"\nWrote {out / 'summary.json'} and {png} ({summary['total_seconds']:.0f} s in all).")
    if wandb_run_dir is not None:
        if mode == "offline":
            print(f"W&B run saved offline in {wandb_run_dir}\n  upload it with:  wandb sync {wandb_run_dir}")
        else:
            print(f"W&B run: {wandb_run_dir} (online)")
        print(
            "  then look at: the `rankme` and `rankme_projector` curves (the label-free signal that drove\n"
            "  checkpointing and early stopping), `rankme_normalized` (RankMe / min(N, D)), the `rankme_spectrum`\n"
            "  line plot (normalised singular values per epoch: a fast drop-off means few directions carry the\n"
            "  features), `train_loss` with its invariance/variance/covariance terms, and the `probe/*` panels\n"
            "  (probe accuracy per epoch, RankMe vs accuracy, this plot)."
        )
    return summary
