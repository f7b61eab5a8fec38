"""RankMe of a whole embedding matrix, and the checks, warnings and formula that every route shares."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

DEFAULT_EPS = 1e-7
MAX_EPS = 1e-2
"""The largest ``eps`` accepted: the value never falls below about ``1 - eps`` (RankMe's floor is 1)."""
# Warnings point past frames in rankme, torch (Module.__call__) and torchmetrics (update/compute wrappers).
_INTERNAL_DIRS = tuple(
    str(Path(spec.origin).parent)
    for spec in map(importlib.util.find_spec, ("rankme", "torch", "torchmetrics"))
    if spec is not None and spec.origin is not None
)


class RankMeWarning(UserWarning):
    """The category of every warning this package emits: ``warnings.filterwarnings("ignore", category=RankMeWarning)``.

    Example:
        >>> import warnings
        >>> import torch
        >>> from rankme import RankMeWarning, rankme
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", RankMeWarning)
        ...     rankme(torch.zeros(4, 2))
        Traceback (most recent call last):
        ...
        rankme.functional.RankMeWarning: All embeddings are zero (complete collapse): RankMe is 1.0 by convention.
    """


class RankMeNoSamplesError(ValueError):
    """Raised when RankMe is asked for a value but no row of embeddings was accumulated on any process."""


def _check_eps(eps: float) -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= MAX_EPS:
        raise ValueError(
            f"Expected argument `eps` to be a float in [0, {MAX_EPS}] (the paper uses 1e-7; a larger eps pushes"
            f" RankMe below its floor of 1), but got {eps!r}."
        )


def _check_int(name: str, value: object, lowest: int, allow_none: bool = False, hint: str = "") -> None:
    """Raise a ``ValueError`` unless ``value`` is an int >= ``lowest`` (bools refused), or None if allowed."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        expected = f"{'None or ' if allow_none else ''}an int >= {lowest}{hint}"
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {value!r}.")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"Expected argument `{name}` to be a bool, but got {value!r}.")


def _check_embeddings(z: object, expected_features: int | None = None) -> None:
    """Raise a one-line ``ValueError`` unless ``z`` is a dense, real floating-point (batch, features) tensor."""
    if not isinstance(z, Tensor):
        hint = " Convert it with `torch.from_numpy(z)`." if type(z).__module__ == "numpy" else ""
        raise ValueError(
            f"Expected embeddings to be a torch.Tensor of shape (batch, features), but got {type(z).__name__}.{hint}"
        )
    if z.is_nested or z.layout != torch.strided:
        layout = "nested" if z.is_nested else str(z.layout)
        raise ValueError(f"Expected a dense tensor of embeddings, but got a {layout} one: pass `z.to_dense()`.")
    if z.is_meta:
        raise ValueError(
            "Expected embeddings with values, but got a tensor on the meta device (a shape without data)."
            " Run the model on a real device (cpu or cuda) first."
        )
    if z.ndim != 2:
        raise ValueError(
            f"Expected embeddings of shape (batch, features), but got a {z.ndim}-D tensor of shape {tuple(z.shape)}."
            " Flatten or pool them first, e.g. `z.flatten(1)` or `z.mean(dim=1)` for tokens."
        )
    if not z.is_floating_point():
        raise ValueError(f"Expected floating-point embeddings, but got dtype {z.dtype}. {_dtype_hint(z.dtype)}")
    if z.shape[1] == 0:
        raise ValueError(f"Expected at least one feature per row, but got shape {tuple(z.shape)}.")
    if expected_features is not None and z.shape[1] != expected_features:
        raise ValueError(
            f"Expected {expected_features} features per row, as in the earlier batches, but got shape"
            f" {tuple(z.shape)}. Feed one embedding layer per metric, or call `reset()` before changing it."
        )


def _dtype_hint(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "A bool tensor is a mask, not embeddings; if it really holds features, pass `z.float()`."
    if dtype.is_complex:
        return "RankMe is defined for real embeddings: pass `z.real`, `z.abs()` or `torch.view_as_real(z).flatten(1)`."
    if dtype in (torch.qint8, torch.quint8, torch.qint32, torch.quint4x2, torch.quint2x4):
        return "Pass `z.dequantize()`."
    return "Integers are usually labels or indices passed by mistake; if they really are embeddings, pass `z.float()`."


def _abs_max(z: Tensor) -> Tensor:
    """``max |z|`` as a float64 0-dim tensor on ``z``'s device, in one pass: the batch's scale and finiteness test."""
    if z.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=z.device)
    if z.element_size() == 1:  # float8: no reductions on CPU
        z = z.float()
    low, high = torch.aminmax(z)  # much faster than vector_norm(z, inf) on CPU; NaN propagates
    return torch.maximum(-low, high).to(torch.float64)


def _power_of_two_scale(abs_max: Tensor) -> Tensor:
    """A power of two ``p`` with ``abs_max / p`` in [1, 2), clamped to [2^-1000, 2^1023]; 0 where ``abs_max`` is 0.

    Dividing by it is exact, keeps squares and their sums inside float64's range, and its reciprocal is finite.
    """
    _, exponent = torch.frexp(abs_max)
    scale = torch.ldexp(torch.ones_like(abs_max), (exponent - 1).clamp(-1000, 1023))
    return torch.where(abs_max > 0, scale, 0.0)


def _warn(message: str, once_per_job: bool = False, group: Any = None) -> None:
    """Warn with :class:`RankMeWarning` at the first caller outside our packages (rank 0 alone if ``once_per_job``)."""
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if once_per_job and distributed and torch.distributed.get_rank(group) != 0:
        return
    frame, stacklevel = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, stacklevel = frame.f_back, stacklevel + 1
    warnings.warn(message, RankMeWarning, stacklevel=stacklevel)


def _warn_capped(num_samples: int, num_features: int, once_per_job: bool = False, group: Any = None) -> None:
    _warn(
        f"RankMe is computed on N={num_samples} samples of D={num_features} features: with N < D the value is"
        f" capped by N, not by D. Use at least D samples (the paper uses 25600) to compare runs.",
        once_per_job,
        group,
    )


def _effective_rank(singular_values: Tensor, eps: float, once_per_job: bool = False, group: Any = None) -> Tensor:
    """RankMe of a vector of singular values, in float64 (1, with a warning, if all are zero).

    Dividing by a power of two near the largest value first is exact and keeps the sum from overflowing.
    """
    s = singular_values.to(torch.float64)
    if s.numel():
        s = s / _power_of_two_scale(s.max()).clamp(min=torch.finfo(torch.float64).tiny)
    total = s.sum()
    if total <= 0:
        _warn("All embeddings are zero (complete collapse): RankMe is 1.0 by convention.", once_per_job, group)
        return torch.ones((), dtype=torch.float64, device=s.device)
    p = s / total + eps
    return torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy: 0 log 0 = 0 when eps = 0


def _singular_values(z: Tensor, center: bool) -> tuple[Tensor, Tensor]:
    """Float64 SVD of ``z`` (centred if asked) divided by a power of two near ``max |z|`` (exact), and that power."""
    z64 = z.detach().to(torch.float64)
    scale = _power_of_two_scale(_abs_max(z64))
    z64 = z64 * torch.where(scale > 0, 1 / scale, 0.0)
    if center:  # about the first row first, so that identical rows centre to exactly zero (as in gram mode)
        z64 = z64 - z64[:1]
        z64 = z64 - z64.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(z64), scale


def rankme(z: Tensor, eps: float = DEFAULT_EPS, center: bool = False) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): the effective rank of an (N, D) embedding matrix.

    With ``s`` the singular values of ``z`` (float64 SVD, exact for any magnitude float64 holds),
    ``p_k = s_k / sum(s) + eps`` and the value is ``exp(-sum_k p_k log p_k)``, from about 1 (collapse) to min(N, D).

    Args:
        z: floating-point tensor of shape (N, D), one embedding per row.
        eps: the paper's smoothing constant added to every ``p_k``.
        center: subtract the column mean before the SVD.

    Returns:
        A 0-dim tensor of the default float dtype, on ``z``'s device.

    Raises:
        ValueError: if ``z`` is not a dense, real floating-point 2-D tensor with at least one row, holds NaN or
            infinity, ``eps`` is outside [0, 1e-2] or ``center`` is not a bool.

    Example:
        >>> import torch
        >>> from rankme import rankme
        >>> round(rankme(torch.eye(8)).item(), 3)
        8.0
        >>> round(rankme(torch.ones(16, 8)).item(), 3)  # all rows equal: rank one
        1.0
    """
    _check_eps(eps)
    _check_bool("center", center)
    _check_embeddings(z)
    if z.shape[0] == 0:
        raise ValueError("Expected at least one row, but got an empty (0, D) tensor.")
    if not torch.isfinite(_abs_max(z)):
        raise ValueError("Expected finite embeddings, but `z` holds NaN or infinity. Drop or fix those rows first.")
    if z.shape[0] < z.shape[1]:
        _warn_capped(z.shape[0], z.shape[1])
    singular_values, _ = _singular_values(z, center)
    return _effective_rank(singular_values, eps).to(torch.get_default_dtype())
