"""The examples beside the library: the package holds none of them, and their doctests run.

The examples are scripts in examples/ that import each other by file name; these tests put that folder on the
import path, as ``python examples/<script>.py`` does. Real Trainer, real digits, no mocks.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
sys.path.insert(0, str(EXAMPLES))

EXAMPLE_MODULES = sorted(path.stem for path in EXAMPLES.glob("*.py"))


def _imported_names(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_package_holds_the_library_alone() -> None:
    sources = sorted((ROOT / "src" / "rankme").rglob("*.py"))
    assert not [path.name for path in sources if "demo" in path.name]
    # No module of the package imports the examples' dependencies; matplotlib only inside a function (the optional
    # `plot` extra, for RankMe.plot). torchmetrics itself loads scipy and matplotlib when they are installed, so
    # sys.modules cannot tell.
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        assert not _imported_names(tree) & {"scipy", "sklearn", "digits", "pipeline", "vicreg", "simclr"}, path
        top_level_imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
        assert "matplotlib" not in _imported_names(ast.Module(body=top_level_imports, type_ignores=[])), path
    # And the examples' modules are not importable through the package.
    code = "import importlib.util as u, sys; print(u.find_spec('rankme.demo'), u.find_spec('rankme.demo_cli'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "None None"


def test_plot_figure_draws_the_readme_figure(tmp_path: Path) -> None:
    import plot_figure

    plot_figure.main(tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", EXAMPLE_MODULES)
def test_example_doctests_pass(name: str) -> None:
    module = importlib.import_module(name)
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0
    if name in ("cli", "digits", "pipeline", "simclr", "vicreg", "selection_study"):
        assert attempted > 0, f"examples/{name}.py has no runnable example"
