"""LoRAs with OTCache: ComfyUI's own LoraLoaderModelOnly before and after OTCache Apply, LoRAs changing
between runs, and the calibration record saying which LoRA patches it was made with.

Real LoRA files (``tiny_loras.py``) for the tiny models, loaded from a ``loras`` model folder by the
node users put between the loader and the sampler. The server test runs the same graphs in one
ComfyUI process, where ComfyUI keeps the loaded model between prompts.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from .comfy_server import model_and_inputs, running_server, tiny_wan_state_dict
from .test_apply_runtime import STEPS, apply, hooks, plan_for, sample  # noqa: F401  (hooks: a fixture)
from .tiny_loras import save_lora

FAMILY_MODES = [(family, mode) for family in ("flux", "wan21_t2v") for mode in ("blocks", "model")]
PARTIAL = [0, 1, 3, 6, 9]
LORA_A, LORA_B = "otcache_test_a.safetensors", "otcache_test_b.safetensors"


@pytest.fixture(scope="module")
def loras(tiny_model, tmp_path_factory):
    """``loras(family, name, strength)``: the tiny model of ``family`` through ComfyUI's LoraLoaderModelOnly
    with LoRA file ``name`` (two per family, registered in a ``loras`` folder of their own)."""
    import folder_paths
    import nodes

    folders = {}
    for family in ("flux", "wan21_t2v"):
        folder = tmp_path_factory.mktemp(f"loras_{family}")
        state = tiny_model(family).patcher.model.diffusion_model.state_dict()
        save_lora(folder / LORA_A, state, seed=1)
        save_lora(folder / LORA_B, state, seed=2)
        folders[family] = folder
    loader = nodes.LoraLoaderModelOnly()

    def load(family: str, name: str, strength: float, model=None):
        folder_paths.add_model_folder_path("loras", str(folders[family]))
        try:
            (patched,) = loader.load_lora_model_only(model if model is not None else tiny_model(family).patcher,
                                                     name, strength)
        finally:
            folder_paths.folder_names_and_paths["loras"][0].remove(str(folders[family]))
        return patched

    return load


def with_patcher(m, patcher):
    return replace(m, patcher=patcher)


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_lora_before_apply_all_compute_is_bit_identical(otcache_pack, core, tiny_model, loras, family, mode):
    m = tiny_model(family)
    lora = loras(family, LORA_A, 0.8)
    unpatched = sample(m, lora)
    assert not torch.equal(unpatched, sample(m)), "the LoRA must change the output"
    assert torch.equal(sample(m, apply(otcache_pack, with_patcher(m, lora), plan_for(core, range(STEPS)), mode)),
                       unpatched)


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_lora_after_apply_all_compute_is_bit_identical(otcache_pack, core, tiny_model, loras, reports, family, mode):
    m = tiny_model(family)
    applied = apply(otcache_pack, m, plan_for(core, range(STEPS)), mode)
    out = sample(m, loras(family, LORA_A, 0.8, model=applied))
    assert torch.equal(out, sample(m, loras(family, LORA_A, 0.8)))
    assert reports[-1].computed == list(range(STEPS))  # OTCache ran, under the LoRA


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_lora_after_apply_runs_the_schedule(otcache_pack, core, tiny_model, loras, reports, family, mode):
    m = tiny_model(family)
    applied = apply(otcache_pack, m, plan_for(core, PARTIAL), mode)
    lora = loras(family, LORA_A, 0.8, model=applied)
    out = sample(m, lora)
    assert reports[-1].computed == PARTIAL and reports[-1].mode == mode
    assert torch.isfinite(out).all() and not torch.equal(out, sample(m, loras(family, LORA_A, 0.8)))


@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_two_loras_with_different_strengths_between_runs_leave_no_stale_state(otcache_pack, core, tiny_model, loras,
                                                                               mode):
    m = tiny_model("flux")
    applied = apply(otcache_pack, m, plan_for(core, PARTIAL), mode)
    settings = [(LORA_A, 1.0), (LORA_B, 0.5), (LORA_A, 0.3), (LORA_A, 1.0), (LORA_B, 0.5)]
    outputs = [sample(m, loras("flux", name, strength, model=applied)) for name, strength in settings]
    assert torch.equal(outputs[0], outputs[3]) and torch.equal(outputs[1], outputs[4])
    assert not torch.equal(outputs[0], outputs[2])  # the strength matters
    full = apply(otcache_pack, m, plan_for(core, range(STEPS)), mode)
    for name, strength in settings[:3]:
        assert torch.equal(sample(m, loras("flux", name, strength, model=full)), sample(m, loras("flux", name, strength)))


# --------------------------------------------------------------------------------------------------
# The calibration record and the warning
# --------------------------------------------------------------------------------------------------

def calibrate(otcache_pack, m, patcher, folder):
    cal = otcache_pack.nodes.calibrate_node
    record, _, text, _ = cal.run_calibration(
        patcher, m.positive(), m.negative(), {"samples": m.make_latent()}, seed=0, samples=1, steps=8, cfg=3.0,
        sampler_name="euler", scheduler="simple", max_segment=4, strength="drift", trials=2, name="with-lora",
        storage="memory", folder=folder)
    return record, text


@pytest.fixture(scope="module")
def lora_calibration(otcache_pack, tiny_model, loras, tmp_path_factory):
    m = tiny_model("flux")
    return calibrate(otcache_pack, m, loras("flux", LORA_A, 0.8), tmp_path_factory.mktemp("cal"))


def test_the_lora_calibration_record_says_which_lora_patches_it_was_made_with(tiny_model, lora_calibration):
    record, text = lora_calibration
    m = tiny_model("flux")
    loras = record.model["loras"]
    blocks = [k for k in m.patcher.model.state_dict() if ".double_blocks." in k or ".single_blocks." in k]
    assert loras["strengths"] == [0.8] and loras["weights"] == loras["patches"] == len(
        [k for k in blocks if k.endswith(".weight") and m.patcher.model.state_dict()[k].ndim == 2])
    assert f"made with: shift 1.15, LoRA patches on {loras['weights']} weights (strength 0.8)" in text


def schedule_from(otcache_pack, record, budget=4):
    plan, _, summary = otcache_pack.nodes.OTCacheSchedule().make("unused", 8, budget, "computed steps", 3.0, 0,
                                                                  calibration=record)
    return plan, summary


def test_the_schedule_summary_says_what_the_calibration_was_made_with(otcache_pack, lora_calibration):
    record, _ = lora_calibration
    _, summary = schedule_from(otcache_pack, record)
    assert f"made with: shift 1.15, LoRA patches on {record.model['loras']['weights']} weights" in summary


def mismatch_lines(caplog):
    return [r.getMessage() for r in caplog.records if "recalibrate or expect lower fidelity" in r.getMessage()]


def test_apply_warns_when_the_model_has_no_lora_but_the_calibration_had_one(otcache_pack, tiny_model,
                                                                           lora_calibration, reports, caplog):
    record, _ = lora_calibration
    m = tiny_model("flux")
    plan, _ = schedule_from(otcache_pack, record)
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, apply(otcache_pack, m, plan), steps=8)
    (warning,) = mismatch_lines(caplog)
    assert "the calibration 'with-lora' was made with shift 1.15, LoRA patches on" in warning
    assert "this model has shift 1.15, no LoRA" in warning
    assert warning.removeprefix("OTCache: ") in reports[-1].notes and warning.removeprefix("OTCache: ") in reports[-1].line()


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_same_lora_before_or_after_apply_gives_no_warning(otcache_pack, tiny_model, loras, lora_calibration,
                                                             reports, caplog, where):
    record, _ = lora_calibration
    m = tiny_model("flux")
    plan, _ = schedule_from(otcache_pack, record)
    if where == "before":
        patched = apply(otcache_pack, with_patcher(m, loras("flux", LORA_A, 0.8)), plan)
    else:
        patched = loras("flux", LORA_A, 0.8, model=apply(otcache_pack, m, plan))
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, patched, steps=8)
    assert mismatch_lines(caplog) == [] and len(reports[-1].computed) == 4


@pytest.mark.parametrize(("name", "strength"), [(LORA_B, 0.8), (LORA_A, 0.5)])
def test_another_lora_or_strength_after_apply_is_warned_about(otcache_pack, tiny_model, loras, lora_calibration,
                                                             reports, caplog, name, strength):
    record, _ = lora_calibration
    m = tiny_model("flux")
    plan, _ = schedule_from(otcache_pack, record)
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, loras("flux", name, strength, model=apply(otcache_pack, m, plan)), steps=8)
    (warning,) = mismatch_lines(caplog)
    assert ("this model has shift 1.15, other LoRA patches on" if strength == 0.8 else "(strength 0.5)") in warning
    assert len(reports[-1].computed) == 4  # warned, not refused


def test_a_calibration_file_from_before_the_record_warns_about_nothing(otcache_pack, tiny_model, lora_calibration,
                                                                      reports, caplog):
    record, _ = lora_calibration
    document = record.to_dict()
    for field in ("loras", "sampling"):
        del document["model"][field]
    older = otcache_pack.otcache_core.calibration.Calibration.from_dict(document)
    plan, summary = schedule_from(otcache_pack, older)
    m = tiny_model("flux")
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, apply(otcache_pack, m, plan), steps=8)
    assert mismatch_lines(caplog) == [] and "made with" not in summary and len(reports[-1].computed) == 4


# --------------------------------------------------------------------------------------------------
# One server, LoRAs changing between prompts
# --------------------------------------------------------------------------------------------------

SERVER_LORAS = {"a": "otcache_wan_a.safetensors", "b": "otcache_wan_b.safetensors"}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, comfyui_root, tiny):
    """A ComfyUI server whose ``loras`` folder holds two LoRAs for its tiny Wan."""
    folder = tmp_path_factory.mktemp("server_loras")
    state = tiny_wan_state_dict()
    files = {f"loras/{name}": save_lora(folder / name, state, seed=seed)
             for seed, name in enumerate(SERVER_LORAS.values(), start=1)}
    with running_server(tmp_path_factory.mktemp("lora_base"), comfyui_root, models=files) as server:
        yield server


def lora_prompt(lora: str, strength: float, budget: int | None, mode: str = "auto") -> dict:
    """UNETLoader -> LoraLoaderModelOnly -> [OTCache Apply with the generic preset at ``budget``] -> KSampler."""
    prompt = {
        **model_and_inputs(),
        "5": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora,
                                                             "strength_model": strength}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["5", 0], "seed": 3, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "lora"}},
    }
    if budget is not None:
        prompt["6"] = {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "generic", "steps": STEPS, "budget": budget, "budget_as": "computed steps", "speedup": 3.0,
            "warmup_steps": 0, "lambda_mapping": "linear"}}
        prompt["7"] = {"class_type": "OTCacheApply", "inputs": {"model": ["5", 0], "schedule": ["6", 0], "mode": mode,
                                                               "start_percent": 0.0, "end_percent": 1.0}}
        prompt["8"]["inputs"]["model"] = ["7", 0]
    return prompt


def run_latent(server, prompt: dict) -> torch.Tensor:
    """The prompt's saved latent; its sampling must have run, not come from ComfyUI's cache."""
    import safetensors.torch

    result = server.run(prompt)
    cached = [node for kind, data in result["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]]
    assert "8" not in cached, "the sampler was served from ComfyUI's cache"
    (saved,) = result["outputs"]["9"]["latents"]
    return safetensors.torch.load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))[
        "latent_tensor"]


def test_two_loras_with_different_strengths_between_runs_of_one_server_stay_exact(lora_server):
    settings = [(SERVER_LORAS["a"], 1.0), (SERVER_LORAS["b"], 0.5), (SERVER_LORAS["a"], 0.3)]
    unpatched = {}
    for lora, strength in settings:
        unpatched[lora, strength] = run_latent(lora_server, lora_prompt(lora, strength, None))
        for mode in ("blocks", "model"):
            assert torch.equal(run_latent(lora_server, lora_prompt(lora, strength, STEPS, mode)),
                               unpatched[lora, strength]), (lora, strength, mode)
    assert len({tuple(t.flatten()[:8].tolist()) for t in unpatched.values()}) == 3  # three different models
    log_start = len(lora_server.log())
    partial = [run_latent(lora_server, lora_prompt(lora, strength, 4)) for lora, strength in settings + settings[:1]]
    assert torch.equal(partial[0], partial[3]) and not torch.equal(partial[0], partial[1])
    assert lora_server.log()[log_start:].count("OTCache [model]: computed 4/10 steps") == 4
