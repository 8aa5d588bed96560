"""The nodes as ComfyUI sees them: registration, inputs, outputs, errors, presets, the node chain."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_dir(tmp_path, otcache_pack):
    """A fresh ComfyUI user directory for the test."""
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_user_directory(old)


@pytest.fixture
def nodes(otcache_pack):
    return otcache_pack.nodes


def test_comfyui_loader_registers_the_nodes_under_stable_ids(tmp_path, pack_loader):
    import nodes as comfy_nodes

    target = tmp_path / "custom_nodes" / "otcache"
    shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info"))
    assert asyncio.run(comfy_nodes.load_custom_node(str(target)))
    for node_id, display in {"OTCacheSchedule": "OTCache Schedule (budget)", "OTCacheApply": "OTCache Apply"}.items():
        assert node_id in comfy_nodes.NODE_CLASS_MAPPINGS
        assert comfy_nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == display


def test_public_input_names_are_stable(nodes):
    schedule = nodes.OTCacheSchedule.INPUT_TYPES()
    assert {"preset", "steps", "budget"} <= set(schedule["required"])
    assert "calibration" in schedule["optional"]
    assert schedule["optional"]["calibration"][0] == "OTCACHE_CALIBRATION"
    apply_inputs = nodes.OTCacheApply.INPUT_TYPES()["required"]
    assert {"model", "schedule", "mode"} <= set(apply_inputs)
    assert apply_inputs["schedule"][0] == "OTCACHE_SCHEDULE"
    assert nodes.OTCacheSchedule.RETURN_TYPES == ("OTCACHE_SCHEDULE", "IMAGE", "STRING")


def test_presets_list_the_shipped_files(nodes, user_dir):
    names = nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"][0]
    for name in ("flux.1-dev", "qwen-image", "wan2.1-t2v-14b", "hunyuanvideo-1.5", "z-image"):
        assert name in names


def make(nodes, **overrides):
    kwargs = dict(preset="flux.1-dev", steps=50, budget=10, budget_as="computed steps", speedup=3.0, warmup_steps=0)
    kwargs.update(overrides)
    return nodes.OTCacheSchedule().make(**kwargs)


def test_schedule_node_outputs_plan_preview_and_summary(nodes, user_dir):
    plan, preview, summary = make(nodes)
    resolved = plan.resolve(50)
    assert list(resolved.schedule.compute_steps) == [0, 1, 3, 7, 14, 21, 28, 35, 42, 49]  # the published anchor
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3
    assert preview.dtype == torch.float32 and 0.0 <= float(preview.min()) and float(preview.max()) <= 1.0
    assert "published graph schedule, not an Optuna-searched one" in summary
    assert "[0, 1, 3, 7, 14, 21, 28, 35, 42, 49]" in summary


def test_speedup_budget(nodes, user_dir):
    plan, _, _ = make(nodes, budget_as="speedup", speedup=4.0)
    assert plan.resolve(40).schedule.budget == 10


@pytest.mark.parametrize(
    "overrides, names",
    [
        (dict(budget=60), "'budget'"),
        (dict(warmup_steps=10), "'warmup_steps'"),
        (dict(preset="no such preset"), "'preset'"),
    ],
)
def test_bad_schedule_inputs_name_the_input(nodes, user_dir, overrides, names):
    from otcache_pack.otcache_core.errors import OTCacheError

    with pytest.raises(OTCacheError, match=names):
        make(nodes, **overrides)


def test_a_malformed_user_calibration_is_reported_not_fatal(nodes, user_dir):
    from otcache_pack.otcache_core.errors import FileFormatError

    folder = user_dir / "otcache"
    folder.mkdir()
    good = json.loads((REPO / "schedules" / "flux.1-dev.json").read_text())
    good["name"] = "my flux"
    (folder / "mine.json").write_text(json.dumps(good))
    broken = dict(good, name="broken", reference={"compute_steps": [0, 0], "method": "x", "steps": 50})
    (folder / "broken.json").write_text(json.dumps(broken))
    names = nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"][0]
    assert "my flux" in names and "broken" not in names
    plan, _, _ = make(nodes, preset="my flux")
    assert plan.label == "my flux"
    with pytest.raises(FileFormatError, match="broken.json"):
        nodes.storage.load_preset(folder / "broken.json")


def test_the_node_chain_samples_with_the_reported_schedule(nodes, user_dir, tiny_model, otcache_pack):
    import comfy.sample

    m = tiny_model("flux")
    plan, _, _ = make(nodes, steps=20, budget=8)
    (patched,) = nodes.OTCacheApply().apply(m.patcher, plan, "auto", 0.0, 1.0)
    got = []
    remove = otcache_pack.nodes.cache_hooks.add_report_listener(got.append)
    try:
        latent = m.make_latent()
        out = comfy.sample.sample(patched, m.noise(latent), 20, 3.0, "euler", "simple", m.positive(), m.negative(),
                                  latent, seed=1, disable_pbar=True)
    finally:
        remove()
    assert torch.isfinite(out).all()
    assert got[-1].computed == list(plan.resolve(20).schedule.compute_steps) and len(got[-1].computed) == 8


def test_preset_for_another_family_is_refused_in_apply(nodes, user_dir, tiny_model):
    from otcache_pack.otcache_core.errors import OTCacheError

    plan, _, _ = make(nodes, preset="wan2.1-t2v-14b")
    with pytest.raises(OTCacheError, match="pick a matching 'preset'"):
        nodes.OTCacheApply().apply(tiny_model("flux").patcher, plan, "auto", 0.0, 1.0)
    generic, _, _ = make(nodes, preset="generic")
    nodes.OTCacheApply().apply(tiny_model("wan21_t2v").patcher, generic, "auto", 0.0, 1.0)


def test_the_preset_list_skips_hostile_user_files_with_one_warning_each(nodes, user_dir, caplog):
    from fault_dirs import tree_digest

    folder = user_dir / "otcache"
    folder.mkdir()
    good = json.loads((REPO / "schedules" / "flux.1-dev.json").read_text())
    good["name"] = "my flux"
    text = json.dumps(good)
    hostile = {
        "truncated.json": text[: len(text) // 2],
        "nan.json": json.dumps(dict(good, name="nan", anchor=dict(good["anchor"], score=float("nan")))),
        "newer.json": json.dumps(dict(good, version=99)),
        "huge-steps.json": text.replace('"steps": 50', '"steps": 100000000000000000000000', 1),
        "deep.json": text.replace('"notes": [', '"notes": [' + "[" * 5000 + "]" * 5000 + ",", 1),
        "latin1.json": text.replace("my flux", "caf\u00e9"),
    }
    (folder / "mine.json").write_text(text)
    for name, content in hostile.items():
        (folder / name).write_bytes(content.encode("latin-1" if name == "latin1.json" else "utf-8"))
    (folder / "huge.json").write_text(text[:-1] + ', "padding": "' + "x" * (50 * 2**20) + '"}')
    before = tree_digest(folder)
    caplog.clear()
    names = nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"][0]
    assert "my flux" in names and "flux.1-dev" in names and len([n for n in names if "flux" in n]) >= 2
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for name in [*hostile, "huge.json"]:
        lines = [w for w in warned if f"{folder / name}:" in w]
        assert len(lines) == 1 and "\n" not in lines[0], (name, warned)
    assert tree_digest(folder) == before
    plan, _, _ = make(nodes, preset="my flux")
    assert plan.label == "my flux"


LEGACY_GENERIC = "generic (FLUX.1-dev published shape, any model)"


def test_preset_values_are_short_ids_and_descriptions_go_to_the_tooltip(nodes, user_dir):
    names, options = nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"]
    assert "generic" in names and LEGACY_GENERIC not in names
    assert all(" " not in name for name in names), "a shipped preset id has a space"
    assert "generic: any model; evenly spaced steps" in options["tooltip"]
    assert "\nflux.1-dev: FLUX.1-dev; LeMiCa published schedules, 50 steps" in options["tooltip"]
    _, _, summary = make(nodes, preset="generic")
    assert "any model; evenly spaced steps" in summary


def test_a_workflow_saved_with_the_former_generic_value_gets_the_same_preset(nodes, user_dir):
    assert nodes.OTCacheSchedule.VALIDATE_INPUTS(LEGACY_GENERIC) is True
    old, _, old_summary = make(nodes, preset=LEGACY_GENERIC, steps=28, budget=8)
    new, _, new_summary = make(nodes, preset="generic", steps=28, budget=8)
    assert old.resolve(28).schedule == new.resolve(28).schedule and old.label == new.label == "generic"
    assert old_summary == new_summary


def test_an_unknown_preset_fails_validation_with_what_to_change(nodes, user_dir):
    message = nodes.OTCacheSchedule.VALIDATE_INPUTS("no such preset")
    assert isinstance(message, str) and "'no such preset'" in message and "pick another 'preset'" in message
