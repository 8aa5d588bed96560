"""Errors raised for bad user input.

Every message names what to change. Hosts (CLI, ComfyUI nodes) show ``str(error)`` as is, so the text
must stand on its own without a traceback.
"""

from __future__ import annotations


class OTCacheError(ValueError):
    """Bad input that the user can fix; the message says how."""


class ScheduleError(OTCacheError):
    """A schedule (step list, budget, step count) that cannot be used."""


class FileFormatError(OTCacheError):
    """A schedule or calibration file that is malformed or of an unknown format/version."""


class MissingDependencyError(OTCacheError):
    """An optional package is needed for the requested feature."""


class SaveError(OTCacheError):
    """A file could not be written (read-only folder, full disk, no permission); the message names where."""
