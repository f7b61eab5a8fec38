"""Hostile and odd inputs to the command line, as real files through the real entry point in a subprocess.

Every case ends with exit status 0 (and the right value), 2 (one ``rankme: error:`` line) or 130, never a
traceback; memory stays bounded whatever a file says about itself (peak RSS measured with ``os.wait4``).
"""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_rankme

GIB = 2**30
_ZEROS = bytes(16 * 2**20)


@dataclass
class Run:
    code: int
    out: str
    err: str
    peak_rss: int
    """Peak resident memory of the child, in bytes."""


# The child's own peak (VmHWM of its address space), written at exit. wait4's ru_maxrss is no use here: a child
# forked from a large pytest process starts with the parent's resident size as its high-water mark.
_CHILD = """import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def _write_peak():
    with open('/proc/self/status') as status, open(peak_file, 'w') as out:
        out.write(next(line.split()[1] for line in status if line.startswith('VmHWM:')))
atexit.register(_write_peak)
sys.argv[0] = 'rankme'
runpy.run_module('rankme.cli', run_name='__main__', alter_sys=True)
"""


def rankme_cli(*args: str | bytes | Path, cwd: Path, env: dict[str, str] | None = None, stdout: object = None) -> Run:
    """Run the ``rankme`` command-line entry with ``args`` and wait for it; output captured in files."""
    out_path, err_path, peak_path = cwd / ".stdout", cwd / ".stderr", cwd / ".peak"
    peak_path.unlink(missing_ok=True)
    with out_path.open("wb") as out, err_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(peak_path), *[os.fsencode(a) for a in args]],
            cwd=cwd,
            stdout=stdout if stdout is not None else out,
            stderr=err,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        )
        proc.wait()
    return Run(
        proc.returncode,
        out_path.read_text(errors="backslashreplace"),
        err_path.read_text(errors="backslashreplace"),
        int(peak_path.read_text()) * 1024 if peak_path.exists() else -1,
    )


def assert_error(run: Run, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``rankme: error:`` line holding every fragment."""
    assert run.code == 2, (run.code, run.err)
    assert run.out == ""
    assert "Traceback" not in run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("rankme: error: ")
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


def _write_zeros(fp: io.BufferedIOBase | object, nbytes: int) -> None:
    while nbytes > 0:
        piece = min(nbytes, len(_ZEROS))
        fp.write(_ZEROS[:piece])  # type: ignore[attr-defined]
        nbytes -= piece


def npz_bomb(path: Path, rows: int, head: np.ndarray) -> None:
    """A ``.npz`` whose deflated member ``z`` is ``rows`` x D float64: ``head``'s rows, then zeros."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (rows, head.shape[1])}
    )
    with (
        zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive,
        archive.open("z.npy", "w", force_zip64=True) as fp,
    ):
        fp.write(header.getvalue())
        fp.write(np.ascontiguousarray(head, dtype="<f8").tobytes())
        _write_zeros(fp, (rows - len(head)) * head.shape[1] * 8)


def torch_bomb(path: Path, rows: int, features: int = 64) -> None:
    """A file ``torch.load`` reads as a ``rows`` x 64 float64 tensor of zeros, its data record deflated."""
    small = io.BytesIO()
    torch.save(torch.zeros(3, features, dtype=torch.float64), small)
    source = zipfile.ZipFile(small)
    with zipfile.ZipFile(path, "w") as archive:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):  # storage numel 3*64 and shape (3, 64) -> rows*64, (rows, 64)
                data = data.replace(b"K\xc0t", b"J" + struct.pack("<i", rows * features) + b"t")
                data = data.replace(b"K\x00K\x03K@\x86", b"K\x00J" + struct.pack("<i", rows) + b"K@\x86")
            if info.filename.endswith("data/0"):
                record = zipfile.ZipInfo(info.filename)
                record.compress_type = zipfile.ZIP_DEFLATED
                with archive.open(record, "w", force_zip64=True) as fp:
                    _write_zeros(fp, rows * features * 8)
            else:
                archive.writestr(info.filename, data)


def embeddings(n: int = 64, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) / (1.0 + np.arange(d))).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Memory: bounded whatever the file declares
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_npz_decompression_bomb_is_streamed_in_bounded_memory(tmp_path: Path) -> None:
    head = np.random.default_rng(0).standard_normal((64, 64))
    rows = int(1.1 * GIB) // (64 * 8)
    npz_bomb(tmp_path / "bomb.npz", rows, head)
    assert (tmp_path / "bomb.npz").stat().st_size < 10 * 2**20  # a 1.1 GiB member in a few MB: a real bomb
    run = rankme_cli("score", "bomb.npz", "--json", cwd=tmp_path)
    assert run.code == 0, run.err
    assert 0 < run.peak_rss < GIB, run.peak_rss  # inflated whole, the member alone is 1.1 GiB
    record = json.loads(run.out)
    assert (record["n"], record["d"]) == (rows, 64)
    # Rows of zeros add no singular value: the spectrum is head's, padded with zeros to min(N, D).
    expected = reference_rankme(np.vstack([head, np.zeros((64, 64))]))
    assert record["rankme"] == pytest.approx(expected, rel=1e-6)


def test_torch_decompression_bomb_is_refused_before_loading(tmp_path: Path) -> None:
    torch_bomb(tmp_path / "bomb.pt", rows=int(1.1 * GIB) // (64 * 8))
    assert (tmp_path / "bomb.pt").stat().st_size < 10 * 2**20
    run = rankme_cli("score", "bomb.pt", cwd=tmp_path)
    assert_error(run, "bomb.pt", "torch.load", "1.1 GiB", "--max-memory", "RANKME_MAX_MEMORY")
    assert 0 < run.peak_rss < GIB // 2


def test_memory_limit_can_be_raised(tmp_path: Path) -> None:
    torch_bomb(tmp_path / "zeros.pt", rows=100_000)  # 48.8 MiB of float64 zeros: RankMe 1 (complete collapse)
    assert_error(rankme_cli("score", "zeros.pt", "--max-memory", "32MiB", cwd=tmp_path), "48.8 MiB", "32 MiB")
    assert_error(rankme_cli("score", "zeros.pt", cwd=tmp_path, env={"RANKME_MAX_MEMORY": "32MiB"}), "32 MiB")
    run = rankme_cli("score", "zeros.pt", "--json", "--max-memory", "256MiB", cwd=tmp_path)
    assert run.code == 0, run.err
    assert json.loads(run.out)["rankme"] == 1.0
    assert run.err.startswith("rankme: warning: All embeddings are zero")
    assert_error(rankme_cli("score", "zeros.pt", cwd=tmp_path, env={"RANKME_MAX_MEMORY": "lots"}), "RANKME_MAX_MEMORY")


def test_state_over_the_limit_names_the_other_mode(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", embeddings(8, 3000))  # gram state 3000^2 float64 (x3): too big; rows: small
    line = assert_error(rankme_cli("score", "wide.npy", "--mode", "gram", "--max-memory", "64MiB", cwd=tmp_path))
    assert "--mode embeddings would fit" in line
    run = rankme_cli("score", "wide.npy", "--json", "--max-memory", "64MiB", cwd=tmp_path)  # auto: embeddings
    assert run.code == 0, run.err
    assert json.loads(run.out)["rankme"] == pytest.approx(reference_rankme(embeddings(8, 3000)), rel=1e-9)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_huge_declared_shape_with_little_data(tmp_path: Path, suffix: str) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 512)})
    data = header.getvalue() + embeddings(4, 512).tobytes()
    if suffix == ".npy":
        (tmp_path / "z.npy").write_bytes(data)
    else:
        with zipfile.ZipFile(tmp_path / "z.npz", "w") as archive:
            archive.writestr("z.npy", data)
    run = rankme_cli("score", f"z{suffix}", cwd=tmp_path)
    assert_error(run, "1000000000000x512", "truncated")
    assert 0 < run.peak_rss < GIB // 2


def test_npy_header_declaring_gigabytes(tmp_path: Path) -> None:
    (tmp_path / "z.npy").write_bytes(b"\x93NUMPY\x02\x00" + (3 * GIB).to_bytes(4, "little") + b"{" * 1000)
    assert_error(rankme_cli("score", "z.npy", cwd=tmp_path), "3 GiB .npy header", "np.save")


def test_fortran_order_npz_is_read_whole_within_the_limit(tmp_path: Path) -> None:
    z = embeddings(3000, 40)
    np.savez_compressed(tmp_path / "f.npz", z=np.asfortranarray(z))
    run = rankme_cli("score", "f.npz", "--json", "--chunk-size", "7", cwd=tmp_path)
    assert run.code == 0, run.err
    assert json.loads(run.out)["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)
    assert_error(rankme_cli("score", "f.npz", "--max-memory", "100KiB", cwd=tmp_path), "Fortran", "--max-memory")


def test_npz_member_with_a_compression_np_savez_never_writes(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, embeddings())
    with zipfile.ZipFile(tmp_path / "z.npz", "w", compression=zipfile.ZIP_LZMA) as archive:
        archive.writestr("z.npy", buffer.getvalue())
    assert_error(rankme_cli("score", "z.npz", cwd=tmp_path), "np.savez never writes")


# ---------------------------------------------------------------------------------------------------------
# Tensors that hold no plain values
# ---------------------------------------------------------------------------------------------------------


ODD_TENSORS = {  # kind: a fragment of the message
    "meta": "meta device",
    "sparse_coo": "sparse_coo",
    "sparse_csr": "sparse_csr",
    "nested": "nested",
    "quantized": "quint8",
    "complex": "complex64",
    "bool": "bool",
}


def _odd_tensor(kind: str) -> torch.Tensor:
    return {
        "meta": lambda: torch.empty(8, 4, device="meta"),
        "sparse_coo": lambda: torch.eye(4).to_sparse(),
        "sparse_csr": lambda: torch.eye(4).to_sparse_csr(),
        "nested": lambda: torch.nested.nested_tensor([torch.ones(2, 4), torch.ones(3, 4)]),
        "quantized": lambda: torch.quantize_per_tensor(torch.ones(4, 4), 0.1, 0, torch.quint8),
        "complex": lambda: torch.ones(4, 4, dtype=torch.complex64),
        "bool": lambda: torch.ones(4, 4, dtype=torch.bool),
    }[kind]()


@pytest.mark.parametrize("kind", list(ODD_TENSORS))
@pytest.mark.filterwarnings("ignore::UserWarning")  # torch's notes on beta/deprecated layouts
def test_tensor_without_plain_values(tmp_path: Path, kind: str) -> None:
    torch.save({"z": _odd_tensor(kind), "epoch": 3}, tmp_path / "z.pt")
    assert_error(rankme_cli("score", "z.pt", "--key", "z", cwd=tmp_path), "z.pt (key 'z')", ODD_TENSORS[kind])


def test_broadcast_view_declaring_a_billion_rows(tmp_path: Path) -> None:
    torch.save(torch.zeros(1).expand(10**9, 64), tmp_path / "z.pt")  # 1.5 kB on disk, 256 GB as rows
    assert (tmp_path / "z.pt").stat().st_size < 10_000
    run = rankme_cli("score", "z.pt", cwd=tmp_path)
    assert_error(run, "1000000000x64 view of only 4 bytes", "z.contiguous()")
    assert 0 < run.peak_rss < GIB // 2


def test_meta_tensor_alone(tmp_path: Path) -> None:
    torch.save(torch.empty(100, 8, device="meta"), tmp_path / "z.pt")
    assert_error(rankme_cli("score", "z.pt", cwd=tmp_path), "meta device", "torch.save(z.detach().cpu(), path)")


def test_float8_tensor_is_scored(tmp_path: Path) -> None:
    z = torch.from_numpy(embeddings(40, 6)).to(torch.float8_e4m3fn)
    torch.save(z, tmp_path / "z.pt")
    run = rankme_cli("score", "z.pt", "--json", cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.err == ""
    assert json.loads(run.out)["rankme"] == pytest.approx(reference_rankme(z.double()), rel=1e-9)


def test_legacy_torch_file_prints_no_torch_warnings(tmp_path: Path) -> None:
    z = torch.from_numpy(embeddings(40, 6))
    torch.save(z, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # torch warns about TypedStorage
    run = rankme_cli("score", "old.pt", "--json", cwd=tmp_path)
    assert run.code == 0
    assert run.err == ""  # only RankMeWarning reaches the user
    assert json.loads(run.out)["rankme"] == pytest.approx(reference_rankme(z), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------
# Paths that are not plain files, and file names that are not UTF-8
# ---------------------------------------------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "z.npy")  # opening it for reading would block until a writer comes
    assert_error(rankme_cli("score", "z.npy", cwd=tmp_path), "not a file but a FIFO")


def test_symlink_loop(tmp_path: Path) -> None:
    (tmp_path / "z.npy").symlink_to(tmp_path / "z.npy")
    assert_error(rankme_cli("score", "z.npy", cwd=tmp_path), "z.npy", "symbolic links")


def test_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "z.npy").symlink_to(tmp_path / "gone.npy")
    assert_error(rankme_cli("score", "z.npy", cwd=tmp_path), "does not exist")


def test_non_utf8_file_name_prints_readably(tmp_path: Path) -> None:
    name = b"emb\xff\xfe.npy"
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as fp:
        np.save(fp, embeddings(30, 5))
    run = rankme_cli("score", name, "--json", cwd=tmp_path)
    assert run.code == 0, run.err
    assert json.loads(run.out)["file"] == "emb\\xff\\xfe.npy"
    with open(os.path.join(os.fsencode(tmp_path), name), "wb") as fp:
        np.save(fp, np.ones(5, dtype=np.float32))  # 1-D: an error
    assert_error(rankme_cli("score", name, cwd=tmp_path), "emb\\xff\\xfe.npy holds a 1-D array")


# ---------------------------------------------------------------------------------------------------------
# Output that cannot be written, and Ctrl-C
# ---------------------------------------------------------------------------------------------------------


def test_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", embeddings())
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -c0`: the reader is gone before rankme writes
    try:
        run = rankme_cli("score", "z.npy", cwd=tmp_path, stdout=write_end)
    finally:
        os.close(write_end)
    assert run.code == 0
    assert run.err == ""


def test_full_disk_is_an_error(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", embeddings())
    with open("/dev/full", "wb") as full:
        run = rankme_cli("score", "z.npy", "--json", cwd=tmp_path, stdout=full)
    assert_error(run, "cannot write the result", "No space left on device")


def test_closed_stderr_never_reaches_stdout(tmp_path: Path) -> None:
    np.save(tmp_path / "wide.npy", embeddings(5, 20))  # N < D: a warning, with nowhere to go
    np.save(tmp_path / "flat.npy", np.ones(5, dtype=np.float32))  # an error, with nowhere to go
    command = f"exec {sys.executable} -m rankme.cli score {{}} --json 2>&-"
    ok = subprocess.run(["sh", "-c", command.format("wide.npy")], cwd=tmp_path, capture_output=True, check=False)
    assert ok.returncode == 0
    assert json.loads(ok.stdout)["rankme"] == pytest.approx(reference_rankme(embeddings(5, 20)), rel=1e-9)
    bad = subprocess.run(["sh", "-c", command.format("flat.npy")], cwd=tmp_path, capture_output=True, check=False)
    assert (bad.returncode, bad.stdout) == (2, b"")


def test_ctrl_c_exits_130(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", embeddings(200_000, 4))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankme.cli", "score", "z.npy", "--chunk-size", "1"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    target = str(tmp_path / "z.npy")
    while time.monotonic() < deadline:  # wait until it is reading the file: inside main, past the imports
        try:
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == target for fd in os.listdir(f"/proc/{proc.pid}/fd")):
                break
        except OSError:
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert out == ""
    assert err == "rankme: interrupted\n"
