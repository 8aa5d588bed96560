"""Versioned JSON files: atomic saving that never silently replaces a different file, checked loading.

Every OTCache file is one JSON object with ``"format"`` (what it holds) and ``"version"`` (an integer,
bumped on incompatible change) at the top level, so a file shared between users says what it is.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import FileFormatError, OTCacheError


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
    renamed over the target, so a crash never leaves a half-written file behind.
    """
    target = Path(path)
    text = dumps(document)
    if target.exists():
        try:
            current = target.read_text(encoding="utf-8")
        except OSError as exc:  # a folder or unreadable file of that name
            raise OTCacheError(f"cannot replace {target}: {exc}; choose another name") from exc
        if current == text:
            return target
        if not overwrite:
            raise OTCacheError(
                f"{target} already exists with different content; choose another name or allow overwriting"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a shared file gets the usual mode
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_json(path: str | os.PathLike[str], expected_format: str, max_version: int) -> dict[str, Any]:
    """Read an OTCache JSON file and check its ``format`` and ``version``.

    Raises :class:`FileFormatError` naming the file and the problem (not JSON, not an object, another
    format, a version newer than this OTCache understands).
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise FileFormatError(f"{source}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise FileFormatError(f"{source}: cannot be read ({exc})") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FileFormatError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return check_document(document, expected_format, max_version, where=str(source))


def check_document(document: Any, expected_format: str, max_version: int, *, where: str) -> dict[str, Any]:
    """Check the ``format``/``version`` header of an already parsed document."""
    if not isinstance(document, dict):
        raise FileFormatError(f"{where}: expected a JSON object, found {type(document).__name__}")
    found = document.get("format")
    if found != expected_format:
        raise FileFormatError(f"{where}: expected format {expected_format!r}, found {found!r}")
    version = document.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise FileFormatError(f"{where}: 'version' must be a positive integer, found {version!r}")
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
