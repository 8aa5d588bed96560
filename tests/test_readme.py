"""The README's node reference names every input of every node, with its default; its pictures exist
and are small."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pack_import import load_pack

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PACK_NAME = "otcache_pack_readme"


def reference_table(display_name: str) -> dict[str, str]:
    """``input -> default cell`` of the node's table under ``### <display name>``."""
    section = README.split(f"\n### {display_name}\n", 1)[1].split("\n#", 1)[0]
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


@pytest.fixture(scope="module")
def pack():
    return sys.modules.get(PACK_NAME) or load_pack(REPO, PACK_NAME)


@pytest.mark.parametrize("node_id", ["OTCacheSchedule", "OTCacheApply", "OTCacheCalibrate"])
def test_the_node_reference_lists_every_input_with_its_default(pack, node_id):
    try:
        spec = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    except ImportError as exc:
        pytest.skip(f"{node_id}'s inputs need ComfyUI ({exc})")
    table = reference_table(pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])
    inputs = {name: s for section in ("required", "optional") for name, s in (spec.get(section) or {}).items()}
    assert list(table) == list(inputs), "the README's table must list the inputs in the node's order"
    for name, input_spec in inputs.items():
        expected = expected_default(input_spec)
        if expected is not None:
            assert documented_default(table[name]) == expected, name
        optional = name in (spec.get("optional") or {})
        assert ("(optional)" in table[name]) == optional, name


@pytest.mark.parametrize("image", sorted(set(re.findall(r"\]\((docs/images/[^)]+\.png)\)", README))))
def test_every_readme_picture_is_in_the_repository_and_small(image):
    path = REPO / image
    assert path.is_file(), f"{image} is missing: python tools/make_images.py"
    assert path.stat().st_size < 150_000
