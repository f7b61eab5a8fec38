"""Lightning's monitoring callbacks with a warm-up: epochs before ``start_epoch`` neither count nor stop.

A barely trained network has a *high* RankMe (random features are high-rank; the paper notes that a high rank is
necessary but not sufficient), so ``ModelCheckpoint(monitor="rankme", mode="max")`` keeps epoch 0 and
``EarlyStopping(monitor="rankme")`` stops ``patience`` epochs after it. Lightning declined a warm-up option for its
own callbacks (Lightning-AI/pytorch-lightning #2644), so these subclasses add one argument, ``start_epoch``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

__all__ = ["WarmupEarlyStopping", "WarmupModelCheckpoint"]


def _check_start_epoch(start_epoch: int | None) -> None:
    if start_epoch is not None and (
        isinstance(start_epoch, bool) or not isinstance(start_epoch, int) or start_epoch < 0
    ):
        raise MisconfigurationException(
            f"Expected argument `start_epoch` to be None or an int >= 0, but got {start_epoch!r}."
        )


def _resolve_start_epoch(start_epoch: int | None, pl_module: LightningModule) -> int:
    """``start_epoch``, or the module's ``warmup_epochs`` hyperparameter when it is None (0 without one)."""
    if start_epoch is not None:
        return start_epoch
    return int(pl_module.hparams.get("warmup_epochs", 0))


class _IgnoresWarmup(Callback):
    """Mixin for a monitoring callback: its epoch-end hooks do nothing before ``start_epoch``.

    ``start_epoch`` None takes the LightningModule's ``warmup_epochs`` hyperparameter at setup.
    """

    start_epoch: int | None
    _start: int

    def _set_start_epoch(self, start_epoch: int | None) -> None:
        _check_start_epoch(start_epoch)
        self.start_epoch = start_epoch
        self._start = start_epoch or 0

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._start = _resolve_start_epoch(self.start_epoch, pl_module)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch >= self._start:
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch >= self._start:
            super().on_validation_end(trainer, pl_module)


class WarmupModelCheckpoint(_IgnoresWarmup, ModelCheckpoint):
    """A ``ModelCheckpoint`` that neither saves nor ranks checkpoints before ``start_epoch``.

    A barely trained network has a high RankMe (random features are high-rank: the paper's caveat that a
    high rank is necessary, not sufficient), so during the learning-rate warm-up the first epochs would win
    ``monitor="rankme", mode="max"`` without being good representations. From ``start_epoch`` on it is the
    stock callback; every other argument goes to :class:`~lightning.pytorch.callbacks.ModelCheckpoint`.

    Args:
        start_epoch: the first epoch that counts; None (default) takes the LightningModule's
            ``warmup_epochs`` hyperparameter at setup (0 when it has none).
        kwargs: :class:`~lightning.pytorch.callbacks.ModelCheckpoint`'s arguments.

    Example:
        >>> from rankme import WarmupModelCheckpoint
        >>> checkpoint = WarmupModelCheckpoint(start_epoch=10, monitor="rankme", mode="max", save_top_k=-1)
        >>> checkpoint.start_epoch, checkpoint.monitor
        (10, 'rankme')
    """

    def __init__(self, start_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_start_epoch(start_epoch)


class WarmupEarlyStopping(_IgnoresWarmup, EarlyStopping):
    """An ``EarlyStopping`` that ignores epochs before ``start_epoch`` (see :class:`WarmupModelCheckpoint`).

    Without it, a high RankMe at epoch 0 would stay the best score and stop training ``patience`` epochs
    later.

    Args:
        start_epoch: the first epoch that counts; None (default) takes the LightningModule's
            ``warmup_epochs`` hyperparameter at setup (0 when it has none).
        kwargs: :class:`~lightning.pytorch.callbacks.EarlyStopping`'s arguments.

    Example:
        >>> from rankme import WarmupEarlyStopping
        >>> stopping = WarmupEarlyStopping(start_epoch=10, monitor="rankme", mode="max", patience=10)
        >>> stopping.start_epoch, stopping.patience
        (10, 10)
    """

    def __init__(self, start_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._set_start_epoch(start_epoch)
