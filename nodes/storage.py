"""Where the pack finds and keeps calibrations inside ComfyUI."""

from __future__ import annotations

from pathlib import Path

from ..otcache_core.calibration import Calibration
from ..otcache_core.errors import OTCacheError
from ..otcache_core.presets import describe_preset, list_presets, load_preset, resolve_preset_name

USER_FOLDER = "otcache"
NO_PRESETS = "(no presets found)"
"""The preset list's only entry when no file is listed (a combo cannot be empty)."""


def user_calibration_dir() -> Path:
    """``<ComfyUI user directory>/otcache``: saved calibrations, listed next to the shipped presets."""
    import folder_paths

    return Path(folder_paths.get_user_directory()) / USER_FOLDER


def preset_files() -> dict[str, Path]:
    """Preset id -> file: shipped presets, then the user's saved calibrations."""
    try:
        folder = user_calibration_dir()
    except ImportError:  # imported outside ComfyUI (tools, CI): there is no user folder
        return list_presets()
    return list_presets(folder) if folder.is_dir() else list_presets()  # no folder yet: nothing saved


def preset_names() -> list[str]:
    return list(preset_files()) or [NO_PRESETS]


def preset_descriptions() -> dict[str, str]:
    """Preset id -> one line on what it is for (the tooltip lists them)."""
    return {name: describe_preset(path) for name, path in preset_files().items()}


def find_preset(name: str) -> tuple[str, Path]:
    """The listed preset ``name`` stands for (a former id maps to its new one) and its file.

    The error says which input to change.
    """
    files = preset_files()
    found = resolve_preset_name(name, files)
    if found is None:
        raise OTCacheError(
            f"preset {name!r} is neither a shipped preset nor a calibration saved in <user>/{USER_FOLDER}; pick "
            "another 'preset' or connect a 'calibration'"
        )
    return found, files[found]


def load_named_preset(name: str) -> Calibration:
    """Load the preset called ``name`` (or the one a former id ``name`` was renamed to)."""
    return load_preset(find_preset(name)[1])
