"""The callbacks' cost on a validation epoch of a conv encoder: a real ``Trainer.validate``, with vs without.

The encoder is a CIFAR-style ResNet (3x3 stem, four stages of basic blocks, widths 64-128-256-512, global
average pool: a 512-d backbone output) and a 2048-d projector (Linear-BN-ReLU-Linear), the usual
self-supervised setup on 32x32 images. Two ``RankMeCallback`` hooks watch the backbone and the projector.
"""

from __future__ import annotations

import logging
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import common
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rankme import RankMeCallback


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetBackbone(nn.Module):
    """A CIFAR ResNet: ``blocks=(2, 2, 2, 2)`` is ResNet-18, ``(1, 1, 1, 1)`` a ResNet-10."""

    def __init__(self, blocks: Sequence[int] = (1, 1, 1, 1), widths: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            for index in range(count):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and index == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        self.out_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(self.stem(x)).mean(dim=(2, 3))


class ConvEncoder(LightningModule):
    def __init__(self, blocks: Sequence[int], widths: Sequence[int], projector_dim: int = 2048) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = ResNetBackbone(blocks, widths)
        width = self.backbone.out_features
        self.projector = nn.Sequential(
            nn.Linear(width, projector_dim),
            nn.BatchNorm1d(projector_dim),
            nn.ReLU(),
            nn.Linear(projector_dim, projector_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])


@dataclass
class CallbackResult:
    encoder: str
    images: int
    batch_size: int
    without_s: list[float]
    with_s: list[float]
    update_s: list[float] = field(default_factory=list)
    epoch_end_s: list[float] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)

    @property
    def paired_ratio(self) -> float:
        """The median over rounds of (with / without) in the same round: a slow drift of the machine's speed
        cancels within a round."""
        return statistics.median(w / wo for w, wo in zip(self.with_s, self.without_s, strict=True))

    @property
    def best_ratio(self) -> float:
        return min(self.with_s) / min(self.without_s)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _timer(fn: Callable[..., Any], bucket: list[float]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        common.synchronize()
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            common.synchronize()
            bucket.append(time.perf_counter() - start)

    return wrapped


def _validate(model: LightningModule, loader: DataLoader, callbacks: list[RankMeCallback]) -> float:
    trainer = Trainer(
        accelerator="gpu" if common.on_accelerator() else "cpu",
        devices=[common.DEVICE.index or 0] if common.on_accelerator() else 1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=list(callbacks),
    )
    common.synchronize()
    start = time.perf_counter()
    trainer.validate(model, dataloaders=loader, verbose=False)
    common.synchronize()
    return time.perf_counter() - start


def _encoder_and_data(
    images: int, batch_size: int, blocks: Sequence[int], widths: Sequence[int], projector_dim: int
) -> tuple[ConvEncoder, DataLoader, DataLoader]:
    """The encoder in eval mode, a loader of ``images`` synthetic 32x32x3 images, and a two-batch warm-up loader."""
    _quiet_lightning()
    model = ConvEncoder(blocks, widths, projector_dim).eval()
    data = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(data), batch_size=batch_size)
    warmup_loader = DataLoader(TensorDataset(data[: 2 * batch_size]), batch_size=batch_size)
    return model, loader, warmup_loader


def _two_callbacks() -> list[RankMeCallback]:
    """The measured pair: RankMe of the 512-d backbone and of the projector."""
    return [
        RankMeCallback(module="backbone", name="rankme_backbone", prog_bar=False),
        RankMeCallback(module="projector", name="rankme_projector", prog_bar=False),
    ]


def callback_cost(
    images: int = 4096,
    batch_size: int = 256,
    blocks: Sequence[int] = (1, 1, 1, 1),
    widths: Sequence[int] = (64, 128, 256, 512),
    projector_dim: int = 2048,
    pairs: int = 3,
    log: Callable[[str], None] = print,
) -> CallbackResult:
    """Wall time of ``Trainer.validate`` without and with the two callbacks, taking turns in one process, ``pairs``
    rounds (the order rotating)."""
    model, loader, warmup_loader = _encoder_and_data(images, batch_size, blocks, widths, projector_dim)
    blocks_label = "-".join(map(str, blocks))
    encoder = (
        f"ResNet (blocks {blocks_label}, widths {'-'.join(map(str, widths))}) -> {widths[-1]}-d,"
        f" projector -> {projector_dim}-d"
    )
    result = CallbackResult(encoder, images, batch_size, [], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up on two batches, with callbacks: oneDNN kernels, thread pool, lightning, eigvalsh paths
        _validate(model, warmup_loader, [RankMeCallback(module="backbone", prog_bar=False)])
        for pair in range(pairs):
            callbacks = _two_callbacks()
            updates: list[float] = []
            epoch_end: list[float] = []
            for callback in callbacks:
                callback.metric.update = _timer(callback.metric.update, updates)
                callback.metric.summary = _timer(callback.metric.summary, epoch_end)
            variants = {"without": [], "with": callbacks}
            order = ["without", "with"] if pair % 2 == 0 else ["with", "without"]  # rotate from pair to pair
            for variant in order:
                seconds = _validate(model, loader, variants[variant])
                {"without": result.without_s, "with": result.with_s}[variant].append(seconds)
            result.update_s.append(sum(updates))
            result.epoch_end_s.append(sum(epoch_end))
            result.values = {cb.name: cb.history[-1]["value"] for cb in callbacks if cb.history}
            log(
                f"  validate pair {pair + 1}: without {result.without_s[-1]:.2f}s, with {result.with_s[-1]:.2f}s"
                f" (updates {result.update_s[-1]:.2f}s, epoch end {result.epoch_end_s[-1]:.2f}s)"
            )
    return result


def profile_validate(
    images: int = 4096,
    batch_size: int = 256,
    blocks: Sequence[int] = (1, 1, 1, 1),
    widths: Sequence[int] = (64, 128, 256, 512),
    projector_dim: int = 2048,
) -> str:
    """torch.profiler table (top ops by self CPU time; by device time on CUDA) of one ``Trainer.validate`` with the
    two callbacks."""
    model, loader, warmup_loader = _encoder_and_data(images, batch_size, blocks, widths, projector_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _validate(model, warmup_loader, [])
        callbacks = _two_callbacks()
        return common.profile_table(lambda: _validate(model, loader, callbacks), row_limit=15)
