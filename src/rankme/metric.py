"""The streaming, distributed RankMe metric."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple, get_args

import torch
from torch import Tensor
from torch.nn import Module
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from rankme import functional as fn
from rankme.functional import DEFAULT_EPS, RankMeNoSamplesError, RankMeWarning, rankme

Mode = Literal["gram", "embeddings"]
NanStrategy = Literal["error", "ignore", "propagate"]
_CHOICES = {"mode": get_args(Mode), "nan_strategy": get_args(NanStrategy)}
_BUFFER_ROWS = 2048
"""Rows gathered (float64) before one product: small GEMMs run well below the machine's float64 rate."""


def _float64_rows(n: int, d: int, device: torch.device, make: Callable[..., Tensor] = torch.empty) -> Tensor:
    """Float64 (n, d) from ``make`` with rows an odd number of 64-byte lines apart (contiguous at D=2048: 256 lines)."""
    # At a power-of-two stride the GEMM blocks of _add_gram_ alias in the CPU caches: up to 13% slower (limit_bench).
    return make(n, (-(-d // 8) | 1) * 8, dtype=torch.float64, device=device)[:, :d]


def _add_gram_(gram: Tensor, rows: Tensor, block: int | None) -> None:
    """``gram += rows^T rows`` on and below the diagonal, in place; the strictly upper part is left stale.

    The lower triangle of ``X^T X`` for ``X = [X1 X2]`` is one GEMM ``X2^T X1`` plus the lower triangles of
    ``X1^T X1`` and ``X2^T X2``, split the same way down to full products of at most ``block`` features (None: one
    full product). Every reader (``eigvalsh``, sums) uses the lower triangle alone.
    """

    def lower(lo: int, hi: int) -> None:
        if block is None or hi - lo <= block:
            gram[lo:hi, lo:hi].addmm_(rows[:, lo:hi].T, rows[:, lo:hi])
            return
        mid = (lo + hi) // 2
        gram[mid:hi, lo:mid].addmm_(rows[:, mid:hi].T, rows[:, lo:mid])
        lower(lo, mid)
        lower(mid, hi)

    lower(0, rows.shape[1])


class _BlockTuner:
    """Chooses the leaf of :func:`_add_gram_` per device type and D by timing the metric's own products.

    The first full-buffer products try the candidates in turn, three times each; the lowest median time is kept
    (timings move by about 5% between products: one try apiece often picked a leaf 5% slower than the best).
    """

    def __init__(self) -> None:
        self.choice: dict[tuple[str, int], int | None] = {}
        self.timings: dict[tuple[str, int], dict[int | None, list[float]]] = {}

    @staticmethod
    def candidates(d: int) -> list[int | None]:
        """The full product; from D=256 on (below, the triangle saves nothing) also leaves of D/32 to D/2, >= 64."""
        return [None, *sorted({leaf for parts in (32, 16, 8, 4, 2) if (leaf := d // parts) >= 64 and d >= 256})]

    def default(self, device: torch.device, d: int) -> int | None:
        """The leaf for an untimed product: the choice once made, else ``max(64, D // 8)`` (full below D=256)."""
        return self.choice.get((device.type, d), max(64, d // 8) if d >= 256 else None)

    def add_gram_(self, gram: Tensor, rows: Tensor, timed: bool) -> None:
        """:func:`_add_gram_` at this D's leaf; a ``timed`` product (a full buffer) may try a candidate."""
        key = (gram.device.type, rows.shape[1])
        timings = self.timings.setdefault(key, {leaf: [] for leaf in self.candidates(rows.shape[1])})
        leaf = min(timings, key=lambda leaf: len(timings[leaf]))  # the next in turn
        if timed and key not in self.choice and len(timings) == 1:
            self.choice[key] = None  # below D=256: the full product alone
        elif timed and key not in self.choice and len(timings[leaf]) == 3:
            self.choice[key] = min(timings, key=lambda leaf: sorted(timings[leaf])[1])  # the lowest median of 3
        if not timed or key in self.choice:
            _add_gram_(gram, rows, block=self.default(gram.device, rows.shape[1]))
            return
        synchronize = torch.cuda.synchronize if gram.device.type == "cuda" else lambda device: None
        synchronize(gram.device)
        start = time.perf_counter()
        _add_gram_(gram, rows, block=leaf)
        synchronize(gram.device)
        timings[leaf].append(time.perf_counter() - start)


_TUNER = _BlockTuner()


class RankMeSummary(NamedTuple):
    """Everything one synchronised compute knows: the value, the spectrum and the sizes."""

    value: Tensor  # 0-dim, of the default float dtype: RankMe
    singular_values: Tensor  # float64, the min(N, D) singular values, descending, in the units of the input
    num_samples: int  # N, the rows accumulated over all ranks
    num_features: int  # D, the features per row
    non_finite_batches: int = 0  # batches left out for NaN or infinity (nan_strategy="propagate"): value is NaN

    @property
    def normalized(self) -> float:
        """RankMe divided by its upper bound min(N, D), in (0, 1]; NaN when no finite row was kept."""
        bound = min(self.num_samples, self.num_features)
        return float(self.value) / bound if bound else math.nan


class RankMe(Metric):
    r"""RankMe (Garrido et al., ICML 2023), accumulated over batches and distributed ranks.

    The paper's value on the stacked (N, D) matrix of every row passed to :meth:`update` on every rank, in float64
    for any magnitude float64 holds. ``"gram"`` keeps the lower triangle of ``Z^T Z`` (D x D whatever N is; the
    scatter about the mean with ``center=True``) and takes one ``eigvalsh``, within about 1e-8 of an SVD;
    ``"embeddings"`` keeps every row for an exact SVD, for D far above N (README: "Choosing a mode", "Cost").
    :meth:`update` reads nothing back to the host in uncentred gram mode with ``nan_strategy="propagate"`` and no
    ``max_samples``; the other options read a flag or row counts per batch.

    Args:
        mode: ``"gram"`` or ``"embeddings"``, see above.
        eps: the paper's smoothing constant (1e-7), in [0, 1e-2]: the value is at least about ``1 - eps``.
        center: subtract the column mean before taking singular values (off, as in the paper).
        max_samples: keep the first this many rows in total (the paper uses 25600). Under ``torch.distributed``
            each of W ranks keeps its first ``max_samples // W`` rows (one more on the first ``max_samples % W``).
        nan_strategy: for a batch holding NaN or infinity, ``"error"`` raises and keeps the state as it was;
            ``"ignore"`` drops those rows with a warning; ``"propagate"`` leaves the batch out, counts it, and makes
            :meth:`compute` NaN (with a warning) until :meth:`reset`, as :class:`rankme.RankMeCallback` does.
        metric_kwargs: passed to :class:`torchmetrics.Metric` (``process_group``, ``sync_on_compute``, ...).

    Raises:
        ValueError: for any argument outside the ranges above.

    Example:
        >>> metric = RankMe()
        >>> for batch in torch.eye(8).split(3):
        ...     metric.update(batch)
        >>> round(metric.compute().item(), 3)
        8.0
        >>> summary = metric.summary()
        >>> summary.num_samples, summary.num_features, summary.singular_values.shape
        (8, 8, torch.Size([8]))
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 1.0

    gram: Tensor
    scale: Tensor
    mean: Tensor
    num_rows: Tensor
    non_finite_batches: Tensor
    embeddings: list[Tensor]

    def __init__(
        self,
        mode: Mode = "gram",
        eps: float = DEFAULT_EPS,
        center: bool = False,
        max_samples: int | None = None,
        nan_strategy: NanStrategy = "error",
        **metric_kwargs: Any,
    ) -> None:
        super().__init__(**metric_kwargs)
        for name, value in (("mode", mode), ("nan_strategy", nan_strategy)):
            if value not in _CHOICES[name]:
                raise ValueError(f"Expected argument `{name}` to be one of {_CHOICES[name]}, but got {value!r}.")
        fn._check_eps(eps)
        fn._check_int("max_samples", max_samples, 1, allow_none=True, hint=" (the paper uses 25600)")
        fn._check_bool("center", center)
        self.mode, self.eps, self.center = mode, float(eps), center
        self.max_samples, self.nan_strategy = max_samples, nan_strategy
        self._warned_capped = False
        self._rows: Tensor | None = None  # the buffer of rows waiting for the next product, see _queue
        self._rows_filled, self._rows_wide, self._rows_abs_max = 0, False, torch.zeros((), dtype=torch.float64)
        self._unit_scale = True  # `scale` is known to be 0 or 1: see _flush

        self.add_state("num_rows", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("non_finite_batches", default=torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        if mode == "embeddings":
            self.add_state("embeddings", default=[], dist_reduce_fx="cat")
            return
        # Sized at the first update (see _size_states). Centred, `gram` is the scatter about this process's `mean`,
        # which _sync_dist re-centres on the global mean before the sum.
        self.add_state("gram", default=torch.zeros(0, 0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("scale", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="max")
        if center:
            self.add_state("mean", default=torch.zeros(0, dtype=torch.float64), dist_reduce_fx=None)

    @property
    def num_features(self) -> int | None:
        """D, once this process has seen a batch; None before (and after :meth:`reset`)."""
        if self.mode == "gram":
            return self.gram.shape[0] or None
        if isinstance(self.embeddings, Tensor):  # after a sync, the rows of every rank in one tensor
            return self.embeddings.shape[1] if self.embeddings.ndim == 2 else None  # 1-D: no rank had rows
        return self.embeddings[0].shape[1] if self.embeddings else None

    def _size_states(self, num_features: int) -> None:
        """Give the empty states their (D x D), (D,) or (0, D) shape; a no-op once they have it."""
        if self.num_features is not None:
            return
        if self.mode == "embeddings":
            self.embeddings.append(torch.zeros(0, num_features, dtype=torch.float64, device=self.device))
            return
        try:
            self.gram = _float64_rows(num_features, num_features, self.device, torch.zeros)
        except RuntimeError as err:  # torch.OutOfMemoryError included
            raise ValueError(
                f"Expected D x D float64 to fit in memory in gram mode, but D={num_features} needs"
                f" {num_features**2 * 8 / 2**30:.3g} GiB. Use mode='embeddings' (N x D) or fewer features."
            ) from err
        if self.center:
            self.mean = torch.zeros(num_features, dtype=torch.float64, device=self.device)

    def _room(self) -> int | None:
        """How many more rows this rank may keep under ``max_samples`` (its share of them), or None for no cap."""
        if self.max_samples is None:
            return None
        distributed = callable(self.distributed_available_fn) and self.distributed_available_fn()
        world_size = torch.distributed.get_world_size(self.process_group) if distributed else 1
        rank = torch.distributed.get_rank(self.process_group) if distributed else 0
        quota = self.max_samples // world_size + int(rank < self.max_samples % world_size)
        return max(quota - int(self.num_rows), 0)

    def update(self, z: Tensor) -> None:
        """Add a (batch, D) tensor of embeddings (detached).

        Raises:
            ValueError: if ``z`` is not a dense, real floating-point 2-D tensor, its D differs from earlier batches,
                or it holds NaN or infinity under ``nan_strategy="error"``; the state is left as it was.
        """
        fn._check_embeddings(z, self.num_features)
        z = z.detach()
        abs_max = fn._abs_max(z).to(self.device)  # the batch's scale and its finiteness test
        if self.mode == "gram" and not self.center and self.max_samples is None and self.nan_strategy == "propagate":
            finite = torch.isfinite(abs_max)  # stays on the device: a bad batch is queued as zeros and counted
            self._size_states(z.shape[1])
            self._queue(z, abs_max, finite)
            self.num_rows += finite * z.shape[0]
            self.non_finite_batches += ~finite
            return
        if not bool(torch.isfinite(abs_max)):
            if self.nan_strategy == "propagate":
                self.non_finite_batches += 1
                return
            finite = torch.isfinite(z).all(dim=1)
            dropped = int((~finite).sum())
            if self.nan_strategy == "error":
                raise ValueError(
                    f"Expected finite embeddings, but {dropped} of {z.shape[0]} rows hold NaN or infinity; nothing"
                    " from this batch was added. Pass `nan_strategy='ignore'` to drop such rows instead."
                )
            fn._warn(f"Dropped {dropped} of {z.shape[0]} rows holding NaN or infinity.")
            z = z[finite]
            abs_max = fn._abs_max(z).to(self.device)
        room = self._room()
        if room is not None and z.shape[0] > room:
            z = z[:room]
            abs_max = fn._abs_max(z).to(self.device)

        self._size_states(z.shape[1])
        if self.mode == "embeddings":
            if z.shape[0]:  # a copy: a caller reusing its buffer would rewrite the kept rows
                self.embeddings.append(z.to(device=self.device, dtype=torch.float64, copy=True))
        elif not self.center:
            self._queue(z, abs_max)
        elif z.shape[0]:
            self._rescale_to(torch.maximum(self.scale, fn._power_of_two_scale(abs_max)))
            z64 = z.to(device=self.device, dtype=torch.float64) * torch.where(self.scale > 0, 1 / self.scale, 0.0)
            deviations = z64 - z64[0]  # about the first row first: identical rows give an exactly zero scatter
            deviation_mean = deviations.mean(dim=0)
            deviations -= deviation_mean
            scatter = torch.zeros_like(self.gram)
            _add_gram_(scatter, deviations, block=_TUNER.default(self.device, z.shape[1]))
            self._merge_centred(z.shape[0], z64[0] + deviation_mean, scatter)
        self.num_rows += z.shape[0]

    def _queue(self, z: Tensor, abs_max: Tensor, finite: Tensor | None = None) -> None:
        """Cast a batch into the row buffer, multiplied in when full; a non-``finite`` one as zeros. No host read."""
        if (room := _BUFFER_ROWS - self._rows_filled) < z.shape[0]:  # fill the buffer to the brim, then by buffers
            for part in (z[:room], *z[room:].split(_BUFFER_ROWS)):
                self._queue(part, abs_max, finite)
            return
        if not (n := z.shape[0]):
            return
        if self._rows is None:
            self._rows = _float64_rows(_BUFFER_ROWS, z.shape[1], self.device)
        rows = self._rows[self._rows_filled : self._rows_filled + n].copy_(z)
        if finite is not None:
            rows.masked_fill_(~finite, 0.0)
            abs_max = torch.where(finite, abs_max, 0.0)
        self._rows_abs_max = torch.maximum(self._rows_abs_max.to(self.device), abs_max)
        self._rows_wide, self._rows_filled = self._rows_wide or z.element_size() > 4, self._rows_filled + n
        if self._rows_filled >= _BUFFER_ROWS:
            self._flush()

    def _flush(self) -> None:
        """Multiply the queued rows into the Gram matrix: before anything reads, syncs or saves the state.

        Float32 and narrower rows go in as they are while the state is in units of 1: their squares cannot leave
        float64's range. Otherwise state and rows are first rescaled, exactly, to a power of two covering max |z|.
        """
        if not self._rows_filled:
            return
        rows = self._rows[: self._rows_filled]  # type: ignore[index]
        if self._rows_wide or not self._unit_scale:
            scale = torch.maximum(self.scale, fn._power_of_two_scale(self._rows_abs_max))
            self.gram.mul_(torch.where(scale > 0, self.scale / scale, 1.0) ** 2)
            rows.mul_(torch.where(scale > 0, 1 / scale, 0.0))
            self.scale, self._unit_scale = scale, False
        else:
            self.scale = torch.where(self._rows_abs_max > 0, 1.0, self.scale)
        if self.gram.stride(0) != rows.stride(0):  # a sum, a rescaling or a move made it contiguous: lay it out anew
            self.gram = _float64_rows(rows.shape[1], rows.shape[1], self.device, torch.zeros).copy_(self.gram)
        _TUNER.add_gram_(self.gram, rows, timed=rows.shape[0] >= _BUFFER_ROWS)
        self._rows_filled, self._rows_wide = 0, False
        self._rows_abs_max = torch.zeros_like(self._rows_abs_max)

    def forward(self, z: Tensor) -> Tensor:
        """:meth:`update`, then RankMe of this batch's finite rows alone (NaN if none); the state is never reset."""
        self.update(z)
        rows = z.detach()[torch.isfinite(z.detach()).all(dim=1)]
        if rows.shape[0] == 0:
            value = torch.tensor(math.nan, device=self.device)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RankMeWarning)  # a batch is usually smaller than D
                value = rankme(rows, eps=self.eps, center=self.center).to(self.device)
        self._forward_cache = value  # type: ignore[assignment]  # torchmetrics annotates it as None
        return value

    def _merge_centred(self, count: int, mean: Tensor, scatter: Tensor) -> None:
        """Add a group of rows given by its count, mean and scatter matrix (Chan et al.'s pairwise update)."""
        total = int(self.num_rows) + count
        if count == 0:
            return
        delta = mean - self.mean
        self.gram += scatter + torch.outer(delta, delta) * (int(self.num_rows) * count / total)
        self.mean += delta * (count / total)

    def _local_summary(self) -> RankMeSummary:
        """The summary of whatever state this process holds now (synchronised or not)."""
        self._flush()
        num_samples, num_features = int(self.num_rows), self.num_features
        non_finite_batches = int(self.non_finite_batches)
        if non_finite_batches:
            nan = torch.tensor(math.nan, dtype=torch.get_default_dtype(), device=self.device)
            empty = torch.zeros(0, dtype=torch.float64, device=self.device)
            return RankMeSummary(nan, empty, num_samples, num_features or 0, non_finite_batches)
        if num_samples == 0 or num_features is None:
            raise RankMeNoSamplesError(
                "RankMe has no samples to compute on: no rows reached `update` on any process (or all were dropped"
                " as non-finite). Feed at least one batch of embeddings before `compute()`."
            )
        if num_samples < num_features and not self._warned_capped:
            self._warned_capped = True
            fn._warn_capped(num_samples, num_features, self._is_synced, self.process_group)
        if self.mode == "gram":  # eigvalsh reads the lower triangle; its eigenvalues ascend
            eigenvalues = torch.linalg.eigvalsh(self.gram, UPLO="L").flip(0)[: min(num_samples, num_features)]
            singular_values, scale = eigenvalues.clamp(min=0).sqrt(), self.scale
        else:
            singular_values, scale = fn._singular_values(dim_zero_cat(self.embeddings), self.center)
        value = fn._effective_rank(singular_values, self.eps, self._is_synced, self.process_group)
        return RankMeSummary(value.to(torch.get_default_dtype()), singular_values * scale, num_samples, num_features)

    def compute(self) -> Tensor:
        """RankMe of every row on every rank, a 0-dim tensor; a collective. Raises RankMeNoSamplesError without rows."""
        summary = self._local_summary()
        if summary.non_finite_batches:
            fn._warn(
                f"RankMe is NaN: {summary.non_finite_batches} batches held NaN or infinity and were left out"
                " (nan_strategy='propagate').",
                self._is_synced,
                self.process_group,
            )
        return summary.value

    def summary(self) -> RankMeSummary:
        """The value, the spectrum, N and D from one sync; a collective, raising as :meth:`compute` does."""
        with self.sync_context(
            dist_sync_fn=self.dist_sync_fn,
            should_sync=self.sync_on_compute,
            distributed_available=self.distributed_available_fn,
        ):
            return self._local_summary()

    def plot(self, val: Tensor | Sequence[Tensor] | None = None, ax: Any = None) -> Any:
        """Plot ``val`` (a value, a sequence of them over time; default :meth:`compute`) on ``ax`` or a new figure.

        Returns the matplotlib ``(Figure, Axes)``; raises ``ModuleNotFoundError`` without matplotlib.

        Example:
            >>> fig, ax = RankMe().plot([torch.tensor(3.0), torch.tensor(4.5)])  # doctest: +SKIP
        """
        _pyplot()
        fig, ax = self._plot(val, ax)
        return (ax.get_figure() if fig is None else fig), ax

    def plot_spectrum(self, summary: RankMeSummary | None = None, ax: Any = None) -> Any:
        """Plot ``summary``'s (default :meth:`summary`) singular values against k, log-log, on ``ax`` or a new figure.

        Returns the matplotlib ``(Figure, Axes)``; raises ``ModuleNotFoundError`` without matplotlib.

        Example:
            >>> metric = RankMe()
            >>> metric.update(torch.randn(256, 32))
            >>> fig, ax = metric.plot_spectrum()  # doctest: +SKIP
        """
        plt = _pyplot()
        summary = self.summary() if summary is None else summary
        fig, ax = plt.subplots() if ax is None else (ax.get_figure(), ax)
        k = torch.arange(1, summary.singular_values.numel() + 1)
        ax.loglog(k.numpy(), summary.singular_values.double().cpu().numpy(), marker=".", markersize=3)
        ax.set_xlabel("k")
        ax.set_ylabel("singular value $s_k$")
        ax.set_title(f"RankMe = {float(summary.value):.4g} (N={summary.num_samples}, D={summary.num_features})")
        ax.grid(True, which="both", alpha=0.3)
        return fig, ax

    @property
    def metric_state(self) -> dict[str, Any]:
        """The states, with any queued rows multiplied in first."""
        self._flush()
        return super().metric_state

    def sync(self, *args: Any, **kwargs: Any) -> None:
        """Multiply any queued rows into the state before torchmetrics caches it and syncs (see ``Metric.sync``)."""
        self._flush()
        super().sync(*args, **kwargs)

    def reset(self) -> None:
        """Forget every row, the queued ones included, and D."""
        super().reset()
        self._rows, self._rows_filled, self._rows_wide, self._unit_scale = None, 0, False, True
        self._rows_abs_max = torch.zeros_like(self._rows_abs_max)

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        self._flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        """Add another RankMe's rows (of the same ``mode`` and ``center``) to this one's, as a sync does.

        Raises:
            ValueError: if the other metric's ``mode`` or ``center`` differs, or a dict holds other state names.
        """
        for setting in ("mode", "center") if isinstance(incoming_state, RankMe) else ():
            if (mine := getattr(self, setting)) != (theirs := getattr(incoming_state, setting)):
                raise ValueError(
                    f"Expected a RankMe with the same `{setting}` to merge, but this one has {setting}={mine!r}"
                    f" and the incoming one {setting}={theirs!r}: their states mean different things."
                )
        if isinstance(incoming_state, dict) and set(incoming_state) != set(self._defaults):
            raise ValueError(
                f"Expected the states of a RankMe(mode={self.mode!r}, center={self.center}), {sorted(self._defaults)},"
                f" but got {sorted(incoming_state)}. Merge metrics of the same `mode` and `center`."
            )
        self._flush()
        super().merge_state(incoming_state)

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """Agree on D and the scale across ranks first, so every rank sends states of one shape in one unit."""
        group = process_group or self.process_group
        local = torch.tensor(self.num_features or 0, device=self.device)
        sizes = {int(d) for d in dist_sync_fn(local, group=group)} - {0}
        if len(sizes) > 1:
            raise ValueError(
                f"Expected every process to feed embeddings of one size, but they saw D in {sorted(sizes)}."
                " Check that each rank monitors the same layer."
            )
        if sizes:
            self._size_states(sizes.pop())
            if self.mode == "gram":
                self._rescale_to(torch.stack(dist_sync_fn(self.scale, group=group)).max())
                if self.center:
                    self._centre_on_global_mean(dist_sync_fn, group)
        super()._sync_dist(dist_sync_fn, process_group)

    def _rescale_to(self, scale: Tensor) -> None:
        """Express the gram-mode states in units of ``scale`` (a power of two >= this state's), out of place."""
        ratio = torch.where(scale > 0, self.scale / scale, 1.0)
        self.gram = self.gram * (ratio * ratio)
        if self.center:
            self.mean = self.mean * ratio
        self.scale, self._unit_scale = scale.clone(), False

    def _centre_on_global_mean(self, dist_sync_fn: Callable, group: Any | None) -> None:
        """Turn this rank's scatter about its own mean into its scatter about the mean of all ranks."""
        counts = torch.stack(dist_sync_fn(self.num_rows, group=group)).to(torch.float64)
        means = torch.stack(dist_sync_fn(self.mean, group=group))
        if counts.sum() == 0:
            return
        offsets = means - means[0]  # from the first rank's mean: ranks with identical rows give a zero delta
        delta = (self.mean - means[0]) - (counts[:, None] * offsets).sum(dim=0) / counts.sum()
        self.gram = self.gram + torch.outer(delta, delta) * float(self.num_rows)

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> Module:
        """Let ``.to(device)`` move the states but never change their dtype (Lightning's ``"*-true"`` precisions)."""
        if getattr(self, "_rows_filled", 0):  # queued rows join the state before it moves
            self._flush()
        self._rows = None

        def keep_dtype(tensor: Tensor) -> Tensor:
            moved = fn(tensor)
            return moved if moved.dtype == tensor.dtype else tensor.to(moved.device)

        return super()._apply(keep_dtype, exclude_state)

    def _reduce_states(self, incoming_state: dict[str, Any]) -> None:
        """Merge another metric's states (``merge_state``) once both sides have their shapes and one scale."""
        theirs = incoming_state["gram" if self.mode == "gram" else "embeddings"]
        d = theirs.shape[0] if self.mode == "gram" else (theirs[0].shape[1] if theirs else 0)
        if d and self.num_features not in (None, d):
            raise ValueError(f"Expected states of one feature size, but got D={d} and D={self.num_features}.")
        if d:
            self._size_states(d)
        if self.mode == "gram":
            their_scale = incoming_state["scale"].to(self.device)
            scale = torch.maximum(self.scale, their_scale)
            ratio = torch.where(scale > 0, their_scale / scale, 1.0)
            self._rescale_to(scale)
            gram = theirs.to(self.device) * (ratio * ratio) if d else torch.zeros_like(self.gram)
            incoming_state = {**incoming_state, "scale": scale, "gram": gram}
            if self.center:  # Chan's merge by count and mean, not a plain sum
                self.non_finite_batches += incoming_state["non_finite_batches"].to(self.device)
                if d:
                    count = int(incoming_state["num_rows"])
                    self._merge_centred(count, incoming_state["mean"].to(self.device) * ratio, gram)
                    self.num_rows += count
                return
        super()._reduce_states(incoming_state)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Drop queued rows (the loaded state replaces theirs); a state saved before ``scale`` existed loads at 1."""
        if prefix + "gram" in state_dict:
            self._rows, self._rows_filled, self._rows_wide, self._unit_scale = None, 0, False, False
            if prefix + "scale" not in state_dict and self._persistent.get("scale"):
                state_dict[prefix + "scale"] = torch.ones((), dtype=torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _pyplot() -> Any:
    """``matplotlib.pyplot``, or a one-line error saying how to install it (it is not a dependency of rankme)."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ModuleNotFoundError("RankMe's plots need matplotlib: `pip install matplotlib`.") from err
    return plt
