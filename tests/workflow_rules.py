"""What the ComfyUI front end makes of a node's inputs: the widget rules both workflow tests check.

Shared by ``tests/test_workflows.py`` (no ComfyUI) and ``tests/comfyui/test_workflows_comfy.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
#: Node types that exist only in the front end (no Python class).
FRONTEND_ONLY = {"Note", "MarkdownNote"}


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def widget_inputs(input_types: dict) -> list[tuple[str, str, list | None, dict]]:
    """The widgets of a node, in the front end's order: ``(name, kind, choices, options)``.

    Required then optional inputs; a list (or ``"COMBO"`` with ``options``) is a COMBO widget; INT,
    FLOAT, STRING and BOOLEAN are widgets unless ``forceInput``; every other type is a socket. An
    input with ``control_after_generate`` (or an INT named ``seed``/``noise_seed`` without that
    option: the front end adds one anyway) is followed by its control widget (kind ``CONTROL``).
    """
    widgets = []
    for section in ("required", "optional"):
        for name, spec in (input_types.get(section) or {}).items():
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(typ, (list, tuple)):
                kind, choices = "COMBO", list(typ)
            elif typ == "COMBO":
                kind, choices = "COMBO", list(opts.get("options") or [])
            elif typ in WIDGET_TYPES and not opts.get("forceInput"):
                kind, choices = str(typ), None
            else:
                continue
            widgets.append((name, kind, choices, opts))
            if kind == "COMBO" and opts.get("image_upload"):
                widgets.append(("upload", "UPLOAD", ["image"], {}))
            control = opts.get("control_after_generate")
            if control is None and kind == "INT" and name in ("seed", "noise_seed"):
                control = True  # the front end's legacy rule: these names get a control widget anyway
            if control:
                widgets.append((f"{name} (control_after_generate)", "CONTROL", sorted(CONTROL_VALUES), {}))
    return widgets


def socket_inputs(input_types: dict) -> list[tuple[str, str, bool]]:
    """``(name, type, required)`` of the inputs that are sockets, in order."""
    widget_names = {w[0] for w in widget_inputs(input_types)}
    return [(name, str(spec[0]), section == "required")
            for section in ("required", "optional")
            for name, spec in (input_types.get(section) or {}).items() if name not in widget_names]


def widget_problems(node: dict, widgets: list, check_choices=lambda name: True) -> list[str]:
    """What is wrong with ``node``'s ``widgets_values`` for these widgets (empty: nothing)."""
    values = node.get("widgets_values", [])
    where = f"node {node['id']} ({node['type']})"
    if len(values) != len(widgets):
        return [f"{where}: {len(values)} widget values for {len(widgets)} widgets {[w[0] for w in widgets]}"]
    problems = []
    for value, (name, kind, choices, opts) in zip(values, widgets):
        ok = True
        if kind in ("COMBO", "CONTROL", "UPLOAD"):
            ok = isinstance(value, str) and (not check_choices(name) or value in choices)
        elif kind == "INT":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif kind == "FLOAT":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif kind == "STRING":
            ok = isinstance(value, str)
        elif kind == "BOOLEAN":
            ok = isinstance(value, bool)
        if ok and kind in ("INT", "FLOAT"):
            ok = opts.get("min", value) <= value <= opts.get("max", value)
        if not ok:
            problems.append(f"{where}: {name} ({kind}) = {value!r} is not valid"
                            + (f"; choices {choices}" if kind == "COMBO" else ""))
    return problems


def load_builder() -> ModuleType:
    """``tools/build_workflows.py`` as a module, imported once per session."""
    name = "otcache_build_workflows"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "tools" / "build_workflows.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]
