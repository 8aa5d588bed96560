"""Quality a user can ask for, on the trained DigitFlux through the real nodes: Calibrate (with the
testbed's VAE) measures each budget's PSNR, Schedule states it and picks a budget from a PSNR target,
and Compare measures two image batches with the metrics every benchmark uses."""

from __future__ import annotations

import pytest
import torch

STEPS = 10


@pytest.fixture(scope="module")
def df(otcache_pack):
    from . import digit_flux

    return digit_flux


@pytest.fixture(scope="module")
def testbed(df, tiny):
    return df.load()


@pytest.fixture(scope="module")
def calibration(otcache_pack, df, testbed, tmp_path_factory):
    record, _, text, _ = otcache_pack.nodes.calibrate_node.run_calibration(
        testbed.patcher, testbed.positive(df.prompt(2)), testbed.negative(), {"samples": df.empty_latent(1)},
        seed=0, samples=4, steps=STEPS, cfg=df.CFG, sampler_name=df.SAMPLER, scheduler=df.SCHEDULER, max_segment=5,
        trials=4, name="quality", storage="memory", vae=df.DigitVAE(), folder=tmp_path_factory.mktemp("cal"))
    return record


def schedule(otcache_pack, calibration=None, preset="flux.1-dev", **values):
    inputs = dict(preset=preset, steps=STEPS, budget=4, budget_as="computed steps", speedup=3.0, warmup_steps=0)
    inputs.update(values)
    return otcache_pack.nodes.OTCacheSchedule().make(calibration=calibration, **inputs)


def sample(df, testbed, model, seed=3):
    import comfy.sample

    latent = df.empty_latent(1)
    out = comfy.sample.sample(model, comfy.sample.prepare_noise(latent, seed), STEPS, df.CFG, df.SAMPLER,
                              df.SCHEDULER, testbed.positive(df.prompt(5)), testbed.negative(), latent, seed=seed,
                              disable_pbar=True)
    return df.DigitVAE().decode(out)


def test_a_calibration_with_a_vae_expects_a_psnr_of_decoded_images_at_every_validated_budget(calibration):
    expected = calibration.budgets.expected
    assert set(expected) == {c.budget for c in calibration.budgets.choices}
    for quality in expected.values():
        assert quality.space == "images" and quality.estimate == "leave-one-out" and quality.samples == 2
        assert 10 < quality.worst_psnr <= quality.psnr <= 100 and 0 < quality.ssim <= 1


def test_the_schedule_summary_states_the_expected_psnr_of_its_budget(otcache_pack, calibration):
    budget = max(calibration.budgets.expected)
    _, preview, text = schedule(otcache_pack, calibration, budget=budget)
    assert calibration.budgets.expected[budget].describe() in text
    _, plain, _ = schedule(otcache_pack, None, budget=budget)
    assert preview.shape[1] > plain.shape[1]  # the expected-PSNR curve under the strips


def test_a_preset_says_its_quality_on_this_model_is_not_measured(otcache_pack):
    _, _, text = schedule(otcache_pack)
    assert "quality on this model: not measured" in text


def test_a_quality_target_runs_the_smallest_budget_expected_to_meet_it_and_the_run_says_so(
        otcache_pack, df, testbed, calibration):
    expected = calibration.budgets.expected
    target = expected[min(expected)].psnr - 0.5
    plan, _, text = schedule(otcache_pack, calibration, budget_as="quality", target_psnr=target)
    assert f"quality target {target:g} dB: {min(expected)} of {STEPS} steps" in text
    reports = []
    remove = otcache_pack.nodes.cache_hooks.add_report_listener(reports.append)
    try:
        (patched,) = otcache_pack.nodes.OTCacheApply().apply(testbed.patcher, plan, "auto", 0.0, 1.0)
        sample(df, testbed, patched)
    finally:
        remove()
    assert len(reports[-1].computed) == min(expected)
    assert f"quality target {target:g} dB" in reports[-1].line()


def test_a_target_beyond_every_budget_computes_every_step(otcache_pack, calibration):
    plan, _, text = schedule(otcache_pack, calibration, budget_as="quality", target_psnr=99.0)
    assert plan.resolve(STEPS).schedule.budget == STEPS and "every step computed" in text


def test_a_quality_target_with_a_preset_asks_for_a_calibration(otcache_pack):
    with pytest.raises(otcache_pack.otcache_core.errors.OTCacheError, match="needs the measured quality of a calibration"):
        schedule(otcache_pack, budget_as="quality", target_psnr=40.0)


def test_compare_reports_the_metrics_modules_psnr_of_real_samples(otcache_pack, df, testbed, calibration):
    psnr = otcache_pack.otcache_core.metrics.psnr
    plan, _, _ = schedule(otcache_pack, calibration, budget=4)
    (patched,) = otcache_pack.nodes.OTCacheApply().apply(testbed.patcher, plan, "auto", 0.0, 1.0)
    full = torch.cat([sample(df, testbed, testbed.patcher, seed) for seed in (3, 4)])
    cached = torch.cat([sample(df, testbed, patched, seed) for seed in (3, 4)])
    out = otcache_pack.nodes.OTCacheCompare().compare(full, cached)
    report, heat = out["result"]
    expected = psnr(cached.movedim(-1, 1), full.movedim(-1, 1))
    assert report.startswith(f"PSNR {expected:.2f} dB (worst ")
    assert heat.shape == (2, 28, 28, 3) and out["ui"]["images"]
