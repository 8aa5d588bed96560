"""Expected quality: what each validated budget is expected to give against full compute (PSNR, dB),
estimated leave-one-out, recorded in the calibration, and a budget chosen from a quality target."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from otcache_core.calibrate import CalibrationSettings, calibrate, default_budgets
from otcache_core.calibration import Calibration
from otcache_core.errors import FileFormatError, ScheduleError
from otcache_core.metrics import psnr, relative_l1
from otcache_core.plan import BudgetRule, SchedulePlan, budget_for_quality
from otcache_core.presets import load_preset
from otcache_core.quality import (
    IN_SAMPLE, LATENTS, LEAVE_ONE_OUT, ExpectedQuality, SampleFigures, expected_quality,
    non_decreasing, per_sample_psnr, smallest_budget_for)
from otcache_core.reuse import parse_rules

T, K = 10, 4
PRESETS = Path(__file__).resolve().parents[1] / "schedules"


@pytest.fixture(scope="module")
def validated(toy_model):
    from tests.conftest import make_toy_sampler

    ref, anchor = default_budgets(T)
    settings = CalibrationSettings(ref, anchor, max_skip=K, trials=6, rules=parse_rules(["linear", "hold"]))
    return calibrate(make_toy_sampler(toy_model, steps=T), settings, distance=relative_l1, objective_name="rel_l1",
                     name="toy", model={"family": "toy"},
                     validation=make_toy_sampler(toy_model, steps=T, seed=7)).calibration


def figures(distances, psnrs) -> SampleFigures:
    return SampleFigures(tuple(distances), tuple(psnrs))


def smallest(scores):
    """A chooser: at each budget the pair with the smallest mean distance."""
    return {b: min(pairs, key=pairs.get) for b, pairs in scores.items()}


def test_psnr_per_sample_is_the_metrics_psnr_of_each_image():
    torch.manual_seed(0)
    full = torch.rand(3, 1, 8, 8)
    cached = (full + 0.05 * torch.randn_like(full)).clamp(0, 1)
    values = per_sample_psnr(cached, full, 1.0)
    assert values == pytest.approx([psnr(cached[i : i + 1], full[i : i + 1]) for i in range(3)])


def test_a_sample_identical_to_full_compute_counts_as_the_cap_not_infinity():
    full = torch.rand(2, 4)
    assert per_sample_psnr(full.clone(), full) == (100.0, 100.0)


def test_latent_psnr_is_measured_over_each_samples_own_range():
    full = torch.stack([torch.linspace(0, 1, 16), torch.linspace(0, 10, 16)])
    cached = full + torch.tensor([[0.01], [0.1]])  # the same error relative to each sample's range
    a, b = per_sample_psnr(cached, full)
    assert a == pytest.approx(b) == pytest.approx(40.0)


def test_each_sample_is_scored_under_the_choice_the_other_samples_made():
    # in sample, B wins (mean 0.25 < 0.3); without sample 0, B wins; without sample 1, A wins
    table = {5: {"A": figures([0.1, 0.5], [40.0, 20.0]), "B": figures([0.3, 0.2], [30.0, 35.0])}}
    expected = expected_quality(table, smallest, lambda pair: pair, LATENTS)[5]
    assert expected.psnr == pytest.approx((30.0 + 20.0) / 2)  # B on sample 0, A on sample 1
    assert expected.worst_psnr == 20.0
    assert expected.estimate == LEAVE_ONE_OUT and expected.samples == 2


def test_the_estimate_is_below_the_in_sample_score_of_a_lucky_winner():
    table = {5: {"A": figures([0.1, 0.5], [40.0, 20.0]), "B": figures([0.3, 0.2], [30.0, 35.0])}}
    in_sample = (30.0 + 35.0) / 2  # B, scored on the samples that chose it
    assert expected_quality(table, smallest, lambda pair: pair, LATENTS)[5].psnr < in_sample


def test_with_one_validation_sample_the_estimate_is_in_sample_and_says_so():
    table = {5: {"A": figures([0.1], [40.0]), "B": figures([0.3], [30.0])}}
    expected = expected_quality(table, smallest, lambda pair: pair, LATENTS)[5]
    assert expected.psnr == 40.0 and expected.estimate == IN_SAMPLE
    assert "optimistic" in expected.describe()


def test_the_figures_never_fall_as_the_budget_grows():
    table = {b: {"A": figures([0.1, 0.1], [p, p - 2])} for b, p in {4: 30.0, 5: 36.0, 6: 34.0, 7: 40.0}.items()}
    expected = expected_quality(table, smallest, lambda pair: pair, LATENTS)
    assert [expected[b].psnr for b in (4, 5, 6, 7)] == [29.0, 34.0, 34.0, 39.0]  # means 29, 35, 33, 39: 5, 6 pooled
    assert non_decreasing({1: 3.0, 2: 1.0, 3: 2.0, 4: 5.0}) == {1: 2.0, 2: 2.0, 3: 2.0, 4: 5.0}


def test_the_description_states_mean_worst_and_samples():
    quality = ExpectedQuality(44.14, 39.02, 2)
    assert quality.describe() == "expected PSNR 44.1 dB (worst 39.0 dB) vs full compute, validated on 2 samples"
    assert "latent PSNR" in ExpectedQuality(44.1, 39.0, 2, LATENTS).describe()


def test_the_smallest_budget_meeting_a_target_needs_every_larger_budget_to_meet_it_too():
    expected = {b: ExpectedQuality(p, p - 3, 2) for b, p in {10: 50.0, 9: 47.0, 8: 44.0, 7: 45.5, 6: 41.0}.items()}
    assert smallest_budget_for(45.0, expected) == 9  # 7 is lucky: 8 below it misses
    assert smallest_budget_for(40.0, expected) == 6
    assert smallest_budget_for(51.0, expected) is None


def test_every_validated_budget_records_its_expected_quality(validated):
    for choice in validated.budgets.choices:
        assert choice.quality is not None
        assert choice.quality.samples == validated.budgets.samples
        assert choice.quality.space == LATENTS and choice.quality.estimate == LEAVE_ONE_OUT
        assert math.isfinite(choice.quality.psnr) and choice.quality.worst_psnr <= choice.quality.psnr


def test_more_computed_steps_are_expected_to_be_closer_to_full_compute(validated):
    expected = validated.budgets.expected
    assert expected[max(expected)].psnr > expected[min(expected)].psnr


def test_the_summary_states_each_budgets_expected_psnr(validated):
    summary = validated.summary()
    for budget, quality in validated.budgets.expected.items():
        assert f"{budget} of {T}: " in summary and f"{quality.psnr:.1f} dB" in summary


def test_the_expected_quality_survives_saving(validated, tmp_path):
    validated.save(tmp_path / "toy.json")
    assert Calibration.load(tmp_path / "toy.json").budgets.expected == validated.budgets.expected


def test_a_bad_quality_record_is_named(validated, tmp_path):
    document = validated.to_dict()
    document["budgets"]["budgets"][0]["quality"]["space"] = "pixels"
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(FileFormatError, match=r"budgets\[0\]: quality: field 'space'"):
        Calibration.load(tmp_path / "bad.json")


def test_a_calibration_from_before_quality_was_recorded_loads_without_it(validated, tmp_path):
    document = validated.to_dict()
    for item in document["budgets"]["budgets"]:
        del item["quality"]
    (tmp_path / "old.json").write_text(json.dumps(document))
    old = Calibration.load(tmp_path / "old.json")
    assert old.budgets.expected == {}
    with pytest.raises(ScheduleError, match="recorded no quality"):
        budget_for_quality(old, 40.0)


def test_a_quality_target_picks_the_smallest_budget_expected_to_meet_it(validated):
    expected = validated.budgets.expected
    target = expected[min(expected)].psnr + 0.5 * (expected[max(expected)].psnr - expected[min(expected)].psnr)
    rule, note = budget_for_quality(validated, target)
    assert rule == BudgetRule("steps", smallest_budget_for(target, expected), T)
    assert f"quality target {target:g} dB" in note and "expected" in note


def test_a_target_no_budget_reaches_computes_every_step_and_says_so(validated):
    rule, note = budget_for_quality(validated, 99.0)
    plan = SchedulePlan.from_calibration(validated, rule)
    assert plan.resolve(T).schedule.budget == T
    assert "no validated budget is expected to reach it" in note and "every step computed" in note


def test_a_quality_budget_rescales_to_another_step_count_like_any_budget(validated):
    expected = validated.budgets.expected
    rule, _ = budget_for_quality(validated, expected[min(expected)].psnr - 1.0)
    assert SchedulePlan.from_calibration(validated, rule).resolve(2 * T).schedule.budget == 2 * rule.value


def test_a_preset_cannot_answer_a_quality_target():
    with pytest.raises(ScheduleError, match="preset.*Connect OTCache Calibrate"):
        budget_for_quality(load_preset(PRESETS / "flux.1-dev.json"), 40.0)


def test_a_plan_knows_the_expected_quality_of_the_budget_it_runs(validated):
    budget = max(validated.budgets.expected)
    plan = SchedulePlan.from_calibration(validated, BudgetRule("steps", budget, T))
    assert plan.expected_quality(T) == (budget, validated.budgets.expected[budget])
    assert SchedulePlan.from_calibration(load_preset(PRESETS / "flux.1-dev.json"), BudgetRule("steps", 4, T)).expected_quality(T) is None
