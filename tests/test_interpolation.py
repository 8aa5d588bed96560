"""The prediction stage: schedules for any budget between (and beyond) reference and anchor."""

import pytest

from otcache_core.errors import ScheduleError
from otcache_core.interpolation import anchor_weight, predict
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.schedule import Schedule

# FLUX.1-dev LeMiCa lists at T=50 (published by the LeMiCa authors, Apache-2.0)
REF = Schedule.from_steps([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 18, 20, 25, 30, 35, 39, 42, 44, 45, 46, 47, 48, 49], 50)
ANCHOR = Schedule.from_steps([0, 1, 3, 7, 14, 21, 28, 35, 42, 49], 50)


def test_reference_budget_returns_the_reference_exactly():
    p = predict(REF, ANCHOR, 50, REF.budget)
    assert p.schedule == REF and p.lam == 0.0 and not p.extrapolated


def test_anchor_budget_returns_the_anchor_exactly():
    p = predict(REF, ANCHOR, 50, ANCHOR.budget)
    assert p.schedule == ANCHOR and p.lam == 1.0 and not p.extrapolated


@pytest.mark.parametrize("mapping", ["linear", "inverse"])
def test_every_budget_yields_exactly_b_distinct_steps(mapping):
    for budget in range(1, 51):
        s = predict(REF, ANCHOR, 50, budget, mapping=mapping).schedule
        assert s.budget == budget and len(set(s.compute_steps)) == budget and s.compute_steps[0] == 0


def test_both_inputs_keep_the_last_step_so_every_prediction_does():
    for budget in range(2, 51):
        assert predict(REF, ANCHOR, 50, budget).schedule.compute_steps[-1] == 49


def test_budget_between_uses_lambda_linear_in_budget():
    p = predict(REF, ANCHOR, 50, 18)
    assert p.regime == "between"
    assert p.lam == pytest.approx((26 - 18) / (26 - 10))


def test_inverse_mapping_is_linear_in_one_over_budget():
    assert anchor_weight(18 / 50, 26 / 50, 10 / 50, "inverse") == pytest.approx((1 / 18 - 1 / 26) / (1 / 10 - 1 / 26))
    assert predict(REF, ANCHOR, 50, 18, mapping="inverse").lam < predict(REF, ANCHOR, 50, 18).lam


def test_above_the_reference_moves_toward_all_compute():
    p = predict(REF, ANCHOR, 50, 38)
    assert p.regime == "above_reference" and 0 < p.toward_all_compute < 1
    assert predict(REF, ANCHOR, 50, 50).schedule == Schedule.all_compute(50)


def test_below_the_anchor_is_flagged_as_extrapolated():
    p = predict(REF, ANCHOR, 50, 6)
    assert p.extrapolated and p.regime == "below_anchor" and p.schedule.budget == 6


def test_other_step_counts_resample_the_warps():
    p = predict(REF, ANCHOR, 28, 8)
    assert p.schedule.steps == 28 and p.schedule.budget == 8 and p.schedule.compute_steps[-1] == 27


def test_reference_must_compute_more_than_the_anchor():
    with pytest.raises(ScheduleError, match="larger share"):
        predict(ANCHOR, REF, 50, 15)


def test_budget_above_steps_is_a_clear_error():
    with pytest.raises(ScheduleError, match="more than the 50 steps"):
        predict(REF, ANCHOR, 50, 51)


def test_plan_keeps_the_budget_fraction_at_another_step_count():
    plan = SchedulePlan.from_schedule(ANCHOR, label="anchor")
    resolved = plan.resolve(28)
    assert resolved.schedule.budget == round(10 / 50 * 28)
    assert any("resampled from T=50" in n for n in resolved.notes)
    assert plan.resolve(50).schedule == ANCHOR


def test_plan_with_a_speedup_target():
    plan = SchedulePlan.from_schedule(REF, rule=BudgetRule("speedup", 4.0))
    assert plan.resolve(40).schedule.budget == 10


def test_budget_rule_rejects_impossible_values():
    with pytest.raises(ScheduleError):
        BudgetRule("steps", 60, 50)
    with pytest.raises(ScheduleError):
        BudgetRule("speedup", 0.5)
