"""OTCache for ComfyUI: step caching with schedules for any budget.

ComfyUI imports this folder as a package; the nodes live in the ``nodes`` subpackage and the math in
``otcache_core`` (which never imports ComfyUI).
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
