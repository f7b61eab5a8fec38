"""The ``rankme`` command line: ``rankme score embeddings.npy [--key z] [--center] [--json]``.

It reads one (N, D) floating-point array from a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file and feeds it to
:class:`rankme.RankMe` in row blocks. Files are untrusted: nothing in them is unpickled. ``.npy`` files and ``.npz``
members are streamed (a zip member never inflates past its declared size); what must be held whole (the metric's
state, a PyTorch file, a column-major array) is checked against ``--max-memory`` (default 512 MiB, or
``$RANKME_MAX_MEMORY``) before it is read. Any failure is one ``rankme: error: ...`` line on stderr and exit
status 2; Ctrl-C gives 130; a reader that closes the pipe early (``| head -c0``) ends it quietly with 0.
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

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from rankme import __version__
from rankme.functional import DEFAULT_EPS, RankMeWarning, _check_eps, _check_int, _effective_rank
from rankme.metric import RankMe, RankMeSummary

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 2, 130
DEFAULT_CHUNK_SIZE = 4096
DEFAULT_MAX_MEMORY = 512 * 2**20
MAX_MEMORY_ENV = "RANKME_MAX_MEMORY"
SUFFIXES = (".npy", ".npz", ".pt", ".pth")
_MAX_NPY_HEADER = 65536  # np.save writes a few hundred bytes
_COPIES = 3  # of the state (eigvalsh/svdvals copy it and need workspace) and of a block (bytes, float64, mask)
_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
_SIZE_UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_LABELS = "integers are usually labels or indices saved by mistake"
_HINTS = {  # what a file's first bytes say it is, as advice
    "npy": "it looks like a NumPy .npy file: rename it to .npy",
    "zip": "it looks like a zip archive (.npz, or a file from torch.save): rename it to .npz or .pt",
    "pickle": "it is a Python pickle, which rankme never unpickles (that can run code); use np.save or torch.save",
    "empty": "the file is empty; it was probably not written completely, save the embeddings again",
    "unknown": "it is corrupt or another format; save the embeddings with np.save, np.savez or torch.save",
}


class CliError(Exception):
    """A problem with the user's input: one ``rankme: error: ...`` line and exit status 2."""


@dataclass(frozen=True)
class Embeddings:
    """The (N, D) array to score: ``blocks(rows)`` yields its rows in order, ``rows`` at a time."""

    label: str  # how messages name it
    key: str | None  # the .npz member or dict entry; None for a single array
    shape: tuple[int, int]
    blocks: Callable[[int], Iterator[Any]]
    resident_bytes: int = 0  # held whole in memory: a PyTorch file, a column-major array


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
    for power, unit in ((5, "PiB"), (4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB")):
        if num_bytes >= 1024**power:
            return f"{num_bytes / 1024**power:.3g} {unit}"
    return f"{num_bytes} bytes"


def _over_limit(what: str, needed: int, limit: int) -> CliError:
    return CliError(
        f"{what} needs about {_size(needed)} of memory, over the limit of {_size(limit)}; if this machine has the"
        f" memory, raise it with --max-memory SIZE (e.g. --max-memory 4GiB) or the {MAX_MEMORY_ENV} variable."
    )


@contextmanager
def _reading(label: str, how: str) -> Iterator[None]:
    """Turn whatever a corrupt or truncated file makes a reader raise into one :class:`CliError`."""
    try:
        yield
    except (CliError, MemoryError):
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, NumPy's ValueError, SyntaxError, ...
        raise CliError(
            f"cannot read {label} ({_detail(exc)}): corrupt or truncated; save it again with {how}."
        ) from exc


def _sniff(path: Path) -> str:
    """What the first bytes of ``path`` say it is: a key of ``_HINTS``."""
    with path.open("rb") as fp:
        head = fp.read(8)
    magics = {b"\x93NUMPY": "npy", b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x80": "pickle"}  # \x80: PROTO 2+
    return next((kind for magic, kind in magics.items() if head.startswith(magic)), "unknown" if head else "empty")


def _check_shape(label: str, shape: tuple[int, ...], how: str) -> None:
    """Raise a :class:`CliError` unless ``shape`` is (N, D) with N >= 1 and D >= 1."""
    if len(shape) != 2:
        fix = "pool or flatten the extra axes (z.mean(axis=1) for tokens)" if len(shape) > 2 else "reshape it"
        raise CliError(
            f"{label} holds a {len(shape)}-D array of shape ({_shape(shape)}), expected 2-D (N samples, D features);"
            f" {fix}, e.g. z.reshape(len(z), -1), and save it again with {how}."
        )
    if 0 in shape:
        raise CliError(f"{label} holds an empty array of shape ({_shape(shape)}): there are no embeddings to score.")


def _check_dtype(label: str, dtype: Any, how: str) -> None:
    """Raise a :class:`CliError` unless ``dtype`` is a NumPy floating-point dtype."""
    why = {"O": "Python objects, never unpickled", "c": "complex", "i": _LABELS, "u": _LABELS, "b": _LABELS}
    if dtype.kind != "f":
        what = f"{_one_line(str(dtype))} values ({why.get(dtype.kind, 'non-numeric')})"
        raise CliError(
            f"{label} holds {what}, expected floating-point embeddings; save z.astype(np.float32) with {how}."
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
        return f"a {t.dtype} tensor ({_LABELS})", "z.float()"
    stored = t.untyped_storage().nbytes()
    if t.numel() * t.element_size() > stored:  # z.expand(...): rows that are not in the file
        return f"a {_shape(t.shape)} view of only {_size(stored)} of values (a broadcast)", "z.contiguous()"
    return None


def _listing(described: Mapping[str, str]) -> str:
    items = [f"{_readable(name)} ({text})" for name, text in described.items()]
    return ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "") or "none"


def _pick(path: Path, key: str | None, shapes: Mapping[str, Any], described: Mapping[str, str]) -> str:
    """The entry to score: ``key``, else the only array, else the only 2-D one (when every array's shape is known).

    ``shapes`` holds the array entries' shapes (None where not known), ``described`` every entry as listed in messages.
    """
    name, listing = _readable(path), _listing(described)
    if key is not None and key not in described:
        raise CliError(f"{name} has no entry {_readable(key)!r}; it holds: {listing}. Pass one of these to --key.")
    two_d = [entry for entry, shape in shapes.items() if shape is not None and len(shape) == 2]
    if key is None and len(shapes) != 1 and (len(two_d) != 1 or None in shapes.values()):
        if not shapes:
            raise CliError(f"{name} holds no arrays at its top level (entries: {listing}); save a top-level array.")
        what = "several 2-D arrays" if len(two_d) > 1 else "no single 2-D array"
        raise CliError(f"{name} holds {what}: {listing}; pick one with --key NAME.")
    return key if key is not None else two_d[0] if len(shapes) > 1 else next(iter(shapes))


def _npy_header(fp: IO[bytes], label: str, how: str) -> tuple[tuple[int, ...], bool, Any, int]:
    """Shape, Fortran order, dtype and data offset of the ``.npy`` stream ``fp``, parsed by NumPy's own reader.

    NumPy reads a header whole before it checks its length, so the length is checked here first.
    """
    prefix = fp.read(12)
    length_size = 2 if prefix[6:7] == b"\x01" else 4
    offset = 8 + length_size + int.from_bytes(prefix[8 : 8 + length_size], "little")
    if offset > _MAX_NPY_HEADER:
        raise CliError(f"{label} has a {_size(offset)} .npy header (np.save writes < 1 KiB); save it with {how}.")
    stream = io.BytesIO(prefix + fp.read(max(offset - len(prefix), 0)))
    major, _ = np.lib.format.read_magic(stream)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(stream, max_header_size=_MAX_NPY_HEADER)
    if min(shape, default=0) < 0:
        raise ValueError(f"negative shape {shape}")
    return shape, fortran_order, dtype, offset


def _read(fp: IO[bytes], num_bytes: int, label: str, how: str) -> bytes:
    with _reading(label, how):
        if len(data := fp.read(num_bytes)) < num_bytes:
            raise EOFError("the data ends early")
    return data


def _npy_embeddings(fp: IO[bytes], label: str, key: str | None, size: int, how: str, limit: int) -> Embeddings:
    """The array of the ``.npy`` stream ``fp`` (``size`` bytes), read a block of rows at a time.

    A column-major (Fortran order) array has its rows scattered through the stream: it is read whole, within ``limit``.
    """
    with _reading(label, how):
        shape, fortran_order, dtype, offset = _npy_header(fp, label, how)
    _check_dtype(label, dtype, how)
    _check_shape(label, shape, how)
    (num_samples, num_features), num_bytes = shape, math.prod(shape) * dtype.itemsize
    if size - offset < num_bytes:
        raise CliError(
            f"{label} declares a {_shape(shape)} {dtype} array but holds {_size(max(size - offset, 0))} of data;"
            f" it is truncated, save it again with {how}."
        )
    if fortran_order and num_bytes > limit:
        raise _over_limit(f"{label}, in Fortran (column) order, is read whole and", num_bytes, limit)

    def blocks(rows: int) -> Iterator[Any]:
        if fortran_order:
            whole = np.frombuffer(_read(fp, num_bytes, label, how), dtype).reshape(num_features, num_samples).T
            yield from (whole[start : start + rows] for start in range(0, num_samples, rows))
            return
        for start in range(0, num_samples, rows):
            count = min(rows, num_samples - start)
            yield np.frombuffer(_read(fp, count * num_features * dtype.itemsize, label, how), dtype).reshape(count, -1)

    return Embeddings(label, key, (num_samples, num_features), blocks, num_bytes if fortran_order else 0)


def _open_npz(path: Path, key: str | None, stack: ExitStack, limit: int) -> Embeddings:
    """One member of a ``.npz`` archive, inflated in row blocks: the one named ``key``, or the only 2-D one."""
    name, shapes, described = _readable(path), dict[str, Any](), dict[str, str]()
    with _reading(name, "np.savez"):
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    for member, info in members.items():
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CliError(
                f"{name} has a member compressed by method {info.compress_type}, which np.savez never writes."
            )
        shapes[member], described[member] = None, "unreadable"  # an error only if it is the one to score
        with suppress(CliError), _reading(name, "np.savez"), archive.open(info) as fp:
            shape, _, dtype, _ = _npy_header(fp, name, "np.savez")
            shapes[member], described[member] = shape, f"{_shape(shape)} {_one_line(str(dtype))}"
    key = _pick(path, key, shapes, described)
    with _reading(name, "np.savez"):
        fp = stack.enter_context(archive.open(members[key]))
    return _npy_embeddings(fp, _label(path, key), key, members[key].file_size, "np.savez", limit)


def _open_torch(path: Path, key: str | None, kind: str, limit: int) -> Embeddings:
    """The tensor of a ``.pt``/``.pth`` file, or its dict entry ``key``, read whole by ``torch.load``."""
    name, declared = _readable(path), path.stat().st_size  # the legacy format is not compressed
    if kind == "zip":  # the zip format's records declare their inflated sizes
        with suppress(Exception), zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    if declared > limit:
        raise _over_limit(f"{name} is a PyTorch file, read whole by torch.load, so it", declared, limit)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(exc))
        detail = _one_line(match.group(1)) if match else _detail(exc)
        if detail.startswith("Unsupported global"):
            raise CliError(
                f"{name} holds Python objects other than tensors ({detail}), which rankme never unpickles because"
                " that can run code; save the embeddings with torch.save(z, path) or torch.save({'z': z}, path)."
            ) from exc
        hint = "save the embeddings again with torch.save" if kind == "zip" else _HINTS[kind]
        raise CliError(f"cannot read {name} as a PyTorch file ({detail}): {hint}.") from exc
    if isinstance(obj, Mapping):
        entries = {str(entry): value for entry, value in obj.items()}
        shapes = {k: None if v.is_nested else tuple(v.shape) for k, v in entries.items() if isinstance(v, Tensor)}
        described = {k: type(v).__name__ for k, v in entries.items()}
        described |= {k: f"{_shape(s) if s is not None else 'nested'} {entries[k].dtype}" for k, s in shapes.items()}
        key = _pick(path, key, shapes, described)
        obj = entries[key]
    else:
        key = None
    label = _label(path, key)
    if not isinstance(obj, Tensor):
        raise CliError(f"{label} is not a tensor or a dict of tensors but a {type(obj).__name__}; save a tensor.")
    if problem := _tensor_problem(obj):
        raise CliError(f"{label} is {problem[0]}, expected floating-point values; save torch.save({problem[1]}, path).")
    _check_shape(label, tuple(obj.shape), "torch.save")
    tensor = obj
    return Embeddings(label, key, (tensor.shape[0], tensor.shape[1]), lambda rows: iter(tensor.split(rows)), declared)


@contextmanager
def open_embeddings(path: Path, key: str | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[Embeddings]:
    """Open the (N, D) floating-point array to score in ``path`` (or its entry ``key``) without running its code.

    The file stays open within the context, for :attr:`Embeddings.blocks`. Raises :class:`CliError` for anything
    that cannot be scored, including a file that would make rankme hold more than ``max_memory`` bytes at once.
    """
    name, suffix = _readable(path), path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(
            f"cannot score {name}: unsupported file extension {_readable(suffix)!r}; use {', '.join(SUFFIXES)}."
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
            if suffix in (".npy", ".npz") and (kind := _sniff(path)) != {".npy": "npy", ".npz": "zip"}[suffix]:
                raise CliError(f"{name} is not a NumPy {suffix} file: {_HINTS[kind]}.")
            if suffix == ".npy":
                fp = stack.enter_context(path.open("rb"))
                embeddings = _npy_embeddings(fp, name, None, path.stat().st_size, "np.save", max_memory)
            elif suffix == ".npz":
                embeddings = _open_npz(path, key, stack, max_memory)
            else:
                embeddings = _open_torch(path, key, _sniff(path), max_memory)
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc.strerror or exc}; check the file's permissions.") from exc
        if key is not None and embeddings.key is None:
            what = "array" if suffix == ".npy" else "tensor"
            raise CliError(f"--key picks an entry of a .npz or a dict, but {name} holds a single {what}; drop it.")
        yield embeddings


def _plan(embeddings: Embeddings, mode: str, chunk_size: int, max_memory: int) -> tuple[str, int]:
    """The metric mode ("auto": the smaller state), and the rows per block that keep within ``max_memory``."""
    num_samples, num_features = embeddings.shape
    state = {"gram": _COPIES * 8 * num_features**2, "embeddings": _COPIES * 8 * num_features * num_samples}
    mode = ("gram" if num_features <= num_samples else "embeddings") if mode == "auto" else mode
    row = _COPIES * 8 * num_features
    needed = embeddings.resident_bytes + state[mode] + row
    if needed > max_memory:
        other = "embeddings" if mode == "gram" else "gram"
        hint = f" (--mode {other} would fit)" if needed - state[mode] + state[other] <= max_memory else ""
        raise _over_limit(
            f"scoring {embeddings.label} ({num_samples} x {num_features}) in {mode} mode{hint}", needed, max_memory
        )
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
    """Feed the rows to :class:`rankme.RankMe` (``mode``, ``eps``, ``center``) and return its summary, value in float64.

    ``mode="auto"`` keeps the smaller state; blocks hold ``chunk_size`` rows at most, fewer when the state and a
    block would pass ``max_memory``. Raises :class:`CliError` for a NaN or infinity (naming its row), values the
    metric refuses, or a state over ``max_memory``.
    """
    mode, rows = _plan(embeddings, mode, chunk_size, max_memory)
    metric, done = RankMe(mode=mode, eps=eps, center=center), 0  # type: ignore[arg-type]
    with tqdm(total=embeddings.shape[0], unit="rows", file=sys.stderr, disable=not progress, leave=False) as bar:
        for block in embeddings.blocks(rows):
            chunk = block.to(torch.float64) if isinstance(block, Tensor) else torch.from_numpy(block.astype(np.float64))
            try:
                metric.update(chunk)  # checks finiteness, and keeps its state as it was if it refuses the rows
            except ValueError as exc:
                if len(bad := (~torch.isfinite(chunk).all(dim=1)).nonzero()) == 0:
                    raise CliError(f"{embeddings.label}: {exc}") from exc
                first = done + int(bad[0, 0])
                raise CliError(f"{embeddings.label} holds NaN or infinity (first in row {first}); fix it.") from exc
            done += len(chunk)
            bar.update(len(chunk))
    try:
        summary = metric.summary()
    except (ValueError, RuntimeError) as exc:  # e.g. values whose squares leave float64's range in gram mode
        hint = "if its values are extremely large or small, rescale them or try --mode embeddings"
        raise CliError(f"cannot compute RankMe of {embeddings.label} ({_detail(exc)}); {hint}.") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)  # summary() has already said it
        return summary._replace(value=_effective_rank(summary.singular_values, eps))


def _run_score(args: argparse.Namespace) -> str:
    """``rankme score``: the text for stdout; each distinct :class:`RankMeWarning` (only those) goes to stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_embeddings(Path(args.file), args.key, args.max_memory) as embeddings:
            options = {name: getattr(args, name) for name in ("mode", "eps", "center", "chunk_size", "max_memory")}
            result = score(embeddings, progress=not args.quiet and bool(sys.stderr and sys.stderr.isatty()), **options)
    for text in dict.fromkeys(_one_line(str(w.message), 400) for w in caught if issubclass(w.category, RankMeWarning)):
        _say(f"rankme: warning: {text}")
    value, key, n, d = float(result.value), embeddings.key, result.num_samples, result.num_features
    if args.json:
        key = None if key is None else _readable(key)
        record = {"rankme": value, "n": n, "d": d, "normalized": result.normalized, "file": _readable(args.file)}
        return json.dumps(record | {"key": key})
    return f"RankMe      {value:.4f}\nN           {n}\nD           {d}\nnormalized  {result.normalized:.4f}"


def _library_check(convert: Callable[[str], Any], check: Callable[[Any], None]) -> Callable[[str], Any]:
    """An argparse ``type=`` that converts the text, then applies one of the library's argument checks."""

    def parse(text: str) -> Any:
        value: Any = text
        with suppress(ValueError):
            value = convert(text)
        try:
            check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc
        return value

    return parse


def _memory_size(text: str) -> int:
    """A number of bytes, decimal (kB, MB, GB) or binary (KiB, MiB, GiB), e.g. ``512MiB``, ``2G``, ``1e9``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(text)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


_max_memory = _library_check(_memory_size, lambda v: _check_int("max_memory", v, 1, hint=" bytes, e.g. 512MiB or 4GiB"))
_eps = _library_check(float, _check_eps)
_rows = _library_check(int, lambda value: _check_int("chunk_size", value, 1))


def build_parser() -> argparse.ArgumentParser:
    """The ``rankme`` argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(prog="rankme", description="RankMe (Garrido et al., ICML 2023) of embeddings.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND").add_parser(
        "score",
        help="print the RankMe of embeddings saved in a file",
        description="Print RankMe, N, D and RankMe / min(N, D) of an (N, D) array saved with np.save (.npy), np.savez"
        " (.npz) or torch.save (.pt, .pth: a tensor or a dict of tensors). Nothing is unpickled, so untrusted files"
        " cannot run code. Exit status 0 on success (or when stdout's reader closes it early), 2 on any error, 130"
        " when interrupted.",
    )
    sub.add_argument("file", metavar="FILE", help="a .npy, .npz, .pt or .pth file")
    sub.add_argument("--key", help="the .npz member or dict entry to score (default: the only 2-D one)")
    sub.add_argument("--center", action="store_true", help="subtract the column mean first (off in the paper)")
    sub.add_argument(
        "--eps", type=_eps, default=DEFAULT_EPS, help="added to each p_k (default: %(default)g, the paper's)"
    )
    modes = ("auto", "gram", "embeddings")
    sub.add_argument(
        "--mode", choices=modes, default="auto", help="state: D x D Gram or N x D rows (auto: the smaller)"
    )
    sub.add_argument(
        "--chunk-size", type=_rows, default=DEFAULT_CHUNK_SIZE, metavar="ROWS", help="rows per block, at most"
    )
    sub.add_argument(
        "--max-memory",
        type=_max_memory,
        metavar="SIZE",
        help="most memory to hold for the metric's state, a block of rows, a .pt/.pth file (read whole), a"
        f" column-major array, e.g. 4GiB (default: ${MAX_MEMORY_ENV}, else 512MiB)",
    )
    sub.add_argument("--json", action="store_true", help="print one JSON object: rankme, n, d, normalized, file, key")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar (shown only on a terminal)")
    sub.set_defaults(handler=_run_score)
    return parser


def _say(line: str) -> None:
    """Write ``line`` on stderr if there is one (``2>&-`` leaves none: never fall back to stdout)."""
    if sys.stderr is not None:
        with suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


def _run(argv: list[str] | None) -> str | int:
    """Parse ``argv`` and run its command: the text for stdout, or an exit status (the error already said)."""
    try:
        args = build_parser().parse_args(argv)
        try:
            args.max_memory = args.max_memory or _max_memory(os.environ.get(MAX_MEMORY_ENV, str(DEFAULT_MAX_MEMORY)))
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
    """Run the ``rankme`` command line on ``argv`` (None: ``sys.argv[1:]``) and return its exit status.

    0 on success (or when stdout's reader closed it early), 2 for any error, 130 when interrupted.
    """
    try:
        if isinstance(result := _run(argv), int):
            return result
        print(result, flush=True)
    except OSError as exc:  # a reader that closed the pipe early (as for `yes | head`: not an error), a full disk
        with suppress(OSError, ValueError, AttributeError):  # so that the interpreter's final flush cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(exc, BrokenPipeError):
            _say(f"rankme: error: cannot write the result to stdout: {exc.strerror or exc}.")
            return EXIT_ERROR
    except KeyboardInterrupt:
        _say("rankme: interrupted")
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
