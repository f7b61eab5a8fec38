"""Every code block of the README runs: python blocks in-process, the command-line block as real commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README.read_text(), flags=re.DOTALL)
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
SHELL_LINES = [
    line.split("#")[0].strip()
    for lang, code in BLOCKS
    if lang == ""
    for line in code.splitlines()
    if line.strip().startswith("rankme ")
]


def test_readme_has_the_blocks_we_run() -> None:
    assert len(PYTHON_BLOCKS) >= 3
    assert len(SHELL_LINES) >= 2
    assert "make demo" in README.read_text()
    assert "make test" in README.read_text()


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_block_runs(code: str) -> None:
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})


def test_command_line_block_runs(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    np.save(tmp_path / "embeddings.npy", torch.randn(300, 16, generator=generator).numpy())
    torch.save({"backbone": torch.randn(200, 8, generator=generator)}, tmp_path / "feats.pt")
    for line in SHELL_LINES:
        args = shlex.split(line)
        command = [str(Path(sys.executable).with_name("rankme")), *args[1:]]  # the installed console script
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, (line, result.stderr)
        assert result.stdout.strip()
