"""The ``rankme`` command line: the RankMe of embeddings saved to a file, without writing Python.

Usage::

    rankme score embeddings.npy
    rankme score features.npz --key z --center
    rankme score checkpoint.pt --key embeddings --json

``rankme score`` reads one (N, D) array from a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file, feeds it to
the streaming :class:`rankme.RankMe` metric in row chunks and prints RankMe, N, D and the value normalised
by its upper bound min(N, D). A ``.npy`` file is memory-mapped and streamed, so it can be larger than the
memory; ``.npz`` members (compressed zip entries) and PyTorch files are loaded whole, then chunked.

Files are treated as untrusted: nothing in them is ever unpickled as arbitrary Python. NumPy files are
read with ``allow_pickle=False`` and PyTorch files with ``torch.load(..., weights_only=True)``, which only
rebuilds tensors and plain containers. A file that cannot be scored (missing, corrupt, hostile, of the
wrong shape or dtype, holding NaN, empty) gives a one-line ``rankme: error: ...`` on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from rankme import __version__
from rankme.functional import DEFAULT_EPS, _effective_rank
from rankme.metric import RankMe

try:
    import numpy as np
    from tqdm import tqdm
except ImportError as _error:  # pragma: no cover - numpy and tqdm come with the `cli` extra
    _MISSING_EXTRA: ImportError | None = _error
else:
    _MISSING_EXTRA = None

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_CHUNK_SIZE = 4096
SUFFIXES = (".npy", ".npz", ".pt", ".pth")

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_MAX_LISTED_KEYS = 20
_MAX_DETAIL_CHARS = 200


class CliError(Exception):
    """A problem with the user's input, reported as one ``rankme: error: ...`` line and exit status 2."""


@dataclass(frozen=True)
class Embeddings:
    """The (N, D) array picked from a file: a NumPy array (memory-mapped for ``.npy``) or a CPU tensor."""

    rows: Any
    """``numpy.ndarray`` or ``torch.Tensor`` of shape (N, D) with a floating dtype."""
    key: str | None
    """The ``.npz`` member or dict entry it came from; None for a file holding a single array."""
    label: str
    """How error messages name it: the path, and the key if there is one."""


@dataclass(frozen=True)
class Score:
    """What ``rankme score`` reports about one array."""

    value: float
    """RankMe, in float64 (the metric's own value is rounded to the default float dtype)."""
    num_samples: int
    """N, the rows."""
    num_features: int
    """D, the features per row."""
    singular_values: Tensor
    """float64 tensor of the min(N, D) singular values, descending."""

    @property
    def normalized(self) -> float:
        """RankMe divided by its upper bound min(N, D), in (0, 1]."""
        return self.value / min(self.num_samples, self.num_features)


# ---------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------


def _one_line(text: str, limit: int = _MAX_DETAIL_CHARS) -> str:
    """``text`` on a single printable line (control characters and newlines become spaces), cut at ``limit``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # ANSI colour codes (torch uses them in its messages)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _exception_detail(exc: BaseException) -> str:
    """The exception type and the first line of its message, e.g. ``BadZipFile: File is not a zip file``."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    first = lines[0].split(". ")[0] if lines else ""
    return _one_line(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def _label(path: Path, key: str | None) -> str:
    return f"{path} (key {key!r})" if key is not None else str(path)


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(n)) for n in shape) if len(shape) else "scalar"


def _sniff(path: Path) -> str:
    """What the first bytes of ``path`` say it is: ``npy``, ``zip``, ``pickle``, ``empty`` or ``unknown``."""
    try:
        with path.open("rb") as fp:
            head = fp.read(8)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions.") from exc
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
        f"{label} holds non-numeric or complex values (dtype {dtype}), expected floating-point embeddings;"
        f" convert them, z.astype(np.float32), and save them with {how_to_save}."
    )


def _check_torch_dtype(label: str, tensor: Tensor) -> None:
    """Raise a :class:`CliError` unless ``tensor`` is a dense floating-point tensor."""
    if tensor.layout != torch.strided:
        raise CliError(
            f"{label} is a {tensor.layout} tensor, expected a dense one; save it with torch.save(z.to_dense(), path)."
        )
    if tensor.is_floating_point():
        return
    if tensor.is_complex() or tensor.is_quantized:
        raise CliError(
            f"{label} holds {tensor.dtype} values, expected real floating-point embeddings;"
            " save them with torch.save(z.float(), path)."
        )
    raise CliError(
        f"{label} holds {tensor.dtype} values, expected floating-point embeddings; integers are usually labels or"
        " indices saved by mistake. If they really are embeddings, save them with torch.save(z.float(), path)."
    )


def _choose_key(path: Path, entries: Mapping[str, tuple[int, ...] | None], described: Mapping[str, str]) -> str:
    """The entry to score when no ``--key`` was given: the only entry, or the only 2-D one.

    Args:
        path: the file, for messages.
        entries: each array entry's shape (None where it could not be read from the header).
        described: every entry (arrays and others) as the text that lists it in messages.
    """
    if len(entries) == 1:
        return next(iter(entries))
    two_d = [name for name, shape in entries.items() if shape is not None and len(shape) == 2]
    if len(two_d) == 1 and all(shape is not None for shape in entries.values()):
        return two_d[0]
    if not entries:
        raise CliError(
            f"{path} holds no arrays at its top level (entries: {_listing(described)}); nested containers are not"
            " searched, save the embeddings as a top-level array or tensor."
        )
    what = "several 2-D arrays" if len(two_d) > 1 else "no single 2-D array"
    raise CliError(f"{path} holds {what}: {_listing(described)}; pick one with --key NAME.")


def _listing(described: Mapping[str, str]) -> str:
    """``a (100x8 float32), b (100 int64)``, cut after the first few entries."""
    if not described:
        return "none"
    items = [f"{name} ({text})" for name, text in described.items()]
    more = len(items) - _MAX_LISTED_KEYS
    return ", ".join(items[:_MAX_LISTED_KEYS]) + (f" and {more} more" if more > 0 else "")


def _unknown_key(path: Path, key: str, described: Mapping[str, str]) -> CliError:
    return CliError(f"{path} has no entry {key!r}; it holds: {_listing(described)}. Pass one of these to --key.")


def _key_not_applicable(path: Path, what: str) -> CliError:
    return CliError(
        f"--key applies to .npz files and to .pt/.pth files holding a dict, but {path} holds {what};"
        " drop --key to score it."
    )


# ---------------------------------------------------------------------------------------------------------
# Loading, one function per format
# ---------------------------------------------------------------------------------------------------------


def _read_npy_header(fp: IO[bytes]) -> tuple[tuple[int, ...], Any] | None:
    """Shape and dtype from the header of a ``.npy`` stream, or None for a format version read only by np.load.

    The header is a Python literal parsed by NumPy with ``ast.literal_eval``, so nothing in it runs.
    """
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        return None
    return tuple(shape), dtype


def _load_npy(path: Path, key: str | None) -> Embeddings:
    """Memory-map a ``.npy`` file after checking its header; no data is read yet."""
    kind = _sniff(path)
    if kind != "npy":
        raise CliError(f"{path} is not a NumPy .npy file: {_RENAME_HINTS[kind]}.")
    if key is not None:
        raise _key_not_applicable(path, "a single array")
    label = str(path)
    try:
        with path.open("rb") as fp:
            header = _read_npy_header(fp)
    except Exception as exc:  # header parsing: NumPy raises ValueError, tokenize.TokenError, EOFError, ...
        raise CliError(
            f"{path} has a corrupt .npy header ({_exception_detail(exc)}); save the embeddings again with np.save."
        ) from exc
    if header is not None:
        _check_numpy_dtype(label, header[1], "np.save")
        _check_shape(label, header[0], "np.save")
    try:
        # The one call that parses file content: any failure in it is a bad file, whatever NumPy raises.
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise CliError(
            f"cannot read {path} as a .npy file ({_exception_detail(exc)}); it is corrupt or truncated,"
            " save the embeddings again with np.save."
        ) from exc
    if not isinstance(rows, np.ndarray):
        raise CliError(f"{path} is not a NumPy .npy file: {_RENAME_HINTS['zip']}.")
    _check_numpy_dtype(label, rows.dtype, "np.save")
    _check_shape(label, rows.shape, "np.save")
    return Embeddings(rows, None, label)


def _npz_entries(npz: Any) -> dict[str, tuple[tuple[int, ...], Any] | None]:
    """Each ``.npy`` member of an open ``.npz`` archive, by key, with its shape and dtype from its header."""
    entries: dict[str, tuple[tuple[int, ...], Any] | None] = {}
    for member in npz.zip.namelist():
        if not member.endswith(".npy"):
            continue
        with npz.zip.open(member) as fp:
            entries[member[: -len(".npy")]] = _read_npy_header(fp)
    return entries


def _npz_error(path: Path, exc: Exception) -> CliError:
    return CliError(
        f"cannot read {path} as a .npz archive ({_exception_detail(exc)}); it is corrupt or truncated,"
        " save the embeddings again with np.savez."
    )


def _load_npz(path: Path, key: str | None) -> Embeddings:
    """Load one member of a ``.npz`` archive whole: the one named by ``key``, or the only 2-D one."""
    kind = _sniff(path)
    if kind != "zip":
        raise CliError(f"{path} is not a NumPy .npz archive: {_RENAME_HINTS[kind]}.")
    # Each try below wraps only calls that parse file content: whatever they raise means a bad file.
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise _npz_error(path, exc) from exc
    with npz:
        try:
            entries = _npz_entries(npz)
        except Exception as exc:
            raise _npz_error(path, exc) from exc
        described = {
            name: f"{_shape_text(info[0])} {info[1]}" if info is not None else "shape unknown"
            for name, info in entries.items()
        }
        if key is None:
            key = _choose_key(path, {name: info[0] if info else None for name, info in entries.items()}, described)
        elif key not in entries:
            raise _unknown_key(path, key, described)
        label = _label(path, key)
        header = entries[key]
        if header is not None:
            _check_numpy_dtype(label, header[1], "np.savez")
            _check_shape(label, header[0], "np.savez")
        try:
            rows = npz[key]
        except Exception as exc:
            raise _npz_error(path, exc) from exc
    _check_numpy_dtype(label, rows.dtype, "np.savez")
    _check_shape(label, rows.shape, "np.savez")
    return Embeddings(rows, key, label)


def _torch_load_error(path: Path, exc: Exception) -> CliError:
    """The message for a ``torch.load`` failure: a forbidden Python object, or a corrupt file."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", str(exc))
    detail = _one_line(match.group(1)) if match else _exception_detail(exc)
    if detail.startswith("Unsupported global"):
        return CliError(
            f"{path} holds Python objects other than tensors ({detail}); rankme loads only tensors and plain"
            " containers, never arbitrary pickles, because unpickling them can run code. Save the embeddings"
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
        f"cannot read {path} as a PyTorch file ({detail}); it is corrupt, truncated or not written by torch.save:"
        f" {hint}."
    )


def _load_torch(path: Path, key: str | None) -> Embeddings:
    """Load a ``.pt``/``.pth`` file with ``weights_only=True`` and pick the tensor to score."""
    _sniff(path)  # a readable file, or a clear error
    try:
        # The one call that parses file content: whatever a corrupt or hostile file makes it raise is reported.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _torch_load_error(path, exc) from exc
    if isinstance(obj, Tensor):
        if key is not None:
            raise _key_not_applicable(path, "a single tensor")
        tensor, label = obj, str(path)
    elif isinstance(obj, Mapping):
        by_name = {str(name): value for name, value in obj.items()}
        described = {
            name: (f"{_shape_text(value.shape)} {value.dtype}" if isinstance(value, Tensor) else type(value).__name__)
            for name, value in by_name.items()
        }
        if key is None:
            tensors = {name: tuple(v.shape) for name, v in by_name.items() if isinstance(v, Tensor)}
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
            f"{path} holds a {type(obj).__name__}, expected a tensor or a dict of tensors; save the embeddings"
            " with torch.save(z, path) or torch.save({'name': z}, path)."
        )
    _check_torch_dtype(label, tensor)
    _check_shape(label, tuple(tensor.shape), "torch.save")
    return Embeddings(tensor, key, label)


def load_embeddings(path: Path, key: str | None = None) -> Embeddings:
    """Load the (N, D) floating-point array to score from ``path``, safely, without running code from it.

    Args:
        path: a ``.npy``, ``.npz``, ``.pt`` or ``.pth`` file.
        key: the ``.npz`` member or dict entry to score; None picks the only 2-D one.

    Raises:
        CliError: for a missing, unreadable, corrupt or hostile file, an unsupported extension, a missing or
            ambiguous key, or an array that is not a non-empty 2-D floating-point one.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CliError(
            f"cannot score {path}: unsupported file extension {suffix or '(none)'!r}; rankme reads"
            f" {', '.join(SUFFIXES)} files (save the embeddings with np.save, np.savez or torch.save)."
        )
    if not path.exists():
        raise CliError(f"{path} does not exist; check the path.")
    if not path.is_file():
        raise CliError(f"{path} is not a file; pass the path of a saved embeddings file.")
    if suffix == ".npy":
        return _load_npy(path, key)
    if suffix == ".npz":
        return _load_npz(path, key)
    return _load_torch(path, key)


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def _chunks(embeddings: Embeddings, chunk_size: int) -> Iterator[Tensor]:
    """The rows as float64 CPU tensors of at most ``chunk_size`` rows; a memory-map is read one chunk at a time."""
    rows = embeddings.rows
    for start in range(0, rows.shape[0], chunk_size):
        chunk = rows[start : start + chunk_size]
        if isinstance(chunk, Tensor):
            chunk64 = chunk.to(torch.float64)
        else:  # a copy in native byte order, so torch can wrap it and the memory-map is not written to
            chunk64 = torch.from_numpy(np.array(chunk, dtype=np.float64))
        finite = torch.isfinite(chunk64).all(dim=1)
        if not bool(finite.all()):
            first = start + int((~finite).nonzero()[0, 0])
            raise CliError(
                f"{embeddings.label} holds NaN or infinity (first in row {first}); drop or fix the non-finite rows"
                " and save the embeddings again."
            )
        yield chunk64


def score(
    embeddings: Embeddings,
    *,
    mode: str = "auto",
    eps: float = DEFAULT_EPS,
    center: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool = False,
) -> Score:
    """Feed the rows to a :class:`rankme.RankMe` metric chunk by chunk and return the result.

    Args:
        embeddings: what :func:`load_embeddings` returned.
        mode: ``"gram"``, ``"embeddings"``, or ``"auto"`` for whichever holds less state (gram when D <= N).
        eps: the paper's smoothing constant.
        center: subtract the column mean before taking singular values.
        chunk_size: rows per update.
        progress: show a tqdm progress bar on stderr.

    Raises:
        CliError: if a row holds NaN or infinity.
    """
    num_samples, num_features = embeddings.rows.shape
    if mode == "auto":
        mode = "gram" if num_features <= num_samples else "embeddings"
    metric = RankMe(mode=mode, eps=eps, center=center)  # type: ignore[arg-type]
    with tqdm(total=num_samples, unit="rows", desc="rankme", file=sys.stderr, disable=not progress, leave=False) as bar:
        for chunk in _chunks(embeddings, chunk_size):
            metric.update(chunk)
            bar.update(chunk.shape[0])
    summary = metric.summary()
    # The metric rounds its value to the default dtype (float32); the CLI reports the float64 one, from the
    # same singular values and the same helper.
    value = float(_effective_rank(summary.singular_values, eps))
    return Score(value, summary.num_samples, summary.num_features, summary.singular_values)


def _report_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """Print each distinct warning as one ``rankme: warning: ...`` line on stderr."""
    seen: set[str] = set()
    for record in caught:
        text = _one_line(str(record.message), limit=400)
        if text not in seen:
            seen.add(text)
            print(f"rankme: warning: {text}", file=sys.stderr)


def _print_result(result: Score, file: str, key: str | None, as_json: bool) -> None:
    """Print the result on stdout: four aligned lines, or one JSON object."""
    if as_json:
        record = {
            "rankme": result.value,
            "n": result.num_samples,
            "d": result.num_features,
            "normalized": result.normalized,
            "file": file,
            "key": key,
        }
        print(json.dumps(record))
        return
    print(f"RankMe      {result.value:.4f}")
    print(f"N           {result.num_samples}")
    print(f"D           {result.num_features}")
    print(f"normalized  {result.normalized:.4f}")


def _run_score(args: argparse.Namespace) -> int:
    """``rankme score``: load, score, print; warnings become lines on stderr once it succeeded."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        embeddings = load_embeddings(Path(args.file), args.key)
        result = score(
            embeddings,
            mode=args.mode,
            eps=args.eps,
            center=args.center,
            chunk_size=args.chunk_size,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    _report_warnings(caught)
    _print_result(result, args.file, embeddings.key, args.json)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# Argument parsing and the entry point
# ---------------------------------------------------------------------------------------------------------


def _eps_value(text: str) -> float:
    """Argparse type for ``--eps``: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0 (the paper uses 1e-7), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    """Argparse type for ``--chunk-size``: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


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
            " loaded without unpickling Python objects, so untrusted files cannot run code. Exit status 0 on"
            " success, 2 on any error."
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
        type=_positive_int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="ROWS",
        help="rows read and fed to the metric at a time (default: %(default)s)",
    )
    score_parser.add_argument(
        "--json", action="store_true", help="print one JSON object: rankme, n, d, normalized, file, key"
    )
    score_parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar (it is shown only when stderr is a terminal)"
    )
    score_parser.set_defaults(handler=_run_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``rankme`` command line and return its exit status.

    Args:
        argv: the arguments after the program name; None reads ``sys.argv[1:]``.

    Returns:
        0 on success, 2 for a usage error or a file that cannot be scored, 130 when interrupted.
    """
    if _MISSING_EXTRA is not None:
        print(
            f"rankme: error: the command line needs numpy and tqdm ({_one_line(str(_MISSING_EXTRA))});"
            " install them with: pip install 'rankme[cli]'",
            file=sys.stderr,
        )
        return EXIT_ERROR
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version (0), usage errors (2): already printed by argparse
        return EXIT_OK if exc.code is None else exc.code if isinstance(exc.code, int) else EXIT_ERROR
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"rankme: error: {_one_line(str(exc), limit=2000)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("rankme: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
