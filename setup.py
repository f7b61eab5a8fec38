"""Build hooks that pyproject.toml cannot express: the long description and the modules left out of the wheel.

Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

# The demo moved to examples/ (it needs scikit-learn, matplotlib, jsonargparse, wandb): a checkout that still has
# these modules does not ship them.
EXAMPLE_MODULES = {("rankme", "demo"), ("rankme", "demo_cli")}

# Markdown links to files of the repository, e.g. [docs/benchmarks.md](docs/benchmarks.md).
RELATIVE_LINK = re.compile(r"\[([^\]]+)\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)")


def long_description(readme: str, source_url: str | None) -> str:
    """README.md as a package index shows it: no link that only works inside the repository.

    Args:
        readme: the README's markdown.
        source_url: where the repository's files are browsed (links become ``source_url/path``); None turns each
            such link into its text and the path, since the package has no public source URL yet.

    Returns:
        The markdown with every relative link made absolute or spelled out.

    Example:
        >>> long_description("see [the benchmarks](docs/benchmarks.md)", None)
        'see the benchmarks (`docs/benchmarks.md` in the source repository)'
        >>> long_description("[docs/benchmarks.md](docs/benchmarks.md), [a](https://arxiv.org/abs/2210.02885)", None)
        '`docs/benchmarks.md` (in the source repository), [a](https://arxiv.org/abs/2210.02885)'
        >>> long_description("see [the benchmarks](docs/benchmarks.md)", "https://host/rankme/blob/main/")
        'see [the benchmarks](https://host/rankme/blob/main/docs/benchmarks.md)'
    """
    if source_url:
        return RELATIVE_LINK.sub(lambda m: f"[{m[1]}]({source_url.rstrip('/')}/{m[2]})", readme)

    def spelled_out(link: re.Match[str]) -> str:
        text, path = link[1], link[2]
        return f"`{path}` (in the source repository)" if text == path else f"{text} (`{path}` in the source repository)"

    return RELATIVE_LINK.sub(spelled_out, readme)


class BuildPyWithoutExamples(build_py):
    """``build_py`` that leaves the example modules out of the wheel and the sdist."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        """The package's modules, less the examples."""
        modules = super().find_package_modules(package, package_dir)
        return [entry for entry in modules if (entry[0], entry[1]) not in EXAMPLE_MODULES]


if __name__ == "__main__":
    setup(
        long_description=long_description(
            (Path(__file__).parent / "README.md").read_text(encoding="utf-8"), os.environ.get("RANKME_SOURCE_URL")
        ),
        long_description_content_type="text/markdown",
        cmdclass={"build_py": BuildPyWithoutExamples},
    )
