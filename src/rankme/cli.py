"""The ``rankme`` command line: the RankMe of embeddings saved to a file, without writing Python.

Usage::

    rankme score embeddings.npy
    rankme score features.npz --key z --center
    rankme score checkpoint.pt --key embeddings --json

``rankme score`` reads one (N, D) array from a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file, feeds it to
the streaming :class:`rankme.RankMe` metric in row chunks and prints RankMe, N, D and the value normalised
by its upper bound min(N, D).

Files are treated as untrusted: nothing in them is ever unpickled as arbitrary Python. NumPy files are
read with ``allow_pickle=False`` semantics and PyTorch files with ``torch.load(..., weights_only=True)``, which
only rebuilds tensors and plain containers. Memory is bounded whatever a file says about itself: ``.npy``
files and ``.npz`` members (compressed or not) are streamed in row chunks, never inflated whole, and the
metric's state, a PyTorch file (loaded whole by ``torch.load``) and any part that must be held at once are
checked against ``--max-memory`` (default 512 MiB, or the ``RANKME_MAX_MEMORY`` environment variable)
before anything is read. A file that cannot be scored (missing, corrupt, hostile, of the wrong shape or
dtype, holding NaN, empty, too large for the limit) gives a one-line ``rankme: error: ...`` on stderr and exit
status 2; Ctrl-C gives 130. A reader that closes the pipe early (``rankme score z.npy | head -c0``) ends
the program quietly with status 0, as ``yes | head`` does; any other failure to write the result (a full
disk) is an error, status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from rankme import __version__
from rankme.functional import DEFAULT_EPS, RankMeWarning, _check_eps, _check_int, _effective_rank
from rankme.metric import RankMe, RankMeSummary

try:
    import numpy as np
    from tqdm import tqdm
except ImportError as _import_error:  # pragma: no cover - numpy and tqdm come with the `cli` extra
    _MISSING_EXTRA: ImportError | None = _import_error
else:
    _MISSING_EXTRA = None

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_MAX_MEMORY = 512 * 2**20
MAX_MEMORY_ENV = "RANKME_MAX_MEMORY"
SUFFIXES = (".npy", ".npz", ".pt", ".pth")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_NPY_HEADER = 65536  # NumPy itself refuses headers over 10,000 bytes unless told otherwise
_MAX_LISTED_KEYS = 20
_MAX_DETAIL_CHARS = 200
_F64 = 8
_STATE_COPIES = 3  # the state, the copy that eigvalsh/svdvals takes, and their workspace
_CHUNK_COPIES = 3  # the raw bytes, the float64 rows, and the finiteness mask and temporaries
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_SIZE_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "t": 10**12, "tb": 10**12}


class CliError(Exception):
    """A problem with the user's input, reported as one ``rankme: error: ...`` line and exit status 2."""


Block = Any
"""A (rows, D) ``numpy.ndarray`` or ``torch.Tensor`` of consecutive rows, any floating dtype."""


@dataclass(frozen=True)
class Embeddings:
    """The (N, D) array picked from a file, with a way to read its rows chunk by chunk."""

    label: str
    """How messages name it: the path, and the key if there is one."""
    key: str | None
    """The ``.npz`` member or dict entry it came from; None for a file holding a single array."""
    shape: tuple[int, int]
    """(N, D)."""
    blocks: Callable[[int], Iterator[Block]]
    """``blocks(rows)`` yields the rows in order, ``rows`` at a time (the last block may be shorter)."""
    resident_bytes: int = 0
    """Bytes of the file already held in memory (a PyTorch file, or a column-ordered ``.npz`` member)."""


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    """``text`` on a single printable line (control characters and newlines become spaces), cut at ``limit``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colour codes (torch uses them in its messages)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _readable(name: str | os.PathLike[str]) -> str:
    r"""A file name as printable text: bytes that are not UTF-8 as ``\xff``, control characters escaped.

    Example:
        >>> print(_readable(b"z\xff\n.npy".decode("utf-8", "surrogateescape")))
        z\xff\n.npy
    """
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _exception_detail(exc: BaseException) -> str:
    """The exception type and the first line of its message, e.g. ``BadZipFile: File is not a zip file``."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _label(path: Path, key: str | None) -> str:
    return f"{_readable(path)} (key {_readable(key)!r})" if key is not None else _readable(path)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "scalar"


def _size_text(num_bytes: int) -> str:
    """``num_bytes`` in the largest binary unit that keeps it >= 1, e.g. ``1.5 GiB``."""
    value, unit = float(num_bytes), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{value:.3g} {unit}" if unit != "bytes" else f"{num_bytes} bytes"


def _sniff(path: Path) -> str:
    """What the first bytes of ``path`` say it is: ``npy``, ``zip``, ``pickle``, ``empty`` or ``unknown``."""
    try:
        with path.open("rb") as fp:
            head = fp.read(8)
    except OSError as exc:
        raise CliError(f"cannot read {_readable(path)}: {exc.strerror or exc}; check the file's permissions.") from exc
    if not head:
        return "empty"
    if head.startswith(_NPY_MAGIC):
        return "npy"
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head[0] == 0x80:  # the PROTO opcode that starts every pickle of protocol 2 and later
        return "pickle"
    return "unknown"


_RENAME_HINTS = {
    "npy": "it looks like a NumPy .npy file: rename it to .npy",
    "zip": "it looks like a zip archive (.npz, or a PyTorch file saved by torch.save): rename it to .npz or .pt",
    "pickle": "it is a Python pickle, which rankme never unpickles because that can run code;"
    " save the embeddings with np.save or torch.save instead",
    "empty": "the file is empty; it was probably not written completely, save the embeddings again",
    "unknown": "it is corrupt or another format; save the embeddings with np.save, np.savez or torch.save",
}


def _over_limit(what: str, needed: int, limit: int) -> CliError:
    return CliError(
        f"{what} needs about {_size_text(needed)} of memory, over the limit of {_size_text(limit)}; raise it with"
        f" --max-memory SIZE (e.g. --max-memory 4GiB) or the {MAX_MEMORY_ENV} environment variable if this machine"
        " has the memory."
    )


# ---------------------------------------------------------------------------------------------------------
# Checks on shape and dtype
# ---------------------------------------------------------------------------------------------------------


def _check_shape(label: str, shape: Sequence[int], how_to_save: str) -> None:
    """Raise a :class:`CliError` unless ``shape`` is (N, D) with N >= 1 and D >= 1."""
    if len(shape) != 2:
        fix = (
            "flatten or pool the extra axes first, e.g. z.reshape(len(z), -1) or z.mean(axis=1) for tokens"
            if len(shape) > 2
            else "reshape it first, e.g. z.reshape(len(z), -1) for one feature per sample or z.reshape(1, -1)"
            " for a single embedding"
        )
        raise CliError(
            f"{label} holds a {len(shape)}-D array of shape ({_shape_text(shape)}), expected 2-D"
            f" (N samples, D features); {fix}, and save it again with {how_to_save}."
        )
    if shape[0] == 0 or shape[1] == 0:
        raise CliError(
            f"{label} holds an empty array of shape ({_shape_text(shape)}): there are no embeddings to score;"
            " check the code that saved it."
        )


def _check_numpy_dtype(label: str, dtype: Any, how_to_save: str) -> None:
    """Raise a :class:`CliError` unless ``dtype`` is a NumPy floating dtype."""
    if dtype.hasobject:
        raise CliError(
            f"{label} holds Python objects (dtype {dtype}), expected floating-point embeddings; rankme never"
            " unpickles objects because that can run code. Convert the embeddings to floats,"
            f" np.asarray(z, dtype=np.float32), and save them with {how_to_save}."
        )
    if np.issubdtype(dtype, np.floating):
        return
    if np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.bool_):
        raise CliError(
            f"{label} holds {dtype} values, expected floating-point embeddings; integers are usually labels or"
            " indices saved by mistake. If they really are embeddings, convert them, z.astype(np.float32), and"
            f" save them with {how_to_save}."
        )
    raise CliError(
        f"{label} holds non-numeric or complex values (dtype {_one_line(str(dtype))}), expected floating-point"
        f" embeddings; convert them, z.astype(np.float32), and save them with {how_to_save}."
    )


def _check_tensor(label: str, tensor: Tensor) -> None:
    """Raise a :class:`CliError` unless ``tensor`` is a dense, real floating-point (N, D) tensor with values."""
    if tensor.is_nested:
        raise CliError(
            f"{label} is a nested tensor (rows of different lengths), expected one (N, D) tensor; pad or pool the"
            " rows to one length and save them with torch.save(z, path)."
        )
    if tensor.device.type != "cpu":
        raise CliError(
            f"{label} is a tensor on the {tensor.device.type} device, which holds no values to score"
            " (a model built on the meta device, or an unsaved placeholder); save real values, e.g."
            " torch.save(z.detach().cpu(), path)."
        )
    if tensor.layout != torch.strided:
        raise CliError(
            f"{label} is a {tensor.layout} tensor, expected a dense one; save it with torch.save(z.to_dense(), path)."
        )
    if tensor.is_quantized or tensor.is_complex():
        raise CliError(
            f"{label} holds {tensor.dtype} values, expected real floating-point embeddings;"
            " save them with torch.save(z.dequantize() if z.is_quantized else z.real.float(), path)."
        )
    if not tensor.is_floating_point():
        raise CliError(
            f"{label} holds {tensor.dtype} values, expected floating-point embeddings; integers are usually labels"
            " or indices saved by mistake. If they really are embeddings, save them with torch.save(z.float(), path)."
        )
    _check_shape(label, tuple(tensor.shape), "torch.save")
    stored = tensor.untyped_storage().nbytes()
    if tensor.numel() * tensor.element_size() > stored:  # z.expand(...): rows that are not in the file
        raise CliError(
            f"{label} is a {_shape_text(tensor.shape)} view of only {_size_text(stored)} of values (a broadcast such"
            " as z.expand(...)); rankme scores the rows a file holds: save torch.save(z.contiguous(), path)."
        )


def _describe_tensor(value: Any) -> str:
    """An entry of a dict as listed in messages: ``100x8 torch.float32``, ``nested tensor`` or its type."""
    if not isinstance(value, Tensor):
        return type(value).__name__
    if value.is_nested:
        return f"nested tensor {value.dtype}"
    return f"{_shape_text(value.shape)} {value.dtype}"


def _choose_key(path: Path, entries: Mapping[str, tuple[int, ...] | None], described: Mapping[str, str]) -> str:
    """The entry to score when no ``--key`` was given: the only entry, or the only 2-D one.

    Args:
        path: the file, for messages.
        entries: each array entry's shape (None where it is not known).
        described: every entry (arrays and others) as the text that lists it in messages.
    """
    if len(entries) == 1:
        return next(iter(entries))
    two_d = [name for name, shape in entries.items() if shape is not None and len(shape) == 2]
    if len(two_d) == 1 and all(shape is not None for shape in entries.values()):
        return two_d[0]
    if not entries:
        raise CliError(
            f"{_readable(path)} holds no arrays at its top level (entries: {_listing(described)}); nested"
            " containers are not searched, save the embeddings as a top-level array or tensor."
        )
    what = "several 2-D arrays" if len(two_d) > 1 else "no single 2-D array"
    raise CliError(f"{_readable(path)} holds {what}: {_listing(described)}; pick one with --key NAME.")


def _listing(described: Mapping[str, str]) -> str:
    """``a (100x8 float32), b (100 int64)``, cut after the first few entries."""
    if not described:
        return "none"
    items = [f"{_readable(name)} ({text})" for name, text in described.items()]
    more = len(items) - _MAX_LISTED_KEYS
    return ", ".join(items[:_MAX_LISTED_KEYS]) + (f" and {more} more" if more > 0 else "")


def _unknown_key(path: Path, key: str, described: Mapping[str, str]) -> CliError:
    return CliError(
        f"{_readable(path)} has no entry {_readable(key)!r}; it holds: {_listing(described)}. Pass one of these"
        " to --key."
    )


def _key_not_applicable(path: Path, what: str) -> CliError:
    return CliError(
        f"--key applies to .npz files and to .pt/.pth files holding a dict, but {_readable(path)} holds {what};"
        " drop --key to score it."
    )


# ---------------------------------------------------------------------------------------------------------
# The .npy format, read from a stream in bounded pieces (a .npy file, or a member of a .npz archive)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NpyHeader:
    shape: tuple[int, ...]
    fortran_order: bool
    dtype: Any
    data_offset: int

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _read_exactly(fp: IO[bytes], size: int, what: str) -> bytearray:
    """``size`` bytes from ``fp``, or a :class:`CliError` naming ``what`` if the stream ends or fails first."""
    buffer = bytearray(size)  # filled in place: one copy of the data, never more than ``size`` bytes
    view, got = memoryview(buffer), 0
    try:
        while got < size:
            count = fp.readinto(view[got:])  # type: ignore[attr-defined]
            if not count:
                break
            got += count
    except OSError as exc:
        raise CliError(f"cannot read {what}: {exc.strerror or _exception_detail(exc)}.") from exc
    except Exception as exc:  # zip streams raise BadZipFile (bad CRC), zlib.error, EOFError on corrupt data
        raise CliError(
            f"cannot read {what} ({_exception_detail(exc)}); it is corrupt or truncated, save the embeddings again."
        ) from exc
    if got < size:
        raise CliError(
            f"{what} ends after {got} of the {size} bytes it declares; it is truncated, save the embeddings again."
        )
    return buffer


def _read_npy_header(fp: IO[bytes], what: str) -> _NpyHeader:
    """Parse a ``.npy`` header from ``fp`` (positioned at its start) without reading more than 64 KiB of it.

    The header is a Python literal parsed by NumPy with ``ast.literal_eval``, so nothing in it runs.
    """
    prefix = _read_exactly(fp, 8, what)
    if not prefix.startswith(_NPY_MAGIC):
        raise CliError(f"{what} is not in the NumPy .npy format (bad magic bytes); save it again with np.save.")
    major = prefix[6]
    if major not in (1, 2, 3):
        raise CliError(f"{what} uses .npy format version {major}.{prefix[7]}, which rankme does not know.")
    length_size = 2 if major == 1 else 4
    length = int.from_bytes(_read_exactly(fp, length_size, what), "little")
    if length > _MAX_NPY_HEADER:
        raise CliError(
            f"{what} declares a {_size_text(length)} .npy header (np.save writes a few hundred bytes); it is"
            " corrupt or hostile, save the embeddings again with np.save."
        )
    text = _read_exactly(fp, length, what)
    if major == 3:  # version 3 only differs by a UTF-8 header: NumPy parses it as version 2 when it is ASCII
        if not text.isascii():
            raise CliError(f"{what} holds a structured array (non-ASCII .npy header), expected floating-point rows.")
        major = 2
    version = bytes([major, 0])
    stream = io.BytesIO(_NPY_MAGIC + version + length.to_bytes(length_size, "little") + text)
    try:
        np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = reader(stream, max_header_size=_MAX_NPY_HEADER)
    except Exception as exc:  # NumPy raises ValueError, SyntaxError, tokenize.TokenError, ... on a bad header
        raise CliError(
            f"{what} has a corrupt .npy header ({_exception_detail(exc)}); save the embeddings again with np.save."
        ) from exc
    if any(int(n) < 0 for n in shape):
        raise CliError(f"{what} has a corrupt .npy header (shape {shape}); save the embeddings again with np.save.")
    return _NpyHeader(tuple(int(n) for n in shape), bool(fortran_order), dtype, 8 + length_size + length)


def _npy_embeddings(fp: IO[bytes], label: str, key: str | None, size: int, how: str, limit: int) -> Embeddings:
    """The array of the ``.npy`` stream ``fp`` (``size`` bytes in all), read in row blocks from where it is.

    Rows in C order are read a block at a time; a column-major (Fortran order) array has its rows scattered
    through the stream, so it is read whole, if it fits within ``limit``.
    """
    header = _read_npy_header(fp, label)
    _check_numpy_dtype(label, header.dtype, how)
    _check_shape(label, header.shape, how)
    (num_samples, num_features), dtype = header.shape, header.dtype
    if size - header.data_offset < header.nbytes:
        raise CliError(
            f"{label} declares a {_shape_text(header.shape)} {dtype} array ({_size_text(header.nbytes)}) but holds"
            f" {_size_text(max(size - header.data_offset, 0))} of data; it is truncated or corrupt, save it again"
            f" with {how}."
        )
    if header.fortran_order:
        if header.nbytes > limit:
            raise _over_limit(f"{label}, in Fortran (column) order, is read whole and", header.nbytes, limit)
        whole = np.frombuffer(_read_exactly(fp, header.nbytes, label), dtype).reshape(num_features, num_samples).T

    def blocks(rows: int) -> Iterator[Block]:
        for start in range(0, num_samples, rows):
            count = min(rows, num_samples - start)
            if header.fortran_order:
                yield whole[start : start + count]
            else:
                data = _read_exactly(fp, count * num_features * dtype.itemsize, label)
                yield np.frombuffer(data, dtype).reshape(count, num_features)

    resident = header.nbytes if header.fortran_order else 0
    return Embeddings(label, key, (num_samples, num_features), blocks, resident_bytes=resident)


# ---------------------------------------------------------------------------------------------------------
# Opening, one function per format
# ---------------------------------------------------------------------------------------------------------


def _open_npy(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """A ``.npy`` file, read in row blocks straight from the file (never memory-mapped)."""
    kind = _sniff(path)
    if kind != "npy":
        raise CliError(f"{_readable(path)} is not a NumPy .npy file: {_RENAME_HINTS[kind]}.")
    if key is not None:
        raise _key_not_applicable(path, "a single array")
    fp = stack.enter_context(path.open("rb"))
    return _npy_embeddings(fp, _readable(path), None, path.stat().st_size, "np.save", max_memory)


def _npz_error(path: Path, exc: Exception) -> CliError:
    return CliError(
        f"cannot read {_readable(path)} as a .npz archive ({_exception_detail(exc)}); it is corrupt or truncated,"
        " save the embeddings again with np.savez."
    )


def _open_npz(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """One member of a ``.npz`` archive, inflated in row blocks: the one named by ``key``, or the only 2-D one."""
    kind = _sniff(path)
    if kind != "zip":
        raise CliError(f"{_readable(path)} is not a NumPy .npz archive: {_RENAME_HINTS[kind]}.")
    try:  # each try below wraps only calls that parse file content: whatever they raise means a bad file
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = {info.filename[: -len(".npy")]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    except Exception as exc:
        raise _npz_error(path, exc) from exc
    for info in members.values():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CliError(
                f"{_readable(path)} has a member compressed with method {info.compress_type}, which np.savez never"
                " writes (only stored or deflated); save the embeddings again with np.savez or np.savez_compressed."
            )
    headers: dict[str, _NpyHeader | None] = {}
    for name, info in members.items():
        try:
            with archive.open(info) as member:
                headers[name] = _read_npy_header(member, _label(path, name))
        except CliError:
            headers[name] = None  # listed as unreadable; an error only if it is the one to score
        except Exception as exc:
            raise _npz_error(path, exc) from exc
    described = {
        name: f"{_shape_text(h.shape)} {h.dtype}" if h is not None else "unreadable" for name, h in headers.items()
    }
    if key is None:
        key = _choose_key(path, {name: h.shape if h else None for name, h in headers.items()}, described)
    elif key not in members:
        raise _unknown_key(path, key, described)
    label = _label(path, key)
    info = members[key]
    try:
        member = stack.enter_context(archive.open(info))
    except Exception as exc:
        raise _npz_error(path, exc) from exc
    return _npy_embeddings(member, label, key, info.file_size, "np.savez", max_memory)


def _torch_load_error(path: Path, exc: Exception) -> CliError:
    """The message for a ``torch.load`` failure: a forbidden Python object, or a corrupt file."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(exc))
    detail = _one_line(match.group(1)) if match else _exception_detail(exc)
    if detail.startswith("Unsupported global"):
        return CliError(
            f"{_readable(path)} holds Python objects other than tensors ({detail}); rankme loads only tensors and"
            " plain containers, never arbitrary pickles, because unpickling them can run code. Save the embeddings"
            " with torch.save(z, path) or torch.save({'name': z}, path)."
        )
    kind = _sniff(path)
    if kind in ("npy", "empty"):
        hint = _RENAME_HINTS[kind]
    elif kind == "pickle":
        hint = (
            "if it is a plain Python pickle, rankme will not load it because unpickling can run code;"
            " save the embeddings with torch.save"
        )
    else:
        hint = "save the embeddings again with torch.save"
    return CliError(
        f"cannot read {_readable(path)} as a PyTorch file ({detail}); it is corrupt, truncated or not written by"
        f" torch.save: {hint}."
    )


def _torch_file_bytes(path: Path) -> int:
    """The most memory ``torch.load`` can spend on ``path``: its records' declared sizes, or the file's size."""
    if _sniff(path) == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                return sum(info.file_size for info in archive.infolist())
        except Exception:  # not a readable zip: torch.load will say so
            pass
    return path.stat().st_size


def _open_torch(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True`` (whole, within the limit) and pick the tensor."""
    declared = _torch_file_bytes(path)
    if declared > max_memory:
        raise _over_limit(f"{_readable(path)} is a PyTorch file, read whole by torch.load, so it", declared, max_memory)
    try:
        # The one call that parses file content: whatever a corrupt or hostile file makes it raise is reported.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _torch_load_error(path, exc) from exc
    if isinstance(obj, Tensor):
        if key is not None:
            raise _key_not_applicable(path, "a single tensor")
        tensor, label = obj, _readable(path)
    elif isinstance(obj, Mapping):
        by_name = {str(name): value for name, value in obj.items()}
        described = {name: _describe_tensor(value) for name, value in by_name.items()}
        if key is None:
            tensors = {
                name: None if v.is_nested else tuple(v.shape) for name, v in by_name.items() if isinstance(v, Tensor)
            }
            key = _choose_key(path, tensors, described)
        elif key not in by_name:
            raise _unknown_key(path, key, described)
        label = _label(path, key)
        tensor = by_name[key]
        if not isinstance(tensor, Tensor):
            raise CliError(
                f"{label} is not a tensor but a {type(tensor).__name__}; pass the --key of a tensor:"
                f" {_listing(described)}."
            )
    else:
        raise CliError(
            f"{_readable(path)} holds a {type(obj).__name__}, expected a tensor or a dict of tensors; save the"
            " embeddings with torch.save(z, path) or torch.save({'name': z}, path)."
        )
    _check_tensor(label, tensor)

    def blocks(rows: int) -> Iterator[Block]:
        for start in range(0, tensor.shape[0], rows):
            yield tensor[start : start + rows]

    return Embeddings(label, key, (tensor.shape[0], tensor.shape[1]), blocks, resident_bytes=declared)


@contextmanager
def open_embeddings(path: Path, key: str | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[Embeddings]:
    """Open the (N, D) floating-point array to score in ``path``, safely, without running code from it.

    The file stays open while the context is: :attr:`Embeddings.blocks` reads it.

    Args:
        path: a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file.
        key: the ``.npz`` member or dict entry to score; None picks the only 2-D one.
        max_memory: the bytes the file may make rankme hold at once (only PyTorch files and column-ordered
            ``.npz`` members are held whole).

    Raises:
        CliError: for a missing, unreadable, corrupt or hostile file, an unsupported extension, a missing or
            ambiguous key, an array that is not a non-empty 2-D floating-point one, or one over ``max_memory``.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(
            f"cannot score {_readable(path)}: unsupported file extension {_readable(suffix) or '(none)'!r}; rankme"
            f" reads {', '.join(SUFFIXES)} files (save the embeddings with np.save, np.savez or torch.save)."
        )
    try:
        path.stat()
    except FileNotFoundError as exc:
        raise CliError(f"{_readable(path)} does not exist; check the path.") from exc
    except OSError as exc:  # a symlink loop, a name too long, a component that is not a directory, ...
        raise CliError(f"cannot open {_readable(path)}: {exc.strerror or exc}; check the path.") from exc
    if not path.is_file():
        what = "a directory" if path.is_dir() else "a FIFO, socket or device"
        raise CliError(f"{_readable(path)} is not a file but {what}; pass the path of a saved embeddings file.")
    opener = {".npy": _open_npy, ".npz": _open_npz}.get(suffix, _open_torch)
    with ExitStack() as stack:
        try:
            embeddings = opener(path, key, stack, max_memory)
        except OSError as exc:
            raise CliError(f"cannot read {_readable(path)}: {exc.strerror or exc}.") from exc
        yield embeddings


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def _state_bytes(mode: str, num_samples: int, num_features: int) -> int:
    """About the most memory the metric's state takes in ``mode``, with the copies its compute makes."""
    return _STATE_COPIES * _F64 * num_features * (num_features if mode == "gram" else num_samples)


def _plan(embeddings: Embeddings, mode: str, chunk_size: int, max_memory: int) -> tuple[str, int]:
    """The metric mode and the rows per block that keep the state and one block within ``max_memory``."""
    num_samples, num_features = embeddings.shape
    if mode == "auto":
        mode = "gram" if num_features <= num_samples else "embeddings"
    state = _state_bytes(mode, num_samples, num_features)
    row = _CHUNK_COPIES * _F64 * num_features
    needed = embeddings.resident_bytes + state + row
    if needed > max_memory:
        other = "embeddings" if mode == "gram" else "gram"
        fits = embeddings.resident_bytes + _state_bytes(other, num_samples, num_features) + row <= max_memory
        raise _over_limit(
            f"scoring {embeddings.label} ({num_samples} x {num_features}) in {mode} mode"
            + (f" (--mode {other} would fit)" if fits else ""),
            needed,
            max_memory,
        )
    return mode, max(1, min(chunk_size, (max_memory - needed) // row + 1))


def _float64_rows(block: Block) -> Tensor:
    """A block as a float64 CPU tensor that owns its memory (never a view of the file's data)."""
    if isinstance(block, Tensor):
        return block.to(torch.float64)
    return torch.from_numpy(np.array(block, dtype=np.float64))  # native byte order, a copy


def score(
    embeddings: Embeddings,
    *,
    mode: str = "auto",
    eps: float = DEFAULT_EPS,
    center: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: bool = False,
) -> RankMeSummary:
    """Feed the rows to a :class:`rankme.RankMe` metric block by block and return its summary.

    The summary's ``value`` is the float64 RankMe (the metric's own is rounded to the default float dtype),
    from the same singular values and the same formula.

    Args:
        embeddings: what :func:`open_embeddings` gave.
        mode: ``"gram"``, ``"embeddings"``, or ``"auto"`` for whichever holds less state (gram when D <= N).
        eps: the paper's smoothing constant.
        center: subtract the column mean before taking singular values.
        chunk_size: rows per update, at most (fewer when a block of that many would pass ``max_memory``).
        max_memory: the bytes the state and one block may take.
        progress: show a tqdm progress bar on stderr.

    Raises:
        CliError: if a row holds NaN or infinity, the metric refuses the values, or the memory needed for
            the state passes ``max_memory``.
    """
    mode, rows = _plan(embeddings, mode, chunk_size, max_memory)
    metric = RankMe(mode=mode, eps=eps, center=center)  # type: ignore[arg-type]
    num_samples = embeddings.shape[0]
    with tqdm(total=num_samples, unit="rows", desc="rankme", file=sys.stderr, disable=not progress, leave=False) as bar:
        start = 0
        for block in embeddings.blocks(rows):
            chunk = _float64_rows(block)
            try:
                metric.update(chunk)  # checks finiteness itself, and keeps the state as it was if it refuses
            except ValueError as exc:
                finite = torch.isfinite(chunk).all(dim=1)
                if bool(finite.all()):
                    raise CliError(f"{embeddings.label}: {exc}") from exc
                first = start + int((~finite).nonzero()[0, 0])
                raise CliError(
                    f"{embeddings.label} holds NaN or infinity (first in row {first}); drop or fix the non-finite"
                    " rows and save the embeddings again."
                ) from exc
            start += chunk.shape[0]
            bar.update(chunk.shape[0])
    try:
        summary = metric.summary()
    except (ValueError, RuntimeError) as exc:  # e.g. values whose squares leave float64's range in gram mode
        raise CliError(
            f"cannot compute RankMe of {embeddings.label} ({_exception_detail(exc)}); if its values are extremely"
            " large or small, rescale them or try --mode embeddings."
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)  # summary() has already said it
        value = _effective_rank(summary.singular_values, eps)
    return summary._replace(value=value)


def _report_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """Print each distinct :class:`rankme.RankMeWarning` as one ``rankme: warning: ...`` line on stderr.

    Other warnings (torch's and NumPy's notes about their own internals while loading) are not the user's to act on.
    """
    seen: set[str] = set()
    for record in caught:
        if not issubclass(record.category, RankMeWarning):
            continue
        text = _one_line(str(record.message), limit=400)
        if text not in seen:
            seen.add(text)
            _say(f"rankme: warning: {text}")


def _result_text(result: RankMeSummary, file: str, key: str | None, as_json: bool) -> str:
    """The result as printed on stdout: four aligned lines, or one JSON object (no final newline)."""
    value = float(result.value)
    if as_json:
        record = {
            "rankme": value,
            "n": result.num_samples,
            "d": result.num_features,
            "normalized": result.normalized,
            "file": _readable(file),
            "key": None if key is None else _readable(key),
        }
        return json.dumps(record)
    return "\n".join(
        (
            f"RankMe      {value:.4f}",
            f"N           {result.num_samples}",
            f"D           {result.num_features}",
            f"normalized  {result.normalized:.4f}",
        )
    )


def _run_score(args: argparse.Namespace) -> str:
    """``rankme score``: open and score; warnings become lines on stderr; returns the text for stdout."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_embeddings(Path(args.file), args.key, args.max_memory) as embeddings:
            result = score(
                embeddings,
                mode=args.mode,
                eps=args.eps,
                center=args.center,
                chunk_size=args.chunk_size,
                max_memory=args.max_memory,
                progress=not args.quiet and sys.stderr is not None and sys.stderr.isatty(),
            )
    _report_warnings(caught)
    return _result_text(result, args.file, embeddings.key, args.json)


# ---------------------------------------------------------------------------------------------------------
# Argument parsing and the entry point
# ---------------------------------------------------------------------------------------------------------


def _library_check(convert: Callable[[str], Any], check: Callable[[Any], None]) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts the text and applies one of the library's argument checks."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = text
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return value

    return parse


def _memory_size(text: str) -> int:
    """``512MiB``, ``4GiB``, ``2G``, ``1e9``: a number of bytes, decimal (kB, MB, GB) or binary (KiB, MiB, GiB)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(text)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


_eps_value = _library_check(float, _check_eps)
_chunk_size_value = _library_check(int, lambda value: _check_int("chunk_size", value, 1))
_max_memory_value = _library_check(
    _memory_size, lambda value: _check_int("max_memory", value, 1, hint=" bytes, e.g. 512MiB or 4GiB")
)


def _default_max_memory() -> int:
    """``RANKME_MAX_MEMORY`` if it is set (checked like ``--max-memory``), else 512 MiB."""
    text = os.environ.get(MAX_MEMORY_ENV)
    if text is None:
        return DEFAULT_MAX_MEMORY
    try:
        return int(_max_memory_value(text))
    except argparse.ArgumentTypeError as exc:
        raise CliError(f"the {MAX_MEMORY_ENV} environment variable is not a size: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The ``rankme`` argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="rankme",
        description="RankMe (Garrido et al., ICML 2023): the effective rank of self-supervised embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score_parser = commands.add_parser(
        "score",
        help="print the RankMe of embeddings saved in a file",
        description=(
            "Print RankMe, N, D and RankMe / min(N, D) of an (N, D) array of embeddings saved with np.save"
            " (.npy), np.savez (.npz) or torch.save (.pt, .pth: a tensor or a dict of tensors). Files are"
            " loaded without unpickling Python objects, so untrusted files cannot run code, and read in row"
            " chunks within --max-memory. Exit status 0 on success (and when the reader of stdout closes it"
            " early), 2 on any error, 130 when interrupted."
        ),
    )
    score_parser.add_argument("file", metavar="FILE", help="a .npy, .npz, .pt or .pth file")
    score_parser.add_argument(
        "--key",
        help="the .npz member or dict entry to score (default: the only 2-D one)",
    )
    score_parser.add_argument("--center", action="store_true", help="subtract the column mean first (off in the paper)")
    score_parser.add_argument(
        "--eps",
        type=_eps_value,
        default=DEFAULT_EPS,
        help="smoothing constant added to each normalised singular value (default: %(default)g, as in the paper)",
    )
    score_parser.add_argument(
        "--mode",
        choices=("auto", "gram", "embeddings"),
        default="auto",
        help="accumulate the D x D Gram matrix or keep the N x D rows; same value, different memory"
        " (default: auto, gram when D <= N)",
    )
    score_parser.add_argument(
        "--chunk-size",
        type=_chunk_size_value,
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help="rows read and fed to the metric at a time, at most (default: %(default)s)",
    )
    score_parser.add_argument(
        "--max-memory",
        type=_max_memory_value,
        default=None,
        metavar="SIZE",
        help=f"most memory one file may make rankme hold for its state, a block of rows, and files read whole"
        f" (.pt/.pth); e.g. 4GiB (default: ${MAX_MEMORY_ENV}, else 512MiB)",
    )
    score_parser.add_argument(
        "--json", action="store_true", help="print one JSON object: rankme, n, d, normalized, file, key"
    )
    score_parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (it is shown only when stderr is a terminal)"
    )
    score_parser.set_defaults(handler=_run_score)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is left cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout closed or not a real file: nothing left to flush
        pass


def _say(line: str) -> None:
    """Write ``line`` on stderr if it can be written (``2>&-`` leaves none: never fall back to stdout)."""
    if sys.stderr is not None:
        with suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


def _error(message: str) -> int:
    """Say ``rankme: error: message`` on stderr and return exit status 2."""
    _say(f"rankme: error: {_one_line(message, limit=2000)}")
    return EXIT_ERROR


def _interrupted() -> int:
    """Say so on stderr and return exit status 130, as a shell does for Ctrl-C."""
    _say("rankme: interrupted")
    return EXIT_INTERRUPTED


def main(argv: list[str] | None = None) -> int:
    """Run the ``rankme`` command line and return its exit status.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success (or when the reader of stdout closed it early), 2 for a usage error or a file that cannot
        be scored, 130 when interrupted.
    """
    if _MISSING_EXTRA is not None:
        return _error(
            f"the command line needs numpy and tqdm ({_one_line(str(_MISSING_EXTRA))});"
            " install them with: pip install 'rankme[cli]'"
        )
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.max_memory is None:
            args.max_memory = _default_max_memory()
        text = args.handler(args)
    except SystemExit as exc:  # --help and --version (0), usage errors (2): already printed by argparse
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except CliError as exc:
        return _error(str(exc))
    except MemoryError:
        return _error("out of memory; lower --max-memory or --chunk-size, or free memory on this machine.")
    except Exception as exc:  # a case no check foresaw: still one line and status 2, never a traceback
        return _error(f"unexpected {_exception_detail(exc)} while scoring; please report it as a rankme bug.")
    except KeyboardInterrupt:
        return _interrupted()
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader closed stdout early (`| head -c0`): not an error, as for `yes | head`
        _silence_stdout()
    except OSError as exc:  # a full disk, a closed terminal
        _silence_stdout()
        return _error(f"cannot write the result to stdout: {exc.strerror or exc}.")
    except KeyboardInterrupt:
        return _interrupted()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
