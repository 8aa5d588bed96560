"""Removing OTCache Apply removes its effect: in the same server, the workflow run again with the node
bypassed or deleted gives the unpatched output bit for bit.

ComfyUI keeps the loaded model between prompts (UNETLoader's output is cached): a cache that patched
that shared model in place would survive its node's removal. Each sequence runs the unpatched graph,
then OTCache Apply with a partial budget (a different output), then the graph without Apply, whose
sampler must really run again (not come from ComfyUI's cache) and match the first output exactly.

Two ways the node goes: in API format, the prompt the front end sends (a bypassed node is left out
and its consumers take its input of the same type; a deleted node's consumer is wired to the loader
again), for both reuse modes; and in the page itself, a UI workflow whose Apply node has mode 4
(bypass), converted by ComfyUI's own front end when Run is clicked (needs Playwright and Chromium,
like ``test_browser.py``; skipped without them).
"""

from __future__ import annotations

import copy

import pytest
import torch

from . import browser as web
from .comfy_server import model_and_inputs
from .test_browser import REPORT, assert_clean, context, node_id, page, tiny_wan_workflow  # noqa: F401  (fixtures)

STEPS = 10
APPLY, SCHEDULE, SAMPLER, SAVE = "6", "5", "7", "8"


def workflow(mode: str, budget: int = 4) -> dict:
    """Tiny Wan -> OTCache Apply (generic preset at ``budget``) -> KSampler -> SaveLatent, in API format."""
    return {
        **model_and_inputs(),
        SCHEDULE: {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "generic", "steps": STEPS, "budget": budget, "budget_as": "computed steps", "speedup": 3.0,
            "warmup_steps": 0, "lambda_mapping": "linear"}},
        APPLY: {"class_type": "OTCacheApply", "inputs": {"model": ["1", 0], "schedule": [SCHEDULE, 0], "mode": mode,
                                                        "start_percent": 0.0, "end_percent": 1.0}},
        SAMPLER: {"class_type": "KSampler", "inputs": {
            "model": [APPLY, 0], "seed": 3, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        SAVE: {"class_type": "SaveLatent", "inputs": {"samples": [SAMPLER, 0], "filename_prefix": "bypass"}},
    }


def bypassed(prompt: dict, node: str, object_info: dict) -> dict:
    """``prompt`` with ``node`` bypassed as the front end sends it: the node is left out and every input that
    read one of its outputs reads the node's first linked input of that output's type instead."""
    out = copy.deepcopy(prompt)
    removed = out.pop(node)
    info = object_info[removed["class_type"]]
    declared = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    by_type = {}
    for name, spec in declared.items():
        value = removed["inputs"].get(name)
        if isinstance(value, list) and spec[0] not in by_type:
            by_type[spec[0]] = value
    for other in out.values():
        for name, value in other["inputs"].items():
            if isinstance(value, list) and value[0] == node:
                other["inputs"][name] = by_type[info["output"][value[1]]]
    return out


def deleted(prompt: dict) -> dict:
    """The workflow after deleting OTCache Apply and its Schedule and wiring the loader to the sampler again."""
    out = copy.deepcopy(prompt)
    del out[APPLY], out[SCHEDULE]
    out[SAMPLER]["inputs"]["model"] = ["1", 0]
    return out


def unpatched_prompt() -> dict:
    """The graph as it was before OTCache went in."""
    return deleted(workflow("auto"))


def latent_of(server, result: dict) -> torch.Tensor:
    import safetensors.torch

    (saved,) = result["outputs"][SAVE]["latents"]
    path = server.base / "output" / saved["subfolder"] / saved["filename"]
    return safetensors.torch.load_file(str(path))["latent_tensor"]


def sampled(server, prompt: dict) -> torch.Tensor:
    """Run ``prompt``; its latent, whose sampler must have run (not been served from ComfyUI's cache)."""
    result = server.run(prompt)
    cached = [n for kind, data in result["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]]
    assert SAMPLER not in cached, "the sampler was served from ComfyUI's cache: the comparison would prove nothing"
    return latent_of(server, result)


@pytest.mark.parametrize("mode", ["model", "blocks"])
@pytest.mark.parametrize("removal", ["bypassed", "deleted"])
def test_removing_otcache_apply_gives_the_unpatched_output_bit_for_bit(comfy_server, removal, mode):
    before = len(comfy_server.log())
    reference = latent_of(comfy_server, comfy_server.run(unpatched_prompt()))
    with_otcache = workflow(mode)
    cached_run = sampled(comfy_server, with_otcache)
    assert not torch.equal(cached_run, reference), "OTCache at 4 of 10 steps must change the output"
    assert f"OTCache [{mode}]: computed 4/{STEPS} steps" in comfy_server.log()[before:]
    info = comfy_server.get("/object_info")
    without = bypassed(with_otcache, APPLY, info) if removal == "bypassed" else deleted(with_otcache)
    assert APPLY not in without and without[SAMPLER]["inputs"]["model"] == ["1", 0]
    reports = comfy_server.log().count(REPORT)
    assert torch.equal(sampled(comfy_server, without), reference)
    assert comfy_server.log().count(REPORT) == reports  # and OTCache did not run


# --------------------------------------------------------------------------------------------------
# Bypassed in the page (mode 4), converted by ComfyUI's front end
# --------------------------------------------------------------------------------------------------

def run_clicked(page: web.ComfyPage, server, ui_workflow: dict, name: str) -> dict:
    """Drop ``ui_workflow`` on the page and click Run; the finished prompt's history entry."""
    errors_before = len(page.errors)
    page.drop_workflow(ui_workflow, name)
    assert_clean(page, errors_before)
    before = len(server.get("/history"))
    page.click_run()
    web.poll(lambda: len(server.get("/history")), lambda n: n > before, timeout=240)
    (last,) = server.wait_idle().values()
    assert last["status"]["status_str"] == "success", server.log()[-3000:]
    return last


def test_otcache_apply_bypassed_on_the_page_gives_the_unpatched_output_bit_for_bit(page, comfy_server):
    reference = latent_of(comfy_server, comfy_server.run(unpatched_prompt()))
    ui = tiny_wan_workflow("generic", calibrate=False)
    sampler, save = node_id(ui, "KSampler"), node_id(ui, "SaveLatent")
    with_otcache = run_clicked(page, comfy_server, ui, "otcache_bypass_on.json")
    latent_on = latent_of(comfy_server, {"outputs": {SAVE: with_otcache["outputs"][str(save)]}})
    assert not torch.equal(latent_on, reference)
    for n in ui["nodes"]:
        if n["type"] == "OTCacheApply":
            n["mode"] = 4  # what the node's Bypass (Ctrl+B) sets in the saved workflow
    reports = comfy_server.log().count(REPORT)
    result = run_clicked(page, comfy_server, ui, "otcache_bypass_off.json")
    sent = result["prompt"][2]  # the API prompt the page built from the UI workflow
    assert "OTCacheApply" not in {v["class_type"] for v in sent.values()}
    cached = [n for kind, data in result["status"]["messages"] if kind == "execution_cached" for n in data["nodes"]]
    assert str(sampler) not in cached
    assert torch.equal(latent_of(comfy_server, {"outputs": {SAVE: result["outputs"][str(save)]}}), reference)
    assert comfy_server.log().count(REPORT) == reports
