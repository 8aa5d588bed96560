"""The example workflows in ``workflows/``: valid front-end (UI) format, consistent links, and widget
values that match the OTCache nodes' inputs. Runs without ComfyUI.

``tests/comfyui/test_workflows_comfy.py`` checks the same files against every node's real definition
(ComfyUI core nodes included) where a ComfyUI checkout is available.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import pytest
from pack_import import load_pack
from workflow_rules import FRONTEND_ONLY, load, load_builder, socket_inputs, widget_inputs, widget_problems

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / "workflows"
FILES = sorted(WORKFLOWS.glob("*.json"))
EXPECTED = {"otcache_flux1_dev.json", "otcache_flux1_dev_controlnet.json", "otcache_wan21_t2v.json",
            "otcache_wan22_t2v_14b.json", "otcache_hunyuan_video.json", "otcache_qwen_image.json",
            "otcache_calibrate_flux.json", "otcache_compare_flux.json"}
#: Name the pack is imported under here: not ``otcache_pack`` (the ComfyUI harness's), never ``nodes``.
PACK_NAME = "otcache_pack_ci"


# --------------------------------------------------------------------------------------------------
# Format and links
# --------------------------------------------------------------------------------------------------

def test_the_example_workflows_are_there():
    assert EXPECTED <= {p.name for p in FILES}


def test_readme_lists_every_workflow():
    readme = (WORKFLOWS / "README.md").read_text(encoding="utf-8")
    for path in FILES:
        assert path.name in readme


def test_the_generator_builds_exactly_these_files():
    assert set(load_builder().WORKFLOWS) == {p.name for p in FILES}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_generator_reproduces_the_file(name):
    """The files are what the builder makes from the nodes' current definitions (new inputs included)."""
    builder = load_builder()
    try:
        text = builder.render(builder.WORKFLOWS[name])
    except builder.NeedsComfyUI as exc:
        pytest.skip(f"building this workflow needs ComfyUI ({exc})")
    assert (WORKFLOWS / name).read_text(encoding="utf-8") == text, (
        f"{name} is out of date: run COMFYUI_PATH=<ComfyUI checkout> python tools/build_workflows.py")


def test_otcache_nodes_take_their_inputs_from_the_node_definitions(otcache_input_types):
    """An OTCache node gets every widget of its definition; values not given are the defaults."""
    builder = load_builder()
    schedule = otcache_input_types["OTCacheSchedule"]
    w = builder.Workflow()
    node = w.nodes[builder.otcache_schedule(w, (0, 0), "generic", 20, 5) - 1]
    widgets = widget_inputs(schedule)
    assert [name for name, *_ in widgets][:3] == ["preset", "steps", "budget"]
    assert node["widgets_values"][:3] == ["generic", 20, 5]
    assert node["widgets_values"][3:] == [opts["default"] for *_, opts in widgets[3:]]
    assert [i["name"] for i in node["inputs"]] == [s[0] for s in socket_inputs(schedule)]
    with pytest.raises(ValueError, match="no widget"):
        builder.otcache_apply(w, (0, 0), no_such_input=1)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_workflow_has_a_thumbnail_for_the_template_browser(path):
    """ComfyUI's template browser (front end 1.27) shows ``<stem>.jpg`` beside a custom node's workflow."""
    from PIL import Image

    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.is_file(), f"no {thumbnail.name}: run python tools/make_images.py"
    assert thumbnail.stat().st_size < 60_000
    with Image.open(thumbnail) as image:
        assert image.format == "JPEG" and 200 <= image.width <= 800 and 150 <= image.height <= 600


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ui_format(path):
    data = load(path)
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"):
        assert key in data, f"missing top-level {key!r}"
    assert data["version"] == 0.4
    assert isinstance(data["nodes"], list) and data["nodes"]
    assert isinstance(data["links"], list) and isinstance(data["groups"], list)
    for node in data["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                    "widgets_values"):
            assert key in node, f"node {node.get('id')} has no {key!r}"
        assert isinstance(node["id"], int) and isinstance(node["type"], str)
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
        assert all(isinstance(v, (int, float)) for v in [*node["pos"], *node["size"]])
        assert node["mode"] == 0 and isinstance(node["flags"], dict)
        assert isinstance(node["widgets_values"], list)
        if node["type"] in FRONTEND_ONLY:
            assert not node["inputs"] and not node["outputs"]
            assert len(node["widgets_values"]) == 1 and node["widgets_values"][0].strip()
        else:
            assert node["properties"].get("Node name for S&R") == node["type"]
        for inp in node["inputs"]:
            assert set(inp) >= {"name", "type", "link"}
        for slot, out in enumerate(node["outputs"]):
            assert set(out) >= {"name", "type", "links"}
            assert out.get("slot_index", slot) == slot


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_ids_and_counters(path):
    data = load(path)
    node_ids = [n["id"] for n in data["nodes"]]
    link_ids = [link[0] for link in data["links"]]
    assert len(set(node_ids)) == len(node_ids), "duplicate node ids"
    assert len(set(link_ids)) == len(link_ids), "duplicate link ids"
    assert data["last_node_id"] >= max(node_ids)
    assert data["last_link_id"] >= max(link_ids, default=0)
    assert sorted(n["order"] for n in data["nodes"]) == list(range(len(node_ids))), "order is not a permutation"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_links_agree_on_both_ends(path):
    data = load(path)
    nodes = {n["id"]: n for n in data["nodes"]}
    links = {}
    for link in data["links"]:
        assert len(link) == 6, f"link {link} is not [id, from, from_slot, to, to_slot, type]"
        link_id, src, src_slot, dst, dst_slot, typ = link
        links[link_id] = link
        assert src in nodes and dst in nodes, f"link {link_id} names a missing node"
        output = nodes[src]["outputs"][src_slot]
        target = nodes[dst]["inputs"][dst_slot]
        assert link_id in output["links"], f"link {link_id} is not listed by its output"
        assert target["link"] == link_id, f"link {link_id} is not the link of its input"
        assert output["type"] == typ, f"link {link_id} is {typ} but its output is {output['type']}"
        assert target["type"] in (typ, "*"), f"link {link_id} is {typ} but its input is {target['type']}"
        assert nodes[src]["order"] < nodes[dst]["order"], f"link {link_id} goes against the node order"
    for node in data["nodes"]:
        for slot, inp in enumerate(node["inputs"]):
            if inp["link"] is not None:
                assert inp["link"] in links, f"node {node['id']} input {inp['name']} names missing link {inp['link']}"
                assert links[inp["link"]][3:5] == [node["id"], slot]
        for slot, out in enumerate(node["outputs"]):
            for link_id in out["links"] or []:
                assert link_id in links, f"node {node['id']} output {out['name']} names missing link {link_id}"
                assert links[link_id][1:3] == [node["id"], slot]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_workflow_has_a_note_and_otcache(path):
    types = [n["type"] for n in load(path)["nodes"]]
    assert any(t in FRONTEND_ONLY for t in types), "no Note explaining what to adjust"
    assert "OTCacheApply" in types and "OTCacheSchedule" in types


# --------------------------------------------------------------------------------------------------
# OTCache widgets against the nodes' INPUT_TYPES
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pack() -> ModuleType:
    """The repository root imported as a package, the way ComfyUI imports a custom node folder.

    Works without ComfyUI: the pack imports ``comfy`` only inside functions.
    """
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    return load_pack(REPO, PACK_NAME)


@pytest.fixture
def otcache_input_types(pack, tmp_path, monkeypatch):
    """``node id -> INPUT_TYPES()`` for Schedule and Apply.

    The Schedule's preset list also reads the ComfyUI user folder through ``folder_paths``; point
    that at an empty folder so the list is the shipped presets, with or without ComfyUI.
    """
    monkeypatch.setattr(pack.nodes.storage, "user_calibration_dir", lambda: tmp_path / "otcache")
    return {name: pack.NODE_CLASS_MAPPINGS[name].INPUT_TYPES() for name in ("OTCacheSchedule", "OTCacheApply")}


def test_the_pack_imports_without_comfyui(pack):
    assert {"OTCacheSchedule", "OTCacheApply", "OTCacheCalibrate"} <= set(pack.NODE_CLASS_MAPPINGS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_otcache_widget_values_match_input_types(path, otcache_input_types):
    checked = 0
    for node in load(path)["nodes"]:
        input_types = otcache_input_types.get(node["type"])
        if input_types is None:
            continue
        assert not widget_problems(node, widget_inputs(input_types))
        sockets = socket_inputs(input_types)
        assert [i["name"] for i in node["inputs"]] == [s[0] for s in sockets]
        assert [i["type"] for i in node["inputs"]] == [s[1] for s in sockets]
        for inp, (_, _, required) in zip(node["inputs"], sockets):
            assert inp["link"] is not None or not required, f"required input {inp['name']} is not connected"
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_otcache_outputs_match_return_types(path, pack):
    for node in load(path)["nodes"]:
        cls = pack.NODE_CLASS_MAPPINGS.get(node["type"])
        if cls is None:
            continue
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        assert [o["type"] for o in node["outputs"]] == list(cls.RETURN_TYPES)
        assert [o["name"] for o in node["outputs"]] == list(names)


def test_calibrate_widgets_need_comfyui(pack):
    """OTCache Calibrate's INPUT_TYPES imports ``comfy.samplers`` (the sampler lists): checked by
    ``tests/comfyui/test_workflows_comfy.py``, here only when ComfyUI happens to be importable."""
    try:
        input_types = pack.NODE_CLASS_MAPPINGS["OTCacheCalibrate"].INPUT_TYPES()
    except ImportError as exc:
        pytest.skip(f"OTCache Calibrate's inputs need ComfyUI ({exc})")
    for path in FILES:
        for node in load(path)["nodes"]:
            if node["type"] == "OTCacheCalibrate":
                assert not widget_problems(node, widget_inputs(input_types))
