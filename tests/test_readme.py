"""The README's node reference names every input of OTCache Schedule and Apply, with its default; its
pictures exist and are small."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pack_import import load_pack
from readme_rules import README, reference_problems

REPO = Path(__file__).resolve().parents[1]
PACK_NAME = "otcache_pack_readme"


@pytest.fixture(scope="module")
def pack():
    return sys.modules.get(PACK_NAME) or load_pack(REPO, PACK_NAME)


@pytest.mark.parametrize("node_id", ["OTCacheSchedule", "OTCacheApply"])
def test_the_node_reference_lists_every_input_with_its_default(pack, node_id):
    """Without ComfyUI; OTCache Calibrate's inputs need it (``tests/comfyui/test_node_reference.py``)."""
    spec = pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    assert not reference_problems(spec, pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])


@pytest.mark.parametrize("image", sorted(set(re.findall(r"\]\((docs/images/[^)]+\.png)\)", README))))
def test_every_readme_picture_is_in_the_repository_and_small(image):
    path = REPO / image
    assert path.is_file(), f"{image} is missing: python tools/make_images.py"
    assert path.stat().st_size < 150_000
