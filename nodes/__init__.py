"""OTCache's ComfyUI nodes. Imported only as a subpackage of the pack (ComfyUI has its own ``nodes``)."""

from .apply_node import OTCacheApply
from .calibrate_node import OTCacheCalibrate
from .compare_node import OTCacheCompare
from .schedule_node import OTCacheSchedule

# Node ids are a public interface that saved workflows depend on: never change them.
NODE_CLASS_MAPPINGS = {
    "OTCacheSchedule": OTCacheSchedule,
    "OTCacheApply": OTCacheApply,
    "OTCacheCalibrate": OTCacheCalibrate,
    "OTCacheCompare": OTCacheCompare,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "OTCacheSchedule": "OTCache Schedule (budget)",
    "OTCacheApply": "OTCache Apply",
    "OTCacheCalibrate": "OTCache Calibrate",
    "OTCacheCompare": "OTCache Compare",
}
