"""Print RankMe, N, D and RankMe / min(N, D) of an (N, D) array saved by np.save, np.savez or torch.save.

Nothing in the file is unpickled; .npy and .npz data is streamed. Exit status 0, 2 on any error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import IO, Any, NamedTuple

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
_UNITS = {"": 1} | {unit: 1000**power for power, unit in enumerate("kmgt", 1)}
_UNITS |= {unit + "i": 1024**power for power, unit in enumerate("kmgt", 1)}
_LABELS = "integers are usually labels or indices saved by mistake"
_MAGICS = {b"\x93NUMPY": "npy", b"PK\x03\x04": "zip", b"PK\x05\x06": "zip", b"\x80": "pickle"}  # \x80: pickle PROTO 2+
_HINTS = {  # what a file's first bytes say it is, as advice
    "npy": "it looks like a NumPy .npy file: rename it to .npy",
    "zip": "it looks like a zip archive (.npz, or a file from torch.save): rename it to .npz or .pt",
    "pickle": "it is a Python pickle, which rankme never unpickles (that can run code); use np.save or torch.save",
    "empty": "the file is empty; it was probably not written completely, save the embeddings again",
    "unknown": "it is corrupt or another format; save the embeddings with np.save, np.savez or torch.save",
}


class CliError(Exception):
    """A problem with the user's input: one ``rankme: error: ...`` line and exit status 2."""


class Embeddings(NamedTuple):
    """The (N, D) array to score: ``blocks(rows)`` yields its rows in order, ``rows`` at a time."""

    label: str  # how messages name it
    key: str | None  # the .npz member or dict entry; None for a single array
    shape: tuple[int, int]
    blocks: Callable[[int], Iterable[Any]]
    resident_bytes: int = 0  # held whole in memory: a PyTorch file, a column-major array


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one printable line, without ANSI colour codes, cut at ``limit`` characters."""
    text = " ".join("".join(c if c.isprintable() else " " for c in re.sub(r"\x1b\[[0-9;]*m", "", text)).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _readable(name: str | os.PathLike[str], key: str | None = None) -> str:
    r"""A file name (and its entry ``key``) as printable text: non-UTF-8 bytes as ``\xff``, control characters escaped.

    Example:
        >>> print(_readable(b"z\xff\n.npz".decode("utf-8", "surrogateescape"), key="z"))
        z\xff\n.npz (key 'z')
    """
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if key is None else f"{text} (key {_readable(key)!r})"


def _detail(exc: BaseException) -> str:
    """The exception's type and first sentence, e.g. ``BadZipFile: File is not a zip file``."""
    text = str(exc).split("WeightsUnpickler error:")[-1]  # torch.load(weights_only=True): the reason, past its advice
    first = next((line for line in text.splitlines() if line.strip()), "").split(". ")[0]
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _shape(shape: tuple[int, ...] | torch.Size) -> str:
    return "x".join(str(int(n)) for n in shape) or "scalar"


def _size(num_bytes: int) -> str:
    power = next((p for p in range(5, 0, -1) if num_bytes >= 1024**p), 0)
    return f"{num_bytes / 1024**power:.3g} {'KMGTP'[power - 1]}iB" if power else f"{num_bytes} bytes"


def _over_limit(what: str, needed: int, limit: int) -> CliError:
    fix = f"if this machine has the memory, raise it with --max-memory SIZE (e.g. 4GiB) or ${MAX_MEMORY_ENV}"
    return CliError(f"{what} needs about {_size(needed)} of memory, over the limit of {_size(limit)}; {fix}.")


@contextmanager
def _reading(label: str, how: str) -> Iterator[None]:
    """Turn whatever a corrupt or truncated file makes a reader raise into one :class:`CliError`."""
    try:
        yield
    except (CliError, MemoryError):
        raise
    except Exception as exc:  # BadZipFile, zlib.error, EOFError, OSError, NumPy's ValueError, SyntaxError, ...
        raise CliError(f"cannot read {label} ({_detail(exc)}): corrupt or truncated; save it with {how}.") from exc


def _check_shape(label: str, shape: tuple[int, ...]) -> None:
    """Raise a :class:`CliError` unless ``shape`` is (N, D) with N >= 1 and D >= 1."""
    if len(shape) != 2:
        fix = "pool or flatten the extra axes, e.g. z.mean(axis=1)" if len(shape) > 2 else "save z.reshape(len(z), -1)"
        raise CliError(f"{label} holds a {len(shape)}-D array ({_shape(shape)}), expected 2-D (N, D); {fix}.")
    if 0 in shape:
        raise CliError(f"{label} holds an empty array of shape ({_shape(shape)}): there are no embeddings to score.")


def _tensor_problem(t: Tensor) -> tuple[str, str] | None:
    """Why ``t`` is not a dense, real floating-point tensor of stored values, and the fix; None if it is."""
    if t.is_nested:
        return "a nested tensor (rows of different lengths)", "torch.cat(z.unbind())"
    if t.device.type != "cpu":
        return f"a tensor on the {t.device.type} device, which holds no values to score", "z.detach().cpu()"
    if t.layout != torch.strided:
        return f"a {t.layout} tensor", "z.to_dense()"
    if not t.is_floating_point():  # quantized, complex, integer or bool
        fix = "z.dequantize()" if t.is_quantized else "z.real.float()" if t.is_complex() else "z.float()"
        return f"a {t.dtype} tensor" + (f" ({_LABELS})" if fix == "z.float()" else ""), fix
    stored = t.untyped_storage().nbytes()
    if t.numel() * t.element_size() > stored:  # z.expand(...): rows that are not in the file
        return f"a {_shape(t.shape)} view of only {_size(stored)} of values (a broadcast)", "z.contiguous()"
    return None


def _pick(name: str, key: str | None, shapes: Mapping[str, Any], described: Mapping[str, str]) -> str:
    """The entry to score: ``key``, else the only array, else the only 2-D one (when all ``shapes`` are known)."""
    items = [f"{_readable(entry)} ({text})" for entry, text in described.items()]
    listing = ", ".join(items[:20]) + (f" and {len(items) - 20} more" if len(items) > 20 else "") or "none"
    if key is not None and key not in described:
        raise CliError(f"{name} has no entry {_readable(key)!r}; it holds: {listing}. Pass one of these to --key.")
    two_d = [entry for entry, shape in shapes.items() if shape is not None and len(shape) == 2]
    if key is None and len(shapes) != 1 and (len(two_d) != 1 or None in shapes.values()):
        what = "several 2-D arrays" if len(two_d) > 1 else "no single 2-D array" if shapes else "no top-level array"
        fix = "pick one with --key NAME" if shapes else "save the embeddings as a top-level array"
        raise CliError(f"{name} holds {what} (entries: {listing}); {fix}.")
    return key if key is not None else two_d[0] if len(shapes) > 1 else next(iter(shapes))


def _npy_header(fp: IO[bytes], label: str, how: str) -> tuple[tuple[int, ...], bool, Any, int]:
    """Shape, Fortran order, dtype and data offset of a ``.npy`` stream, its length checked before NumPy reads it."""
    prefix = fp.read(12)
    length_size = 2 if prefix[6:7] == b"\x01" else 4
    offset = 8 + length_size + int.from_bytes(prefix[8 : 8 + length_size], "little")
    if offset > _MAX_NPY_HEADER:
        raise CliError(f"{label} has a {_size(offset)} .npy header (np.save writes < 1 KiB); save it with {how}.")
    fp.seek(0)  # a file or a zip member: both seek
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read(fp, max_header_size=_MAX_NPY_HEADER)
    if min(shape, default=0) < 0:
        raise ValueError(f"negative shape {shape}")
    return shape, fortran_order, dtype, offset


def _npy_embeddings(fp: IO[bytes], label: str, key: str | None, size: int, how: str, limit: int) -> Embeddings:
    """The array of the ``.npy`` stream ``fp`` (``size`` bytes) in row blocks; a column-major one is read whole."""
    with _reading(label, how):
        shape, fortran_order, dtype, offset = _npy_header(fp, label, how)
    if dtype.kind != "f":
        why = {"O": "Python objects, never unpickled", "c": "complex", "i": _LABELS, "u": _LABELS, "b": _LABELS}
        what = f"{_one_line(str(dtype))} values ({why.get(dtype.kind, 'non-numeric')})"
        raise CliError(f"{label} holds {what}, expected floating-point values; save z.astype(np.float32) with {how}.")
    _check_shape(label, shape)
    (num_samples, num_features), row_bytes = shape, shape[1] * dtype.itemsize
    if size - offset < (num_bytes := num_samples * row_bytes):
        held = _size(max(size - offset, 0))
        raise CliError(f"{label} is truncated: a {_shape(shape)} {dtype} array in {held}; save it again with {how}.")
    if fortran_order and num_bytes > limit:
        raise _over_limit(f"{label}, in Fortran (column) order, is read whole and", num_bytes, limit)

    def blocks(rows: int) -> Iterator[Any]:
        with _reading(label, how):  # a short read (the file shrank, a member inflates short) fails a reshape
            whole = np.frombuffer(fp.read(num_bytes), dtype).reshape(num_features, -1).T if fortran_order else None
            for i in range(0, num_samples, rows):
                n = min(rows, num_samples - i)
                block = np.frombuffer(fp.read(n * row_bytes), dtype) if whole is None else whole[i : i + n]
                yield block.reshape(n, num_features)

    return Embeddings(label, key, (num_samples, num_features), blocks, num_bytes if fortran_order else 0)


def _open_npz(path: Path, key: str | None, stack: ExitStack, limit: int) -> Embeddings:
    """One member of a ``.npz`` archive, inflated in row blocks: the one named ``key``, or the only 2-D one."""
    name, shapes, described = _readable(path), dict[str, Any](), dict[str, str]()
    with _reading(name, "np.savez"):
        archive = stack.enter_context(zipfile.ZipFile(path))
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        for member, info in members.items():
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise CliError(f"{name}: a member compressed by method {info.compress_type}; np.savez never writes it.")
            shapes[member], described[member] = None, "unreadable"  # an error only if it is the one to score
            with suppress(Exception), archive.open(info) as fp:
                shape, _, dtype, _ = _npy_header(fp, name, "np.savez")
                shapes[member], described[member] = shape, f"{_shape(shape)} {_one_line(str(dtype))}"
        key = _pick(name, key, shapes, described)
        fp = stack.enter_context(archive.open(members[key]))
    return _npy_embeddings(fp, _readable(path, key), key, members[key].file_size, "np.savez", limit)


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
        hint = "save the embeddings again with torch.save" if kind == "zip" else _HINTS[kind]
        if "GLOBAL" in str(exc).upper():  # "Unsupported global: GLOBAL ...", "unsupported GLOBAL ... is blocked"
            hint = "it holds Python objects other than tensors, never unpickled here; save only tensors with torch.save"
        raise CliError(f"cannot read {name} as a PyTorch file ({_detail(exc)}): {hint}.") from exc
    if isinstance(obj, Mapping):
        entries = {str(entry): value for entry, value in obj.items()}
        shapes = {k: None if v.is_nested else tuple(v.shape) for k, v in entries.items() if isinstance(v, Tensor)}
        described = {k: type(v).__name__ for k, v in entries.items()}
        described |= {k: f"{_shape(s) if s is not None else 'nested'} {entries[k].dtype}" for k, s in shapes.items()}
        obj = entries[key := _pick(name, key, shapes, described)]
    else:
        key = None
    label = _readable(path, key)
    if not isinstance(obj, Tensor):
        raise CliError(f"{label} is not a tensor or a dict of tensors but a {type(obj).__name__}; save a tensor.")
    if problem := _tensor_problem(obj):
        raise CliError(f"{label} is {problem[0]}, expected floating-point values; save torch.save({problem[1]}, path).")
    _check_shape(label, tuple(obj.shape))
    return Embeddings(label, key, (obj.shape[0], obj.shape[1]), obj.split, declared)


@contextmanager
def open_embeddings(path: Path, key: str | None = None, max_memory: int = DEFAULT_MAX_MEMORY) -> Iterator[Embeddings]:
    """Open the array to score in ``path`` (or its entry ``key``); raise :class:`CliError` if it cannot be scored."""
    name, suffix = _readable(path), path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(f"{name}: unsupported file extension {_readable(suffix)!r}; use {', '.join(SUFFIXES)}.")
    try:
        path.stat()
    except OSError as exc:  # missing, a symlink loop, a name too long, a component that is not a directory, ...
        what = "does not exist" if isinstance(exc, FileNotFoundError) else f"cannot be opened: {exc.strerror or exc}"
        raise CliError(f"{name} {what}; check the path.") from exc
    if not path.is_file():
        what = "a directory" if path.is_dir() else "a FIFO, socket or device"
        raise CliError(f"{name} is not a file but {what}; pass the path of a saved embeddings file.")
    with ExitStack() as stack:
        try:
            fp = stack.enter_context(path.open("rb"))  # kept for the .npy branch: peek leaves it at 0
            head = fp.peek(8)[:8]
            kind = next((k for magic, k in _MAGICS.items() if head.startswith(magic)), "unknown" if head else "empty")
            if (expected := {".npy": "npy", ".npz": "zip"}.get(suffix)) is not None and kind != expected:
                raise CliError(f"{name} is not a NumPy {suffix} file: {_HINTS[kind]}.")
            if suffix == ".npy":
                embeddings = _npy_embeddings(fp, name, None, path.stat().st_size, "np.save", max_memory)
            elif suffix == ".npz":
                embeddings = _open_npz(path, key, stack, max_memory)
            else:
                embeddings = _open_torch(path, key, kind, max_memory)
        except OSError as exc:
            raise CliError(f"cannot read {name}: {exc.strerror or exc}; check the file's permissions.") from exc
        if key is not None and embeddings.key is None:
            what = "array" if suffix == ".npy" else "tensor"
            raise CliError(f"--key picks an entry of a .npz or a dict, but {name} holds a single {what}; drop it.")
        yield embeddings


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

    ``mode="auto"`` keeps the smaller state; blocks of at most ``chunk_size`` rows keep it within ``max_memory``.
    Raises :class:`CliError` for a NaN or infinity (naming its row), values the metric refuses, or a state too large.
    """
    (num_samples, num_features), row = embeddings.shape, _COPIES * 8 * embeddings.shape[1]
    state = {"gram": row * num_features, "embeddings": row * num_samples}
    if mode == "auto":  # the smaller state
        mode = "gram" if num_features <= num_samples else "embeddings"
    if (needed := embeddings.resident_bytes + state[mode] + row) > max_memory:
        other = "embeddings" if mode == "gram" else "gram"
        fits = f" (--mode {other} would fit)" if needed - state[mode] + state[other] <= max_memory else ""
        what = f"scoring {embeddings.label} ({num_samples} x {num_features}) in {mode} mode{fits}"
        raise _over_limit(what, needed, max_memory)
    metric, done = RankMe(mode=mode, eps=eps, center=center), 0  # type: ignore[arg-type]
    with tqdm(total=num_samples, unit="rows", file=sys.stderr, disable=not progress, leave=False) as bar:
        for block in embeddings.blocks(max(1, min(chunk_size, (max_memory - needed) // row + 1))):
            chunk = block.to(torch.float64) if isinstance(block, Tensor) else torch.from_numpy(block.astype(np.float64))
            try:
                metric.update(chunk)  # checks finiteness, and keeps its state as it was if it refuses the rows
            except ValueError as exc:
                bad = done + (~torch.isfinite(chunk).all(dim=1)).nonzero()[:, 0]  # the rows, counted in the file
                why = f" holds NaN or infinity (first in row {int(bad[0])}); fix it." if len(bad) else f": {exc}"
                raise CliError(embeddings.label + why) from exc
            done += len(chunk)
            bar.update(len(chunk))
    try:
        summary = metric.summary()
    except (ValueError, RuntimeError) as exc:  # e.g. eigvalsh failing to converge
        fix = "rescale the values" + (", or try --mode embeddings" if mode == "gram" else "")
        raise CliError(f"cannot compute RankMe of {embeddings.label} ({_detail(exc)}); {fix}.") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RankMeWarning)  # summary() has already said it
        return summary._replace(value=_effective_rank(summary.singular_values, eps))


def _run_score(args: argparse.Namespace) -> str:
    """``rankme score``: the text for stdout; each distinct :class:`RankMeWarning` (only those) goes to stderr."""
    args.max_memory = args.max_memory or _max_memory(os.environ.get(MAX_MEMORY_ENV, str(DEFAULT_MAX_MEMORY)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_embeddings(Path(args.file), args.key, args.max_memory) as embeddings:
            options = {name: getattr(args, name) for name in ("mode", "eps", "center", "chunk_size", "max_memory")}
            result = score(embeddings, progress=not args.quiet and bool(sys.stderr and sys.stderr.isatty()), **options)
    for text in dict.fromkeys(_one_line(str(w.message), 400) for w in caught if issubclass(w.category, RankMeWarning)):
        _say(f"rankme: warning: {text}")
    value, n, d, key = float(result.value), result.num_samples, result.num_features, embeddings.key
    if args.json:
        record = {"rankme": value, "n": n, "d": d, "normalized": result.normalized, "file": _readable(args.file)}
        return json.dumps(record | {"key": None if key is None else _readable(key)})
    return f"RankMe      {value:.4f}\nN           {n}\nD           {d}\nnormalized  {result.normalized:.4f}"


def _checked(convert: Callable[[str], Any], check: Callable[[Any], None], text: str) -> Any:
    """An argparse ``type=``: ``text`` converted (left as text if it cannot be), then one of the library's checks."""
    value: Any = text
    with suppress(ValueError):
        value = convert(text)
    try:
        check(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return value


def _memory_size(text: str) -> int | str:
    """The bytes ``text`` says (``512MiB``, ``2G``, ``1e9``: kB to TB decimal, KiB to TiB binary), else ``text``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    return int(float(match[1]) * _UNITS[match[2] or ""]) if match else text


_max_memory = partial(_checked, _memory_size, partial(_check_int, "max_memory", lowest=1, hint=" bytes, e.g. 4GiB"))


def build_parser() -> argparse.ArgumentParser:
    """The ``rankme`` argument parser, with one sub-command per action."""
    parser = argparse.ArgumentParser(prog="rankme", description="RankMe (Garrido et al., ICML 2023) of embeddings.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = commands.add_parser("score", help="print the RankMe of embeddings saved in a file", description=__doc__)
    sub.add_argument("file", metavar="FILE", help="a .npy, .npz, .pt or .pth file")
    sub.add_argument("--key", help="the .npz member or dict entry to score (default: the only 2-D one)")
    sub.add_argument("--center", action="store_true", help="subtract the column mean first (off in the paper)")
    eps = partial(_checked, float, _check_eps)
    sub.add_argument("--eps", type=eps, default=DEFAULT_EPS, help="added to each p_k (default: %(default)g)")
    sub.add_argument("--mode", choices=("auto", "gram", "embeddings"), default="auto", help="D x D or N x D state")
    rows = partial(_checked, int, partial(_check_int, "chunk_size", lowest=1))
    sub.add_argument("--chunk-size", type=rows, default=DEFAULT_CHUNK_SIZE, metavar="ROWS", help="rows per block")
    limit = f"most memory to hold (state, block, .pt file, Fortran array); default ${MAX_MEMORY_ENV} or 512MiB"
    sub.add_argument("--max-memory", type=_max_memory, metavar="SIZE", help=limit)
    sub.add_argument("--json", action="store_true", help="print one JSON object: rankme, n, d, normalized, file, key")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar (shown only on a terminal)")
    return parser


def _say(line: str) -> None:
    """Write ``line`` on stderr if there is one (``2>&-`` leaves none: never fall back to stdout)."""
    if sys.stderr is not None:
        with suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ``rankme`` command line on ``argv`` (None: ``sys.argv[1:]``); return 0, 2 (error) or 130 (Ctrl-C)."""
    try:
        try:
            text = _run_score(build_parser().parse_args(argv))
        except SystemExit as exc:  # --help and --version (0), usage errors (2): argparse has printed them
            return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_ERROR
        except CliError as exc:
            message = str(exc)
        except argparse.ArgumentTypeError as exc:  # from $RANKME_MAX_MEMORY (argparse reports the options' own)
            message = f"the {MAX_MEMORY_ENV} environment variable is not a size: {exc}"
        except MemoryError:
            message = "out of memory; lower --max-memory or --chunk-size, or free memory on this machine."
        except Exception as exc:  # a case no check foresaw: still one line and status 2, never a traceback
            message = f"unexpected {_detail(exc)} while scoring; please report it as a rankme bug."
        else:
            print(text, flush=True)  # its OSError is the one handled below
            return EXIT_OK
        _say(f"rankme: error: {_one_line(message, limit=2000)}")
        return EXIT_ERROR
    except OSError as exc:  # a reader that closed the pipe early (as for `yes | head`: not an error), a full disk
        with suppress(OSError, ValueError, AttributeError):  # so that the interpreter's final flush cannot fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if not isinstance(exc, BrokenPipeError):
            _say(f"rankme: error: cannot write the result to stdout: {exc.strerror or exc}.")
        return EXIT_OK if isinstance(exc, BrokenPipeError) else EXIT_ERROR
    except KeyboardInterrupt:
        _say("rankme: interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
