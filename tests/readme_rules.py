"""What the node reference (``docs/nodes.md``, linked from the README) must say: shared by
``tests/test_readme.py`` (no ComfyUI: Schedule, Apply and Compare) and ``tests/comfyui/test_node_reference.py``
(every node, OTCache Calibrate included)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
#: The page that holds one ``### <node display name>`` table per node.
NODE_REFERENCE_PATH = REPO / "docs" / "nodes.md"
NODE_REFERENCE = NODE_REFERENCE_PATH.read_text(encoding="utf-8")
WHERE = "docs/nodes.md"


def reference_table(display_name: str) -> dict[str, str]:
    """``input -> default cell`` of the node's table under ``### <display name>`` (empty if there is none)."""
    parts = NODE_REFERENCE.split(f"\n### {display_name}\n", 1)
    if len(parts) < 2:
        return {}
    section = parts[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, flags=re.M)
    return {name: cell.strip() for name, cell in rows}


def documented_default(cell: str) -> str:
    """The default a cell states: ``socket``, or the value inside its first backticks."""
    if cell.startswith("socket"):
        return "socket"
    found = re.match(r"`([^`]*)`", cell)
    return found.group(1) if found else cell


def expected_default(spec: tuple) -> str | None:
    """What the table must say: ``socket`` for a socket, the default as written in Python/JSON, or
    ``None`` (a combo without a default shows its first choice)."""
    typ, options = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if not isinstance(typ, (list, tuple)) and typ not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
        return "socket"
    if "default" not in options:
        return None
    value = options["default"]
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else str(value)


def reference_problems(input_types: dict, display_name: str) -> list[str]:
    """How the node reference's table for a node differs from its ``INPUT_TYPES`` (empty: it matches)."""
    table = reference_table(display_name)
    if not table:
        return [f"{WHERE} has no table under '### {display_name}'"]
    inputs = {name: s for section in ("required", "optional") for name, s in (input_types.get(section) or {}).items()}
    problems = []
    if list(table) != list(inputs):
        problems.append(f"{display_name}: {WHERE} lists {list(table)}, the node has {list(inputs)} (same order)")
    for name, spec in inputs.items():
        if name not in table:
            continue
        expected = expected_default(spec)
        if expected is not None and documented_default(table[name]) != expected:
            problems.append(f"{display_name}: {name} defaults to {expected!r}, {WHERE} says {table[name]!r}")
        if ("(optional)" in table[name]) != (name in (input_types.get("optional") or {})):
            problems.append(f"{display_name}: {name} is {'not ' * (name not in (input_types.get('optional') or {}))}optional")
    return problems
