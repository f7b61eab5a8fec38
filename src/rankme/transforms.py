"""Ready ``transform=`` functions for :class:`rankme.RankMeCallback`: common encoder outputs to (batch, D).

Each is a plain function annotated ``-> torch.Tensor``, so LightningCLI (jsonargparse) accepts it by dotted
path in YAML::

    - class_path: rankme.RankMeCallback
      init_args:
        module: encoder
        transform: rankme.transforms.cls_token

Each raises a one-line ``TypeError``/``ValueError`` naming the shape it expected and the one it got.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["cls_token", "first", "flatten", "global_avg_pool", "mean_tokens"]


def _tensor(x: object, name: str, expected: str, ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"rankme.transforms.{name} expects {expected}, but got {type(x).__name__}.")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"rankme.transforms.{name} expects {expected}, but got a tensor of shape {tuple(x.shape)}.")
    return x


def first(output: Any) -> torch.Tensor:
    """The first element of a tuple or list output, e.g. ``(features, logits)`` or ``(hidden, attention)``.

    Example:
        >>> import torch
        >>> from rankme.transforms import first
        >>> first((torch.ones(4, 8), torch.zeros(4, 2))).shape
        torch.Size([4, 8])
    """
    if not isinstance(output, (tuple, list)) or not output:
        got = f"an empty {type(output).__name__}" if isinstance(output, (tuple, list)) else type(output).__name__
        raise TypeError(f"rankme.transforms.first expects a non-empty tuple or list of tensors, but got {got}.")
    return _tensor(output[0], "first", "the first element to be a tensor")


def cls_token(x: torch.Tensor) -> torch.Tensor:
    """The class token of a transformer's (batch, tokens, D) output: ``x[:, 0]``, shape (batch, D).

    Example:
        >>> import torch
        >>> from rankme.transforms import cls_token
        >>> cls_token(torch.randn(4, 197, 768)).shape
        torch.Size([4, 768])
    """
    return _tensor(x, "cls_token", "a (batch, tokens, features) tensor", ndim=3)[:, 0]


def mean_tokens(x: torch.Tensor) -> torch.Tensor:
    """The mean over the tokens of a (batch, tokens, D) output, shape (batch, D).

    Example:
        >>> import torch
        >>> from rankme.transforms import mean_tokens
        >>> mean_tokens(torch.ones(2, 5, 3))
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
    """
    return _tensor(x, "mean_tokens", "a (batch, tokens, features) tensor", ndim=3).mean(dim=1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """The global average pool of a (batch, channels, height, width) feature map, shape (batch, channels).

    Example:
        >>> import torch
        >>> from rankme.transforms import global_avg_pool
        >>> global_avg_pool(torch.randn(4, 512, 7, 7)).shape
        torch.Size([4, 512])
    """
    return _tensor(x, "global_avg_pool", "a (batch, channels, height, width) tensor", ndim=4).mean(dim=(2, 3))


def flatten(x: torch.Tensor) -> torch.Tensor:
    """Every dimension after the batch one flattened into features: (batch, ...) to (batch, prod(...)).

    Example:
        >>> import torch
        >>> from rankme.transforms import flatten
        >>> flatten(torch.randn(4, 16, 2, 2)).shape
        torch.Size([4, 64])
    """
    x = _tensor(x, "flatten", "a (batch, ...) tensor with at least 2 dimensions")
    if x.ndim < 2:
        raise ValueError(
            f"rankme.transforms.flatten expects a (batch, ...) tensor with at least 2 dimensions, but got a tensor of"
            f" shape {tuple(x.shape)}."
        )
    return x.flatten(start_dim=1)
