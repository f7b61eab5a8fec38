"""Label-free checkpoint selection with RankMe: warm-up-aware monitors and a collapse guard.

A barely trained network has a *high* RankMe (random features are high-rank; the paper notes that a high rank is
necessary but not sufficient), so ``ModelCheckpoint(monitor="rankme", mode="max")`` keeps epoch 0 and
``EarlyStopping(monitor="rankme")`` stops ``patience`` epochs after it. Lightning declined a warm-up option for its
own callbacks (Lightning-AI/pytorch-lightning #2644), so :class:`WarmupModelCheckpoint` and
:class:`WarmupEarlyStopping` add one argument, ``start_epoch``. :class:`RankMeCollapseGuard` stops a run whose
RankMe falls, never one that merely starts low.

``start_epoch=None`` (the default of all three) means the LightningModule's ``warmup_epochs`` hyperparameter
(``self.save_hyperparameters()`` with a ``warmup_epochs`` argument), read at setup, and 0 when it has none.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from rankme.functional import RankMeWarning

__all__ = ["RankMeCollapseGuard", "WarmupEarlyStopping", "WarmupModelCheckpoint"]


def _check_start_epoch(start_epoch: object, source: str = "argument `start_epoch`") -> None:
    if start_epoch is not None and (
        isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0
    ):
        raise MisconfigurationException(f"Expected {source} to be None or an int >= 0, but got {start_epoch!r}.")


def _resolve_start_epoch(start_epoch: int | None, pl_module: LightningModule) -> int:
    """``start_epoch``, or the module's ``warmup_epochs`` hyperparameter when it is None (0 without one)."""
    if start_epoch is not None:
        return start_epoch
    warmup = pl_module.hparams.get("warmup_epochs")
    if warmup is None:
        return 0
    _check_start_epoch(warmup, f"hyperparameter `warmup_epochs` of {type(pl_module).__name__} (start_epoch=None)")
    return int(warmup)


class _IgnoresWarmup(Callback):
    """Mixin: ``start_epoch`` is checked at construction and resolved (None: ``warmup_epochs``) at setup."""

    start_epoch: int | None
    _start: int

    def _set_start_epoch(self, start_epoch: int | None) -> None:
        _check_start_epoch(start_epoch)
        self.start_epoch = start_epoch
        self._start = start_epoch or 0

    def _in_warmup(self, trainer: Trainer) -> bool:
        return trainer.current_epoch < self._start

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._start = _resolve_start_epoch(self.start_epoch, pl_module)
        if self.start_epoch is None and pl_module.hparams.get("warmup_epochs") is None and stage == "fit":
            rank_zero_warn(
                f"{type(self).__name__}(start_epoch=None): {type(pl_module).__name__} has no `warmup_epochs`"
                " hyperparameter, so every epoch counts, from 0. RankMe often peaks at initialisation and falls in"
                " the first epochs (the demo's VICReg: 31.1 at epoch 0, 15.2 at epoch 5); pass `start_epoch=` past"
                " that fall.",
                category=RankMeWarning,
            )


class WarmupModelCheckpoint(_IgnoresWarmup, ModelCheckpoint):
    """A ``ModelCheckpoint`` that neither saves nor ranks checkpoints before ``start_epoch``.

    During the warm-up nothing is written: no top-k checkpoint (epoch-, step- or time-triggered), no
    ``last.ckpt`` (``save_last`` starts with the first epoch that counts; keep a plain
    ``ModelCheckpoint(save_last=True)`` beside it to resume from inside the warm-up) and nothing enters
    ``best_k_models``. ``save_on_exception=True`` still saves on a crash: that file is a crash record, never
    ranked. From ``start_epoch`` on it is the stock callback, with the stock epoch cadence
    (``every_n_epochs`` counts from epoch 0). Its state survives ``ckpt_path=`` resume as the stock one's does;
    ``start_epoch`` is part of its ``state_key``.

    Args:
        start_epoch: the first epoch that counts. None (default) takes the LightningModule's
            ``warmup_epochs`` hyperparameter at setup (0 when it has none).
        kwargs: every :class:`~lightning.pytorch.callbacks.ModelCheckpoint` argument, by keyword.

    Raises:
        MisconfigurationException: if ``start_epoch`` (or the ``warmup_epochs`` it stands for) is not an
            int >= 0.

    Example:
        >>> from rankme import WarmupModelCheckpoint
        >>> checkpoint = WarmupModelCheckpoint(start_epoch=10, monitor="rankme", mode="max", save_top_k=-1)
        >>> checkpoint.start_epoch, checkpoint.monitor
        (10, 'rankme')
    """

    def __init__(self, *, start_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_start_epoch(start_epoch)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=self._every_n_train_steps,
            every_n_epochs=self._every_n_epochs,
            train_time_interval=self._train_time_interval,
            start_epoch=self.start_epoch,
        )

    @override
    def _should_skip_saving_checkpoint(self, trainer: Trainer) -> bool:
        # every save and every ranking of ModelCheckpoint (epoch, step, time, validation end) asks this first
        return self._in_warmup(trainer) or super()._should_skip_saving_checkpoint(trainer)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # `save_last` writes last.ckpt at the end of fit even when nothing was saved; not inside the warm-up
        if not self._in_warmup(trainer):
            super().on_train_end(trainer, pl_module)


class WarmupEarlyStopping(_IgnoresWarmup, EarlyStopping):
    """An ``EarlyStopping`` that ignores every epoch before ``start_epoch`` (see :class:`WarmupModelCheckpoint`).

    Without it, a high RankMe at epoch 0 would stay the best score and stop training ``patience`` epochs
    later. During the warm-up nothing is checked: no best score, no patience counted, and neither
    ``stopping_threshold``, ``divergence_threshold`` nor ``check_finite`` can stop the run; from
    ``start_epoch`` on it is the stock callback, so it stops exactly ``patience`` checks after the last
    improvement counted from ``start_epoch``. ``start_epoch`` is part of its ``state_key``.

    Args:
        start_epoch: the first epoch that counts. None (default) takes the LightningModule's
            ``warmup_epochs`` hyperparameter at setup (0 when it has none).
        kwargs: every :class:`~lightning.pytorch.callbacks.EarlyStopping` argument, by keyword.

    Raises:
        MisconfigurationException: if ``start_epoch`` (or the ``warmup_epochs`` it stands for) is not an
            int >= 0.

    Example:
        >>> from rankme import WarmupEarlyStopping
        >>> stopping = WarmupEarlyStopping(start_epoch=10, monitor="rankme", mode="max", patience=10)
        >>> stopping.start_epoch, stopping.patience
        (10, 10)
    """

    def __init__(self, *, start_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_start_epoch(start_epoch)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, mode=self.mode, start_epoch=self.start_epoch)

    @override
    def _should_skip_check(self, trainer: Trainer) -> bool:
        # both of EarlyStopping's hooks (train epoch end, validation end) ask this before any check
        return self._in_warmup(trainer) or super()._should_skip_check(trainer)


class RankMeCollapseGuard(_IgnoresWarmup):
    """Stop training when RankMe collapses: it falls well below the run's own best, or to about 1.

    A fixed threshold on RankMe / min(N, D) is no collapse test: a healthy SimCLR run's post-ReLU 64-d
    backbone started at RankMe 2.04 (0.032 of its bound) and rose to 7.68 while its probe accuracy climbed
    from 85% to 94%. This guard judges a run against itself instead. From ``start_epoch`` on it keeps the
    best value of ``monitor`` and stops the run at the first validation epoch where

    - the value is below ``fraction`` x that best (a collapse is a fall; a run that starts low and rises
      never triggers it), or
    - the value is at most ``min_value`` (optional; RankMe is 1 when all the energy is in one direction),
    - or, at any epoch, warm-up included, the value is NaN or infinite (``check_finite``; the
      :class:`rankme.RankMeCallback` logs NaN for non-finite embeddings).

    Why these defaults, measured: after its 10-epoch warm-up the demo's healthy VICReg (seed 0, 50 epochs)
    never fell below 0.94 of its best so far, while the collapsing test encoder fell to 0.46 of its best in
    one epoch (6.6 to 3.0). The warm-up matters: counted from epoch 0 the same VICReg fell from its
    initialisation peak 31.1 to 15.2 (0.49) by epoch 5, which this rule would read as collapse; so a guard
    whose ``start_epoch`` falls back to 0 says so once.

    When it stops it sets ``trainer.should_stop`` on every rank (the decision is reduced across ranks) and
    says why, with the epoch and the value, in a :class:`rankme.RankMeWarning` on rank zero; the reason
    stays in ``stopping_reason`` and the epoch in ``stopped_epoch``. A missing ``monitor`` key is reported
    once, never raised.

    Args:
        monitor: the key logged by :class:`rankme.RankMeCallback` (its ``name``).
        start_epoch: the first epoch whose value counts. None (default) takes the LightningModule's
            ``warmup_epochs`` hyperparameter at setup (0 when it has none).
        fraction: stop when the value falls below ``fraction`` x the best value since ``start_epoch``; in
            (0, 1), or None to disable the relative rule.
        min_value: stop when the value is at most this (RankMe >= 1 always); None (default) disables it.
        check_finite: stop on a NaN or infinite value, warm-up included.

    Raises:
        MisconfigurationException: if an argument is out of range or of the wrong type.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from rankme import RankMeCallback, RankMeCollapseGuard
        >>> guard = RankMeCollapseGuard(monitor="rankme", start_epoch=5, fraction=0.5)
        >>> trainer = Trainer(callbacks=[RankMeCallback(module="backbone"), guard], logger=False,
        ...                   enable_progress_bar=False, enable_model_summary=False)
        >>> guard.best_value is None
        True
    """

    def __init__(
        self,
        monitor: str = "rankme",
        start_epoch: int | None = None,
        fraction: float | None = 0.5,
        min_value: float | None = None,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise MisconfigurationException(f"Expected argument `monitor` to be a non-empty str, but got {monitor!r}.")
        if fraction is not None and not (_is_real(fraction) and 0 < fraction < 1):
            raise MisconfigurationException(
                f"Expected argument `fraction` to be None or a float in (0, 1), but got {fraction!r}."
            )
        if min_value is not None and not (_is_real(min_value) and min_value >= 1):
            raise MisconfigurationException(
                f"Expected argument `min_value` to be None or a float >= 1 (RankMe is at least 1), but got"
                f" {min_value!r}."
            )
        if not isinstance(check_finite, bool):
            raise MisconfigurationException(f"Expected argument `check_finite` to be a bool, but got {check_finite!r}.")
        self._set_start_epoch(start_epoch)
        self.monitor = monitor
        self.fraction = fraction
        self.min_value = min_value
        self.check_finite = check_finite
        self.best_value: float | None = None
        """The best value of ``monitor`` since ``start_epoch``; None before the first."""
        self.best_epoch: int | None = None
        self.stopped_epoch: int | None = None
        self.stopping_reason: str | None = None
        self._warned_missing = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            monitor=self.monitor, start_epoch=self.start_epoch, fraction=self.fraction, min_value=self.min_value
        )

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or getattr(trainer, "fast_dev_run", False):
            return
        current = trainer.callback_metrics.get(self.monitor)
        if current is None:
            if not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(
                    f"RankMeCollapseGuard(monitor={self.monitor!r}) found no such logged key at epoch"
                    f" {trainer.current_epoch} (logged: {sorted(trainer.callback_metrics)}); it checks nothing until"
                    " it appears. Set `monitor` to the RankMeCallback's `name`.",
                    category=RankMeWarning,
                )
            return
        reason = self._reason_to_stop(float(torch.as_tensor(current).squeeze()), trainer.current_epoch)
        should_stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        if not should_stop:
            return
        trainer.should_stop = True
        self.stopped_epoch = trainer.current_epoch
        self.stopping_reason = reason or f"another rank saw {self.monitor} collapse"
        rank_zero_warn(self.stopping_reason, category=RankMeWarning)

    def _reason_to_stop(self, value: float, epoch: int) -> str | None:
        """Why the run should stop at ``epoch`` with ``value``, or None; updates the best value."""
        stop = f"RankMeCollapseGuard stopped training at epoch {epoch}: {self.monitor}={value:.4g}"
        if not math.isfinite(value):
            return f"{stop} is not finite (NaN or infinite embeddings)." if self.check_finite else None
        if epoch < self._start:
            return None
        if self.min_value is not None and value <= self.min_value:
            return f"{stop} is at most min_value={self.min_value} (RankMe 1 is one direction: collapse)."
        if self.best_value is not None and self.fraction is not None and value < self.fraction * self.best_value:
            return (
                f"{stop} fell below fraction={self.fraction} x its best {self.best_value:.4g} (epoch"
                f" {self.best_epoch}) since start_epoch={self._start}: the representations are collapsing."
            )
        if self.best_value is None or value > self.best_value:
            self.best_value, self.best_epoch = value, epoch
        return None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.stopped_epoch,
            "stopping_reason": self.stopping_reason,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_value = state_dict.get("best_value")
        self.best_epoch = state_dict.get("best_epoch")
        self.stopped_epoch = state_dict.get("stopped_epoch")
        self.stopping_reason = state_dict.get("stopping_reason")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
