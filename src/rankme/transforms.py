"""Ready ``transform=`` functions for :class:`rankme.RankMeCallback` (LightningCLI: ``rankme.transforms.first``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["cls_token", "first", "flatten", "global_avg_pool", "mean_tokens"]


def _tensor(x: object, name: str, expected: str, ndim_ok: Callable[[int], bool] = lambda ndim: True) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and ndim_ok(x.ndim):
        return x
    shape = f"a tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else None
    error = ValueError if shape else TypeError
    raise error(f"rankme.transforms.{name} expects {expected}, but got {shape or type(x).__name__}.")


def first(output: Any) -> torch.Tensor:
    """The first element of a tuple or list output, e.g. ``(features, logits)``.

    Example:
        >>> first((torch.ones(4, 8), torch.zeros(4, 2))).shape
        torch.Size([4, 8])
    """
    if not isinstance(output, (tuple, list)) or not output:
        got = f"an empty {type(output).__name__}" if isinstance(output, (tuple, list)) else type(output).__name__
        raise TypeError(f"rankme.transforms.first expects a non-empty tuple or list of tensors, but got {got}.")
    return _tensor(output[0], "first", "the first element to be a tensor")


def cls_token(x: torch.Tensor) -> torch.Tensor:
    """The class token ``x[:, 0]`` of a transformer's (batch, tokens, D) output.

    Example:
        >>> cls_token(torch.randn(4, 197, 768)).shape
        torch.Size([4, 768])
    """
    return _tensor(x, "cls_token", "a (batch, tokens, features) tensor", lambda ndim: ndim == 3)[:, 0]


def mean_tokens(x: torch.Tensor) -> torch.Tensor:
    """The mean over the tokens of a (batch, tokens, D) output.

    Example:
        >>> mean_tokens(torch.ones(2, 5, 3)).shape
        torch.Size([2, 3])
    """
    return _tensor(x, "mean_tokens", "a (batch, tokens, features) tensor", lambda ndim: ndim == 3).mean(dim=1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The global average pool of a (batch, channels, height, width) feature map, to (batch, channels).

    Example:
        >>> global_avg_pool(torch.randn(4, 512, 7, 7)).shape
        torch.Size([4, 512])
    """
    expected = "a (batch, channels, height, width) tensor"
    return _tensor(x, "global_avg_pool", expected, lambda ndim: ndim == 4).mean(dim=(2, 3))


def flatten(x: torch.Tensor) -> torch.Tensor:
    """Every dimension after the batch one flattened into features: (batch, ...) to (batch, prod(...)).

    Example:
        >>> flatten(torch.randn(4, 16, 2, 2)).shape
        torch.Size([4, 64])
    """
    return _tensor(x, "flatten", "a (batch, ...) tensor with at least 2 dimensions", lambda ndim: ndim >= 2).flatten(1)
