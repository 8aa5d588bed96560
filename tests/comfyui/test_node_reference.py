"""The node reference (docs/nodes.md) against every node's real inputs (OTCache Calibrate's need ComfyUI)."""

from __future__ import annotations

import pytest
from readme_rules import reference_problems, reference_table


@pytest.mark.parametrize("node_id", ["OTCacheSchedule", "OTCacheApply", "OTCacheCalibrate", "OTCacheCompare"])
def test_the_node_reference_documents_every_input_with_its_default(otcache_pack, node_id):
    spec = otcache_pack.NODE_CLASS_MAPPINGS[node_id].INPUT_TYPES()
    problems = reference_problems(spec, otcache_pack.NODE_DISPLAY_NAME_MAPPINGS[node_id])
    assert not problems, "\n".join(problems) + "\n(update the node reference in docs/nodes.md)"


def test_every_node_has_a_reference_table(otcache_pack):
    assert [name for name in otcache_pack.NODE_DISPLAY_NAME_MAPPINGS.values() if not reference_table(name)] == []
