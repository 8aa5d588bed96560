"""Shipped presets and user calibration folders: find calibration files by name and load them.

A preset is a calibration record (:class:`~otcache_core.calibration.Calibration`) in a JSON file. The
repository ships presets built from published step lists in ``schedules/``; users add their own
calibrations in folders of their choice. Listing never fails on one bad file: it is skipped and
reported, so one broken file cannot hide the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection
from pathlib import Path

from .calibration import CALIBRATION_FORMAT, Calibration
from .errors import FileFormatError, OTCacheError
from .jsonfile import read_json_file

log = logging.getLogger(__name__)

USER_LABEL = "user"
"""User files whose name is taken are listed as ``name (user)``, ``name (user 2)``, ..."""

PRESET_ALIASES: dict[str, str] = {
    "generic (FLUX.1-dev published shape, any model)": "generic",
}
"""Former preset ids -> the id that replaced them.

A preset id is what a saved workflow stores in OTCache Schedule's ``preset`` widget, so an id never
goes away: renaming a preset adds its old id here (a chain of renames resolves step by step).
"""


def shipped_preset_dir() -> Path | None:
    """The repository's ``schedules/`` folder, or ``None`` when the package is installed without it."""
    folder = Path(__file__).resolve().parent.parent / "schedules"
    return folder if folder.is_dir() else None


def resolve_preset_name(name: str, available: Collection[str]) -> str | None:
    """The listed preset that ``name`` stands for: itself, or the preset a former id was renamed to.

    ``None`` when neither ``name`` nor what its aliases lead to is in ``available``. A listed name
    always wins over an alias, so a user calibration that happens to carry an old id stays reachable.
    """
    seen: set[str] = set()
    while name not in available:
        if name in seen or name not in PRESET_ALIASES:
            return None
        seen.add(name)
        name = PRESET_ALIASES[name]
    return name


def describe_preset(path: str | os.PathLike[str]) -> str:
    """One line saying what a preset file is for (its model and where its schedules come from).

    Empty for a file that does not load: listing already reported it.
    """
    try:
        calibration = Calibration.load(path)
    except OTCacheError:
        return ""
    return calibration.description()


def load_preset(path: str | os.PathLike[str]) -> Calibration:
    """Load one preset or calibration file; a :class:`FileFormatError` names the file and the problem."""
    try:
        return Calibration.load(path)
    except FileFormatError:
        raise
    except OTCacheError as exc:
        raise FileFormatError(f"{path}: {exc}") from exc


def list_presets(*folders: str | os.PathLike[str], warnings: list[str] | None = None) -> dict[str, Path]:
    """Preset name -> file: the shipped presets first, then the calibrations in ``folders``.

    Only ``*.json`` files directly in each folder are looked at, in file-name order. JSON files of
    another format (schedules, workflows) are ignored. Malformed calibration files and unreadable
    folders are skipped; each problem is logged and appended to ``warnings`` when a list is given.
    A user file whose name is already taken gets the suffix ``" (user)"`` (then ``" (user 2)"``, ...).
    """
    found: dict[str, Path] = {}
    problems: list[str] = []
    shipped = shipped_preset_dir()
    seen: set[Path] = set()
    roots = [(shipped, False)] if shipped is not None else []
    roots += [(Path(f), True) for f in folders]
    for folder, is_user in roots:
        resolved = folder.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".json" and p.is_file())
        except OSError as exc:
            problems.append(f"{folder}: cannot list preset folder ({exc.strerror or exc})")
            continue
        for path in files:
            name = _preset_name(path, problems)
            if name is not None:
                found[_free_name(name, found, is_user)] = path
    for message in problems:
        log.warning("OTCache presets: %s", message)
    if warnings is not None:
        warnings.extend(problems)
    return found


def _preset_name(path: Path, problems: list[str]) -> str | None:
    """The name of the calibration in ``path``; ``None`` for other JSON files and for bad files."""
    try:
        document = read_json_file(path)
    except FileFormatError as exc:
        problems.append(str(exc))
        return None
    if not isinstance(document, dict) or document.get("format") != CALIBRATION_FORMAT:
        return None
    try:
        calibration = Calibration.from_dict(document, where=str(path))
    except OTCacheError as exc:
        problems.append(str(exc))
        return None
    return calibration.name.strip() or path.stem


def _free_name(name: str, taken: dict[str, Path], is_user: bool) -> str:
    """``name``, or the first free ``name (user)``, ``name (user 2)``, ... (``name (2)``, ... if shipped)."""
    if name not in taken:
        return name
    label = USER_LABEL if is_user else ""
    candidates = ([f"{name} ({label})"] if label else []) + [
        f"{name} ({label} {n})" if label else f"{name} ({n})" for n in range(2, len(taken) + 3)
    ]
    return next(c for c in candidates if c not in taken)
