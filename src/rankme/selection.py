"""Label-free checkpoint selection with RankMe, which often peaks at initialisation: monitors that skip the warm-up."""

import math
from typing import Any, ClassVar

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from rankme.callback import _warn
from rankme.functional import _check_bool, _check_number, _expect


class _IgnoresWarmup(Callback):
    """Mixin: ``start_epoch`` is checked at construction and resolved (None: ``warmup_epochs``) at setup."""

    def __init__(self, *, start_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_epoch, self._start = start_epoch, self._epoch(start_epoch, "argument `start_epoch`")

    def _epoch(self, value: Any, what: str) -> int:
        """``value`` (None: 0); a MisconfigurationException naming ``what`` unless it is None or an int >= 0."""
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise MisconfigurationException(f"Expected {what} to be None or an int >= 0, but got {value!r}.")
        return value or 0

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.start_epoch is None:
            warmup, owner = pl_module.hparams.get("warmup_epochs"), type(pl_module).__name__
            self._start = self._epoch(warmup, f"hyperparameter `warmup_epochs` of {owner} (start_epoch=None)")
            if warmup is None and stage == "fit":
                _warn(
                    f"{type(self).__name__}(start_epoch=None): {owner} has no `warmup_epochs` hyperparameter, so"
                    " every epoch counts, from 0; RankMe often peaks there. Pass `start_epoch=`."
                )

    @override
    def _generate_state_key(self, **kwargs: Any) -> str:
        return super()._generate_state_key(**{**kwargs, "start_epoch": self.start_epoch})  # the stock key + start_epoch


class WarmupModelCheckpoint(_IgnoresWarmup, ModelCheckpoint):
    """A ``ModelCheckpoint`` that neither saves (``save_last`` too) nor ranks before ``start_epoch``, crash saves aside.

    Args:
        start_epoch: the first epoch that counts; None: the module's ``warmup_epochs`` (0 without one).
        kwargs: every :class:`~lightning.pytorch.callbacks.ModelCheckpoint` argument, by keyword.

    Raises:
        MisconfigurationException: if ``start_epoch``, or the ``warmup_epochs`` it stands for, is not an int >= 0.

    Example:
        >>> WarmupModelCheckpoint(start_epoch=10, monitor="rankme", mode="max", save_top_k=-1).start_epoch
        10
    """

    _ran_past_warmup = False  # whether the last epoch run counts: current_epoch is one past it at on_train_end

    @override
    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        # every save and every ranking of ModelCheckpoint asks this first
        return trainer.current_epoch < self._start or super()._should_skip_saving_checkpoint(trainer)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._ran_past_warmup = trainer.current_epoch >= self._start

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._ran_past_warmup:  # `save_last` writes last.ckpt here even when nothing was saved
            super().on_train_end(trainer, pl_module)


class WarmupEarlyStopping(_IgnoresWarmup, EarlyStopping):
    """An ``EarlyStopping`` that checks nothing (patience, thresholds, ``check_finite``) before ``start_epoch``.

    Args:
        start_epoch: the first epoch that counts; None: the module's ``warmup_epochs`` (0 without one).
        kwargs: every :class:`~lightning.pytorch.callbacks.EarlyStopping` argument, by keyword.

    Raises:
        MisconfigurationException: if ``start_epoch``, or the ``warmup_epochs`` it stands for, is not an int >= 0.

    Example:
        >>> WarmupEarlyStopping(start_epoch=10, monitor="rankme", mode="max", patience=10).start_epoch
        10
    """

    @override
    def _should_skip_check(self, trainer: Trainer) -> bool:
        return trainer.current_epoch < self._start or super()._should_skip_check(trainer)  # both hooks ask this first


class RankMeCollapseGuard(_IgnoresWarmup):
    """Stop every rank when RankMe falls well below the run's own best or to about 1, saying why in a RankMeWarning.

    Args:
        monitor: the key logged by :class:`rankme.RankMeCallback` (its ``name``).
        start_epoch: the first epoch that counts; None: the module's ``warmup_epochs`` (0 without one).
        fraction: stop below ``fraction`` x the best value since ``start_epoch``, in (0, 1); None disables it.
        min_value: stop at or below this value (RankMe >= 1); None (default) disables it.
        check_finite: stop on a NaN or infinite value, warm-up included.

    Raises:
        MisconfigurationException: if an argument is out of range or of the wrong type.

    Example:
        >>> RankMeCollapseGuard(monitor="rankme", start_epoch=5, fraction=0.5).best_value is None
        True
    """

    _SAVED: ClassVar[dict[str, Any]] = dict(best_value=float, best_epoch=int, stopped_epoch=int, stopping_reason=str)

    def __init__(
        self,
        monitor: str = "rankme",
        start_epoch: int | None = None,
        fraction: float | None = 0.5,
        min_value: float | None = None,
        check_finite: bool = True,
    ) -> None:
        try:
            _expect(isinstance(monitor, str) and monitor != "", "monitor", "a non-empty str", monitor)
            _check_number("fraction", fraction, "a float in (0, 1)", lambda v: 0 < v < 1)
            _check_number("min_value", min_value, "a float >= 1 (RankMe is at least 1)", lambda v: v >= 1)
            _check_bool("check_finite", check_finite)
        except ValueError as err:
            raise MisconfigurationException(str(err)) from err
        super().__init__(start_epoch=start_epoch)
        self.monitor, self.fraction, self.min_value, self.check_finite = monitor, fraction, min_value, check_finite
        self.best_value: float | None = None
        """The best value of ``monitor`` since ``start_epoch``; None before the first."""
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stopping_reason: str | None = None
        """Why the run was stopped (also in a :class:`rankme.RankMeWarning`); None if it was not."""
        self._warned_missing = False

    @property
    @override
    def state_key(self) -> str:
        settings = {"start_epoch": self.start_epoch, "fraction": self.fraction, "min_value": self.min_value}
        return self._generate_state_key(monitor=self.monitor, **settings)  # in the order of the checkpoints before

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or getattr(trainer, "fast_dev_run", False):
            return
        epoch, current = trainer.current_epoch, trainer.callback_metrics.get(self.monitor)
        if current is None:
            if not self._warned_missing:
                self._warned_missing = True
                _warn(
                    f"RankMeCollapseGuard(monitor={self.monitor!r}) found no such logged key at epoch {epoch} (logged:"
                    f" {sorted(trainer.callback_metrics)}); set `monitor` to the RankMeCallback's `name`."
                )
            return
        reason = self._reason_to_stop(float(current), epoch)
        if trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            trainer.should_stop, self.stopped_epoch = True, epoch
            self.stopping_reason = reason or f"another rank saw {self.monitor} collapse"
            _warn(self.stopping_reason)

    def _reason_to_stop(self, value: float, epoch: int) -> str | None:
        """Why the run should stop at ``epoch`` with ``value``, or None; updates the best value."""
        stop = f"RankMeCollapseGuard stopped training at epoch {epoch}: {self.monitor}={value:.4g}"
        if not math.isfinite(value):
            return f"{stop} is not finite (NaN or infinite embeddings)." if self.check_finite else None
        if epoch < self._start:
            return None
        if self.min_value is not None and value <= self.min_value:
            return f"{stop} is at most min_value={self.min_value}."
        if self.best_value is not None and self.fraction is not None and value < self.fraction * self.best_value:
            best = f"its best {self.best_value:.4g} (epoch {self.best_epoch}) since start_epoch={self._start}"
            return f"{stop} fell below fraction={self.fraction} x {best}."
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
        return None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._SAVED}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the best value; a malformed saved state gives a warning and a fresh start, never a failed resume."""
        ok = isinstance(state_dict, dict) and all(  # each saved field None or of its type, numbers finite and >= 0
            (v := state_dict.get(k)) is None or (type(v) is t and (t is str or (math.isfinite(v) and v >= 0)))
            for k, t in self._SAVED.items()
        )
        if not ok:
            _warn(f"RankMeCollapseGuard(monitor={self.monitor!r}) could not restore {state_dict!r}; it starts afresh.")
        for name in self._SAVED:
            setattr(self, name, state_dict.get(name) if ok else None)
