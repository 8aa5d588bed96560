"""OTCache Apply inside a real ComfyUI: exactness, skipping, reports, samplers, state isolation.

Every test samples tiny real ComfyUI models through ``comfy.sample.sample`` (what KSampler calls).
"""

from __future__ import annotations

import logging

import pytest
import torch

from .tiny_models import FAMILIES, TinyModel

BLOCK_FAMILIES = ("flux", "chroma", "qwen_image", "hunyuan_video", "wan21_t2v", "wan22_t2v", "sd3", "auraflow",
                  "lumina2")
ALL_FAMILIES = tuple(f for f in FAMILIES if f != "flux_bench")
FAMILY_MODES = [(family, mode) for family in ALL_FAMILIES for mode in ("blocks", "model")
                if mode == "model" or family in BLOCK_FAMILIES]
"""Every family in each reuse mode it supports (``blocks`` needs a block-level hook)."""
STEPS = 10


@pytest.fixture
def hooks(otcache_pack):
    return otcache_pack.nodes.cache_hooks


def plan_for(core, compute_steps, steps=STEPS, families=()):
    schedule = core.schedule.Schedule.from_steps(compute_steps, steps)
    plan = core.plan.SchedulePlan.from_schedule(schedule, label="test")
    if families:
        from dataclasses import replace

        plan = replace(plan, families=tuple(families))
    return plan


def apply(otcache_pack, m: TinyModel, plan, mode="auto", **kw):
    return otcache_pack.nodes.apply_node.apply_otcache(m.patcher, plan, mode, **kw)


def sample(m: TinyModel, patcher=None, *, steps=STEPS, cfg=3.0, sampler="euler", scheduler="simple", latent=None,
           seed=3, **kw) -> torch.Tensor:
    import comfy.sample

    latent = m.make_latent() if latent is None else latent
    return comfy.sample.sample(patcher if patcher is not None else m.patcher, m.noise(latent, seed), steps, cfg,
                               sampler, scheduler, kw.pop("positive", m.positive(latent.shape[0])),
                               kw.pop("negative", m.negative(latent.shape[0])), latent, seed=seed,
                               disable_pbar=True, **kw)


class BlockCounter:
    """Counts block computations: calls of the linear layers inside the model's blocks (forward hooks).

    Inner layers, not the blocks themselves: an object-patched block (Lumina2) is still *called* at
    reused steps, and some blocks (SD3) call their children's methods without ``__call__``; every
    block computation runs the same linear layers, so counts are proportional to computations.
    """

    def __init__(self, m: TinyModel) -> None:
        dm = m.patcher.model.diffusion_model
        self.modules = []
        for attr in ("double_blocks", "single_blocks", "transformer_blocks", "blocks", "layers", "joint_blocks",
                     "double_layers", "single_layers"):
            for block in getattr(dm, attr, None) or []:
                self.modules.extend(mod for mod in block.modules() if isinstance(mod, torch.nn.Linear))
        self.calls = 0

    def __enter__(self):
        self.handles = [mod.register_forward_hook(self._hook) for mod in self.modules]
        return self

    def _hook(self, *_):
        self.calls += 1

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_all_compute_schedule_is_bit_identical_to_the_unpatched_model(otcache_pack, core, tiny_model, family, mode):
    m = tiny_model(family)
    patched = apply(otcache_pack, m, plan_for(core, range(STEPS)), mode)
    assert torch.equal(sample(m, patched), sample(m))


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_blocks_mode_runs_the_blocks_only_at_computed_steps(otcache_pack, core, tiny_model, reports, family):
    m = tiny_model(family)
    computed = [0, 1, 3, 6, 9]
    patched = apply(otcache_pack, m, plan_for(core, computed), "blocks")
    with BlockCounter(m) as full:
        reference = sample(m)
    with BlockCounter(m) as cached:
        out = sample(m, patched)
    assert full.calls > 0 and cached.calls * STEPS == full.calls * len(computed)
    assert reports[-1].computed == computed and reports[-1].mode == "blocks"
    assert torch.isfinite(out).all() and not torch.equal(out, reference)
    # reuse approximates the skipped steps: far closer to the full output than the noise it started from
    noise = m.noise(m.make_latent(), 3)
    assert (out - reference).abs().mean() < 0.5 * (noise - reference).abs().mean()


@pytest.mark.parametrize("family", ["flux", "wan21_t2v", "sd15"])
def test_model_mode_skips_whole_model_calls(otcache_pack, core, tiny_model, reports, family):
    m = tiny_model(family)
    patched = apply(otcache_pack, m, plan_for(core, [0, 2, 5, 9]), "model")
    out = sample(m, patched)
    report = reports[-1]
    assert report.computed == [0, 2, 5, 9] and report.calls_reused == 6 and report.mode == "model"
    assert torch.isfinite(out).all() and not torch.equal(out, sample(m))


def test_every_run_logs_one_line_with_what_it_did(otcache_pack, core, tiny_model, caplog):
    m = tiny_model("flux")
    patched = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    with caplog.at_level(logging.INFO, logger="OTCache"):
        sample(m, patched)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("OTCache [")]
    assert len(lines) == 1
    assert "computed 4/10 steps [0, 1, 4, 9]" in lines[0] and "ideal speedup 2.50x" in lines[0]
    assert "wall" in lines[0]


def test_a_schedule_for_another_step_count_is_resampled_and_the_report_says_so(otcache_pack, core, tiny_model,
                                                                               reports):
    m = tiny_model("flux")
    preset = core.presets.load_preset(core.presets.shipped_preset_dir() / "flux.1-dev.json")
    plan = core.plan.SchedulePlan.from_calibration(preset, core.plan.BudgetRule("steps", 10, 50))
    sample(m, apply(otcache_pack, m, plan), steps=28)
    report = reports[-1]
    assert report.steps == 28 and len(report.computed) == round(28 * 10 / 50)
    assert any("resampled from T=50 to T=28" in n for n in report.notes)


def test_heun_decides_once_per_step(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    computed = [0, 1, 4, 7, 9]
    sample(m, apply(otcache_pack, m, plan_for(core, computed)), sampler="heun")
    report = reports[-1]
    assert report.computed == computed
    assert report.calls_computed + report.calls_reused > STEPS  # two evaluations on most steps


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "dpm_2", "uni_pc"])
def test_other_samplers_follow_the_schedule(otcache_pack, core, tiny_model, reports, sampler):
    m = tiny_model("wan21_t2v")
    out = sample(m, apply(otcache_pack, m, plan_for(core, [0, 1, 3, 6, 9])), sampler=sampler)
    assert torch.isfinite(out).all() and reports[-1].computed == [0, 1, 3, 6, 9]


def test_ancestral_sampler_gets_a_warning(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    sample(m, apply(otcache_pack, m, plan_for(core, [0, 2, 5, 9])), sampler="euler_ancestral")
    assert any("adds noise every step" in n for n in reports[-1].notes)


def test_partial_runs_and_denoise_restart_the_schedule(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    patched = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    out = sample(m, patched, steps=STEPS, start_step=4, last_step=10, force_full_denoise=True)
    assert torch.isfinite(out).all()
    report = reports[-1]
    assert report.steps == 6 and any("partial run" in n for n in report.notes)
    sample(m, patched, denoise=0.5)
    assert reports[-1].steps == STEPS and any("partial run" in n for n in reports[-1].notes)


def test_two_model_split_runs_each_part_with_its_own_state(otcache_pack, core, tiny_model, reports):
    """Wan 2.2 style: a high-noise model for the first steps, a low-noise one for the rest."""
    high, low = tiny_model("wan22_t2v"), tiny_model("wan22_t2v")
    plan = plan_for(core, [0, 1, 4, 9])
    latent = high.make_latent()
    first = sample(high, apply(otcache_pack, high, plan), latent=latent, start_step=0, last_step=5,
                   force_full_denoise=False)
    import comfy.sample

    second = comfy.sample.sample(apply(otcache_pack, low, plan), torch.zeros_like(latent), STEPS, 3.0, "euler",
                                 "simple", low.positive(), low.negative(), first, start_step=5, last_step=STEPS,
                                 disable_noise=True, force_full_denoise=True, seed=3, disable_pbar=True)
    assert torch.isfinite(second).all()
    assert [r.steps for r in reports[-2:]] == [5, 5]
    assert all(r.forced == [] for r in reports[-2:])


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("batch", [1, 2])
def test_cfg_and_batch_sizes(otcache_pack, core, tiny_model, reports, cfg, batch):
    m = tiny_model("flux")
    latent = m.make_latent(batch)
    out = sample(m, apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9])), cfg=cfg, latent=latent)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    assert reports[-1].forced == [] and reports[-1].reused == [2, 3, 5, 6, 7, 8]


def test_cond_and_uncond_in_separate_calls_keep_their_own_residuals(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    patched = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    batched = sample(m, patched)

    def one_cond_per_call(args):  # what ComfyUI does under memory pressure, through its public hook
        import comfy.samplers

        return [None if c is None else comfy.samplers.calc_cond_batch(args["model"], [c], args["input"],
                                                                        args["sigma"], args["model_options"])[0]
                for c in args["conds"]]

    split = patched.clone()
    split.model_options["sampler_calc_cond_batch_function"] = one_cond_per_call
    separate = sample(m, split)
    report = reports[-1]
    assert report.calls_computed == 2 * 4 and report.calls_reused == 2 * 6
    assert torch.allclose(separate, batched, atol=1e-4, rtol=1e-4)


def test_no_state_leaks_between_runs_of_other_resolution_or_batch(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    patched = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    sample(m, patched, latent=m.make_latent(1, 8, 8))
    big = m.make_latent(2, 16, 16)
    after = sample(m, patched, latent=big)
    fresh = sample(m, apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9])), latent=big)
    assert torch.equal(after, fresh)
    assert reports[-1].forced == []


def test_chroma_skipped_blocks_are_handled(otcache_pack, core, tiny_model, reports):
    m = tiny_model("chroma")
    dm = m.patcher.model.diffusion_model
    old = (list(dm.skip_mmdit), list(dm.skip_dit))
    dm.skip_mmdit[:] = [len(dm.double_blocks) - 1]  # the last double block is never called
    try:
        patched = apply(otcache_pack, m, plan_for(core, range(STEPS)), "blocks")
        assert torch.equal(sample(m, patched), sample(m))
        out = sample(m, apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]), "blocks"))
        assert torch.isfinite(out).all() and reports[-1].reused == [2, 3, 5, 6, 7, 8]
    finally:
        dm.skip_mmdit[:], dm.skip_dit[:] = old


def test_nothing_to_skip_is_reported_as_a_warning(otcache_pack, core, tiny_model, reports, caplog):
    m = tiny_model("flux")
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, apply(otcache_pack, m, plan_for(core, [0, 1], steps=2)), steps=2)
    assert any("nothing is skipped" in r.getMessage() for r in caplog.records)
    assert any("nothing to skip" in n for n in reports[-1].notes)


def test_start_and_end_percent_compute_the_steps_outside(otcache_pack, core, tiny_model, reports):
    m = tiny_model("flux")
    sample(m, apply(otcache_pack, m, plan_for(core, [0, 5]), start_percent=0.2, end_percent=0.8))
    assert reports[-1].computed == [0, 1, 5, 8, 9]


def test_two_apply_nodes_in_a_row_replace_the_first(otcache_pack, core, tiny_model, reports, caplog):
    m = tiny_model("flux")
    once = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        twice = otcache_pack.nodes.apply_node.apply_otcache(once, plan_for(core, [0, 1, 4, 9]), "model")
    assert any("replaced" in r.getMessage() for r in caplog.records)
    out = sample(m, twice)
    assert reports[-1].mode == "model"
    assert torch.equal(out, sample(m, apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]), "model")))


def test_schedule_for_another_family_is_refused(otcache_pack, core, tiny_model):
    m = tiny_model("flux")
    with pytest.raises(core.errors.OTCacheError, match="calibrated for wan"):
        apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9], families=["wan"]))


def test_blocks_mode_on_a_unet_is_refused_with_the_input_to_change(otcache_pack, core, tiny_model):
    m = tiny_model("sd15")
    with pytest.raises(core.errors.OTCacheError, match="'mode' blocks is not available"):
        apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]), "blocks")


def test_inputs_are_never_modified_in_place(otcache_pack, core, tiny_model):
    """The model's input x is the tensor ComfyUI later subtracts from: it must come back untouched."""
    import comfy.patcher_extension as pe

    m = tiny_model("flux")
    patched = apply(otcache_pack, m, plan_for(core, [0, 1, 4, 9]))
    seen = []

    def spy(executor, *args, **kwargs):
        before = args[0].clone()
        out = executor(*args, **kwargs)
        seen.append(torch.equal(before, args[0]))
        return out

    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_spy", spy)
    sample(m, patched)
    assert seen and all(seen)


# --------------------------------------------------------------------------------------------------
# What a run keeps in memory, and keeping it in CPU memory
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["model", "blocks"])
def test_keeping_the_cache_in_cpu_memory_gives_the_same_output_bit_for_bit(otcache_pack, tiny_model, hooks, mode):
    m = tiny_model("wan21_t2v")
    plan = plan_for(otcache_pack.otcache_core, [0, 1, 2, 5, 8])
    reports = []
    remove = hooks.add_report_listener(reports.append)
    try:
        kept = sample(m, apply(otcache_pack, m, plan, mode, reuse="linear"))
        offloaded = sample(m, apply(otcache_pack, m, plan, mode, reuse="linear", cache_device="cpu"))
    finally:
        remove()
    assert torch.equal(kept, offloaded)
    assert "in CPU memory" in reports[-1].line() and "in CPU memory" not in reports[-2].line()
    assert reports[-1].kept_bytes == reports[-2].kept_bytes > 0


@pytest.mark.parametrize("rule, depth", [("hold", 1), ("linear", 2), ("taylor2", 3)])
def test_model_mode_keeps_depth_noise_predictions_per_stream(otcache_pack, tiny_model, hooks, rule, depth):
    m = tiny_model("wan21_t2v")
    latent = m.make_latent()
    reports = []
    remove = hooks.add_report_listener(reports.append)
    try:
        sample(m, apply(otcache_pack, m, plan_for(otcache_pack.otcache_core, [0, 1, 2, 5, 8]), "model", reuse=rule),
               latent=latent)
    finally:
        remove()
    streams = 2  # cond and uncond at cfg 3
    assert reports[-1].kept_bytes == streams * depth * latent[0].numel() * 4  # float32
    assert f"cache held {reports[-1].kept_bytes / 2**20:.1f} MiB" in reports[-1].line()


def test_an_unknown_cache_device_is_refused_by_name(otcache_pack, tiny_model):
    m = tiny_model("wan21_t2v")
    with pytest.raises(otcache_pack.otcache_core.errors.OTCacheError, match="'cache_device' must be one of model, cpu"):
        apply(otcache_pack, m, plan_for(otcache_pack.otcache_core, [0, 5]), cache_device="gpu")
