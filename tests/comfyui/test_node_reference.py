"""The README's node reference against every node's real inputs (OTCache Calibrate's need ComfyUI)."""

from __future__ import annotations

import pytest
from readme_rules import reference_problems


@pytest.mark.parametrize("node_id", ["OTCacheSchedule", "OTCacheApply", "OTCacheCalibrate"])
def test_the_readme_documents_every_input_with_its_default(otcache_pack, node_id):
    spec = otcache_pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    problems = reference_problems(spec, otcache_pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])
    assert not problems, "\n".join(problems) + "\n(update the node reference in README.md)"
