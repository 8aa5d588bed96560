"""The nodes through ComfyUI's own server and executor.

A real ComfyUI process (``main.py --cpu``, see ``comfy_server.py``) on localhost loads the pack from its
``custom_nodes`` folder and runs prompts: UNETLoader (a tiny Wan 2.1 saved as a file) -> OTCache
Calibrate -> OTCache Schedule (budget) -> OTCache Apply -> KSampler -> SaveLatent. The text encoder is
the only thing replaced: a test-only node (``helper_nodes/``) emits fixed conditioning tensors, because
no real text encoder is available offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from .comfy_server import model_and_inputs

STEPS = 10
LEGACY_GENERIC = "generic (FLUX.1-dev published shape, any model)"


def calibrate_inputs(name: str) -> dict:
    """Nodes 1-5: the tiny Wan, two conditionings, an empty latent and OTCache Calibrate."""
    return {
        **model_and_inputs(),
        "5": {"class_type": "OTCacheCalibrate", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "samples": 2, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "reference_budget": 0, "anchor_budget": 0, "max_segment": 5, "strength": "rollout", "trials": 5,
            "name": name, "storage": "", "mode": "auto", "overwrite": False}},
    }


def saved_calibration(base: Path, name: str) -> dict:
    saved = base / "user" / "otcache" / f"{name}.json"  # ComfyUI's user directory is <base>/user
    assert saved.exists()
    return json.loads(saved.read_text())


def test_nodes_are_registered_with_the_server(comfy_server):
    info = comfy_server.get("/object_info")
    for node_id, name in {"OTCacheCalibrate": "OTCache Calibrate", "OTCacheSchedule": "OTCache Schedule (budget)",
                          "OTCacheApply": "OTCache Apply"}.items():
        assert info[node_id]["display_name"] == name
    assert "flux.1-dev" in info["OTCacheSchedule"]["input"]["required"]["preset"][0]
    assert info["OTCacheCalibrate"]["output_node"] is True


def test_calibrate_schedule_apply_ksampler_through_the_server(comfy_server):
    prompt = {
        **calibrate_inputs("server-test"),
        "6": {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "flux.1-dev", "calibration": ["5", 0], "steps": STEPS, "budget": 4, "budget_as": "computed steps",
            "speedup": 3.0, "warmup_steps": 0, "lambda_mapping": "linear"}},
        "7": {"class_type": "OTCacheApply", "inputs": {"model": ["1", 0], "schedule": ["6", 0], "mode": "auto",
                                                      "start_percent": 0.0, "end_percent": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": 3, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "otcache_test"}},
    }
    result = comfy_server.wait(comfy_server.queue(prompt))
    log = comfy_server.log()
    assert result["status"]["status_str"] == "success", log[-3000:]
    record = saved_calibration(comfy_server.base, "server-test")
    assert record["format"] == "otcache.calibration" and record["anchor"]["method"] == "optuna"
    assert list((comfy_server.base / "output").glob("**/otcache_test*.latent"))
    assert "OTCache [model]: computed 4/10 steps" in log


def test_calibrate_alone_is_a_valid_prompt_and_previews_on_its_node(comfy_server):
    """Calibrate saves a file, like Save Image: with only its inputs it is queued, runs and shows its preview."""
    result = comfy_server.wait(comfy_server.queue(calibrate_inputs("alone")))
    assert result["status"]["status_str"] == "success", comfy_server.log()[-3000:]
    assert saved_calibration(comfy_server.base, "alone")["name"] == "alone"
    (image,) = result["outputs"]["5"]["images"]
    assert image["type"] == "temp" and image["filename"].endswith(".png")
    assert (comfy_server.base / "temp" / image["subfolder"] / image["filename"]).is_file()


def test_a_prompt_saved_with_the_former_generic_id_runs_the_generic_preset(comfy_server):
    def summary_of(preset: str) -> str:
        prompt = {
            "1": {"class_type": "OTCacheSchedule", "inputs": {
                "preset": preset, "steps": 28, "budget": 8, "budget_as": "computed steps", "speedup": 3.0,
                "warmup_steps": 0, "lambda_mapping": "linear"}},
            "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}},
        }
        result = comfy_server.wait(comfy_server.queue(prompt))
        assert result["status"]["status_str"] == "success", comfy_server.log()[-3000:]
        return result["outputs"]["2"]["text"][0]

    legacy = summary_of(LEGACY_GENERIC)
    assert "calibration 'generic'" in legacy and "computes 8" in legacy
    assert legacy == summary_of("generic")


def test_an_unknown_preset_is_refused_with_what_to_change(comfy_server):
    status, body = comfy_server.post("/prompt", {"prompt": {
        "1": {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "no such preset", "steps": 28, "budget": 8, "budget_as": "computed steps", "speedup": 3.0,
            "warmup_steps": 0, "lambda_mapping": "linear"}},
        "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 2]}}}})
    assert status == 400
    (error,) = body["node_errors"]["1"]["errors"]
    assert "'no such preset'" in error["details"] and "pick another 'preset'" in error["details"]
