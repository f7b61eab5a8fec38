"""Small LightningModules shared by the callback tests, at module level so ddp_spawn can pickle them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

IN_FEATURES = 12
BACKBONE_FEATURES = 24
PROJECTOR_FEATURES = 8


def loader(n: int = 96, batch_size: int = 16, seed: int = 0) -> DataLoader:
    """A deterministic dataloader of n gaussian inputs."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(n, IN_FEATURES, generator=generator)), batch_size=batch_size)


class Encoder(LightningModule):
    """A backbone and a projector; validation_step returns the projector output under "z".

    It records, independently of the callback, the backbone and projector outputs of every validation
    batch per dataloader, so a test can compute the reference value itself.
    """

    def __init__(self, lr: float = 0.05, collapse: bool = False, return_outputs: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Linear(IN_FEATURES, BACKBONE_FEATURES), nn.Tanh())
        self.projector = nn.Linear(BACKBONE_FEATURES, PROJECTOR_FEATURES)
        self.lr = lr
        self.collapse = collapse
        self.return_outputs = return_outputs
        self.recorded: dict[int, dict[str, list[torch.Tensor]]] = {}
        self.training_backbone_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        h = self.backbone(batch[0])
        self.training_backbone_calls += 1
        if self.collapse:  # pull every output to the batch mean: the embeddings collapse to one point
            return (h - h.mean(dim=0).detach()).pow(2).sum(dim=1).mean() + self.projector(h).pow(2).mean()
        return -h.var(dim=0).mean() + self.projector(h).pow(2).mean()

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        h = self.backbone(batch[0])
        z = self.projector(h)
        if not self.trainer.sanity_checking:
            epoch = self.recorded.setdefault(dataloader_idx, {"backbone": [], "projector": []})
            epoch["backbone"].append(h.detach().clone())
            epoch["projector"].append(z.detach().clone())
        return {"z": z} if self.return_outputs else None

    def on_validation_epoch_start(self) -> None:
        self.recorded = {}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class TwoLoaderEncoder(Encoder):
    """Validates on two dataloaders."""

    def val_dataloader(self) -> list[DataLoader]:
        return [loader(64, seed=1), loader(48, seed=2)]


def make_trainer(tmp_path: Path, callbacks: list[Callback], **kwargs: Any) -> Trainer:
    """A quiet CPU Trainer for 3 epochs (override any option by keyword)."""
    options: dict[str, Any] = {
        "max_epochs": 3,
        "default_root_dir": tmp_path,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        "devices": 1,
    }
    options.update(kwargs)
    return Trainer(callbacks=callbacks, **options)
