"""OTCache core: step-caching schedules for diffusion models, independent of any host.

Pure Python on torch, numpy and scipy (Optuna and lpips optional). Never imports ComfyUI.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .calibration import Calibration, ScheduleRecord
from .errors import FileFormatError, MissingDependencyError, OTCacheError, ScheduleError
from .graph import ReferencePath, solve_reference
from .interpolation import Prediction, predict, predict_from_warps
from .plan import BudgetRule, SchedulePlan
from .schedule import Schedule
from .warp import Warp, interpolate_warps, resample, round_to_schedule, sample_warp, warp_of

# The runtime needs torch; the schedule math does not, so `python -m otcache_core schedule` answers
# without paying torch's import (about 1.5 s).
_RUNTIME_NAMES = {"CacheRun", "RunReport", "step_index"}


def __getattr__(name: str):
    if name in _RUNTIME_NAMES:
        from . import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BudgetRule",
    "CacheRun",
    "Calibration",
    "FileFormatError",
    "MissingDependencyError",
    "OTCacheError",
    "Prediction",
    "ReferencePath",
    "RunReport",
    "Schedule",
    "SchedulePlan",
    "ScheduleError",
    "ScheduleRecord",
    "Warp",
    "__version__",
    "interpolate_warps",
    "predict",
    "predict_from_warps",
    "resample",
    "round_to_schedule",
    "sample_warp",
    "solve_reference",
    "step_index",
    "warp_of",
]
