"""Tests of the `rankme` command line: real files in tmp_path, `main([...])` in-process, and the console script."""

from __future__ import annotations

import json
import os
import pickle
import random
import shlex
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import reference_rankme

from rankme import RankMe, RankMeSummary, RankMeWarning, cli
from rankme.functional import _check_eps, _check_int

# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def embeddings(n: int = 64, d: int = 16, seed: int = 0, offset: float = 0.0) -> np.ndarray:
    """A float32 (n, d) matrix with a decaying spectrum, so RankMe is well inside (1, min(n, d))."""
    rng = np.random.default_rng(seed)
    scales = 1.0 / (1.0 + np.arange(d))
    return (rng.standard_normal((n, d)) * scales + offset).astype(np.float32)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "score", *argv, "--json")
    assert code == 0, err
    assert err == ""
    return json.loads(out)


def assert_one_line_error(result: tuple[int, str, str], *fragments: str) -> str:
    code, out, err = result
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rankme: error: ")
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------------------------------------
# Valid files
# ---------------------------------------------------------------------------------------------------------


def test_npy_human_readable_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(80, 12)
    np.save(tmp_path / "z.npy", z)
    code, out, err = run(capsys, "score", tmp_path / "z.npy")
    assert code == 0
    assert err == ""
    rows = dict(line.split() for line in out.splitlines())
    assert list(rows) == ["RankMe", "N", "D", "normalized"]
    expected = reference_rankme(z)
    assert float(rows["RankMe"]) == pytest.approx(expected, abs=5e-5)
    assert rows["N"] == "80"
    assert rows["D"] == "12"
    assert float(rows["normalized"]) == pytest.approx(expected / 12, abs=5e-5)


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(50, 20)
    path = tmp_path / "z.npy"
    np.save(path, z)
    record = run_json(capsys, path)
    assert set(record) == {"rankme", "n", "d", "normalized", "file", "key"}
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)
    assert (record["n"], record["d"]) == (50, 20)
    assert record["normalized"] == pytest.approx(record["rankme"] / 20, rel=1e-12)
    assert record["file"] == str(path)
    assert record["key"] is None


def test_npz_picks_the_only_2d_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(40, 8)
    np.savez_compressed(tmp_path / "f.npz", labels=np.arange(40), z=z, names=np.array(["x"] * 40))
    record = run_json(capsys, tmp_path / "f.npz")
    assert record["key"] == "z"
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_npz_key_selects_member(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = embeddings(40, 8, seed=1), embeddings(30, 5, seed=2)
    np.savez(tmp_path / "f.npz", a=a, b=b)
    record = run_json(capsys, tmp_path / "f.npz", "--key", "b")
    assert record["key"] == "b"
    assert (record["n"], record["d"]) == (30, 5)
    assert record["rankme"] == pytest.approx(reference_rankme(b), rel=1e-9)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_tensor_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    z = embeddings(60, 10)
    torch.save(torch.from_numpy(z), tmp_path / f"z{suffix}")
    record = run_json(capsys, tmp_path / f"z{suffix}")
    assert record["key"] is None
    assert (record["n"], record["d"]) == (60, 10)
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torch_dict_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    z, other = embeddings(60, 10, seed=3), embeddings(60, 4, seed=4)
    path = tmp_path / f"ckpt{suffix}"
    torch.save({"embeddings": torch.from_numpy(z), "labels": torch.arange(60), "epoch": 7}, path)
    record = run_json(capsys, path)  # the only 2-D tensor
    assert record["key"] == "embeddings"
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)

    torch.save({"a": torch.from_numpy(z), "b": torch.from_numpy(other)}, path)
    record = run_json(capsys, path, "--key", "b")
    assert record["key"] == "b"
    assert record["rankme"] == pytest.approx(reference_rankme(other), rel=1e-9)


def test_legacy_torch_format_and_low_precision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = torch.from_numpy(embeddings(32, 6)).to(torch.bfloat16)
    torch.save({"z": z}, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    record = run_json(capsys, tmp_path / "old.pt")
    assert record["rankme"] == pytest.approx(reference_rankme(z.double().numpy()), rel=1e-9)


def test_big_endian_and_fortran_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(30, 7)
    np.save(tmp_path / "be.npy", np.asfortranarray(z.astype(">f8")))
    record = run_json(capsys, tmp_path / "be.npy", "--chunk-size", "4")
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_center(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(100, 12, offset=3.0)  # a large common offset: centring changes the value a lot
    np.save(tmp_path / "z.npy", z)
    plain = run_json(capsys, tmp_path / "z.npy")["rankme"]
    centred = run_json(capsys, tmp_path / "z.npy", "--center")["rankme"]
    assert plain == pytest.approx(reference_rankme(z), rel=1e-9)
    assert centred == pytest.approx(reference_rankme(z, center=True), rel=1e-9)
    assert centred > plain + 1


def test_eps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(100, 12)
    np.save(tmp_path / "z.npy", z)
    for eps in (0.0, 1e-7, 1e-2):
        record = run_json(capsys, tmp_path / "z.npy", "--eps", str(eps))
        assert record["rankme"] == pytest.approx(reference_rankme(z, eps=eps), rel=1e-9)
    assert run_json(capsys, tmp_path / "z.npy", "--eps", "1e-2")["rankme"] != pytest.approx(
        reference_rankme(z), rel=1e-6
    )


@pytest.mark.parametrize("mode", ["auto", "gram", "embeddings"])
@pytest.mark.parametrize("shape", [(50, 10), (6, 30)])
def test_modes_agree(tmp_path: Path, capsys: pytest.CaptureFixture[str], mode: str, shape: tuple[int, int]) -> None:
    z = embeddings(*shape)
    np.save(tmp_path / "z.npy", z)
    code, out, _ = run(capsys, "score", tmp_path / "z.npy", "--json", "--mode", mode, "--center")
    assert code == 0
    # The Gram route squares the spectrum, so the (near-)zero singular values carry ~1e-8 relative noise.
    assert json.loads(out)["rankme"] == pytest.approx(reference_rankme(z, center=True), rel=1e-6)


def test_auto_mode_picks_the_smaller_state(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    modes: list[str] = []
    original_init = RankMe.__init__

    def spy_init(self: RankMe, *args: Any, **kwargs: Any) -> None:
        modes.append(kwargs["mode"])
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(RankMe, "__init__", spy_init)
    np.save(tmp_path / "tall.npy", embeddings(40, 8))
    np.save(tmp_path / "wide.npy", embeddings(4, 40))
    assert cli.main(["score", str(tmp_path / "tall.npy"), "-q"]) == 0
    assert cli.main(["score", str(tmp_path / "wide.npy"), "-q"]) == 0
    assert modes == ["gram", "embeddings"]


# ---------------------------------------------------------------------------------------------------------
# Streaming
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def update_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of rows of every RankMe.update call made while the test runs."""
    sizes: list[int] = []
    original = RankMe.update

    def spy(self: RankMe, z: torch.Tensor) -> None:
        sizes.append(z.shape[0])
        original(self, z)

    monkeypatch.setattr(RankMe, "update", spy)
    return sizes


def test_npy_is_streamed_in_chunks(tmp_path: Path, capsys: pytest.CaptureFixture[str], update_sizes: list[int]) -> None:
    z = embeddings(10_000, 6)  # more rows than the default chunk of 4096
    np.save(tmp_path / "big.npy", z)
    record = run_json(capsys, tmp_path / "big.npy")
    assert update_sizes == [4096, 4096, 10_000 - 2 * 4096]
    assert record["n"] == 10_000
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_chunk_size_option(tmp_path: Path, capsys: pytest.CaptureFixture[str], update_sizes: list[int]) -> None:
    z = embeddings(50, 6)
    np.save(tmp_path / "z.npy", z)
    record = run_json(capsys, tmp_path / "z.npy", "--chunk-size", "16")
    assert update_sizes == [16, 16, 16, 2]
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


@pytest.mark.parametrize("suffix", [".npz", ".pt"])
def test_whole_file_formats_are_chunked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], update_sizes: list[int], suffix: str
) -> None:
    z = embeddings(45, 6)
    path = tmp_path / f"z{suffix}"
    if suffix == ".npz":
        np.savez_compressed(path, z=z)
    else:
        torch.save(torch.from_numpy(z), path)
    record = run_json(capsys, path, "--chunk-size", "20")
    assert update_sizes == [20, 20, 5]
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_progress_bar_only_on_a_terminal_and_not_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    np.save(tmp_path / "z.npy", embeddings(40, 4))
    code, out, err = run(capsys, "score", tmp_path / "z.npy", "--chunk-size", "8")
    assert code == 0
    assert err == ""  # stderr is not a terminal here
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, "score", tmp_path / "z.npy", "--chunk-size", "8")
    assert code == 0
    assert "rows" in err
    assert "RankMe" in out
    code, out, err = run(capsys, "score", tmp_path / "z.npy", "--chunk-size", "8", "--quiet")
    assert code == 0
    assert err == ""


# ---------------------------------------------------------------------------------------------------------
# Warnings
# ---------------------------------------------------------------------------------------------------------


def test_metric_warnings_are_one_stderr_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = embeddings(5, 20)  # N < D: the value is capped by N
    np.save(tmp_path / "z.npy", z)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        code, out, err = run(capsys, "score", tmp_path / "z.npy", "--json")
    assert code == 0
    assert not [w for w in leaked if issubclass(w.category, RankMeWarning)]
    lines = err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("rankme: warning: ")
    assert "N=5" in lines[0]
    assert "D=20" in lines[0]
    assert json.loads(out)["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_all_zero_embeddings_warn_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "z.npy", np.zeros((10, 3), dtype=np.float32))
    code, out, err = run(capsys, "score", tmp_path / "z.npy", "--json")
    assert code == 0
    assert json.loads(out)["rankme"] == 1.0
    assert err.count("rankme: warning: ") == 1
    assert "collapse" in err


# ---------------------------------------------------------------------------------------------------------
# Hostile files: code in them must never run
# ---------------------------------------------------------------------------------------------------------


class _OpenPayload:
    """Unpickles into `open(marker, "w")`, which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class _SystemPayload:
    """Unpickles into `os.system("touch marker")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


PAYLOADS = {"open": _OpenPayload, "system": _SystemPayload}


def _write_hostile(container: str, path_stem: Path, payload: Any) -> Path:
    """A file of the given kind whose unpickling would create the marker; returns its path."""
    if container == "torch.save .pt":
        path = path_stem.with_suffix(".pt")
        torch.save({"z": payload}, path)
    elif container == "torch.save .pth":
        path = path_stem.with_suffix(".pth")
        torch.save(payload, path)
    elif container == "pickle .pt":
        path = path_stem.with_suffix(".pt")
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif container == "object .npy":
        path = path_stem.with_suffix(".npy")
        array = np.empty((1, 1), dtype=object)
        array[0, 0] = payload
        np.save(path, array, allow_pickle=True)
    elif container == "pickle .npy":
        path = path_stem.with_suffix(".npy")
        path.write_bytes(pickle.dumps(payload))
    elif container == "object .npz":
        path = path_stem.with_suffix(".npz")
        array = np.empty((1, 1), dtype=object)
        array[0, 0] = payload
        np.savez(path, z=array)
    else:  # pragma: no cover
        raise AssertionError(container)
    return path


def _load_unsafely(container: str, path: Path) -> None:
    """What a careless loader would do with the file."""
    if container.startswith("torch.save"):
        torch.load(path, weights_only=False)
    elif container.startswith("pickle"):
        with path.open("rb") as fp:
            pickle.load(fp)  # deliberately unsafe, to prove the file is hostile
    elif container == "object .npy":
        np.load(path, allow_pickle=True)
    else:
        np.load(path, allow_pickle=True)["z"]


CONTAINERS = ["torch.save .pt", "torch.save .pth", "pickle .pt", "object .npy", "pickle .npy", "object .npz"]


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("container", CONTAINERS)
def test_hostile_file_is_refused_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], container: str, payload: str
) -> None:
    marker = tmp_path / "pwned"
    path = _write_hostile(container, tmp_path / "evil", PAYLOADS[payload](marker))
    assert not marker.exists()
    result = run(capsys, "score", path)
    assert_one_line_error(result, str(path))
    assert not marker.exists()


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("container", CONTAINERS)
def test_hostile_files_really_are_hostile(tmp_path: Path, container: str, payload: str) -> None:
    """The files above do run code when loaded carelessly, so the test above means something."""
    marker = tmp_path / "pwned"
    path = _write_hostile(container, tmp_path / "evil", PAYLOADS[payload](marker))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_unsafely(container, path)
    assert marker.exists()


def test_hostile_torch_file_message_explains(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write_hostile("torch.save .pt", tmp_path / "evil", _OpenPayload(tmp_path / "pwned"))
    line = assert_one_line_error(run(capsys, "score", path), "Python objects other than tensors", "torch.save")
    assert "weights_only=False" not in line  # never advise the unsafe route


# ---------------------------------------------------------------------------------------------------------
# Broken files and bad input: one line on stderr, exit 2
# ---------------------------------------------------------------------------------------------------------


def _valid_file(tmp_path: Path, suffix: str) -> Path:
    z = embeddings(64, 8)
    path = tmp_path / f"valid{suffix}"
    if suffix == ".npy":
        np.save(path, z)
    elif suffix == ".npz":
        np.savez_compressed(path, z=z)
    else:
        torch.save({"z": torch.from_numpy(z)}, path)
    return path


@pytest.mark.parametrize("suffix", cli.SUFFIXES)
def test_random_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    path = tmp_path / f"noise{suffix}"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert_one_line_error(run(capsys, "score", path), str(path))


@pytest.mark.parametrize("suffix", cli.SUFFIXES)
@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5, 0.97])
def test_truncated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, keep: float) -> None:
    path = _valid_file(tmp_path, suffix)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    assert_one_line_error(run(capsys, "score", path), str(path))


@pytest.mark.parametrize("suffix", cli.SUFFIXES)
def test_flipped_bytes_never_crash(tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str) -> None:
    """Random byte corruptions either still score (data bytes hit) or give the one-line error."""
    rng = random.Random(f"fuzz{suffix}")
    original = _valid_file(tmp_path, suffix).read_bytes()
    path = tmp_path / f"fuzzed{suffix}"
    for _ in range(25):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        code, out, err = run(capsys, "score", path, "--json")
        if code == 0:
            assert json.loads(out)["n"] >= 1
        else:
            assert_one_line_error((code, out, err))


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4",  # unterminated: tokenize.TokenError
        "['not', 'a', 'dict']",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (-3, 4), }",
        "{'descr': 'not-a-dtype', 'fortran_order': False, 'shape': (3, 4), }",
        "__import__('os').system('touch pwned')",
    ],
)
def test_corrupt_npy_header(tmp_path: Path, capsys: pytest.CaptureFixture[str], header: str) -> None:
    text = header.ljust(118) + "\n"
    path = tmp_path / "bad.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode() + bytes(48))
    assert_one_line_error(run(capsys, "score", path), str(path), "np.save")
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(run(capsys, "score", tmp_path / "nope.npy"), "does not exist")


def test_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dir.npy").mkdir()
    assert_one_line_error(run(capsys, "score", tmp_path / "dir.npy"), "not a file")


@pytest.mark.parametrize("name", ["z.csv", "z.pkl", "z"])
def test_wrong_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = tmp_path / name
    np.save(tmp_path / "tmp.npy", embeddings())
    (tmp_path / "tmp.npy").rename(path)
    assert_one_line_error(run(capsys, "score", path), "unsupported file extension", ".npy", ".pt")


def test_format_that_does_not_match_the_extension(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "z.npz", z=embeddings())
    (tmp_path / "z.npz").rename(tmp_path / "z.npy")
    assert_one_line_error(run(capsys, "score", tmp_path / "z.npy"), "not a NumPy .npy file", "rename")


def save_as(path: Path, array: np.ndarray) -> Path:
    """Save ``array`` in the format its suffix names (.npy, .npz under key "z", or .pt as a tensor)."""
    if path.suffix == ".npy":
        np.save(path, array)
    elif path.suffix == ".npz":
        np.savez(path, z=array)
    else:
        torch.save(torch.from_numpy(array), path)
    return path


@pytest.mark.parametrize("shape", [(10,), (4, 5, 6), ()])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: tuple[int, ...], suffix: str) -> None:
    array = np.ones(shape, dtype=np.float32)
    path = save_as(tmp_path / f"z{suffix}", array)
    assert_one_line_error(run(capsys, "score", path), f"{len(shape)}-D", "expected 2-D")


@pytest.mark.parametrize(
    ("array", "fragment"),
    [
        (np.arange(12).reshape(3, 4), "int64"),
        (np.ones((3, 4), dtype=bool), "bool"),
        (np.ones((3, 4), dtype=complex), "complex"),
        (np.array([["a", "b"], ["c", "d"]]), "non-numeric"),
        (np.array([[1.0, None]], dtype=object), "Python objects"),
    ],
)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_non_float_numpy_dtype(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], array: np.ndarray, fragment: str, suffix: str
) -> None:
    path = tmp_path / f"z{suffix}"
    if suffix == ".npy":
        np.save(path, array, allow_pickle=True)
    else:
        np.savez(path, z=array)
    assert_one_line_error(run(capsys, "score", path), fragment, "floating-point")


@pytest.mark.parametrize(
    "tensor", [torch.arange(12).reshape(3, 4), torch.ones(3, 4, dtype=torch.bool), torch.ones(3, 4, dtype=torch.cfloat)]
)
def test_non_float_torch_dtype(tmp_path: Path, capsys: pytest.CaptureFixture[str], tensor: torch.Tensor) -> None:
    torch.save(tensor, tmp_path / "z.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "z.pt"), str(tensor.dtype), "floating-point")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_non_finite_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: float, suffix: str) -> None:
    z = embeddings(30, 4)
    z[17, 2] = bad
    path = save_as(tmp_path / f"z{suffix}", z)
    assert_one_line_error(run(capsys, "score", path, "--chunk-size", "8"), "NaN or infinity", "row 17")


@pytest.mark.parametrize("shape", [(0, 8), (8, 0)])
@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt"])
def test_empty_array(tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: tuple[int, int], suffix: str) -> None:
    array = np.zeros(shape, dtype=np.float32)
    path = save_as(tmp_path / f"z{suffix}", array)
    assert_one_line_error(run(capsys, "score", path), "empty")


def test_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for suffix in cli.SUFFIXES:
        (tmp_path / f"e{suffix}").write_bytes(b"")
        assert_one_line_error(run(capsys, "score", tmp_path / f"e{suffix}"), str(tmp_path / f"e{suffix}"))


# ---------------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------------


def test_ambiguous_npz_lists_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "f.npz", first=embeddings(), second=embeddings(seed=1))
    assert_one_line_error(run(capsys, "score", tmp_path / "f.npz"), "several", "first", "second", "--key")


def test_ambiguous_torch_dict_lists_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"student": torch.ones(4, 3), "teacher": torch.ones(4, 3)}, tmp_path / "f.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "f.pt"), "several", "student", "teacher", "--key")


def test_no_2d_entry_lists_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "f.npz", labels=np.arange(4), tokens=np.ones((2, 3, 4)))
    assert_one_line_error(run(capsys, "score", tmp_path / "f.npz"), "labels", "tokens", "--key")
    torch.save({"state": {"w": torch.ones(2, 2)}, "epoch": 3}, tmp_path / "f.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "f.pt"), "state", "epoch")


def test_unknown_key_lists_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.savez(tmp_path / "f.npz", z=embeddings())
    assert_one_line_error(run(capsys, "score", tmp_path / "f.npz", "--key", "y"), "'y'", "z (64x16")
    torch.save({"z": torch.ones(4, 3)}, tmp_path / "f.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "f.pt", "--key", "y"), "'y'", "z (4x3")


def test_key_naming_a_non_tensor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"z": torch.ones(4, 3), "epoch": 3}, tmp_path / "f.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "f.pt", "--key", "epoch"), "not a tensor", "int")


def test_key_on_a_single_array_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "z.npy", embeddings())
    assert_one_line_error(run(capsys, "score", tmp_path / "z.npy", "--key", "z"), "--key", "single array")
    torch.save(torch.ones(4, 3), tmp_path / "z.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "z.pt", "--key", "z"), "--key", "single tensor")


def test_other_torch_containers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save([torch.ones(4, 3)], tmp_path / "l.pt")
    assert_one_line_error(run(capsys, "score", tmp_path / "l.pt"), "list", "dict of tensors")


# ---------------------------------------------------------------------------------------------------------
# Argument parsing
# ---------------------------------------------------------------------------------------------------------


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "score" in out
    code, out, _ = run(capsys, "score", "--help")
    assert code == 0
    for option in ("--key", "--center", "--eps", "--json", "--mode", "--quiet", "FILE"):
        assert option in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.strip().startswith("rankme ")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["score"],
        ["frobnicate"],
        ["score", "z.npy", "--eps", "-1"],
        ["score", "z.npy", "--eps", "nan"],
        ["score", "z.npy", "--eps", "x"],
        ["score", "z.npy", "--chunk-size", "0"],
        ["score", "z.npy", "--mode", "svd"],
    ],
)
def test_usage_errors(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err
    assert "error:" in err


# ---------------------------------------------------------------------------------------------------------
# The installed console script, in a real process
# ---------------------------------------------------------------------------------------------------------


def _console_script() -> Path:
    script = Path(sys.executable).with_name("rankme")
    assert script.is_file(), f"the `rankme` console script is not installed next to {sys.executable}"
    return script


def test_console_script_scores_a_file(tmp_path: Path) -> None:
    z = embeddings(200, 24)
    torch.save({"z": torch.from_numpy(z), "labels": torch.arange(200)}, tmp_path / "ckpt.pth")
    proc = subprocess.run(
        [str(_console_script()), "score", "ckpt.pth", "--json", "--center"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    record = json.loads(proc.stdout)
    assert record == {
        "rankme": pytest.approx(reference_rankme(z, center=True), rel=1e-9),
        "n": 200,
        "d": 24,
        "normalized": pytest.approx(reference_rankme(z, center=True) / 24, rel=1e-9),
        "file": "ckpt.pth",
        "key": "z",
    }


def test_console_script_refuses_hostile_file(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = _write_hostile("torch.save .pt", tmp_path / "evil", _SystemPayload(marker))
    proc = subprocess.run(
        [str(_console_script()), "score", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("rankme: error: ")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# The command line reuses the library
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "library_call"),
    [
        ("--eps", "-1", lambda: _check_eps(-1.0)),
        ("--eps", "inf", lambda: _check_eps(float("inf"))),
        ("--eps", "x", lambda: _check_eps("x")),  # type: ignore[arg-type]
        ("--chunk-size", "0", lambda: _check_int("chunk_size", 0, 1)),
        ("--chunk-size", "2.5", lambda: _check_int("chunk_size", "2.5", 1)),
    ],
)
def test_argument_errors_are_the_library_messages(
    capsys: pytest.CaptureFixture[str], option: str, value: str, library_call: Any
) -> None:
    with pytest.raises(ValueError, match="Expected argument") as raised:
        library_call()
    code, out, err = run(capsys, "score", "z.npy", option, value)
    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == f"rankme score: error: argument {option}: {raised.value}"


@pytest.mark.parametrize(
    ("text", "size"), [("512MiB", 512 * 2**20), ("4GiB", 4 * 2**30), ("2G", 2 * 10**9), ("1e9", 10**9)]
)
def test_max_memory_sizes(capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, size: int) -> None:
    np.save(tmp_path / "z.npy", embeddings(2000, 100))  # gram state: 3 x 100 x 100 float64 = 240 kB
    assert cli.build_parser().parse_args(["score", "z.npy", "--max-memory", text]).max_memory == size
    assert run_json(capsys, tmp_path / "z.npy", "--max-memory", text)["n"] == 2000


@pytest.mark.parametrize("text", ["0", "lots", "-5MiB", "4 parsecs"])
def test_max_memory_bad_sizes(capsys: pytest.CaptureFixture[str], text: str) -> None:
    code, _, err = run(capsys, "score", "z.npy", f"--max-memory={text}")
    assert code == 2
    assert "argument --max-memory: Expected argument `max_memory` to be an int >= 1 bytes" in err


def test_chunks_shrink_to_fit_the_memory_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], update_sizes: list[int]
) -> None:
    z = embeddings(1000, 200)  # gram state 3 x 200^2 x 8 = 960,000 bytes; a row costs 3 x 200 x 8 = 4,800
    np.save(tmp_path / "z.npy", z)
    record = run_json(capsys, tmp_path / "z.npy", "--max-memory", str(960_000 + 4_800 * 100))
    assert max(update_sizes) == 100
    assert sum(update_sizes) == 1000
    assert record["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


def test_score_returns_the_library_summary(tmp_path: Path) -> None:
    z = embeddings(70, 9)
    np.save(tmp_path / "z.npy", z)
    with cli.open_embeddings(tmp_path / "z.npy") as opened:
        summary = cli.score(opened, chunk_size=16)
    assert isinstance(summary, RankMeSummary)
    assert summary.value.dtype == torch.float64  # the metric's own value is rounded to float32
    assert float(summary.value) == pytest.approx(reference_rankme(z), rel=1e-12)
    assert (summary.num_samples, summary.num_features) == (70, 9)
    assert summary.normalized == pytest.approx(reference_rankme(z) / 9, rel=1e-12)
    np.testing.assert_allclose(summary.singular_values, np.linalg.svd(z.astype(np.float64), compute_uv=False))


def test_only_rankme_warnings_are_forwarded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    z = torch.from_numpy(embeddings(5, 20))  # N < D: RankMe warns; torch warns about the legacy format (once)
    torch.save(z, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with warnings.catch_warnings(record=True) as leaked:
        warnings.simplefilter("always")
        code, _, err = run(capsys, "score", tmp_path / "old.pt", "--json")
    assert code == 0
    assert not [w for w in leaked if issubclass(w.category, RankMeWarning)]  # printed, not leaked
    assert err.count("\n") == 1
    assert err.startswith("rankme: warning: RankMe is computed on N=5 samples of D=20 features")


def test_an_unforeseen_failure_is_still_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: whatever escapes every check still gives one line and status 2, never a traceback."""

    def broken(self: RankMe, z: torch.Tensor) -> None:
        raise TypeError("something no check foresaw")

    monkeypatch.setattr(RankMe, "update", broken)
    np.save(tmp_path / "z.npy", embeddings())
    assert_one_line_error(run(capsys, "score", tmp_path / "z.npy"), "TypeError: something no check foresaw", "bug")
