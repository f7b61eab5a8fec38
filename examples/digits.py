"""What every example method shares: the offline digits, their augmentation, the SSL model frame and the probe.

scikit-learn's ``load_digits`` images (8 x 8 grey digits that ship inside scikit-learn, so nothing is downloaded)
are split three ways (:class:`DigitsDataModule`); :class:`DigitsAugment` draws random views of whole batches in
torch; :class:`DigitsSSL` is a LightningModule with a small conv ``backbone`` and an MLP ``projector`` whose
subclasses (one per SSL method: ``vicreg.VICReg``, ``simclr.SimCLR``) only supply the loss of two views;
:func:`linear_probe` scores frozen backbone features with labels after training, and :func:`spearman` compares a
label-free signal with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from lightning.pytorch import LightningDataModule, LightningModule
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

__all__ = ["DigitsAugment", "DigitsDataModule", "DigitsSSL", "ProbeSplits", "linear_probe", "spearman"]


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

    Example:
        >>> data = DigitsDataModule()
        >>> data.val_images().shape, len(data.probe_splits().test_labels)
        (torch.Size([360, 1, 8, 8]), 360)
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
            raise ValueError(
                f"Expected argument `batch_size` to be >= 2 (SSL losses need a batch), got {batch_size!r}."
            )
        self.save_hyperparameters()
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

    @classmethod
    def of_strength(cls, strength: float = 1.0) -> DigitsAugment:
        """The default ranges, with the geometric and photometric ones multiplied by ``strength``."""
        s = strength
        return cls(
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


class DigitsSSL(LightningModule):
    """A joint-embedding SSL model on 8 x 8 digits: conv ``backbone`` (post-ReLU features), MLP ``projector``.

    Training draws two augmented views of each image and minimises :meth:`loss_terms` of their projections
    (a subclass defines it); labels never reach this module. ``validation_step`` embeds the clean validation
    images once (backbone, then projector), which is exactly what two ``RankMeCallback`` hooks capture.
    The learning rate warms up linearly over ``warmup_epochs``, then decays to 0 on a cosine (every step).

    Args:
        feature_dim: width of the backbone's output (the representation that is probed).
        projector_dim: width of the projector's hidden and output layers.
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        augment_strength: multiplies the ranges of :class:`DigitsAugment` (see ``DigitsAugment.of_strength``).
        warmup_epochs: epochs of linear learning-rate warm-up.
    """

    def __init__(
        self,
        feature_dim: int = 64,
        projector_dim: int = 128,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        augment_strength: float = 1.0,
        warmup_epochs: int = 10,
    ) -> None:
        super().__init__()
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
        self.augment = DigitsAugment.of_strength(augment_strength)

    def loss_terms(self, z_a: Tensor, z_b: Tensor) -> dict[str, Tensor]:
        """The method's loss of two (B, D) batches of projections: the total under ``"loss"``, plus any terms."""
        raise NotImplementedError(f"{type(self).__name__} must define loss_terms(z_a, z_b).")

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Frozen backbone features of clean images, in eval mode, for the probe."""
        return self._embed(self.backbone, x, batch_size)

    @torch.no_grad()
    def projections(self, x: Tensor, batch_size: int = 512) -> Tensor:
        """Projector outputs of clean images, in eval mode."""
        return self._embed(self, x, batch_size)

    def _embed(self, net: nn.Module, x: Tensor, batch_size: int) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            return torch.cat([net(chunk.to(self.device)) for chunk in x.split(batch_size)]).cpu()
        finally:
            self.train(was_training)

    @override
    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        (images,) = batch  # images only: the training data carries no labels
        with torch.no_grad():
            view_a, view_b = self.augment(images), self.augment(images)
        terms = self.loss_terms(self(view_a), self(view_b))
        self.log("train_loss", terms["loss"], prog_bar=True, on_step=False, on_epoch=True)
        for key, value in terms.items():
            if key != "loss":
                self.log(f"train_{key}", value, on_step=False, on_epoch=True)
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


def linear_probe(model: DigitsSSL, splits: ProbeSplits, checkpoint: str | None = None) -> float:
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


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy's); NaN when there are fewer than 2 points or either side is constant.

    Example:
        >>> spearman([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0])
        0.8
    """
    from scipy import stats

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return round(float(stats.spearmanr(x, y).statistic), 12)
