"""Importing the repository as a ComfyUI custom node package, shared by the tests with and without ComfyUI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_pack(folder: Path, module_name: str) -> ModuleType:
    """Import ``folder`` as a package the way ComfyUI loads a custom node folder.

    ComfyUI (``nodes.load_custom_node``) builds a spec from ``<folder>/__init__.py``,
    registers the module in ``sys.modules`` under a name derived from the path,
    and executes it; the folder is a package, so the pack's own ``nodes``
    subpackage resolves as ``<module_name>.nodes`` and never shadows ComfyUI's
    top-level ``nodes`` module. The folder itself is *not* put on ``sys.path``.
    """
    init = folder / "__init__.py"
    if not init.is_file():
        raise FileNotFoundError(f"{folder} has no __init__.py: ComfyUI cannot load it as a custom node")
    spec = importlib.util.spec_from_file_location(
        module_name, init, submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot build an import spec for {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        # Leave no half-imported package behind for the next attempt.
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]
        raise
    return module
