"""Control models under OTCache Apply: at a reused step no ControlNet or T2I-Adapter runs.

Control models are ComfyUI's own classes loaded from checkpoints through ``comfy.controlnet.load_controlnet``
and applied with ComfyUI's ControlNet nodes (``tiny_controls``); each test counts the control network's
real forward calls (a forward hook) and maps each call to its sampling step through its timestep.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch

from .test_apply_runtime import apply, hooks, plan_for, sample  # noqa: F401  (hooks: a fixture)
from .tiny_controls import (build_flux_for_controlnet, build_unet_for_controls, hint_image, load_control,
                            write_flux_controlnet, write_t2i_adapter, write_unet_controlnet)

UNET_STEPS, UNET_COMPUTED = 10, [0, 1, 3, 6, 9]
FLUX_STEPS, FLUX_COMPUTED = 6, [0, 1, 3]


def _release(env: SimpleNamespace) -> None:
    """Free a module's models now (the full-width Flux holds gigabytes)."""
    import comfy.model_management

    vars(env).clear()
    comfy.model_management.unload_all_models()
    gc.collect()


@pytest.fixture(scope="module")
def unet(tiny, tmp_path_factory):
    """The SD1.5-layout UNet with a loaded ControlNet and T2I-Adapter."""
    folder = tmp_path_factory.mktemp("unet_controls")
    env = SimpleNamespace(model=build_unet_for_controls(), steps=UNET_STEPS, computed=UNET_COMPUTED,
                          cnet=load_control(write_unet_controlnet(folder / "control_sd15_tiny.safetensors")),
                          t2i=load_control(write_t2i_adapter(folder / "t2iadapter_sd15_tiny.safetensors")))
    yield env
    _release(env)


@pytest.fixture(scope="module")
def flux(tiny, tmp_path_factory):
    """The full-width one-block Flux with a loaded XLabs-layout FLUX ControlNet (a few GB: one module)."""
    folder = tmp_path_factory.mktemp("flux_controls")
    env = SimpleNamespace(model=build_flux_for_controlnet(), steps=FLUX_STEPS, computed=FLUX_COMPUTED,
                          cnet=load_control(write_flux_controlnet(folder / "flux_controlnet_tiny.safetensors")),
                          t2i=None)
    yield env
    _release(env)


# --------------------------------------------------------------------------------------------------
# Conditioning cases, built with ComfyUI's own nodes
# --------------------------------------------------------------------------------------------------

def _apply_controlnet(pos, neg, control, image, strength=1.0, start=0.0, end=1.0):
    import nodes

    return nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control, image, strength, start, end)


@dataclass
class Case:
    positive: list
    negative: list
    cfg: float = 3.0


def build_case(name: str, env, latent: torch.Tensor) -> Case:
    import nodes

    m, image = env.model, hint_image(latent)
    pos, neg = m.positive(), m.negative()
    if name == "both":  # the usual: one ControlNet on positive and negative
        return Case(*_apply_controlnet(pos, neg, env.cnet, image))
    if name == "start_end":
        return Case(*_apply_controlnet(pos, neg, env.cnet, image, 0.8, 0.3, 0.7))
    if name == "strength_0":
        return Case(*_apply_controlnet(pos, neg, env.cnet, image, 0.0))
    if name == "one_cond":  # on the positive only: cond and uncond run in separate calls
        return Case(_apply_controlnet(pos, neg, env.cnet, image)[0], neg)
    if name == "cfg_1":
        return Case(*_apply_controlnet(pos, neg, env.cnet, image), cfg=1.0)
    if name == "mask":
        mask = torch.zeros((1,) + tuple(latent.shape[-2:]))
        mask[..., : latent.shape[-1] // 2] = 1.0
        masked = nodes.ConditioningSetMask().append(pos, mask, "default", 1.0)[0]
        return Case(*_apply_controlnet(masked + m.positive(seed=303), neg, env.cnet, image))
    if name == "area":  # an area cond runs on a crop of the latent: another layout, another call
        side = latent.shape[-1] * 8
        area = nodes.ConditioningSetArea().append(pos, side // 2, side, 0, 0, 1.0)[0]
        return Case(*_apply_controlnet(area + m.positive(seed=303), neg, env.cnet, image))
    if name == "chain":  # a T2I-Adapter chained after the ControlNet (previous_controlnet)
        first = _apply_controlnet(pos, neg, env.cnet, image)
        return Case(*_apply_controlnet(*first, env.t2i, image, 0.7))
    raise ValueError(name)


UNET_CASES = ("both", "start_end", "strength_0", "one_cond", "cfg_1", "mask", "area", "chain")
# On the (slow) full-width Flux: the cases that change what blocks mode holds between steps.
FLUX_CASES = ("start_end", "one_cond")
MATRIX = [("unet", "model", c) for c in UNET_CASES] + [("flux", "blocks", c) for c in FLUX_CASES]


def run_case(env, case: Case, patcher=None) -> torch.Tensor:
    return sample(env.model, patcher, steps=env.steps, cfg=case.cfg, positive=case.positive, negative=case.negative)


# --------------------------------------------------------------------------------------------------
# Counting control-model calls
# --------------------------------------------------------------------------------------------------

class ControlCalls:
    """Real forward calls of a control network, each as ``(step, rows)``.

    The step comes from the call's timestep, matched to the timesteps of the run's sigma schedule.
    """

    def __init__(self, env, network: torch.nn.Module) -> None:
        import comfy.samplers

        sampling = env.model.patcher.get_model_object("model_sampling")
        sigmas = comfy.samplers.calculate_sigmas(sampling, "simple", env.steps)[:-1]
        self.step_timesteps = sampling.timestep(sigmas).float()
        self.network = network
        self.calls: list[tuple[int, int]] = []

    def _hook(self, module, args, kwargs):
        x, timestep = kwargs["x"], kwargs["timesteps"]
        step = int((self.step_timesteps - timestep.reshape(-1)[0].float()).abs().argmin())
        self.calls.append((step, x.shape[0]))

    def __enter__(self):
        self.handle = self.network.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture
def envs(request):
    return {"unet": lambda: request.getfixturevalue("unet"), "flux": lambda: request.getfixturevalue("flux")}


def _calls(env, patcher, case) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The run's output and its control-network calls as ``(step, rows)``."""
    with ControlCalls(env, env.cnet.control_model) as calls:
        out = run_case(env, case, patcher)
    return out, calls.calls


# --------------------------------------------------------------------------------------------------
# FLUX ControlNet (a DiT, both modes)
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_full_budget_with_a_flux_controlnet_is_bit_identical(otcache_pack, core, flux, mode):
    case = build_case("both", flux, flux.model.make_latent())
    patched = apply(otcache_pack, flux.model, plan_for(core, range(FLUX_STEPS), FLUX_STEPS), mode)
    reference, full_calls = _calls(flux, None, case)
    out, calls = _calls(flux, patched, case)
    assert torch.equal(out, reference)
    assert calls == full_calls == [(k, 2) for k in range(FLUX_STEPS)]  # cond and uncond in one call


@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_a_flux_controlnet_runs_only_at_computed_steps(otcache_pack, core, flux, reports, mode):
    case = build_case("both", flux, flux.model.make_latent())
    patched = apply(otcache_pack, flux.model, plan_for(core, FLUX_COMPUTED, FLUX_STEPS), mode)
    out, calls = _calls(flux, patched, case)
    assert torch.isfinite(out).all()
    assert calls == [(k, 2) for k in FLUX_COMPUTED]  # computed steps x (cond, uncond)
    report = reports[-1]
    assert report.computed == FLUX_COMPUTED
    assert (report.control_ran, report.control_skipped) == (len(FLUX_COMPUTED), FLUX_STEPS - len(FLUX_COMPUTED))


# --------------------------------------------------------------------------------------------------
# SD1.5 ControlNet (a UNet, model mode) in every case, FLUX in the cases that matter to blocks mode:
# start/end percent, strength 0, one cond, cfg 1, masks, areas, chains
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,mode,name", MATRIX)
def test_full_budget_is_bit_identical_in_every_control_case(otcache_pack, core, envs, model, mode, name):
    env = envs[model]()
    case = build_case(name, env, env.model.make_latent())
    patched = apply(otcache_pack, env.model, plan_for(core, range(env.steps), env.steps), mode)
    reference, full_calls = _calls(env, None, case)
    out, calls = _calls(env, patched, case)
    assert torch.equal(out, reference) and calls == full_calls


@pytest.mark.parametrize("model,mode,name", MATRIX)
def test_control_models_run_exactly_at_the_computed_steps_in_every_control_case(otcache_pack, core, envs, model,
                                                                                 mode, name):
    env = envs[model]()
    case = build_case(name, env, env.model.make_latent())
    _, full_calls = _calls(env, None, case)
    _, calls = _calls(env, apply(otcache_pack, env.model, plan_for(core, env.computed, env.steps), mode), case)
    assert calls == [c for c in full_calls if c[0] in env.computed]
    assert name == "strength_0" or calls  # every case but strength 0 has a ControlNet that runs


def test_the_report_counts_each_control_model_of_a_chain(otcache_pack, core, unet, reports, caplog):
    import logging

    case = build_case("chain", unet, unet.model.make_latent())
    with caplog.at_level(logging.INFO, logger="OTCache"):
        run_case(unet, case, apply(otcache_pack, unet.model, plan_for(core, UNET_COMPUTED), "model"))
    report = reports[-1]
    reused = UNET_STEPS - len(UNET_COMPUTED)
    assert (report.control_ran, report.control_skipped) == (2 * len(UNET_COMPUTED), 2 * reused)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("OTCache [")][-1]
    assert f"control-model calls: {2 * reused} skipped, {2 * len(UNET_COMPUTED)} run" in line


def test_a_controlnet_outside_its_start_end_range_is_not_counted_as_skipped(otcache_pack, core, unet, reports):
    case = build_case("start_end", unet, unet.model.make_latent())
    _, full_calls = _calls(unet, None, case)
    run_case(unet, case, apply(otcache_pack, unet.model, plan_for(core, UNET_COMPUTED), "model"))
    report = reports[-1]
    active = {step for step, _ in full_calls}
    assert report.control_ran == len(active & set(UNET_COMPUTED))
    assert report.control_skipped == len(active - set(UNET_COMPUTED))


def test_in_model_mode_skipping_the_control_models_leaves_the_output_unchanged(otcache_pack, core, unet):
    """A reused call runs no part of the model, so the control output it skips was never used."""
    case = build_case("both", unet, unet.model.make_latent())
    plan = plan_for(core, UNET_COMPUTED)
    always = otcache_pack.nodes.apply_node.apply_otcache(unet.model.patcher, plan, "model", skip_control_models=False)
    assert torch.equal(run_case(unet, case, apply(otcache_pack, unet.model, plan, "model")), run_case(unet, case, always))


# --------------------------------------------------------------------------------------------------
# Blocks mode: what a reused step hands the model
# --------------------------------------------------------------------------------------------------

def test_blocks_mode_hands_reused_calls_the_control_of_the_last_computed_call(otcache_pack, core, flux):
    """A reused stage is input + the residual of the last computed step; a control added after the
    stage's last block lies outside that residual, so the reused call gets that step's control again."""
    import comfy.patcher_extension as pe

    case = build_case("both", flux, flux.model.make_latent())
    patched = apply(otcache_pack, flux.model, plan_for(core, FLUX_COMPUTED, FLUX_STEPS), "blocks")
    seen: list[list[torch.Tensor]] = []

    def spy(executor, *args, **kwargs):
        control = kwargs.get("control", args[6] if len(args) > 6 else None)
        seen.append([t.clone() for t in control["input"]])
        return executor(*args, **kwargs)

    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "test_spy", spy)
    run_case(flux, case, patched)
    assert len(seen) == FLUX_STEPS
    for step in range(FLUX_STEPS):
        source = max(k for k in FLUX_COMPUTED if k <= step)
        assert all(torch.equal(a, b) for a, b in zip(seen[step], seen[source]))
    assert not torch.equal(seen[0][0], seen[1][0])  # computed steps do get a fresh control


# --------------------------------------------------------------------------------------------------
# Other packs' control classes, the user's objects, the switch
# --------------------------------------------------------------------------------------------------

def _as_other_pack_class(control):
    """The same ControlNet as an instance of a subclass, as control packs define them."""
    import comfy.controlnet

    class OtherPackControlNet(comfy.controlnet.ControlNet):
        def copy(self):
            c = OtherPackControlNet(None, load_device=self.load_device, manual_cast_dtype=self.manual_cast_dtype)
            c.control_model, c.control_model_wrapped = self.control_model, self.control_model_wrapped
            self.copy_to(c)
            return c

    return OtherPackControlNet.copy(control)


def test_a_control_class_of_another_pack_runs_at_every_step_with_a_note(otcache_pack, core, unet, reports):
    other = SimpleNamespace(**{**vars(unet), "cnet": _as_other_pack_class(unet.cnet)})
    case = build_case("both", other, unet.model.make_latent())
    _, full_calls = _calls(other, None, case)
    _, calls = _calls(other, apply(otcache_pack, unet.model, plan_for(core, UNET_COMPUTED), "model"), case)
    assert calls == full_calls
    assert any("OtherPackControlNet" in n and "every step" in n for n in reports[-1].notes)


def test_the_users_conds_and_controls_are_left_as_they_were(otcache_pack, core, unet):
    case = build_case("both", unet, unet.model.make_latent())
    controls = [c[1]["control"] for c in case.positive + case.negative]
    before = [dict(c[1]) for c in case.positive + case.negative]
    reference = run_case(unet, case)
    run_case(unet, case, apply(otcache_pack, unet.model, plan_for(core, UNET_COMPUTED), "model"))
    assert [dict(c[1]) for c in case.positive + case.negative] == before
    assert [c[1]["control"] for c in case.positive + case.negative] == controls
    assert type(controls[0]).__module__ == "comfy.controlnet"
    assert torch.equal(run_case(unet, case), reference)  # nothing of the cached run stays behind


def test_skip_control_models_off_runs_them_at_every_step(otcache_pack, core, unet, reports):
    case = build_case("both", unet, unet.model.make_latent())
    _, full_calls = _calls(unet, None, case)
    patched = otcache_pack.nodes.apply_node.apply_otcache(unet.model.patcher, plan_for(core, UNET_COMPUTED), "model",
                                                          skip_control_models=False)
    _, calls = _calls(unet, patched, case)
    assert calls == full_calls and reports[-1].computed == UNET_COMPUTED
    assert reports[-1].control_skipped == 0
