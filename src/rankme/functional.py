"""RankMe of a whole embedding matrix, and the checks, warnings and formula that every route shares."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchmetrics
from torch import Tensor

DEFAULT_EPS = 1e-7
MAX_EPS = 1e-2  # the largest eps accepted: RankMe never falls below about 1 - eps (its floor is 1)
# Warnings point past frames in rankme, torch (Module.__call__) and torchmetrics (update/compute wrappers).
_INTERNAL_DIRS = tuple(str(Path(path).parent) for path in (__file__, torch.__file__, torchmetrics.__file__))


class RankMeWarning(UserWarning):
    """The category of every warning this package emits: ``warnings.filterwarnings("ignore", category=RankMeWarning)``.

    Example:
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", RankMeWarning)
        ...     rankme(torch.zeros(4, 2))
        Traceback (most recent call last):
        rankme.functional.RankMeWarning: All embeddings are zero (complete collapse): RankMe is 1.0 by convention.
    """


class RankMeNoSamplesError(ValueError):
    """Raised when RankMe is asked for a value but no row of embeddings was accumulated on any process."""


def _expect(ok: bool, name: str, expected: str, value: object) -> None:
    """The one argument check: torchmetrics' "Expected argument `name` to be ..., but got ..." unless ``ok``."""
    if not ok:
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {value!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_eps(eps: float) -> None:
    why = "(the paper uses 1e-7; a larger eps pushes RankMe below its floor of 1)"
    _expect(_is_number(eps) and 0 <= eps <= MAX_EPS, "eps", f"a float in [0, {MAX_EPS}] {why}", eps)


def _check_int(name: str, value: object, lowest: int, allow_none: bool = False, hint: str = "") -> None:
    ok = (allow_none and value is None) or (isinstance(value, int) and not isinstance(value, bool) and value >= lowest)
    _expect(ok, name, f"{'None or ' if allow_none else ''}an int >= {lowest}{hint}", value)


def _check_bool(name: str, value: object) -> None:
    _expect(isinstance(value, bool), name, "a bool", value)


def _check_number(name: str, value: object, expected: str, within: Callable[[float], bool]) -> None:
    ok = value is None or (_is_number(value) and math.isfinite(value) and within(value))  # type: ignore[arg-type]
    _expect(ok, name, f"None or {expected}", value)


def _check_embeddings(z: object, expected_features: int | None = None) -> None:
    """Raise a one-line ``ValueError`` unless ``z`` is a dense, real floating-point (batch, features) tensor."""
    if not isinstance(z, Tensor):
        hint = " Convert it with `torch.from_numpy(z)`." if type(z).__module__ == "numpy" else ""
        raise ValueError(f"Expected a torch.Tensor of shape (batch, features), but got {type(z).__name__}.{hint}")
    if z.is_nested or z.layout != torch.strided:
        layout = "nested" if z.is_nested else str(z.layout)
        raise ValueError(f"Expected a dense tensor of embeddings, but got a {layout} one: pass `z.to_dense()`.")
    if z.is_meta:
        raise ValueError("Expected a tensor with values, but got one on the meta device: run the model on cpu or cuda.")
    if z.ndim != 2:
        fix = "pool or flatten them, e.g. `z.mean(dim=1)` for tokens" if z.ndim > 2 else "pass a (batch, features) one"
        raise ValueError(f"Expected (batch, features) embeddings, but got a tensor of shape {tuple(z.shape)}; {fix}.")
    if not z.is_floating_point():
        hint = "Integers are usually labels or indices passed by mistake; if they are embeddings, pass `z.float()`."
        if z.dtype == torch.bool:
            hint = "A bool tensor is a mask, not embeddings; if it really holds features, pass `z.float()`."
        elif z.is_complex():
            hint = "RankMe is for real embeddings: pass `z.real`, `z.abs()` or `torch.view_as_real(z).flatten(1)`."
        elif z.is_quantized:
            hint = "Pass `z.dequantize()`."
        raise ValueError(f"Expected floating-point embeddings, but got dtype {z.dtype}. {hint}")
    if z.shape[1] == 0:
        raise ValueError(f"Expected at least one feature per row, but got shape {tuple(z.shape)}.")
    if expected_features is not None and z.shape[1] != expected_features:
        raise ValueError(
            f"Expected {expected_features} features per row, as in the earlier batches, but got shape {tuple(z.shape)}."
            " Feed one embedding layer per metric, or call `reset()` before changing it."
        )


def _abs_max(z: Tensor) -> Tensor:
    """``max |z|`` as a float64 0-dim tensor on ``z``'s device, in one pass: the batch's scale and finiteness test."""
    if z.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=z.device)
    if z.element_size() == 1:  # float8: no reductions on CPU
        z = z.float()
    low, high = torch.aminmax(z)  # much faster than vector_norm(z, inf) on CPU; NaN propagates
    return torch.maximum(-low, high).to(torch.float64)


def _power_of_two_scale(abs_max: Tensor) -> Tensor:
    """A power of two in (abs_max / 2, abs_max] within [2^-1000, 2^1023] (0 where abs_max is 0): an exact divisor."""
    scale = torch.ldexp(torch.ones_like(abs_max), (torch.frexp(abs_max).exponent - 1).clamp(-1000, 1023))
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
    message = f"RankMe is computed on N={num_samples} samples of D={num_features} features: capped by N, not by D."
    _warn(f"{message} Use at least D samples (the paper uses 25600) to compare runs.", once_per_job, group)


def _effective_rank(singular_values: Tensor, eps: float, once_per_job: bool = False, group: Any = None) -> Tensor:
    """RankMe of singular values in float64, scaled by an exact power of two first (1, with a warning, if all 0)."""
    s = singular_values.to(torch.float64)
    s = s / _power_of_two_scale(_abs_max(s)).clamp(min=torch.finfo(torch.float64).tiny)
    if (total := s.sum()) <= 0:
        _warn("All embeddings are zero (complete collapse): RankMe is 1.0 by convention.", once_per_job, group)
        return torch.ones((), dtype=torch.float64, device=s.device)
    p = s / total + eps
    return torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy: 0 log 0 = 0 when eps = 0


def _singular_values(z: Tensor, center: bool) -> tuple[Tensor, Tensor]:
    """Float64 SVD of ``z`` (centred if asked) divided by a power of two near ``max |z|`` (exact), and that power."""
    scale = _power_of_two_scale(_abs_max(z.detach()))
    z64 = z.detach().to(torch.float64) * torch.where(scale > 0, 1 / scale, 0.0)
    if center:  # about the first row first, so that identical rows centre to exactly zero (as in gram mode)
        z64 = z64 - z64[:1]
        z64 = z64 - z64.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(z64), scale


def rankme(z: Tensor, eps: float = DEFAULT_EPS, center: bool = False) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): the effective rank of an (N, D) embedding matrix.

    Args:
        z: floating-point tensor of shape (N, D), one embedding per row.
        eps: added to every ``p_k = s_k / sum(s)``, ``s`` the singular values of ``z``; RankMe is ``exp(-sum p log p)``.
        center: subtract the column mean before the SVD.

    Returns:
        A 0-dim tensor of the default float dtype on ``z``'s device, from about 1 (collapse) to min(N, D).

    Raises:
        ValueError: if ``z`` is not a finite, dense, real floating-point (N >= 1, D) tensor, or a setting is bad.

    Example:
        >>> round(rankme(torch.eye(8)).item(), 3)
        8.0
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
    return _effective_rank(_singular_values(z, center)[0], eps).to(torch.get_default_dtype())
