"""Versioned JSON files: atomic saving that never silently replaces a different file, checked loading.

Every OTCache file is one JSON object with ``"format"`` (what it holds) and ``"version"`` (an integer,
bumped on incompatible change) at the top level, so a file shared between users says what it is.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import FileFormatError, OTCacheError, SaveError


# A list of numbers as json.dumps(indent=...) lays it out: one element per line. Strings never hold a
# literal newline, so this cannot match inside a string value.
_NUMBER_LIST = re.compile(r"\[\n\s*((?:-?[\d.eE+-]+|null)(?:,\n\s*(?:-?[\d.eE+-]+|null))*)\n\s*\]")


def dumps(document: dict[str, Any]) -> str:
    """Stable, human-readable JSON text; a list of numbers (a schedule, a matrix row) stays on one line."""
    text = json.dumps(document, indent=1, sort_keys=False, allow_nan=False)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",")) + "]", text) + "\n"


def save_json(path: str | os.PathLike[str], document: dict[str, Any], *, overwrite: bool = False) -> Path:
    """Write ``document`` to ``path`` atomically and return the path.

    An existing file with the same content is left as it is. An existing file with different content
    is replaced only when ``overwrite`` is true; otherwise an :class:`OTCacheError` says so, and the
    user's file is untouched. The text goes to a temporary file in the same folder first and is then
    renamed over the target, so a crash never leaves a half-written file behind. A folder that cannot
    be written (read-only, full, no permission) raises :class:`SaveError` naming the folder and the
    reason; the temporary file is removed and any existing file is untouched.
    """
    target = Path(path)
    text = dumps(document)
    if target.exists():
        try:
            current = target.read_text(encoding="utf-8")
        except (OSError, ValueError) as exc:  # a folder, an unreadable or non-UTF-8 file of that name
            if not overwrite or target.is_dir():
                raise OTCacheError(f"cannot replace {target}: {_reason(exc)}; choose another name") from exc
            current = None  # a file we may overwrite: whatever it holds goes
        if current == text:
            return target
        if not overwrite:
            raise OTCacheError(
                f"{target} already exists with different content; choose another name or allow overwriting"
            )
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared file gets the usual mode
        os.replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise SaveError(f"cannot save {target.name} in {target.parent}: {_reason(exc)}") from exc
    except BaseException:
        _remove(tmp)
        raise
    return target


def _remove(path: str | None) -> None:
    if path is not None and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            pass  # the folder itself refuses; nothing more to clean


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MAX_FILE_BYTES = 32 * 1024 * 1024
"""Largest OTCache file read (a calibration at T = 1000 with its full edge matrix is about 10 MB)."""
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects accepted (OTCache's own files nest at most 4 levels)."""
MAX_INTEGER = 10**18
"""Largest integer magnitude accepted: larger ones overflow float conversions and C integers."""


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """Parse the JSON file at ``path`` within OTCache's limits.

    Raises :class:`FileFormatError` with one line naming the file: missing, unreadable, larger than
    :data:`MAX_FILE_BYTES` (checked before reading, so a huge file costs nothing), not UTF-8, not
    JSON; and naming the field: a non-finite number (``NaN``, ``Infinity``, ``1e999``), an integer
    beyond :data:`MAX_INTEGER`, nesting deeper than :data:`MAX_DEPTH`.
    """
    source = Path(path)
    try:
        with open(source, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise FileFormatError(
                    f"{source}: {size / 2**20:.1f} MiB is larger than OTCache reads ({MAX_FILE_BYTES // 2**20} MiB)"
                )
            data = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError as exc:
        raise FileFormatError(f"{source}: no such file") from exc
    except IsADirectoryError as exc:
        raise FileFormatError(f"{source}: is a folder, not a file") from exc
    except OSError as exc:
        raise FileFormatError(f"{source}: cannot be read ({exc.strerror or exc})") from exc
    if len(data) > MAX_FILE_BYTES:  # grew while being read
        raise FileFormatError(f"{source}: larger than OTCache reads ({MAX_FILE_BYTES // 2**20} MiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileFormatError(f"{source}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise FileFormatError(f"{source}: nested far deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # Python refuses integer literals of more than 4300 digits
        raise FileFormatError(f"{source}: holds an integer literal of thousands of digits") from None
    problem = _first_bad_value(document)
    if problem is not None:
        raise FileFormatError(f"{source}: {problem}")
    return document


def _first_bad_value(document: Any) -> str | None:
    """The first value OTCache refuses anywhere in ``document``, with its path; no recursion."""
    stack: list[tuple[Any, str, int]] = [(document, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                return f"field {_top(path)!r} nests deeper than {MAX_DEPTH} levels"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            children = [(v, f"{path}.{k}" if isinstance(k, str) and path else
                         (str(k) if isinstance(k, str) else f"{path}[{k}]"), depth + 1) for k, v in items]
            stack.extend(reversed(children))
        elif isinstance(value, float) and not math.isfinite(value):
            return f"field {_top(path)!r} must be a finite number, found {value}"
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INTEGER:
            return f"field {_top(path)!r} holds an integer beyond {MAX_INTEGER:.0e}"
    return None


def _top(path: str) -> str:
    """A field path cut to a readable length."""
    if not path:
        return "(the whole file)"
    return path if len(path) <= 80 else path[:77] + "..."


def load_json(path: str | os.PathLike[str], expected_format: str, max_version: int) -> dict[str, Any]:
    """Read an OTCache JSON file (:func:`read_json_file`) and check its ``format`` and ``version``.

    Raises :class:`FileFormatError` naming the file and the problem (see :func:`read_json_file`; not
    an object, another format, a version newer than this OTCache understands).
    """
    return check_document(read_json_file(path), expected_format, max_version, where=str(path))


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr`` of a value read from a file, on one line and at most ``limit`` characters."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_document(document: Any, expected_format: str, max_version: int, *, where: str) -> dict[str, Any]:
    """Check the ``format``/``version`` header of an already parsed document."""
    if not isinstance(document, dict):
        raise FileFormatError(f"{where}: expected a JSON object, found {type(document).__name__}")
    found = document.get("format")
    if found != expected_format:
        raise FileFormatError(f"{where}: expected format {expected_format!r}, found {short_repr(found)}")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FileFormatError(f"{where}: 'version' must be a positive integer, found {short_repr(version)}")
    if version > max_version:
        raise FileFormatError(
            f"{where}: version {version} is newer than this OTCache reads (up to {max_version}); update OTCache"
        )
    return document


def require(document: dict[str, Any], key: str, kind: type | tuple[type, ...], *, where: str) -> Any:
    """Fetch ``document[key]`` and check its type, with an error naming the field."""
    if key not in document:
        raise FileFormatError(f"{where}: missing field {key!r}")
    value = document[key]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise FileFormatError(f"{where}: field {key!r} has the wrong type (bool)")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FileFormatError(f"{where}: field {key!r} must be {names}, found {type(value).__name__}")
    return value


def finite_number(value: Any, key: str, *, where: str, minimum: float | None = None) -> float:
    """``value`` as a finite float (at least ``minimum``), with an error naming the field ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FileFormatError(f"{where}: field {key!r} must be a number, found {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number):
        raise FileFormatError(f"{where}: field {key!r} must be a finite number, found {short_repr(value)}")
    if minimum is not None and number < minimum:
        raise FileFormatError(f"{where}: field {key!r} must be at least {minimum:g}, found {short_repr(value)}")
    return number
