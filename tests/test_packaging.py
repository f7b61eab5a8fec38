"""The built wheel and sdist hold what a user installs, and pyproject.toml's floors are the ones the floor job tests."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tarfile
import zipfile
from email.message import Message
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import rankme

ROOT = Path(__file__).resolve().parents[1]
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)[^)]*\)")


def _build(kind: str, out: Path) -> Path:
    # No build isolation: the running environment has setuptools >= 77 (torch requires it), and nothing is fetched.
    if kind == "wheel":
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)]
    else:
        command = [sys.executable, "setup.py", "-q", "sdist", "-d", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    (built,) = out.glob("*.whl" if kind == "wheel" else "*.tar.gz")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    with zipfile.ZipFile(_build("wheel", tmp_path_factory.mktemp("wheel"))) as archive:
        yield archive


@pytest.fixture(scope="module")
def metadata(wheel: zipfile.ZipFile) -> Message:
    return Parser().parsestr(wheel.read(f"rankme-{rankme.__version__}.dist-info/METADATA").decode())


def _requirements(metadata: Message, extra: str | None = None) -> dict[str, Requirement]:
    result = {}
    for line in metadata.get_all("Requires-Dist"):
        requirement = Requirement(line)
        in_extra = requirement.marker is not None and requirement.marker.evaluate({"extra": extra or ""})
        if (requirement.marker is None) if extra is None else in_extra:
            result[canonicalize_name(requirement.name)] = requirement
    return result


def _floor(requirement: Requirement) -> Version:
    (spec,) = [spec for spec in requirement.specifier if spec.operator == ">="]
    return Version(spec.version)


@pytest.mark.slow
def test_wheel_holds_the_library_its_types_and_its_license(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    package_files = {name for name in names if name.startswith("rankme/")}
    library = {f"rankme/{path.name}" for path in (ROOT / "src/rankme").glob("*.py")}
    assert package_files == library | {"rankme/py.typed"}
    assert f"rankme-{rankme.__version__}.dist-info/licenses/LICENSE" in names
    assert "MIT License" in wheel.read(f"rankme-{rankme.__version__}.dist-info/licenses/LICENSE").decode()
    assert not [name for name in names if "demo" in name or name.startswith(("examples/", "tests/"))]


@pytest.mark.slow
def test_wheel_metadata(metadata: Message) -> None:
    assert metadata["Version"] == rankme.__version__  # one version source: rankme.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("Project-URL")
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    core = _requirements(metadata)
    assert _floor(core["lightning"]) >= Version("2.4")  # 2.2.0-2.3.3 cannot import with setuptools >= 81
    assert _floor(core["torchmetrics"]) >= Version("1.6")  # Metric.merge_state first appears in 1.6.0
    assert "cli" not in metadata.get_all("Provides-Extra")  # numpy and tqdm are core dependencies now


@pytest.mark.slow
def test_long_description_has_no_repository_relative_link(metadata: Message) -> None:
    description = metadata.get_payload()
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert "## Install" in description
    assert "docs/benchmarks.md" in description
    assert RELATIVE_LINK.findall(description) == []
    assert RELATIVE_LINK.findall((ROOT / "README.md").read_text())  # the README has such links: the check is live


def _third_party_imports(source: str) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return {module for module in modules if module not in sys.stdlib_module_names and module != "rankme"}


@pytest.mark.slow
def test_every_module_the_wheel_imports_is_declared(wheel: zipfile.ZipFile, metadata: Message) -> None:
    core = set(_requirements(metadata))
    optional = core | set(_requirements(metadata, "wandb")) | set(_requirements(metadata, "plot"))
    distributions = packages_distributions()
    for name in wheel.namelist():
        if not name.endswith(".py"):
            continue
        for module in _third_party_imports(wheel.read(name).decode()):
            declared = {canonicalize_name(dist) for dist in distributions.get(module, [module])}
            # wandb is imported lazily, only with a WandbLogger: the `wandb` extra; everything else is a core need.
            assert declared & (optional if module in {"wandb", "matplotlib"} else core), (name, module)


@pytest.mark.slow
def test_sdist_ships_the_library_and_no_tests_it_cannot_run(tmp_path: Path) -> None:
    with tarfile.open(_build("sdist", tmp_path)) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "setup.py", "src/rankme/py.typed", "docs/benchmarks.md"} <= names
    assert not [name for name in names if name.startswith(("tests/", "examples/", "benchmarks/")) or "demo" in name]


def _setup_module():  # setup.py is a script: load it without running setup()
    spec = importlib.util.spec_from_file_location("rankme_setup", ROOT / "setup.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_long_description_links() -> None:
    long_description = _setup_module().long_description
    readme = "[docs/benchmarks.md](docs/benchmarks.md), [cost](docs/benchmarks.md#cost), [p](https://a.b/c), [x](#y)"
    assert long_description(readme, None) == (
        "`docs/benchmarks.md` (in the source repository), cost (`docs/benchmarks.md#cost` in the source repository),"
        " [p](https://a.b/c), [x](#y)"
    )
    assert long_description(readme, "https://host/r/blob/main/") == (
        "[docs/benchmarks.md](https://host/r/blob/main/docs/benchmarks.md),"
        " [cost](https://host/r/blob/main/docs/benchmarks.md#cost), [p](https://a.b/c), [x](#y)"
    )


def test_floor_job_pins_every_dependency_at_its_floor() -> None:
    result = subprocess.run(
        [sys.executable, ".ci/floors.py"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    pins = {}
    for line in result.stdout.splitlines():
        name, version = line.split("#")[0].strip().split("==")
        pins[canonicalize_name(name)] = Version(version)
    for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == "torch":  # the CPU wheel pinned in constraints.txt: the only one the job can install
            assert requirement.specifier.contains(pins[name])
        else:
            assert pins[name] == _floor(requirement), name
    assert pins["lightning"] == Version("2.4.0")
    assert pins["torchmetrics"] == Version("1.6.0")
    ci_commands = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines() if not line.startswith("#")]
    assert "make test-floors" in ci_commands
