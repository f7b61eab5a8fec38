"""The build hook that pyproject.toml cannot express: a long description with no repository-relative link.

Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import setup

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


if __name__ == "__main__":
    setup(
        long_description=long_description(
            (Path(__file__).parent / "README.md").read_text(encoding="utf-8"), os.environ.get("RANKME_SOURCE_URL")
        ),
        long_description_content_type="text/markdown",
    )
