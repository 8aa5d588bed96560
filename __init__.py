"""OTCache for ComfyUI: step caching with schedules for any budget.

ComfyUI imports this folder as a package; the nodes live in the ``nodes`` subpackage and the math in
``otcache_core`` (which never imports ComfyUI).
"""

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
