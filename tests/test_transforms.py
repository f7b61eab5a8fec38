"""rankme.transforms: values, errors, annotations, and a real LightningCLI fit that names them by dotted path."""

from __future__ import annotations

import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import reference_rankme
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LightningCLI
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rankme import RankMeCallback, transforms

ROWS, IN_FEATURES = 48, 12


def test_values() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(5, 7, 3, generator=g, dtype=torch.float64)
    maps = torch.randn(5, 4, 3, 2, generator=g, dtype=torch.float64)
    assert torch.equal(transforms.cls_token(tokens), torch.stack([row[0] for row in tokens]))
    assert torch.allclose(transforms.mean_tokens(tokens), sum(tokens[:, t] for t in range(7)) / 7)
    pooled = torch.tensor([[maps[b, c].sum().item() / 6 for c in range(4)] for b in range(5)], dtype=torch.float64)
    assert torch.allclose(transforms.global_avg_pool(maps), pooled)
    assert torch.equal(transforms.flatten(maps), torch.stack([m.reshape(-1) for m in maps]))
    assert transforms.first([tokens, maps]) is tokens
    assert transforms.first((maps,)) is maps


@pytest.mark.parametrize(
    ("transform", "value", "error", "message"),
    [
        (
            transforms.cls_token,
            torch.zeros(4, 8),
            ValueError,
            r"cls_token expects a \(batch, tokens, features\) tensor, but got a tensor of shape \(4, 8\)",
        ),
        (transforms.mean_tokens, torch.zeros(2, 3, 4, 5), ValueError, r"mean_tokens expects .* shape \(2, 3, 4, 5\)"),
        (
            transforms.global_avg_pool,
            torch.zeros(2, 3, 4),
            ValueError,
            r"global_avg_pool expects a \(batch, channels, height, width\) tensor, but got .* shape \(2, 3, 4\)",
        ),
        (transforms.flatten, torch.zeros(3), ValueError, r"flatten expects .* shape \(3,\)"),
        (transforms.cls_token, (torch.zeros(2, 3, 4),), TypeError, "cls_token expects .* but got tuple"),
        (
            transforms.first,
            torch.zeros(2, 3),
            TypeError,
            "first expects a non-empty tuple or list of tensors, but got Tensor",
        ),
        (transforms.first, (), TypeError, "but got an empty tuple"),
        (transforms.first, ["x"], TypeError, "first expects the first element to be a tensor, but got str"),
    ],
)
def test_clear_errors(transform: Callable[[Any], torch.Tensor], value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        transform(value)


@pytest.mark.parametrize("name", transforms.__all__)
def test_annotated_to_return_a_tensor(name: str) -> None:
    assert typing.get_type_hints(getattr(transforms, name))["return"] is torch.Tensor


class Shaped(nn.Module):
    """A linear layer whose output is reshaped to ``kind``: tokens, a feature map, or a tuple."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(IN_FEATURES, 24)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.linear(x)
        if self.kind == "tokens":
            return h.view(-1, 4, 6)
        if self.kind == "map":
            return h.view(-1, 6, 2, 2)
        return (h, x)


class ShapedEncoder(LightningModule):
    def __init__(self, kind: str = "tokens") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = Shaped(kind)
        self.x = torch.randn(ROWS, IN_FEATURES, generator=torch.Generator().manual_seed(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.encoder.linear(batch[0]).sum() * 0.0

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.encoder(batch[0])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=16)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.x), batch_size=16)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


# the reduction each transform stands for, written out independently on the float64 outputs
EXPECTED: dict[str, tuple[str, Callable[[Any], torch.Tensor]]] = {
    "cls_token": ("tokens", lambda out: out[:, 0]),
    "mean_tokens": ("tokens", lambda out: out.sum(dim=1) / out.shape[1]),
    "global_avg_pool": ("map", lambda out: out.sum(dim=(2, 3)) / (out.shape[2] * out.shape[3])),
    "flatten": ("map", lambda out: out.reshape(len(out), -1)),
    "first": ("tuple", lambda out: out[0]),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_lightning_cli_yaml_names_a_transform_by_dotted_path(tmp_path: Path, name: str) -> None:
    kind, reduce = EXPECTED[name]
    config = {
        "model": {"kind": kind},
        "trainer": {
            "max_epochs": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "enable_checkpointing": False,
            "num_sanity_val_steps": 0,
            "default_root_dir": str(tmp_path),
            "callbacks": [
                {
                    "class_path": "rankme.RankMeCallback",
                    "init_args": {"module": "encoder", "transform": f"rankme.transforms.{name}"},
                }
            ],
        },
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        ShapedEncoder, save_config_callback=None, args=["fit", "--config", str(tmp_path / "config.yaml")]
    )
    callback = next(cb for cb in cli.trainer.callbacks if isinstance(cb, RankMeCallback))
    assert callback.transform is getattr(transforms, name)
    model = cli.model
    with torch.no_grad():
        out = model.encoder(model.x)
        out = tuple(o.double() for o in out) if isinstance(out, tuple) else out.double()
        expected = reference_rankme(reduce(out))
    assert callback.history[-1]["num_samples"] == ROWS
    assert callback.history[-1]["value"] == pytest.approx(expected, rel=1e-5)
