"""The ``rankme`` command line: the RankMe of embeddings saved to a file, without writing Python.

Usage::

    rankme score embeddings.npy
    rankme score features.npz --key z --center
    rankme score checkpoint.pt --key embeddings --json

``rankme score`` reads one (N, D) floating-point array from a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file and
feeds it to :class:`rankme.RankMe` in row blocks. Files are untrusted: nothing in them is unpickled (NumPy
parses ``.npy`` headers as literals, PyTorch files are loaded with ``weights_only=True``). Memory is bounded
whatever a file says about itself: ``.npy`` files and ``.npz`` members are streamed in row blocks (a zip
member never inflates past its declared size), and what must be held at once (the metric's state, a PyTorch
file, a column-major array) is checked against ``--max-memory`` (default 512 MiB, or ``$RANKME_MAX_MEMORY``)
before it is read. Any failure is one ``rankme: error: ...`` line on stderr and exit status 2; Ctrl-C gives
130; a reader that closes the pipe early (``| head -c0``) ends the program quietly with status 0.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import stat
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
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

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_MAX_MEMORY = 512 * 2**20
MAX_MEMORY_ENV = "RANKME_MAX_MEMORY"
SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_MAX_NPY_HEADER = 65536  # np.save writes a few hundred bytes
_COPIES = 3  # of the state (eigvalsh/svdvals copy it and need workspace) and of a block (bytes, float64, mask)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_SIZE_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_HINTS = {  # what the first bytes of a file say it is, as advice when its extension says otherwise
    "npy": "it looks like a NumPy .npy file: rename it to .npy",
    "zip": "it looks like a zip archive (.npz, or a PyTorch file saved by torch.save): rename it to .npz or .pt",
    "pickle": "it is a Python pickle, which rankme never unpickles because that can run code;"
    " save the embeddings with np.save or torch.save instead",
    "empty": "the file is empty; it was probably not written completely, save the embeddings again",
    "unknown": "it is corrupt or another format; save the embeddings with np.save, np.savez or torch.save",
}


class CliError(Exception):
    """A problem with the user's input: one ``rankme: error: ...`` line and exit status 2."""


@dataclass(frozen=True)
class Embeddings:
    """The (N, D) array picked from a file, read block by block.

    Attributes:
        label: how messages name it: the path, and the key if there is one.
        key: the ``.npz`` member or dict entry it came from; None for a file holding a single array.
        shape: (N, D).
        blocks: ``blocks(rows)`` yields the rows in order, ``rows`` at a time (NumPy arrays or tensors).
        resident_bytes: bytes of the file held whole in memory (a PyTorch file, a column-major array).
    """

    label: str
    key: str | None
    shape: tuple[int, int]
    blocks: Callable[[int], Iterator[Any]]
    resident_bytes: int = 0


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one printable line, without ANSI colour codes, cut at ``limit`` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in re.sub(r"\x1b\[[0-9;]*m", "", text)).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _readable(name: str | os.PathLike[str]) -> str:
    r"""A file name as printable text: bytes that are not UTF-8 as ``\xff``, control characters escaped.

    Example:
        >>> print(_readable(b"z\xff\n.npy".decode("utf-8", "surrogateescape")))
        z\xff\n.npy
    """
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _label(path: Path, key: str | None) -> str:
    return _readable(path) if key is None else f"{_readable(path)} (key {_readable(key)!r})"


def _detail(exc: BaseException) -> str:
    """The exception's type and first sentence, e.g. ``BadZipFile: File is not a zip file``."""
    first = next((line for line in str(exc).splitlines() if line.strip()), "").split(". ")[0]
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(int(n)) for n in shape) or "scalar"


def _size(num_bytes: int) -> str:
    """``num_bytes`` in the largest binary unit that keeps it >= 1, e.g. ``1.5 GiB``."""
    for power, unit in ((5, "PiB"), (4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if num_bytes >= 1024**power:
            return f"{num_bytes / 1024**power:.3g} {unit}"
    return f"{num_bytes} bytes"


def _over_limit(what: str, needed: int, limit: int) -> CliError:
    return CliError(
        f"{what} needs about {_size(needed)} of memory, over the limit of {_size(limit)}; raise it with"
        f" --max-memory SIZE (e.g. --max-memory 4GiB) or the {MAX_MEMORY_ENV} environment variable if this machine"
        " has the memory."
    )


@contextmanager
def _reading(label: str, how: str) -> Iterator[None]:
    """Turn whatever a corrupt or truncated file makes a reader raise into one :class:`CliError`."""
    try:
        yield
    except (CliError, MemoryError):
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, and NumPy's ValueError, SyntaxError, ...
        raise CliError(
            f"cannot read {label} ({_detail(exc)}); it is corrupt or truncated, save the embeddings again with {how}."
        ) from exc


def _sniff(path: Path) -> str:
    """What the first bytes of ``path`` say it is: a key of ``_HINTS``."""
    with path.open("rb") as fp:
        head = fp.read(8)
    if not head:
        return "empty"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    return "pickle" if head[0] == 0x80 else "unknown"  # 0x80: the PROTO opcode that starts pickles since protocol 2


# ---------------------------------------------------------------------------------------------------------
# Checks, and picking the entry to score
# ---------------------------------------------------------------------------------------------------------


def _check_shape(label: str, shape: tuple[int, ...], how: str) -> None:
    """Raise a :class:`CliError` unless ``shape`` is (N, D) with N >= 1 and D >= 1."""
    if len(shape) != 2:
        fix = (
            "flatten or pool the extra axes first, e.g. z.reshape(len(z), -1) or z.mean(axis=1) for tokens"
            if len(shape) > 2
            else "reshape it first, e.g. z.reshape(len(z), -1), or z.reshape(1, -1) for a single embedding"
        )
        raise CliError(
            f"{label} holds a {len(shape)}-D array of shape ({_shape(shape)}), expected 2-D (N samples, D features);"
            f" {fix}, and save it again with {how}."
        )
    if 0 in shape:
        raise CliError(
            f"{label} holds an empty array of shape ({_shape(shape)}): there are no embeddings to score; check the"
            " code that saved it."
        )


def _check_dtype(label: str, dtype: Any, how: str) -> None:
    """Raise a :class:`CliError` unless ``dtype`` is a NumPy floating-point dtype."""
    if dtype.kind == "f":
        return
    why = (
        "Python objects, which rankme never unpickles because that can run code"
        if dtype.hasobject
        else "integers, usually labels or indices saved by mistake"
        if dtype.kind in "iub"
        else "complex values"
        if dtype.kind == "c"
        else "non-numeric values"
    )
    raise CliError(
        f"{label} holds {_one_line(str(dtype))} values ({why}), expected floating-point embeddings; convert them,"
        f" z.astype(np.float32), and save them with {how}."
    )


def _tensor_problem(t: Tensor) -> tuple[str, str] | None:
    """Why ``t`` is not a dense, real floating-point tensor of stored values, and the fix; None if it is."""
    if t.is_nested:
        return "a nested tensor (rows of different lengths)", "torch.cat(z.unbind())"
    if t.device.type != "cpu":
        return f"a tensor on the {t.device.type} device, which holds no values to score", "z.detach().cpu()"
    if t.layout != torch.strided:
        return f"a {t.layout} tensor", "z.to_dense()"
    if t.is_quantized:
        return f"a quantized {t.dtype} tensor", "z.dequantize()"
    if t.is_complex():
        return f"a {t.dtype} tensor", "z.real.float()"
    if not t.is_floating_point():
        return f"a {t.dtype} tensor (integers are usually labels or indices saved by mistake)", "z.float()"
    stored = t.untyped_storage().nbytes()
    if t.numel() * t.element_size() > stored:  # z.expand(...): rows that are not in the file
        return f"a {_shape(t.shape)} view of only {_size(stored)} of values (a broadcast)", "z.contiguous()"
    return None


def _listing(described: Mapping[str, str]) -> str:
    """``a (100x8 float32), b (100 int64)``, cut after 20 entries."""
    items = [f"{_readable(name)} ({text})" for name, text in described.items()]
    return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "") or "none"


def _pick(
    path: Path, key: str | None, shapes: Mapping[str, tuple[int, ...] | None], described: Mapping[str, str]
) -> str:
    """The entry to score: ``key``, else the only array, else the only 2-D one (when every array's shape is known).

    Args:
        path: the file, for messages.
        key: the entry the user asked for, or None.
        shapes: each array entry's shape (None where it is not known).
        described: every entry (arrays and others) as messages list it.
    """
    if key is not None:
        if key in described:
            return key
        raise CliError(
            f"{_readable(path)} has no entry {_readable(key)!r}; it holds: {_listing(described)}. Pass one of these"
            " to --key."
        )
    two_d = [name for name, shape in shapes.items() if shape is not None and len(shape) == 2]
    if len(shapes) == 1 or (len(two_d) == 1 and None not in shapes.values()):
        return two_d[0] if len(shapes) > 1 else next(iter(shapes))
    if not shapes:
        raise CliError(
            f"{_readable(path)} holds no arrays at its top level (entries: {_listing(described)}); nested containers"
            " are not searched, save the embeddings as a top-level array or tensor."
        )
    what = "several 2-D arrays" if len(two_d) > 1 else "no single 2-D array"
    raise CliError(f"{_readable(path)} holds {what}: {_listing(described)}; pick one with --key NAME.")


# ---------------------------------------------------------------------------------------------------------
# Opening, one function per format
# ---------------------------------------------------------------------------------------------------------


def _npy_header(fp: IO[bytes], label: str, how: str) -> tuple[tuple[int, ...], bool, Any, int]:
    """Shape, Fortran order, dtype and data offset of the ``.npy`` stream ``fp``, parsed by NumPy's own reader.

    NumPy reads a header whole before checking its length, so the length is checked here first.
    """
    prefix = fp.read(12)
    length_size = 2 if prefix[6:7] == b"\x01" else 4
    length = int.from_bytes(prefix[8 : 8 + length_size], "little")
    if length > _MAX_NPY_HEADER:
        raise CliError(
            f"{label} declares a {_size(length)} .npy header (np.save writes a few hundred bytes); it is corrupt or"
            f" hostile, save the embeddings again with {how}."
        )
    offset = 8 + length_size + length
    stream = io.BytesIO(prefix + fp.read(max(offset - len(prefix), 0)))
    major, _ = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream, max_header_size=_MAX_NPY_HEADER)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative shape {shape}")
    return shape, fortran_order, dtype, offset


def _read(fp: IO[bytes], num_bytes: int, label: str, how: str) -> bytes:
    with _reading(label, how):
        data = fp.read(num_bytes)
    if len(data) < num_bytes:
        raise CliError(f"{label} ends early; it is truncated, save the embeddings again with {how}.")
    return data


def _npy_embeddings(fp: IO[bytes], label: str, key: str | None, size: int, how: str, limit: int) -> Embeddings:
    """The array of the ``.npy`` stream ``fp`` (``size`` bytes), its rows read a block at a time.

    A column-major (Fortran order) array has its rows scattered through the stream: it is read whole, within
    ``limit`` bytes.
    """
    with _reading(label, how):
        shape, fortran_order, dtype, offset = _npy_header(fp, label, how)
    _check_dtype(label, dtype, how)
    _check_shape(label, shape, how)
    (num_samples, num_features), num_bytes = shape, math.prod(shape) * dtype.itemsize
    if size - offset < num_bytes:
        raise CliError(
            f"{label} declares a {_shape(shape)} {dtype} array ({_size(num_bytes)}) but holds"
            f" {_size(max(size - offset, 0))} of data; it is truncated or corrupt, save it again with {how}."
        )
    if fortran_order and num_bytes > limit:
        raise _over_limit(f"{label}, in Fortran (column) order, is read whole and", num_bytes, limit)

    def blocks(rows: int) -> Iterator[Any]:
        if fortran_order:
            whole = np.frombuffer(_read(fp, num_bytes, label, how), dtype).reshape(num_features, num_samples).T
        for start in range(0, num_samples, rows):
            if fortran_order:
                yield whole[start : start + rows]
            else:
                count = min(rows, num_samples - start)
                data = _read(fp, count * num_features * dtype.itemsize, label, how)
                yield np.frombuffer(data, dtype).reshape(count, num_features)

    return Embeddings(label, key, (num_samples, num_features), blocks, num_bytes if fortran_order else 0)


def _open_npy(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """A ``.npy`` file, read in row blocks (never memory-mapped)."""
    if (kind := _sniff(path)) != "npy":
        raise CliError(f"{_readable(path)} is not a NumPy .npy file: {_HINTS[kind]}.")
    fp = stack.enter_context(path.open("rb"))
    return _npy_embeddings(fp, _readable(path), None, path.stat().st_size, "np.save", max_memory)


def _open_npz(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """One member of a ``.npz`` archive, inflated in row blocks: the one named ``key``, or the only 2-D one."""
    if (kind := _sniff(path)) != "zip":
        raise CliError(f"{_readable(path)} is not a NumPy .npz archive: {_HINTS[kind]}.")
    with _reading(_readable(path), "np.savez"):
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    shapes: dict[str, tuple[int, ...] | None] = {}
    described: dict[str, str] = {}
    for name, info in members.items():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CliError(
                f"{_readable(path)} has a member compressed with method {info.compress_type}, which np.savez never"
                " writes (only stored or deflated); save the embeddings again with np.savez or np.savez_compressed."
            )
        shapes[name], described[name] = None, "unreadable"  # an error only if it is the one to score
        with suppress(CliError), _reading(_label(path, name), "np.savez"), archive.open(info) as member:
            shape, _, dtype, _ = _npy_header(member, _label(path, name), "np.savez")
            shapes[name], described[name] = shape, f"{_shape(shape)} {_one_line(str(dtype))}"
    key = _pick(path, key, shapes, described)
    with _reading(_label(path, key), "np.savez"):
        member = stack.enter_context(archive.open(members[key]))
    return _npy_embeddings(member, _label(path, key), key, members[key].file_size, "np.savez", max_memory)


def _load_error(path: Path, exc: Exception) -> CliError:
    """The message for a ``torch.load`` failure: a forbidden Python object, or a corrupt file."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(exc))
    detail = _one_line(match.group(1)) if match else _detail(exc)
    if detail.startswith("Unsupported global"):
        return CliError(
            f"{_readable(path)} holds Python objects other than tensors ({detail}); rankme loads only tensors and"
            " plain containers, never arbitrary pickles, because unpickling them can run code. Save the embeddings"
            " with torch.save(z, path) or torch.save({'name': z}, path)."
        )
    kind = _sniff(path)
    hint = _HINTS[kind] if kind in ("npy", "empty", "pickle") else "save the embeddings again with torch.save"
    return CliError(
        f"cannot read {_readable(path)} as a PyTorch file ({detail}); it is corrupt, truncated or not written by"
        f" torch.save: {hint}."
    )


def _open_torch(path: Path, key: str | None, stack: ExitStack, max_memory: int) -> Embeddings:
    """Load a ``.pt``/``.pth`` file whole with ``weights_only=True``, within the limit, and pick the tensor."""
    declared = path.stat().st_size  # the legacy format is uncompressed; a zip's records declare their sizes
    if _sniff(path) == "zip":
        with suppress(Exception), zipfile.ZipFile(path) as archive:  # not a readable zip: torch.load will say so
            declared = sum(info.file_size for info in archive.infolist())
    if declared > max_memory:
        raise _over_limit(f"{_readable(path)} is a PyTorch file, read whole by torch.load, so it", declared, max_memory)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _load_error(path, exc) from exc
    if isinstance(obj, Mapping):
        entries = {str(name): value for name, value in obj.items()}
        described = {
            name: (f"nested tensor {v.dtype}" if v.is_nested else f"{_shape(v.shape)} {v.dtype}")
            if isinstance(v, Tensor)
            else type(v).__name__
            for name, v in entries.items()
        }
        shapes = {n: None if v.is_nested else tuple(v.shape) for n, v in entries.items() if isinstance(v, Tensor)}
        key = _pick(path, key, shapes, described)
        obj = entries[key]
        if not isinstance(obj, Tensor):
            raise CliError(
                f"{_label(path, key)} is not a tensor but a {type(obj).__name__}; pass the --key of a tensor:"
                f" {_listing(described)}."
            )
    elif isinstance(obj, Tensor):
        key = None
    else:
        raise CliError(
            f"{_readable(path)} holds a {type(obj).__name__}, expected a tensor or a dict of tensors; save the"
            " embeddings with torch.save(z, path) or torch.save({'name': z}, path)."
        )
    tensor, label = obj, _label(path, key)
    if problem := _tensor_problem(tensor):
        raise CliError(f"{label} is {problem[0]}, expected floating-point values; save torch.save({problem[1]}, path).")
    _check_shape(label, tuple(tensor.shape), "torch.save")

    def blocks(rows: int) -> Iterator[Tensor]:
        return (tensor[start : start + rows] for start in range(0, tensor.shape[0], rows))

    return Embeddings(label, key, (tensor.shape[0], tensor.shape[1]), blocks, declared)


@contextmanager
def open_embeddings(path: Path, key: str | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[Embeddings]:
    """Open the (N, D) floating-point array to score in ``path``, without running code from it.

    The file stays open while the context is: :attr:`Embeddings.blocks` reads it.

    Args:
        path: a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file.
        key: the ``.npz`` member or dict entry to score; None picks the only 2-D one.
        max_memory: the bytes the file may make rankme hold at once.

    Raises:
        CliError: for a missing, unreadable, corrupt or hostile file, an unsupported extension, a missing or
            ambiguous key, an array that is not a non-empty 2-D floating-point one, or one over ``max_memory``.
    """
    name, suffix = _readable(path), path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(
            f"cannot score {name}: unsupported file extension {_readable(suffix) or '(none)'!r}; rankme reads"
            f" {', '.join(SUFFIXES)} files (save the embeddings with np.save, np.savez or torch.save)."
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as exc:
        raise CliError(f"{name} does not exist; check the path.") from exc
    except OSError as exc:  # a symlink loop, a name too long, a component that is not a directory, ...
        raise CliError(f"cannot open {name}: {exc.strerror or exc}; check the path.") from exc
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise CliError(f"{name} is not a file but {what}; pass the path of a saved embeddings file.")
    with ExitStack() as stack:
        try:
            embeddings = {".npy": _open_npy, ".npz": _open_npz}.get(suffix, _open_torch)(path, key, stack, max_memory)
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc.strerror or exc}; check the file's permissions.") from exc
        if key is not None and embeddings.key is None:
            raise CliError(
                f"--key applies to .npz files and to .pt/.pth files holding a dict, but {name} holds a single"
                f" {'array' if suffix == '.npy' else 'tensor'}; drop --key to score it."
            )
        yield embeddings


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def _plan(embeddings: Embeddings, mode: str, chunk_size: int, max_memory: int) -> tuple[str, int]:
    """The metric mode, and the rows per block that keep the state and one block within ``max_memory``."""
    num_samples, num_features = embeddings.shape
    state = {
        m: _COPIES * 8 * num_features * (num_features if m == "gram" else num_samples) for m in ("gram", "embeddings")
    }
    if mode == "auto":
        mode = "gram" if num_features <= num_samples else "embeddings"
    row = _COPIES * 8 * num_features
    needed = embeddings.resident_bytes + state[mode] + row
    if needed > max_memory:
        other = "embeddings" if mode == "gram" else "gram"
        fits = needed - state[mode] + state[other] <= max_memory
        what = f"scoring {embeddings.label} ({num_samples} x {num_features}) in {mode} mode"
        raise _over_limit(what + (f" (--mode {other} would fit)" if fits else ""), needed, max_memory)
    return mode, max(1, min(chunk_size, (max_memory - needed) // row + 1))


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

    The summary's ``value`` is the float64 RankMe of its singular values (the metric's own is rounded to the
    default float dtype).

    Args:
        embeddings: what :func:`open_embeddings` gave.
        mode: ``"gram"``, ``"embeddings"``, or ``"auto"`` for whichever holds less state (gram when D <= N).
        eps: the paper's smoothing constant.
        center: subtract the column mean before taking singular values.
        chunk_size: rows per update, at most (fewer when a block of that many would pass ``max_memory``).
        max_memory: the bytes the state and one block may take.
        progress: show a tqdm progress bar on stderr.

    Raises:
        CliError: if a row holds NaN or infinity, the metric refuses the values, or the memory needed passes
            ``max_memory``.
    """
    mode, rows = _plan(embeddings, mode, chunk_size, max_memory)
    metric = RankMe(mode=mode, eps=eps, center=center)  # type: ignore[arg-type]
    done = 0
    with tqdm(
        total=embeddings.shape[0], unit="rows", desc="rankme", file=sys.stderr, disable=not progress, leave=False
    ) as bar:
        for block in embeddings.blocks(rows):
            chunk = block.to(torch.float64) if isinstance(block, Tensor) else torch.from_numpy(block.astype(np.float64))
            try:
                metric.update(chunk)  # checks finiteness, and keeps its state as it was if it refuses the rows
            except ValueError as exc:
                bad = (~torch.isfinite(chunk).all(dim=1)).nonzero()
                if len(bad) == 0:
                    raise CliError(f"{embeddings.label}: {exc}") from exc
                raise CliError(
                    f"{embeddings.label} holds NaN or infinity (first in row {done + int(bad[0, 0])}); drop or fix"
                    " the non-finite rows and save the embeddings again."
                ) from exc
            done += chunk.shape[0]
            bar.update(chunk.shape[0])
    try:
        summary = metric.summary()
    except (ValueError, RuntimeError) as exc:  # e.g. values whose squares leave float64's range in gram mode
        raise CliError(
            f"cannot compute RankMe of {embeddings.label} ({_detail(exc)}); if its values are extremely large or"
            " small, rescale them or try --mode embeddings."
        ) from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)  # summary() has already said it
        return summary._replace(value=_effective_rank(summary.singular_values, eps))


def _run_score(args: argparse.Namespace) -> str:
    """``rankme score``: the text for stdout; each distinct :class:`RankMeWarning` (only) goes to stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_embeddings(Path(args.file), args.key, args.max_memory) as embeddings:
            progress = not args.quiet and sys.stderr is not None and sys.stderr.isatty()
            options = {name: getattr(args, name) for name in ("mode", "eps", "center", "chunk_size", "max_memory")}
            result = score(embeddings, progress=progress, **options)
    for text in dict.fromkeys(_one_line(str(w.message), 400) for w in caught if issubclass(w.category, RankMeWarning)):
        _say(f"rankme: warning: {text}")
    value, key = float(result.value), embeddings.key
    if args.json:
        record = {"rankme": value, "n": result.num_samples, "d": result.num_features, "normalized": result.normalized}
        return json.dumps(record | {"file": _readable(args.file), "key": None if key is None else _readable(key)})
    return (
        f"RankMe      {value:.4f}\nN           {result.num_samples}\nD           {result.num_features}\n"
        f"normalized  {result.normalized:.4f}"
    )


# ---------------------------------------------------------------------------------------------------------
# Arguments and the entry point
# ---------------------------------------------------------------------------------------------------------


def _library_check(convert: Callable[[str], Any], check: Callable[[Any], None]) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts the text, then applies one of the library's argument checks."""

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
    """A number of bytes, decimal (kB, MB, GB) or binary (KiB, MiB, GiB).

    Example:
        >>> _memory_size("512MiB"), _memory_size("2G"), _memory_size("1e9")
        (536870912, 2000000000, 1000000000)
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(text)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


_max_memory = _library_check(_memory_size, lambda v: _check_int("max_memory", v, 1, hint=" bytes, e.g. 512MiB or 4GiB"))


def build_parser() -> argparse.ArgumentParser:
    """The ``rankme`` argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(
        prog="rankme",
        description="RankMe (Garrido et al., ICML 2023): the effective rank of self-supervised embeddings.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser(
        "score",
        help="print the RankMe of embeddings saved in a file",
        description="Print RankMe, N, D and RankMe / min(N, D) of an (N, D) array of embeddings saved with np.save"
        " (.npy), np.savez (.npz) or torch.save (.pt, .pth: a tensor or a dict of tensors). Nothing in the file is"
        " unpickled, so untrusted files cannot run code; it is read in row blocks within --max-memory. Exit"
        " status 0 on success (and when the reader of stdout closes it early), 2 on any error, 130 when interrupted.",
    )
    sub.add_argument("file", metavar="FILE", help="a .npy, .npz, .pt or .pth file")
    sub.add_argument("--key", help="the .npz member or dict entry to score (default: the only 2-D one)")
    sub.add_argument("--center", action="store_true", help="subtract the column mean first (off in the paper)")
    sub.add_argument(
        "--eps",
        type=_library_check(float, _check_eps),
        default=DEFAULT_EPS,
        help="smoothing constant added to each normalised singular value (default: %(default)g, as in the paper)",
    )
    sub.add_argument(
        "--mode",
        choices=("auto", "gram", "embeddings"),
        default="auto",
        help="accumulate the D x D Gram matrix or keep the N x D rows: same value, different memory"
        " (default: auto, gram when D <= N)",
    )
    sub.add_argument(
        "--chunk-size",
        type=_library_check(int, lambda value: _check_int("chunk_size", value, 1)),
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help="rows read and fed to the metric at a time, at most (default: %(default)s)",
    )
    sub.add_argument(
        "--max-memory",
        type=_max_memory,
        metavar="SIZE",
        help="most memory one file may make rankme hold (the metric's state, a block of rows, a .pt/.pth file read"
        f" whole), e.g. 4GiB (default: ${MAX_MEMORY_ENV}, else 512MiB)",
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object: rankme, n, d, normalized, file, key")
    sub.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (shown only when stderr is a terminal)"
    )
    sub.set_defaults(handler=_run_score)
    return parser


def _say(line: str) -> None:
    """Write ``line`` on stderr if there is one (``2>&-`` leaves none: never fall back to stdout)."""
    if sys.stderr is not None:
        with suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is left cannot fail again."""
    with suppress(OSError, ValueError, AttributeError):  # stdout closed or not a real file: nothing to flush
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _run(argv: list[str] | None) -> str | int:
    """Parse ``argv`` and run its command: the text for stdout, or an exit status (the error already said)."""
    try:
        if _MISSING_EXTRA is not None:
            raise CliError(
                f"the command line needs numpy and tqdm ({_one_line(str(_MISSING_EXTRA))}); install them with:"
                " pip install 'rankme[cli]'"
            )
        args = build_parser().parse_args(argv)
        if args.max_memory is None:
            text = os.environ.get(MAX_MEMORY_ENV)
            try:
                args.max_memory = DEFAULT_MAX_MEMORY if text is None else _max_memory(text)
            except argparse.ArgumentTypeError as exc:
                raise CliError(f"the {MAX_MEMORY_ENV} environment variable is not a size: {exc}") from exc
        return str(args.handler(args))
    except SystemExit as exc:  # --help and --version (0), usage errors (2): argparse has printed them
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR
    except CliError as exc:
        message = str(exc)
    except MemoryError:
        message = "out of memory; lower --max-memory or --chunk-size, or free memory on this machine."
    except Exception as exc:  # a case no check foresaw: still one line and status 2, never a traceback
        message = f"unexpected {_detail(exc)} while scoring; please report it as a rankme bug."
    _say(f"rankme: error: {_one_line(message, limit=2000)}")
    return EXIT_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the ``rankme`` command line and return its exit status.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success (or when the reader of stdout closed it early), 2 for a usage error or a file that cannot
        be scored, 130 when interrupted.
    """
    try:
        result = _run(argv)
        if isinstance(result, int):
            return result
        print(result, flush=True)
    except BrokenPipeError:  # the reader closed stdout early (`| head -c0`): not an error, as for `yes | head`
        _silence_stdout()
    except OSError as exc:  # a full disk, a closed terminal
        _silence_stdout()
        _say(f"rankme: error: cannot write the result to stdout: {exc.strerror or exc}.")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _say("rankme: interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
