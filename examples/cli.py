"""LightningCLI entry for the example models: ``python examples/cli.py fit --config configs/demo.yaml``.

The model is any :class:`digits.DigitsSSL` subclass named by ``model.class_path`` (``vicreg.VICReg``, the
default, or ``simclr.SimCLR``), the data :class:`digits.DigitsDataModule`; the YAML adds the RankMe callbacks,
the library's warm-up checkpointing and early stopping on ``rankme``, and an offline W&B logger. Any setting can
be overridden on the command line (``--trainer.max_epochs 5``, ``--model.std_coeff 10``), which is how
``configs/sweep.yaml`` drives a W&B sweep.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `class_path: vicreg.VICReg` from any working folder

import torch
from digits import DigitsDataModule, DigitsSSL
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from typing_extensions import override

__all__ = ["ExamplesCLI", "main"]


class ExamplesCLI(LightningCLI):
    """LightningCLI for the examples, with a top-level ``threads`` setting (torch CPU threads, default 1).

    One thread is the fastest for these tiny convolutions on a small CPU: on a busy 2-core machine two
    threads made each step several times slower.
    """

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        torch.set_num_threads(max(int(config["threads"]), 1))


def main(args: Sequence[str] | None = None, run: bool = True) -> ExamplesCLI:
    """Build (and with ``run=True`` run) the CLI; ``args`` defaults to ``sys.argv[1:]``.

    Example:
        >>> cli = main(["--model=vicreg.VICReg", "--model.std_coeff=10", "--trainer.logger=false"], run=False)
        >>> type(cli.model).__name__, cli.model.hparams["std_coeff"], type(cli.datamodule).__name__
        ('VICReg', 10.0, 'DigitsDataModule')
        >>> cli = main(["--model=simclr.SimCLR", "--model.temperature=0.5", "--trainer.logger=false"], run=False)
        >>> type(cli.model).__name__, cli.model.hparams["temperature"]
        ('SimCLR', 0.5)
    """
    with warnings.catch_warnings():
        # `args` is the in-Python way in; Lightning would warn that the host process has its own sys.argv.
        warnings.filterwarnings("ignore", message=".*args parameter is intended to run from within Python.*")
        return ExamplesCLI(
            DigitsSSL,
            DigitsDataModule,
            subclass_mode_model=True,
            args=list(args) if args is not None else None,
            run=run,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )


if __name__ == "__main__":
    main()
