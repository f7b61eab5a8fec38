"""RankMe on a whole embedding matrix, and the private helpers that every route shares.

The value is computed in exactly one place, :func:`_effective_rank`, from the singular values; the
functional :func:`rankme` and the :class:`rankme.RankMe` metric differ only in how they obtain those
singular values (an SVD of the stacked rows, or the eigenvalues of a streamed Gram matrix).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

DEFAULT_EPS = 1e-7


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
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"Expected argument `eps` to be a finite float >= 0 (the paper uses 1e-7), but got {eps!r}.")


def _check_int(name: str, value: object, lowest: int, allow_none: bool = False, hint: str = "") -> None:
    """Raise a ``ValueError`` unless ``value`` is an int >= ``lowest`` (bools refused), or None if allowed."""
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
        expected = f"{'None or ' if allow_none else ''}an int >= {lowest}{hint}"
        raise ValueError(f"Expected argument `{name}` to be {expected}, but got {value!r}.")


def _check_bool(name: str, value: object) -> None:
    """Raise a ``ValueError`` unless ``value`` is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"Expected argument `{name}` to be a bool, but got {value!r}.")


def _check_embeddings(z: Tensor, expected_features: int | None = None) -> None:
    """Raise a ``ValueError`` unless ``z`` is a floating-point (batch, features) tensor."""
    if not isinstance(z, Tensor):
        raise ValueError(f"Expected embeddings to be a torch.Tensor of shape (batch, features), but got {type(z)}.")
    if z.ndim != 2:
        raise ValueError(
            f"Expected embeddings of shape (batch, features), but got a {z.ndim}-D tensor of shape {tuple(z.shape)}."
            " Flatten or pool them first, e.g. `z.flatten(1)` or `z.mean(dim=1)` for tokens."
        )
    if not z.is_floating_point():
        raise ValueError(
            f"Expected floating-point embeddings, but got dtype {z.dtype}. Integer tensors are usually labels or"
            " indices passed by mistake; if they really are embeddings, pass `z.float()`."
        )
    if z.shape[1] == 0:
        raise ValueError(f"Expected at least one feature per row, but got shape {tuple(z.shape)}.")
    if expected_features is not None and z.shape[1] != expected_features:
        raise ValueError(
            f"Expected {expected_features} features per row, as in the earlier batches, but got shape"
            f" {tuple(z.shape)}. Feed one embedding layer per metric, or call `reset()` before changing it."
        )


def _warn_capped(num_samples: int, num_features: int) -> None:
    warnings.warn(
        f"RankMe is computed on N={num_samples} samples of D={num_features} features: with N < D the value is"
        f" capped by N, not by D. Use at least D samples (the paper uses 25600) to compare runs.",
        RankMeWarning,
        stacklevel=3,
    )


def _effective_rank(singular_values: Tensor, eps: float) -> Tensor:
    """The paper's RankMe of a vector of singular values, in float64.

    ``p_k = s_k / sum(s) + eps`` and the value is ``exp(-sum_k p_k log p_k)``. A spectrum of zeros (a
    completely collapsed encoder) has RankMe 1 by convention, with a warning.
    """
    s = singular_values.to(torch.float64)
    total = s.sum()
    if total <= 0:
        warnings.warn(
            "All embeddings are zero (complete collapse): RankMe is 1.0 by convention.", RankMeWarning, stacklevel=3
        )
        return torch.ones((), dtype=torch.float64, device=s.device)
    p = s / total + eps
    return torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy: 0 log 0 = 0 when eps = 0


def _singular_values_from_gram(gram: Tensor, num_samples: int) -> Tensor:
    """The min(N, D) largest singular values, descending, of a matrix whose ``Z^T Z`` has ``gram``'s lower triangle."""
    eigenvalues = torch.linalg.eigvalsh(gram, UPLO="L")  # ascending; reads the lower triangle only
    keep = min(num_samples, gram.shape[0])
    return eigenvalues.flip(0)[:keep].clamp(min=0).sqrt()


def _singular_values(z: Tensor, center: bool) -> Tensor:
    """The min(N, D) singular values, descending, of ``z`` (column-centred first if asked), by float64 SVD."""
    z64 = z.detach().to(torch.float64)
    if center:
        z64 = z64 - z64.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(z64)


def rankme(z: Tensor, eps: float = DEFAULT_EPS, center: bool = False) -> Tensor:
    """RankMe (Garrido et al., ICML 2023): the effective rank of an (N, D) embedding matrix.

    The singular values of the uncentred matrix (``center=True`` subtracts the column mean first) are
    computed by a float64 SVD whatever the input dtype; ``p_k = s_k / sum(s) + eps``; the value is
    ``exp(-sum_k p_k log p_k)``, between about 1 (collapse) and ``min(N, D)``.

    Args:
        z: floating-point tensor of shape (N, D), one embedding per row.
        eps: the paper's smoothing constant added to every ``p_k``.
        center: subtract the column mean before the SVD.

    Returns:
        A 0-dim tensor of the default float dtype, on ``z``'s device.

    Raises:
        ValueError: if ``z`` is not a 2-D floating tensor with at least one row, holds NaN or infinity,
            or ``eps`` is negative.

    Example:
        >>> import torch
        >>> from rankme import rankme
        >>> round(rankme(torch.eye(8)).item(), 3)
        8.0
        >>> round(rankme(torch.ones(16, 8)).item(), 3)  # all rows equal: rank one
        1.0
    """
    _check_eps(eps)
    _check_embeddings(z)
    if z.shape[0] == 0:
        raise ValueError("Expected at least one row, but got an empty (0, D) tensor.")
    if not torch.isfinite(z).all():
        raise ValueError("Expected finite embeddings, but `z` holds NaN or infinity. Drop or fix those rows first.")
    if z.shape[0] < z.shape[1]:
        _warn_capped(z.shape[0], z.shape[1])
    return _effective_rank(_singular_values(z, center), eps).to(torch.get_default_dtype())
