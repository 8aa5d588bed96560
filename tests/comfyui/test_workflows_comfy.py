"""The example workflows against the real node definitions of the ComfyUI checkout under test.

Every node type must be registered once ComfyUI's built-in extra nodes (``comfy_extras``, V1 and V3)
and the pack are loaded; each node's widget values must match its ``INPUT_TYPES`` (count, order,
kinds, ranges, and the choices of every COMBO whose list does not come from model files on disk);
its sockets and outputs must be the node's own, and every link must carry the type that its output
produces and its input accepts.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest
from workflow_rules import FRONTEND_ONLY, load, socket_inputs, widget_inputs, widget_problems  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
FILES = sorted((REPO / "workflows").glob("*.json"))
#: COMBO widgets whose choices are the files of this installation (models, input images): not checked
#: against the list, only for the file type.
FILE_WIDGETS = {
    ("UNETLoader", "unet_name"): ".safetensors", ("CLIPLoader", "clip_name"): ".safetensors",
    ("DualCLIPLoader", "clip_name1"): ".safetensors", ("DualCLIPLoader", "clip_name2"): ".safetensors",
    ("VAELoader", "vae_name"): ".safetensors", ("ControlNetLoader", "control_net_name"): ".safetensors",
    ("LoadImage", "image"): ".png",
}
FAILED_EXTRAS: list[str] = []


def _is_comfyui_utils(module, root: Path) -> bool:
    return module is not None and Path(getattr(module, "__file__", "") or "").resolve() == root / "utils" / "__init__.py"


def _swap_in_comfyui_utils(root: Path) -> dict:
    """Import ComfyUI's top-level ``utils`` package, as ``main.py`` does before ``nodes``.

    ``nodes.py`` puts ``comfy/`` first on ``sys.path``, so a later plain ``import utils`` (``server.py``,
    imported by ``comfy_extras/nodes_images.py``) would find ``comfy/utils.py`` and fail. Returns the
    ``utils*`` modules it replaced, for :func:`_restore_utils`.
    """
    saved = {name: mod for name, mod in sys.modules.items() if name == "utils" or name.startswith("utils.")}
    for name in saved:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location("utils", root / "utils" / "__init__.py",
                                                  submodule_search_locations=[str(root / "utils")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["utils"] = module
    spec.loader.exec_module(module)
    return saved


def _restore_utils(saved: dict) -> None:
    for name in [n for n in sys.modules if n == "utils" or n.startswith("utils.")]:
        del sys.modules[name]
    sys.modules.update(saved)


@pytest.fixture(scope="module")
def node_classes(otcache_pack, comfyui_root):
    """``NODE_CLASS_MAPPINGS`` of ComfyUI with its built-in extra nodes, plus the pack's nodes.

    ``nodes.init_builtin_extra_nodes()`` (what ``init_extra_nodes`` runs first) loads ``comfy_extras``
    the way the server does, V3 nodes through their ``comfy_entrypoint``, in about a second; API nodes
    and other custom nodes are not needed. The names of the extras that failed to import (the audio
    ones without torchaudio) are kept under ``FAILED_EXTRAS`` for the error messages.
    """
    import nodes

    failed: list[str] = []
    if "PreviewAny" not in nodes.NODE_CLASS_MAPPINGS:  # the extras are not loaded yet
        swap = not _is_comfyui_utils(sys.modules.get("utils"), comfyui_root)
        saved = _swap_in_comfyui_utils(comfyui_root) if swap else {}
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)  # optional extras (audio) warn about a missing torchaudio
        try:
            failed = asyncio.run(nodes.init_builtin_extra_nodes())
        finally:
            logging.disable(level)
            if swap:
                _restore_utils(saved)
    mapping = dict(nodes.NODE_CLASS_MAPPINGS)
    mapping.update(otcache_pack.NODE_CLASS_MAPPINGS)
    FAILED_EXTRAS[:] = failed
    return mapping


@pytest.fixture(scope="module")
def input_types(node_classes, otcache_pack, tmp_path_factory):
    """``INPUT_TYPES()`` per node type, the Schedule's presets from an empty user folder."""
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path_factory.mktemp("user")))
    try:
        types = {n["type"] for path in FILES for n in load(path)["nodes"]} - FRONTEND_ONLY
        return {t: node_classes[t].INPUT_TYPES() for t in types if t in node_classes}
    finally:
        folder_paths.set_user_directory(old)


def test_v3_nodes_expose_input_types(node_classes):
    """V3 (``io.ComfyNode``) core nodes answer ``INPUT_TYPES()`` like V1 ones in this version."""
    from comfy_api.latest import io

    for name in ("FluxGuidance", "EmptySD3LatentImage"):
        cls = node_classes[name]
        assert issubclass(cls, io.ComfyNode)
        info = cls.INPUT_TYPES()
        assert "required" in info and list(cls.RETURN_TYPES) == ["CONDITIONING" if name == "FluxGuidance" else "LATENT"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_every_node_type_is_registered(path, node_classes):
    missing = sorted({n["type"] for n in load(path)["nodes"]} - FRONTEND_ONLY - set(node_classes))
    assert not missing, (f"not in NODE_CLASS_MAPPINGS: {missing} (extras that failed to import: "
                         f"{FAILED_EXTRAS})")
    for name in FRONTEND_ONLY:
        assert name not in node_classes, f"{name} is a Python node now: check its widgets"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_widget_values_match_input_types(path, input_types):
    problems = []
    for node in load(path)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        widgets = widget_inputs(input_types[node["type"]])
        # model-file lists depend on this installation: only their file type is checked
        problems += widget_problems(node, widgets, check_choices=lambda name: (node["type"], name) not in FILE_WIDGETS)
        for value, (name, *_rest) in zip(node["widgets_values"], widgets):
            if (node["type"], name) in FILE_WIDGETS and not str(value).endswith(FILE_WIDGETS[node["type"], name]):
                problems.append(f"node {node['id']} ({node['type']}): {name} = {value!r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_sockets_and_outputs_are_the_nodes_own(path, node_classes, input_types):
    for node in load(path)["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        where = f"node {node['id']} ({node['type']})"
        sockets = socket_inputs(input_types[node["type"]])
        assert [i["name"] for i in node["inputs"]] == [s[0] for s in sockets], where
        assert [i["type"] for i in node["inputs"]] == [s[1] for s in sockets], where
        for inp, (name, _, required) in zip(node["inputs"], sockets):
            assert inp["link"] is not None or not required, f"{where}: required input {name} is not connected"
        cls = node_classes[node["type"]]
        returns = list(cls.RETURN_TYPES)
        names = list(getattr(cls, "RETURN_NAMES", None) or returns)
        assert [o["type"] for o in node["outputs"]] == returns, where
        assert [o["name"] for o in node["outputs"]] == names, where


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_link_types_match_both_ends(path, node_classes, input_types):
    data = load(path)
    nodes = {n["id"]: n for n in data["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, typ in data["links"]:
        produced = node_classes[nodes[src]["type"]].RETURN_TYPES[src_slot]
        assert produced == typ, f"link {link_id}: {nodes[src]['type']} output {src_slot} is {produced}, link says {typ}"
        name = nodes[dst]["inputs"][dst_slot]["name"]
        accepted = dict((s[0], s[1]) for s in socket_inputs(input_types[nodes[dst]["type"]]))[name]
        assert accepted in (typ, "*"), f"link {link_id}: {nodes[dst]['type']}.{name} takes {accepted}, not {typ}"
