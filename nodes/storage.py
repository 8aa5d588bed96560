"""Where the pack finds and keeps calibrations inside ComfyUI."""

from __future__ import annotations

from pathlib import Path

from ..otcache_core.calibration import Calibration
from ..otcache_core.errors import OTCacheError
from ..otcache_core.presets import list_presets, load_preset

USER_FOLDER = "otcache"


def user_calibration_dir() -> Path:
    """``<ComfyUI user directory>/otcache``: saved calibrations, listed next to the shipped presets."""
    import folder_paths

    return Path(folder_paths.get_user_directory()) / USER_FOLDER


def preset_files() -> dict[str, Path]:
    """Preset name -> file: shipped presets, then the user's saved calibrations."""
    folder = user_calibration_dir()
    return list_presets(folder) if folder.is_dir() else list_presets()  # no folder yet: nothing saved


def preset_names() -> list[str]:
    names = list(preset_files())
    return names or ["(no presets found)"]


def load_named_preset(name: str) -> Calibration:
    """Load the preset called ``name``; the error says which input to change."""
    files = preset_files()
    if name not in files:
        raise OTCacheError(
            f"preset {name!r} was not found (shipped presets and {user_calibration_dir()}); pick another 'preset' "
            "or connect a 'calibration'"
        )
    return load_preset(files[name])
