"""Reuse rules inside a real ComfyUI: every family, both modes, the rule applied where the schedule says.

A reused call gets the stand-in of its segment's rule at its own sigma; an all-compute schedule stays
bit-identical under any rule; state never leaks between runs; files from before rules still load and
hold, bit for bit.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from .test_apply_runtime import ALL_FAMILIES, BLOCK_FAMILIES, FAMILY_MODES, STEPS, apply, plan_for, sample

COMPUTED = [0, 1, 4, 9]


def plan_with_rules(core, compute_steps, rules, steps=STEPS):
    schedule = core.schedule.Schedule.from_steps(compute_steps, steps)
    return core.plan.SchedulePlan.from_schedule(schedule, label="test",
                                                rules=tuple(core.reuse.parse_rule(r) for r in rules))


class OutputSpy:
    """An APPLY_MODEL wrapper placed *outside* OTCache's: sees every call's input and what OTCache returned."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, torch.Tensor, torch.Tensor]] = []

    def __call__(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        self.calls.append((float(args[1].reshape(-1)[0]), args[0].detach().clone(), out.detach().clone()))
        return out


def spied(otcache_pack, m, plan, mode, **kw):
    import comfy.patcher_extension as pe

    outer = m.patcher.clone()
    spy = OutputSpy()
    outer.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test_outer_spy", spy)
    return otcache_pack.nodes.apply_node.apply_otcache(outer, plan, mode, **kw), spy


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_all_compute_is_bit_identical_under_a_corrected_rule(otcache_pack, core, tiny_model, family, mode):
    m = tiny_model(family)
    patched = apply(otcache_pack, m, plan_for(core, range(STEPS)), mode, reuse="linear")
    assert torch.equal(sample(m, patched), sample(m))


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_model_mode_returns_the_linear_extrapolation_of_the_stored_noise_predictions(otcache_pack, core, tiny_model,
                                                                                      reports, family):
    """Segments (1, 4) linear, (4, 9) hold: what the sampler got at each reused step, read from outside."""
    m = tiny_model(family)
    plan = plan_with_rules(core, COMPUTED, ["hold", "linear", "hold", "hold"])
    patched, spy = spied(otcache_pack, m, plan, "model")
    sample(m, patched)
    sigmas = [s for s, _, _ in spy.calls]
    eps = [(x - out) / s for s, x, out in spy.calls]  # what the sampler integrates: eps = (x - denoised) / sigma
    assert len(eps) == STEPS
    for t in (2, 3):  # secant of steps 0 and 1
        expected = eps[1] + (sigmas[t] - sigmas[1]) * (eps[1] - eps[0]) / (sigmas[1] - sigmas[0])
        assert torch.allclose(eps[t], expected, rtol=1e-4, atol=1e-5), t
    for t in (5, 6, 7, 8):  # hold: the noise prediction of step 4
        assert torch.allclose(eps[t], eps[4], rtol=1e-4, atol=1e-5), t
    assert reports[-1].rules == {"linear": 2, "hold": 4}


@pytest.mark.parametrize("family", BLOCK_FAMILIES)
def test_blocks_mode_extrapolates_each_stage_residual_at_the_calls_sigma(otcache_pack, core, tiny_model, reports,
                                                                          monkeypatch, family):
    """Every reused block stage asks the engine for its segment's rule at the call's sigma, and gets the
    linear extrapolation of that stage's residuals from the last two computed steps."""
    m = tiny_model(family)
    runtime = otcache_pack.otcache_core.runtime
    stored: dict = {}
    given: list = []
    store, standin = runtime.CacheRun.store, runtime.CacheRun.standin

    def spy_store(self, key, value, sigma=None):
        if sigma is not None and key[0] != "latent":
            stored.setdefault(key, []).append((sigma, value.detach().clone()))
        return store(self, key, value, sigma)

    def spy_standin(self, key, step, sigma):
        out = standin(self, key, step, sigma)
        given.append((key, step, sigma, out.detach().clone()))
        return out

    monkeypatch.setattr(runtime.CacheRun, "store", spy_store)
    monkeypatch.setattr(runtime.CacheRun, "standin", spy_standin)
    out = sample(m, apply(otcache_pack, m, plan_with_rules(core, COMPUTED, ["hold", "linear", "linear", "hold"]),
                          "blocks"))
    assert torch.isfinite(out).all()
    assert given and {step for _, step, _, _ in given} == {2, 3, 5, 6, 7, 8}
    for key, step, sigma, value in given:
        history = [(s, v) for s, v in stored[key] if s > sigma]  # values computed before this call
        (s_b, q_b), (s_a, q_a) = history[-2], history[-1]
        assert torch.allclose(value, q_a + (sigma - s_a) * (q_a - q_b) / (s_a - s_b), rtol=1e-4, atol=1e-5)
    assert reports[-1].rules == {"linear": 6}


def test_the_rule_changes_the_output_and_the_log_line_names_it(otcache_pack, core, tiny_model, caplog):
    m = tiny_model("flux")
    plan = plan_for(core, COMPUTED)
    hold = sample(m, apply(otcache_pack, m, plan, "model", reuse="hold"))
    with caplog.at_level(logging.INFO, logger="OTCache"):
        linear = sample(m, apply(otcache_pack, m, plan, "model", reuse="linear"))
    assert not torch.equal(hold, linear)
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("OTCache [")][-1]
    assert "rules: linear x6" in line and "reuse rule linear for every segment" in line


def test_heun_extrapolates_at_each_evaluations_own_sigma(otcache_pack, core, tiny_model, reports):
    """Heun evaluates twice per step; every reused evaluation gets the secant of the last two computed
    evaluations (at distinct sigmas) extrapolated to its own sigma."""
    m = tiny_model("flux")
    computed = [0, 1, 4, 7, 9]
    patched, spy = spied(otcache_pack, m, plan_for(core, computed), "model", reuse="linear")
    out = sample(m, patched, sampler="heun")
    assert torch.isfinite(out).all() and reports[-1].computed == computed
    assert len(spy.calls) > STEPS
    sample_sigmas = spy_sigmas(m)
    history: list = []
    checked = set()
    for sigma, x, y in spy.calls:
        eps = (x - y) / sigma
        step = core.runtime.step_index(sample_sigmas, sigma)
        if step in computed:
            if history and history[-1][0] == sigma:
                history.pop()
            history.append((sigma, eps))
            continue
        (s_b, q_b), (s_a, q_a) = history[-2], history[-1]
        assert torch.allclose(eps, q_a + (sigma - s_a) * (q_a - q_b) / (s_a - s_b), rtol=1e-4, atol=1e-5)
        checked.add(round(sigma, 6))
    assert len(checked) >= 4


def spy_sigmas(m) -> list[float]:
    """The sigmas of a 10-step euler/simple run of ``m`` (what ``sample`` uses)."""
    import comfy.samplers

    ks = comfy.samplers.KSampler(m.patcher, steps=STEPS, device="cpu", sampler="heun", scheduler="simple")
    return ks.sigmas.tolist()


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_a_resolution_or_batch_change_between_runs_starts_a_fresh_history(otcache_pack, core, tiny_model, reports,
                                                                           family, mode):
    m = tiny_model(family)
    patched = apply(otcache_pack, m, plan_for(core, COMPUTED), mode, reuse="quadratic")
    sample(m, patched, latent=m.make_latent(1, 8, 8))
    # Lumina 2's conditioning carries an attention mask of the prompt's batch, which ComfyUI does not
    # repeat for a larger latent batch (sampling fails without OTCache too): resolution only.
    big = m.make_latent(1 if family == "lumina2" else 2, 16, 16)
    after = sample(m, patched, latent=big)
    fresh = sample(m, apply(otcache_pack, m, plan_for(core, COMPUTED), mode, reuse="quadratic"), latent=big)
    assert torch.equal(after, fresh) and reports[-1].forced == []


def version_1_calibration(steps=STEPS) -> dict:
    """A calibration as OTCache wrote it before reuse rules (format version 1)."""
    return {
        "format": "otcache.calibration", "version": 1, "name": "old-tiny", "steps": steps,
        "model": {"family": "flux", "families": ["flux"]}, "sampler": {"sampler": "euler"},
        "reference": {"compute_steps": [0, 1, 2, 3, 5, 7], "budget": 6, "steps": steps, "method": "leximax"},
        "anchor": {"compute_steps": [0, 4, 9], "budget": 3, "steps": steps, "method": "optuna"},
        "edge_errors": None, "cost": {}, "source": {}, "notes": [], "created": "2026-11-01T00:00:00+00:00",
    }


def test_an_old_calibration_file_loads_runs_with_the_default_rule_and_holds_one_choice_away(otcache_pack, core,
                                                                                           tiny_model, tmp_path,
                                                                                           reports):
    import folder_paths

    nodes = otcache_pack.nodes
    m = tiny_model("flux")
    old_user = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        folder = nodes.storage.user_calibration_dir()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "old-tiny.json").write_text(json.dumps(version_1_calibration()))
        names = nodes.storage.preset_names()
        name = next(n for n in names if "old-tiny" in n)
        plan, _, summary = nodes.OTCacheSchedule().make(name, STEPS, 4, "computed steps", 3.0, 0)
    finally:
        folder_paths.set_user_directory(old_user)
    default = core.reuse.DEFAULT_RULE
    assert f"it runs with {default}" in summary
    sample(m, nodes.OTCacheApply().apply(m.patcher, plan, "model", 0.0, 1.0)[0])
    assert any("names no rule" in n for n in reports[-1].notes) and set(reports[-1].rules) == {default.name}
    (hold,) = nodes.OTCacheApply().apply(m.patcher, plan, "model", 0.0, 1.0, "hold")
    schedule = plan.resolve(STEPS).schedule
    before_rules = core.plan.SchedulePlan.from_schedule(schedule, rules=core.reuse.HOLD_RULE)  # what it ran before
    assert torch.equal(sample(m, hold), sample(m, apply(otcache_pack, m, before_rules, "model")))


def test_a_shipped_preset_runs_with_the_rule_it_states(otcache_pack, core, tiny_model, reports):
    nodes = otcache_pack.nodes
    m = tiny_model("flux")
    plan, _, summary = nodes.OTCacheSchedule().make("flux.1-dev", STEPS, 4, "computed steps", 3.0, 0)
    sample(m, nodes.OTCacheApply().apply(m.patcher, plan, "auto", 0.0, 1.0)[0])
    stated = plan.rule_for_all
    assert stated is not None and set(reports[-1].rules) == {stated.name}
    assert f"reuse rule {stated} for every segment" in summary


def test_a_bad_reuse_choice_names_the_input(otcache_pack, core, tiny_model):
    with pytest.raises(core.errors.OTCacheError, match="'reuse'"):
        apply(otcache_pack, tiny_model("flux"), plan_for(core, COMPUTED), reuse="cubic")


@pytest.mark.parametrize("family", ["flux", "wan21_t2v", "sd15"])
def test_auto_reuses_the_whole_model_output(otcache_pack, core, tiny_model, reports, family):
    """auto = model for every family (the measured choice, see the README)."""
    m = tiny_model(family)
    sample(m, apply(otcache_pack, m, plan_for(core, COMPUTED), "auto"))
    assert reports[-1].mode == "model"
