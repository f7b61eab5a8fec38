"""Print the pip constraints of the floor job: every declared dependency at the lowest version it allows.

`make test-floors` installs the package with its `test` extra under these constraints, so each `>=` floor in
pyproject.toml's `dependencies` is the version that really gets tested. Two exceptions, printed with a reason:
torch stays at the CPU build pinned in constraints.txt (any other torch wheel here is a multi-GB CUDA download),
and a test tool whose pin in constraints.txt cannot install beside the floors gets the override below.
Everything else that constraints.txt pins (the test tools) keeps its pin.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib  # Python 3.11+: the floor job's interpreter

ROOT = Path(__file__).resolve().parents[1]
KEEP_PINNED = {"torch": "the only torch wheel this job can install without downloading a CUDA build"}
TEST_TOOL_OVERRIDES = {"scipy": ("1.15.3", "the newest scipy that installs beside numpy 1.24 (tests/conftest.py)")}


def canonical(name: str) -> str:
    """PEP 503 normalised name: `typing_extensions` and `Typing-Extensions` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def floors() -> dict[str, str]:
    """Each runtime dependency's name and its `>=` floor; a dependency without one is an error."""
    result = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)", requirement.strip())
        if match is None:
            sys.exit(f"floors.py: {requirement!r} in pyproject.toml has no plain `>=` floor to test")
        result[canonical(match[1])] = match[2]
    return result


def pins() -> dict[str, str]:
    """The `name==version` lines of constraints.txt."""
    result = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            result[canonical(name)] = version.strip()
    return result


def main() -> None:
    """Print the constraints, one `name==version` a line, with the reason for each exception."""
    floor, pin = floors(), pins()
    for name, version in floor.items():
        if name in KEEP_PINNED:
            print(f"{name}=={pin[name]}  # declared >={version}, not tested: {KEEP_PINNED[name]}")
        else:
            print(f"{name}=={version}")
    for name, version in pin.items():
        if name in TEST_TOOL_OVERRIDES:
            print(f"{name}=={TEST_TOOL_OVERRIDES[name][0]}  # {TEST_TOOL_OVERRIDES[name][1]}")
        elif name not in floor:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
