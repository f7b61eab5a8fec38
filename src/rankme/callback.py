"""RankMe of an encoder at every validation epoch, as a Lightning callback."""

from __future__ import annotations

import contextlib
import copy
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
from typing_extensions import override

from rankme import functional as fn
from rankme.functional import DEFAULT_EPS, RankMeNoSamplesError, RankMeWarning
from rankme.metric import Mode, RankMe, RankMeSummary

if TYPE_CHECKING:
    from rankme.selection import RankMeCollapseGuard


def _warn(message: str) -> None:
    rank_zero_warn(message, category=RankMeWarning)


class RankMeCallback(Callback):
    """Log RankMe of an encoder's validation outputs at the end of every validation epoch, label-free.

    Every rank logs ``name`` (``mode="max"``) and the README's other keys, NaN after a NaN batch, not in sanity checks.

    Args:
        module: dotted name of the submodule whose forward output a hook captures (``"backbone"``, ``"encoder.head"``).
        output_key: key of ``validation_step``'s returned dict that holds the embeddings.
        name: the logged key. Avoid ``/``: checkpoint filename templates turn it into folders.
        mode, eps, center, max_samples: as in :class:`rankme.RankMe`; ``max_samples`` caps the rows of all ranks.
        dataloader_idx: which validation dataloader to monitor.
        every_n_epochs: compute every n-th fitting epoch (``Trainer(check_val_every_n_epoch=n)`` skips validation).
        transform: maps a captured output (tuple, tokens, feature map) to a (batch, D) tensor.
        log_spectrum: keep (in ``state_dict``) and log s_k / sum(s) at ~128 log-spaced k (none if all rows are 0).
        prog_bar: show the value in the progress bar.
        collapse_threshold: warn (only) when ``name + "_normalized"`` falls below it.
        calls_per_batch: if ``module`` runs twice per batch, keep the ``"first"`` call or ``"all"``; None: all, warned.

    Raises:
        MisconfigurationException: if not exactly one of ``module`` and ``output_key`` is given, or a setting is bad.

    Example:
        >>> trainer = Trainer(callbacks=[RankMeCallback(module="backbone")], logger=False, enable_progress_bar=False)
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
        calls_per_batch: Literal["all", "first"] | None = None,
    ) -> None:
        try:
            if (module is None) == (output_key is None):
                raise ValueError(f"Pass exactly one source, `module=` or `output_key=`; got {module=}, {output_key=}.")
            for arg, value in (("module", module), ("output_key", output_key), ("name", name)):
                fn._expect(value is None or (isinstance(value, str) and value != ""), arg, "a non-empty str", value)
            fn._check_int("dataloader_idx", dataloader_idx, 0)
            fn._check_int("every_n_epochs", every_n_epochs, 1)
            fn._check_bool("log_spectrum", log_spectrum)
            fn._check_bool("prog_bar", prog_bar)
            fn._expect(transform is None or callable(transform), "transform", "callable", transform)
            fn._check_number("collapse_threshold", collapse_threshold, "a float in (0, 1]", lambda v: 0 < v <= 1)
            choices = (None, "all", "first")
            fn._expect(calls_per_batch in choices, "calls_per_batch", f"one of {choices}", calls_per_batch)
            if calls_per_batch is not None and module is None:
                raise ValueError("`calls_per_batch` applies to `module=` only; leave it unset with `output_key=`.")
            self.metric = RankMe(mode=mode, eps=eps, center=center, max_samples=max_samples, nan_strategy="propagate")
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        self.module, self.output_key, self.name, self.transform = module, output_key, name, transform
        self.dataloader_idx, self.every_n_epochs, self.calls_per_batch = dataloader_idx, every_n_epochs, calls_per_batch
        self.log_spectrum, self.prog_bar, self.collapse_threshold = log_spectrum, prog_bar, collapse_threshold
        self.history: list[dict[str, float]] = []  # per epoch: epoch, global_step, value, normalized, num_samples
        self.spectra: list[dict[str, Any]] = []  # with log_spectrum, per epoch: epoch, global_step, k, values
        self._keys = {"value": name, "normalized": f"{name}_normalized", "num_samples": f"{name}_num_samples"}
        self._hooks = contextlib.ExitStack()  # the forward hook while a validation epoch runs
        self._active = self._in_monitored_batch = False  # this validation epoch, batch is monitored
        self._rows_left: int | None = None  # this rank's real (not padding) rows still to come; None: all count
        self._batch_rows: int | None = None  # the rows kept from the current batch, once its first output is seen
        self._calls_in_batch = 0
        self._warned_sampler = self._warned_calls = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name, module=self.module, output_key=self.output_key)

    def collapse_early_stopping(
        self, start_epoch: int | None = None, fraction: float | None = 0.5, min_value: float | None = None
    ) -> RankMeCollapseGuard:
        """A :class:`rankme.RankMeCollapseGuard` (same arguments) that stops the run when this callback's value falls.

        Example:
            >>> RankMeCallback(module="backbone").collapse_early_stopping(start_epoch=5).monitor
            'rankme'
        """
        from rankme.selection import RankMeCollapseGuard

        return RankMeCollapseGuard(self.name, start_epoch=start_epoch, fraction=fraction, min_value=min_value)

    def _report(self, message: str) -> None:
        _warn(f"RankMeCallback({self.name!r}): {message}")

    def _describe(self) -> str:
        source = f"module={self.module!r}" if self.module is not None else f"output_key={self.output_key!r}"
        return f"RankMeCallback(name={self.name!r}, {source})"

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.module is not None:
            self._submodule(pl_module, self.module)  # fail now, before any training time is spent
        for other in [c for c in getattr(trainer, "callbacks", []) if isinstance(c, RankMeCallback) and c is not self]:
            if shared := set(self._keys.values()) & set(other._keys.values()):
                raise MisconfigurationException(
                    f"{self._describe()} and {other._describe()} both log {sorted(shared)}: give each its own `name=`."
                )

    def _submodule(self, pl_module: LightningModule, target: str) -> nn.Module:
        try:
            return pl_module.get_submodule(target)
        except AttributeError:
            names = [name for name, _ in pl_module.named_modules() if name]
            close = difflib.get_close_matches(target, names, n=5, cutoff=0.4)
            hint = f"Did you mean one of {close}?" if close else f"Its submodules are {names[:20]}."
            what = f"{self._describe()}: {type(pl_module).__name__} has no such submodule"
            raise MisconfigurationException(f"{what}. {hint}") from None

    @override
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        fitting = trainer.state.fn == "fit" and not trainer.sanity_checking
        self._active = not fitting or (trainer.current_epoch + 1) % self.every_n_epochs == 0
        if not self._active:
            return
        loaders = len(trainer.num_sanity_val_batches if trainer.sanity_checking else trainer.num_val_batches)
        if self.dataloader_idx >= loaders:
            raise MisconfigurationException(
                f"{self._describe()} monitors validation dataloader_idx={self.dataloader_idx}, but validation has"
                f" {loaders} dataloader{'s' if loaders != 1 else ''} (indices 0 to {loaders - 1})."
            )
        self._rows_left = self._real_rows(trainer)
        self.metric.reset()
        self.metric.to(pl_module.device if pl_module.device.type != "mps" else "cpu")  # MPS has no float64
        if self.module is not None:
            self._hooks.enter_context(self._submodule(pl_module, self.module).register_forward_hook(self._capture_hook))

    @override
    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._in_monitored_batch = self._active and dataloader_idx == self.dataloader_idx
        self._batch_rows, self._calls_in_batch = None, 0

    def _capture_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._in_monitored_batch or (self._calls_in_batch and self.calls_per_batch == "first"):
            return
        self._calls_in_batch += 1
        if self._calls_in_batch > 1 and self.calls_per_batch is None and not self._warned_calls:
            self._warned_calls = True
            self._report(
                f"{self.module!r} ran {self._calls_in_batch} times in one validation batch; every call counts. Pass"
                " calls_per_batch='first' to keep the first call only, or 'all' to silence this."
            )
        self._update(output, f"the output of submodule {self.module!r}")

    @override
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, *args: Any) -> None:
        if self.output_key is not None and self._in_monitored_batch:
            if not isinstance(outputs, Mapping) or self.output_key not in outputs:
                got = f"a dict of keys {list(outputs)}" if isinstance(outputs, Mapping) else type(outputs).__name__
                fix = "validation_step must return a dict holding the embeddings under that key"
                raise MisconfigurationException(f"{self._describe()}: {fix}; it returned {got}.")
            self._update(outputs[self.output_key], f"validation_step's output[{self.output_key!r}]")
        self._in_monitored_batch = False

    def _real_rows(self, trainer: Trainer) -> int | None:
        """How many rows this rank will see are real, not ``DistributedSampler`` padding; None: all count."""
        if trainer.world_size == 1:
            return None
        loop = trainer.validate_loop if trainer.state.fn == "validate" else trainer.fit_loop.epoch_loop.val_loop
        loaders = getattr(getattr(loop, "_combined_loader", None), "flattened", [])
        loader = loaders[self.dataloader_idx] if self.dataloader_idx < len(loaders) else None
        sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", getattr(loader, "sampler", None))
        if isinstance(sampler, DistributedSampler):
            real = len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))  # type: ignore[arg-type]
            return min(real, sampler.num_samples)
        if not self._warned_sampler:
            self._warned_sampler = True
            kind, idx = type(sampler).__name__, self.dataloader_idx
            self._report(f"dataloader {idx} samples with {kind}, not a DistributedSampler: padding rows count too.")
        return None

    def _update(self, output: Any, source: str) -> None:
        z: Any = None
        try:
            z = self.transform(output) if self.transform is not None else output  # validation runs without grad
            if self._rows_left is not None and isinstance(z, Tensor) and z.ndim > 0:
                if self._batch_rows is None:  # the batch's first output: count its real rows once
                    self._batch_rows = min(z.shape[0], self._rows_left)
                    self._rows_left -= self._batch_rows
                z = z[: self._batch_rows]
            self.metric.update(z)  # the one check of the batch
        except (TypeError, ValueError) as err:  # the transform's check (z is None) or the metric's
            fits = isinstance(z, Tensor) and z.ndim == 2
            hint = "" if fits else " Pass a `transform=` that maps it to (batch, D) rows, e.g. from rankme.transforms."
            raise MisconfigurationException(f"RankMeCallback on {source}: {err}{hint}") from err

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._hooks.close()
        if not self._active or trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", RankMeWarning)
                summary = self.metric.summary()
        except RankMeNoSamplesError as err:  # raised alike on every rank, from synchronised state
            self._report(f"nothing logged at epoch {epoch}: {err}")
            return
        except ValueError as err:  # ranks fed different D: every rank sees the same gathered sizes and raises alike
            message = f"{self._describe()} at epoch {epoch}: {err} A `transform` or layer that depends on the rank?"
            raise MisconfigurationException(message) from err
        finally:
            self.metric.reset()
            for warning in caught:  # the metric's, alike on every rank: re-emitted on rank zero only
                if issubclass(warning.category, RankMeWarning):
                    self._report(str(warning.message))
                else:
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if bad := summary.non_finite_batches:
            self._report(f"{bad} batches held NaN or infinite embeddings at epoch {epoch}.")
        numbers = (math.nan,) * 3 if bad else (float(summary.value), summary.normalized, float(summary.num_samples))
        row = dict(zip(self._keys, numbers, strict=True))  # value, normalized, num_samples
        for field, key in self._keys.items():  # equal on every rank already: "max" keeps them exactly
            prog_bar = self.prog_bar and field == "value"
            pl_module.log(key, row[field], prog_bar=prog_bar, sync_dist=True, reduce_fx="max", add_dataloader_idx=False)
        self.history.append({"epoch": epoch, "global_step": trainer.global_step, **row})
        if self.collapse_threshold is not None and row["normalized"] < self.collapse_threshold:
            self._report(
                f"RankMe / min(N, D) = {row['normalized']:.4f} is below collapse_threshold={self.collapse_threshold}"
                f" at epoch {epoch}; `collapse_early_stopping()` stops on a fall."
            )
        if self.log_spectrum and not bad:
            self._log_spectrum(trainer, summary)

    def _log_spectrum(self, trainer: Trainer, summary: RankMeSummary) -> None:
        """Keep this epoch's s_k / sum(s) at ~128 log-spaced k; log it as one histogram, bar k holding s_k / sum(s)."""
        spectrum = summary.singular_values / summary.singular_values.sum()
        k = torch.logspace(0, math.log10(len(spectrum)), 128, dtype=torch.float64).round().long().unique()
        ks, values = k.tolist(), spectrum[(k - 1).to(spectrum.device)].tolist()  # one read per epoch
        if math.isnan(values[0]):  # all-zero embeddings (0 / 0): no spectrum to keep or log
            return
        step, key = trainer.global_step, f"{self.name}_spectrum"
        self.spectra.append({"epoch": trainer.current_epoch, "global_step": step, "k": ks, "values": values})
        for logger in trainer.loggers if trainer.global_rank == 0 else []:
            if isinstance(logger, WandbLogger):
                import wandb

                bins = [ks[0] - 0.5, *((a + b) / 2 for a, b in pairwise(ks)), ks[-1] + 0.5]
                histogram = wandb.Histogram(np_histogram=(values, bins))  # type: ignore[arg-type]  # lists work
                logger.log_metrics({key: histogram}, step=step)  # type: ignore[dict-item]
            elif isinstance(logger, TensorBoardLogger):  # stats: min, max, num, sum, sum_squares
                stats = (ks[0], ks[-1], len(ks), sum(values), sum(v * v for v in values))
                logger.experiment.add_histogram_raw(key, *stats, ks, values, global_step=step)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """After fit or validate: one W&B line chart of the kept spectra (first, latest, evenly spaced; 8 at most)."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger) and trainer.global_rank == 0]
        if stage not in ("fit", "validate") or not (self.log_spectrum and self.spectra and loggers):
            return
        import wandb

        shown = [self.spectra[i] for i in torch.linspace(0, len(self.spectra) - 1, 8).round().long().unique().tolist()]
        xs, ys, keys = zip(*((entry["k"], entry["values"], f"epoch {entry['epoch']}") for entry in shown), strict=True)
        plot = wandb.plot.line_series(xs, ys, keys, title=f"{self.name}: normalised singular values", xname="k")
        for logger in loggers:
            logger.log_metrics({f"{self.name}_spectrum_chart": plot}, step=trainer.global_step)  # type: ignore[dict-item]

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._hooks.close()
        self.metric.reset()

    @override
    def state_dict(self) -> dict[str, Any]:
        return copy.deepcopy({"history": self.history, "spectra": self.spectra})

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        try:
            self.history, self.spectra = (_restored(state_dict, key, fields) for key, fields in _SAVED_FIELDS.items())
        except ValueError as err:
            self.history, self.spectra = [], []
            self._report(f"could not restore its history from the checkpoint ({err}); it starts afresh.")


def _is_list_of(kind: type) -> Callable[[object], bool]:
    return lambda value: isinstance(value, list) and all(isinstance(item, kind) for item in value)


_WHEN: dict[str, Callable[[object], bool]] = dict.fromkeys(("epoch", "global_step"), fn._is_number)
_SAVED_FIELDS: dict[str, dict[str, Callable[[object], bool]]] = {  # the fields of each entry, and their check
    "history": _WHEN | dict.fromkeys(("value", "normalized", "num_samples"), fn._is_number),
    "spectra": _WHEN | {"k": _is_list_of(int), "values": _is_list_of(float)},
}


def _restored(state_dict: object, key: str, fields: dict[str, Callable[[object], bool]]) -> list[dict[str, Any]]:
    """The ``key`` list of a saved callback state (absent: empty); raises ValueError unless its entries fit."""
    if not isinstance(state_dict, Mapping) or not isinstance(entries := state_dict.get(key, []), list):
        got = type(state_dict.get(key) if isinstance(state_dict, Mapping) else state_dict).__name__
        raise ValueError(f"expected a dict holding a list `{key}`, got {got}")
    for position, entry in enumerate(entries):
        ok = isinstance(entry, Mapping) and set(entry) == set(fields) and all(f(entry[k]) for k, f in fields.items())
        if not ok or (key == "spectra" and not len(entry["k"]) == len(entry["values"]) > 0):
            raise ValueError(f"{key} entry {position} is not a dict of numbers {list(fields)}: {entry!r}")
    return copy.deepcopy([dict(entry) for entry in entries])
