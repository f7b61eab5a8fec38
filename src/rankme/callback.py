"""RankMe of an encoder at every validation epoch, as a Lightning callback."""

from __future__ import annotations

import difflib
import math
import warnings
from collections.abc import Callable, Mapping
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DistributedSampler
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from rankme.functional import DEFAULT_EPS, RankMeNoSamplesError, RankMeWarning, _check_bool, _check_int
from rankme.metric import Mode, RankMe, RankMeSummary

if TYPE_CHECKING:
    from rankme.selection import RankMeCollapseGuard

CallsPerBatch = Literal["all", "first"]

_SPECTRUM_POINTS = 128  # points per plotted spectrum, log-spaced in k
_SPECTRUM_CURVES = 8  # epochs drawn in one plot: the first, the latest and evenly spaced ones between


def _warn(message: str) -> None:
    """Warn once, on rank zero, with the package's category: ``RankMeWarning``."""
    rank_zero_warn(message, category=RankMeWarning)


class RankMeCallback(Callback):
    """Log RankMe of an encoder's validation outputs at the end of every validation epoch, label-free.

    The outputs come from exactly one source: ``module``, the dotted name of a submodule whose forward
    output is captured by a hook while validation steps run (every call in a step counts, extra views
    included, unless ``calls_per_batch="first"``; a second call in a batch is warned about once), or
    ``output_key``, a key of the dict that ``validation_step`` returns. A :class:`rankme.RankMe` metric
    accumulates them on the model's device across all ranks, and at the end of the epoch the callback logs,
    on every rank:

    - ``name``: RankMe, for ``ModelCheckpoint(monitor=name, mode="max")`` and
      ``EarlyStopping(monitor=name, mode="max")`` (in any callback order);
    - ``name + "_normalized"``: RankMe / min(N, D), in (0, 1];
    - ``name + "_num_samples"``: N, over all ranks;
    - with ``log_spectrum``, ``name + "_spectrum"``: the normalised singular values ``s_k / sum(s)`` at about 128
      log-spaced k, one small record per epoch: a histogram whose bar at k is ``s_k / sum(s)`` in a
      :class:`~lightning.pytorch.loggers.WandbLogger` (W&B draws the epochs as a heat map over steps) and in a
      :class:`~lightning.pytorch.loggers.TensorBoardLogger` (one slice per epoch in its histogram dashboard). With
      W&B, ``name + "_spectrum_chart"`` at the end of ``fit``/``validate``: one line chart of the first, the latest
      and up to six evenly spaced epochs. The spectra are kept in the callback's ``state_dict``, so the chart of a
      resumed run still covers the epochs before the resume.

    In the default configuration (gram mode, uncentred, no ``max_samples``) nothing is read back from the device
    per validation batch: each batch is checked once, by the metric, and a batch with NaN or infinity is counted on
    the device and reported at the end of the epoch. ``max_samples``, ``center=True`` and ``mode="embeddings"`` read
    one value back per batch (the row count or the finiteness verdict; see :class:`rankme.RankMe`). Every warning
    has the category :class:`rankme.RankMeWarning` and is emitted once, on rank zero.

    The sanity check is skipped (its batches only check the settings). Under DDP the value covers the
    validation data of every rank, exactly: the rows that Lightning's default ``DistributedSampler`` repeats to pad
    the last shard (when the dataset size does not divide by the number of ranks) are left out, so the value and
    ``num_samples`` equal those of one process over the validation set. With another sampler (or an
    ``IterableDataset``) the callback cannot tell padding from real rows; it counts every row and says so once.

    Args:
        module: dotted name of the submodule to capture (``"backbone"``, ``"encoder.head"``).
        output_key: key of the dict returned by ``validation_step`` that holds the embeddings.
        name: the logged key. Avoid ``/``: checkpoint filename templates turn it into folders.
        mode: the metric's mode, ``"gram"`` (default, state D x D) or ``"embeddings"`` (keeps the rows).
        eps: the paper's smoothing constant.
        center: subtract the column mean before taking singular values.
        max_samples: cap on the rows per epoch over all ranks (the paper uses 25600); None keeps all.
        dataloader_idx: which validation dataloader to monitor.
        every_n_epochs: compute every n-th fitting epoch (always in ``trainer.validate``). Epochs in between
            log nothing, and Lightning's monitors then see the previous value again (or, before the first,
            no key at all). To drive ``ModelCheckpoint``/``EarlyStopping`` prefer
            ``Trainer(check_val_every_n_epoch=n)``, which skips the whole validation instead.
        transform: maps a captured output (tuple, tokens, feature map) to a (batch, D) tensor.
        log_spectrum: keep and log the spectrum (W&B and TensorBoard loggers; see above).
        prog_bar: show the value in the progress bar.
        calls_per_batch: with ``module``, what to do when the submodule runs more than once in a validation batch
            (two augmented views, say): ``"first"`` keeps the first call only, ``"all"`` keeps every call, and
            None (default) keeps every call and warns once that it happened.
        collapse_threshold: warn (only) when ``name + "_normalized"`` falls below it. To stop a collapsing
            run add :meth:`collapse_early_stopping` (a :class:`rankme.RankMeCollapseGuard`), which judges a fall
            from the run's own best rather than a fixed level.

    Raises:
        MisconfigurationException: if neither or both of ``module`` and ``output_key`` are given, or
            another argument is invalid.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from lightning.pytorch.callbacks import ModelCheckpoint
        >>> from rankme import RankMeCallback
        >>> rankme_cb = RankMeCallback(module="backbone")
        >>> trainer = Trainer(callbacks=[rankme_cb, ModelCheckpoint(monitor="rankme", mode="max")],
        ...                   logger=False, enable_progress_bar=False, enable_model_summary=False)
    """

    def __init__(
        self,
        module: str | None = None,
        output_key: str | None = None,
        name: str = "rankme",
        mode: Mode = "gram",
        eps: float = DEFAULT_EPS,
        center: bool = False,
        max_samples: int | None = None,
        dataloader_idx: int = 0,
        every_n_epochs: int = 1,
        transform: Callable[[Any], Tensor] | None = None,
        log_spectrum: bool = True,
        prog_bar: bool = True,
        collapse_threshold: float | None = None,
        calls_per_batch: CallsPerBatch | None = None,
    ) -> None:
        if (module is None) == (output_key is None):
            raise MisconfigurationException(
                "RankMeCallback needs exactly one source of embeddings: `module='backbone'` (a submodule whose"
                f" output is captured) or `output_key='z'` (a key of validation_step's dict); got module={module!r}"
                f" and output_key={output_key!r}."
            )
        for arg, value in (("module", module), ("output_key", output_key), ("name", name)):
            if value is not None and (not isinstance(value, str) or not value):
                raise MisconfigurationException(f"Expected argument `{arg}` to be a non-empty str, but got {value!r}.")
        try:
            _check_int("dataloader_idx", dataloader_idx, 0)
            _check_int("every_n_epochs", every_n_epochs, 1)
            _check_bool("log_spectrum", log_spectrum)
            _check_bool("prog_bar", prog_bar)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        if transform is not None and not callable(transform):
            raise MisconfigurationException(f"Expected argument `transform` to be callable, but got {transform!r}.")
        if collapse_threshold is not None and (
            isinstance(collapse_threshold, bool)
            or not isinstance(collapse_threshold, (int, float))
            or not 0 < collapse_threshold <= 1
        ):
            raise MisconfigurationException(
                f"Expected argument `collapse_threshold` to be in (0, 1] (it bounds RankMe / min(N, D)), but got"
                f" {collapse_threshold!r}."
            )
        if calls_per_batch not in (None, "all", "first"):
            raise MisconfigurationException(
                f"Expected argument `calls_per_batch` to be None, 'all' or 'first', but got {calls_per_batch!r}."
            )
        if calls_per_batch is not None and module is None:
            raise MisconfigurationException(
                "`calls_per_batch` applies to `module=` (a hook sees every call of the submodule); with"
                " `output_key=` validation_step returns one tensor per batch. Leave `calls_per_batch` unset."
            )
        try:
            self.metric = RankMe(mode=mode, eps=eps, center=center, max_samples=max_samples, nan_strategy="propagate")
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        self.module = module
        self.output_key = output_key
        self.name = name
        self.dataloader_idx = dataloader_idx
        self.every_n_epochs = every_n_epochs
        self.transform = transform
        self.log_spectrum = log_spectrum
        self.prog_bar = prog_bar
        self.collapse_threshold = collapse_threshold
        self.calls_per_batch = calls_per_batch
        self.history: list[dict[str, float]] = []
        """One entry per computed epoch: epoch, global_step, value, normalized, num_samples."""
        self.spectra: list[dict[str, Any]] = []
        """With ``log_spectrum``, one entry per computed epoch: epoch, global_step, k and s_k / sum(s) at ~128 k."""
        self._hook: RemovableHandle | None = None
        self._active = False
        self._in_monitored_batch = False
        self._rows_left: int | None = None  # this rank's real (not padding) rows still to come; None: all count
        self._batch_rows: int | None = None  # the rows kept from the current batch, once its first output is seen
        self._warned_sampler = False
        self._calls_in_batch = 0
        self._warned_calls = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, module=self.module, output_key=self.output_key)

    def collapse_early_stopping(
        self, start_epoch: int | None = None, fraction: float | None = 0.5, min_value: float | None = None
    ) -> RankMeCollapseGuard:
        """A :class:`rankme.RankMeCollapseGuard` on this callback's ``name``: it stops a run whose RankMe falls.

        It stops when the value falls below ``fraction`` x its best since ``start_epoch`` (None: the module's
        ``warmup_epochs``), or to ``min_value``, or is NaN; a run that starts low and rises is never stopped.
        ``collapse_threshold`` only warns.

        Example:
            >>> from rankme import RankMeCallback
            >>> guard = RankMeCallback(module="backbone").collapse_early_stopping(start_epoch=5)
            >>> guard.monitor, guard.fraction
            ('rankme', 0.5)
        """
        from rankme.selection import RankMeCollapseGuard

        return RankMeCollapseGuard(self.name, start_epoch=start_epoch, fraction=fraction, min_value=min_value)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.module is not None:
            self._submodule(pl_module)  # fail now, before any training time is spent
        mine = self._logged_keys()
        callbacks: list[Callback] = getattr(trainer, "callbacks", [])
        for other in callbacks:  # identical settings (one state_key) are refused by Lightning's Trainer already
            if other is not self and isinstance(other, RankMeCallback) and mine & other._logged_keys():
                raise MisconfigurationException(
                    f"{self._describe()} and {other._describe()} both log {sorted(mine & other._logged_keys())}: one"
                    " value would silently overwrite the other. Give each RankMeCallback its own `name=`."
                )

    def _logged_keys(self) -> set[str]:
        return {self.name, f"{self.name}_normalized", f"{self.name}_num_samples"}

    def _describe(self) -> str:
        source = f"module={self.module!r}" if self.module is not None else f"output_key={self.output_key!r}"
        return f"RankMeCallback(name={self.name!r}, {source})"

    def _submodule(self, pl_module: LightningModule) -> nn.Module:
        assert self.module is not None
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError:
            names = [name for name, _ in pl_module.named_modules() if name]
            close = difflib.get_close_matches(self.module, names, n=5, cutoff=0.4)
            hint = f" Did you mean {close}?" if close else f" Its submodules are {names[:20]}."
            raise MisconfigurationException(
                f"RankMeCallback(module={self.module!r}): {type(pl_module).__name__} has no such submodule.{hint}"
            ) from None

    def _monitors_this_epoch(self, trainer: Trainer) -> bool:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return True
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._active = self._monitors_this_epoch(trainer)
        if not self._active:
            return
        loaders = len(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)
        if self.dataloader_idx >= loaders:
            self._active = False
            raise MisconfigurationException(
                f"{self._describe()} monitors validation dataloader_idx={self.dataloader_idx}, but validation has"
                f" {loaders} dataloader{'s' if loaders != 1 else ''} (indices 0 to {loaders - 1}). Pass an index"
                " below that."
            )
        self._rows_left = self._real_rows(trainer)
        self.metric.reset()
        # on the model's device; MPS has no float64, so the metric stays on the CPU there
        self.metric.to(pl_module.device if pl_module.device.type != "mps" else "cpu")
        if self.module is not None:
            self._remove_hook()
            self._hook = self._submodule(pl_module).register_forward_hook(self._capture_hook)

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._in_monitored_batch = self._active and dataloader_idx == self.dataloader_idx
        self._batch_rows = None
        self._calls_in_batch = 0

    def _capture_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._in_monitored_batch:
            return
        self._calls_in_batch += 1
        if self._calls_in_batch > 1:
            if self.calls_per_batch == "first":
                return
            if self.calls_per_batch is None and not self._warned_calls:
                self._warned_calls = True
                _warn(
                    f"{self._describe()}: the submodule ran {self._calls_in_batch} times in one validation batch (two"
                    " augmented views?), and the rows of every call are counted. Pass `calls_per_batch='first'` to"
                    " keep the first call of each batch only, or `calls_per_batch='all'` to keep every call without"
                    " this warning."
                )
        self._update(output, f"the output of submodule {self.module!r}")

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self.output_key is not None and self._in_monitored_batch:
            if not isinstance(outputs, Mapping) or self.output_key not in outputs:
                got = f"a dict with keys {list(outputs)}" if isinstance(outputs, Mapping) else repr(type(outputs))
                raise MisconfigurationException(
                    f"RankMeCallback(output_key={self.output_key!r}) needs validation_step to return a dict holding"
                    f" the embeddings under {self.output_key!r}, but it returned {got}."
                )
            self._update(outputs[self.output_key], f"validation_step's output[{self.output_key!r}]")
        self._in_monitored_batch = False

    def _real_rows(self, trainer: Trainer) -> int | None:
        """How many of the rows this rank will see are real, not the sampler's padding; None when all count.

        Lightning's default ``DistributedSampler`` (or one of its subclasses) lays the index list out, pads it with
        copies of its first indices up to a multiple of the world size and gives rank r the positions r, r + W, ...:
        rank r's real rows are the first ``len(range(r, len(dataset), W))`` it yields. Any other sampler under DDP
        cannot be read this way, which is said once.
        """
        if trainer.world_size == 1:
            return None
        fn_loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop
        combined = getattr(fn_loop, "_combined_loader", None)
        loaders = list(combined.flattened) if combined is not None else []
        loader = loaders[self.dataloader_idx] if self.dataloader_idx < len(loaders) else None
        batch_sampler = getattr(loader, "batch_sampler", None)
        sampler = getattr(batch_sampler, "sampler", None)
        if sampler is None:
            sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            real = len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))  # type: ignore[arg-type]
            return min(real, sampler.num_samples)
        if not self._warned_sampler:
            self._warned_sampler = True
            _warn(
                f"{self._describe()}: under DDP the validation dataloader {self.dataloader_idx} samples with"
                f" {type(sampler).__name__}, not a DistributedSampler, so the callback cannot tell rows repeated as"
                " padding (or seen by every rank) from real ones and counts every row it sees. For the exact value"
                " keep Lightning's default `use_distributed_sampler=True` with a map-style dataset."
            )
        return None

    def _update(self, output: Any, source: str) -> None:
        with torch.no_grad():
            z = self.transform(output) if self.transform is not None else output
            if self._rows_left is not None and isinstance(z, Tensor) and z.ndim > 0:
                if self._batch_rows is None:  # the batch's first output: count its real rows once
                    self._batch_rows = min(z.shape[0], self._rows_left)
                    self._rows_left -= self._batch_rows
                z = z[: self._batch_rows]  # a host int: no read from the device
            try:
                self.metric.update(z)  # the one check of the batch; nothing is read back to the host here
            except ValueError as err:
                hint = ""
                if not isinstance(z, Tensor) or z.ndim != 2:
                    hint = (
                        " Pass `transform=` to map it to a (batch, features) tensor, e.g. `lambda out: out[0]` for a"
                        " tuple, `lambda x: x[:, 0]` for ViT tokens or `lambda x: x.mean(dim=(2, 3))` for feature maps."
                    )
                raise MisconfigurationException(f"RankMeCallback on {source}: {err}{hint}") from err

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        if not self._active or trainer.sanity_checking:
            return
        self._active = False
        try:
            summary = self._summary()
        except RankMeNoSamplesError as err:  # raised alike on every rank, from synchronised state
            _warn(f"RankMeCallback({self.name!r}) logs nothing at epoch {trainer.current_epoch}: {err}")
            return
        except ValueError as err:  # ranks fed different D: every rank sees the same gathered sizes and raises alike
            raise MisconfigurationException(
                f"{self._describe()} at epoch {trainer.current_epoch}: {err} A `transform` or a layer that depends"
                " on the rank gives this."
            ) from err
        finally:
            self.metric.reset()
        if summary.non_finite_batches:
            _warn(
                f"RankMeCallback({self.name!r}): {summary.non_finite_batches} validation batches held NaN or infinite"
                f" embeddings at epoch {trainer.current_epoch}; logging {self.name}=nan so checkpointing treats it as"
                " the worst."
            )
            self._log(trainer, pl_module, math.nan, math.nan, math.nan)
            return
        self._log(trainer, pl_module, float(summary.value), summary.normalized, float(summary.num_samples))
        if self.collapse_threshold is not None and summary.normalized < self.collapse_threshold:
            _warn(
                f"RankMeCallback({self.name!r}): RankMe / min(N, D) = {summary.normalized:.4f} is below"
                f" collapse_threshold={self.collapse_threshold} at epoch {trainer.current_epoch}. A low value is not"
                " collapse on its own (post-ReLU features can start near 0.03 and rise); a fall is: add"
                " `collapse_early_stopping()` to stop on one."
            )
        if self.log_spectrum:
            self._log_spectrum(trainer, summary)

    def _summary(self) -> RankMeSummary:
        """The metric's synchronised summary; its warnings, alike on every rank, are re-emitted on rank zero only."""
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RankMeWarning)
                return self.metric.summary()
        finally:
            for warning in caught:
                if issubclass(warning.category, RankMeWarning):
                    _warn(f"RankMeCallback({self.name!r}): {warning.message}")
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)

    def _log(self, trainer: Trainer, pl_module: LightningModule, value: float, normalized: float, n: float) -> None:
        # The values are already identical on every rank; "max" over ranks keeps them exactly.
        options: dict[str, Any] = {"sync_dist": True, "reduce_fx": "max", "add_dataloader_idx": False}
        device = pl_module.device
        pl_module.log(self.name, torch.tensor(value, device=device), prog_bar=self.prog_bar, **options)
        pl_module.log(f"{self.name}_normalized", torch.tensor(normalized, device=device), **options)
        pl_module.log(f"{self.name}_num_samples", torch.tensor(n, device=device), **options)
        self.history.append(
            {
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
                "value": value,
                "normalized": normalized,
                "num_samples": n,
            }
        )

    def _log_spectrum(self, trainer: Trainer, summary: RankMeSummary) -> None:
        """Keep this epoch's spectrum (~128 log-spaced points, in ``state_dict``) and log it, one record per epoch."""
        spectrum = summary.singular_values / summary.singular_values.sum()
        # k = 1 .. min(N, D), log-spaced so the head of the spectrum keeps its detail
        k = torch.logspace(0, math.log10(len(spectrum)), _SPECTRUM_POINTS, dtype=torch.float64).round().long().unique()
        entry: dict[str, Any] = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "k": k.tolist(),
            "values": spectrum[(k - 1).to(spectrum.device)].tolist(),  # one read per epoch, not per batch
        }
        self.spectra.append(entry)
        if trainer.global_rank != 0:
            return
        key = f"{self.name}_spectrum"
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # a histogram whose bars are s_k / sum(s) at k: W&B draws every epoch so far as a heat map over steps
                import wandb

                bins = [entry["k"][0] - 0.5, *((a + b) / 2 for a, b in pairwise(entry["k"])), entry["k"][-1] + 0.5]
                histogram = wandb.Histogram(np_histogram=(entry["values"], bins))  # type: ignore[arg-type]  # lists work
                record: dict[str, Any] = {key: histogram}
                logger.log_metrics(record, step=trainer.global_step)
            elif isinstance(logger, TensorBoardLogger):
                # TensorBoard's histogram dashboard: one slice per epoch, bucket k holding s_k / sum(s)
                ks, values = entry["k"], entry["values"]
                logger.experiment.add_histogram_raw(
                    key,
                    min=ks[0],
                    max=ks[-1],
                    num=len(ks),
                    sum=sum(values),
                    sum_squares=sum(v * v for v in values),
                    bucket_limits=ks,
                    bucket_counts=values,
                    global_step=trainer.global_step,
                )

    def _log_spectrum_chart(self, trainer: Trainer) -> None:
        """One W&B line chart of the kept spectra (first, latest and evenly spaced epochs), once per run."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not self.log_spectrum or not self.spectra or not loggers or trainer.global_rank != 0:
            return
        import wandb

        picks = torch.linspace(0, len(self.spectra) - 1, min(len(self.spectra), _SPECTRUM_CURVES))
        shown = [self.spectra[i] for i in picks.round().long().unique().tolist()]
        plot = wandb.plot.line_series(
            xs=[entry["k"] for entry in shown],
            ys=[entry["values"] for entry in shown],
            keys=[f"epoch {entry['epoch']}" for entry in shown],
            title=f"{self.name}: normalised singular values",
            xname="k",
        )
        chart: dict[str, Any] = {f"{self.name}_spectrum_chart": plot}
        for logger in loggers:
            logger.log_metrics(chart, step=trainer.global_step)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._log_spectrum_chart(trainer)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._remove_hook()
        self._in_monitored_batch = False
        if trainer.state.fn == "validate":
            self._log_spectrum_chart(trainer)

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hook()
        self._active = self._in_monitored_batch = False
        self.metric.reset()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history], "spectra": [dict(entry) for entry in self.spectra]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the history; a malformed saved state gives a warning and a fresh history, never a failed resume."""
        try:
            self.history = _checked_history(state_dict)
            self.spectra = _checked_spectra(state_dict)
        except (TypeError, ValueError, KeyError) as err:
            self.history, self.spectra = [], []
            _warn(
                f"{self._describe()} could not restore its history from the checkpoint ({err}); it starts a fresh"
                " one. The model, optimizer and other callbacks were restored as usual."
            )


_HISTORY_FIELDS = ("epoch", "global_step", "value", "normalized", "num_samples")


def _checked_history(state_dict: Any) -> list[dict[str, float]]:
    """The history held in a saved callback state, checked entry by entry; raises TypeError/ValueError if malformed."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a dict, got {type(state_dict).__name__}")
    entries = state_dict.get("history", [])
    if not isinstance(entries, list):
        raise TypeError(f"expected `history` to be a list, got {type(entries).__name__}")
    history = []
    for position, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != set(_HISTORY_FIELDS):
            raise ValueError(f"history entry {position} is not a dict with keys {list(_HISTORY_FIELDS)}: {entry!r}")
        if not all(isinstance(entry[field], (int, float)) and not isinstance(entry[field], bool) for field in entry):
            raise ValueError(f"history entry {position} holds a value that is not a number: {entry!r}")
        history.append({field: entry[field] for field in _HISTORY_FIELDS})
    return history


def _checked_spectra(state_dict: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The spectra held in a saved callback state (absent in older checkpoints); raises ValueError if malformed."""
    entries = state_dict.get("spectra", [])
    if not isinstance(entries, list):
        raise ValueError(f"expected `spectra` to be a list, got {type(entries).__name__}")
    spectra = []
    for position, entry in enumerate(entries):
        ok = isinstance(entry, Mapping) and set(entry) == {"epoch", "global_step", "k", "values"}
        ok = ok and isinstance(entry["k"], list) and isinstance(entry["values"], list)
        ok = ok and len(entry["k"]) == len(entry["values"]) > 0
        ok = ok and all(isinstance(k, int) for k in entry["k"]) and all(isinstance(v, float) for v in entry["values"])
        if not ok:
            raise ValueError(f"spectra entry {position} is not a dict of epoch, global_step, k and values: {entry!r}")
        spectra.append({**entry, "k": list(entry["k"]), "values": list(entry["values"])})
    return spectra
