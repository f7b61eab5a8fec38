"""LightningCLI entry for the demo model: ``python -m rankme.demo_cli fit --config configs/demo.yaml``.

The model is :class:`rankme.demo.VICReg`, the data :class:`rankme.demo.DigitsDataModule`; the YAML adds the
RankMe callbacks, checkpointing and early stopping on ``rankme``, and an offline W&B logger. Any setting can
be overridden on the command line (``--trainer.max_epochs 5``, ``--model.std_coeff 10``), which is how
``configs/sweep.yaml`` drives a W&B sweep.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

from rankme.demo import DigitsDataModule, VICReg

__all__ = ["DemoCLI", "main"]


class DemoCLI(LightningCLI):
    """LightningCLI for the demo, with a top-level ``threads`` setting (torch CPU threads, default 1).

    One thread is the fastest for the demo's tiny convolutions on a small CPU: on a busy 2-core machine two
    threads made each step several times slower.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        torch.set_num_threads(max(int(config["threads"]), 1))


def main(args: Sequence[str] | None = None, run: bool = True) -> DemoCLI:
    """Build (and with ``run=True`` run) the CLI; ``args`` defaults to ``sys.argv[1:]``.

    Example:
        >>> cli = main(["--model.std_coeff", "10", "--trainer.logger", "false"], run=False)
        >>> cli.model.hparams["std_coeff"], type(cli.datamodule).__name__
        (10.0, 'DigitsDataModule')
    """
    with warnings.catch_warnings():
        # `args` is the in-Python way in; Lightning would warn that the host process has its own sys.argv.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return DemoCLI(
            VICReg,
            DigitsDataModule,
            args=list(args) if args is not None else None,
            run=run,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )


if __name__ == "__main__":
    main()
