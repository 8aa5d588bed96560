"""The run-time forecast check: each segment's forecast is scored when the segment ends, and each sample
(row) of each stream stands in with what was closest there, in the next segment."""

from __future__ import annotations

import torch

from otcache_core.forecast_check import ForecastCheck, alternatives
from otcache_core.reuse import parse_rule
from otcache_core.runtime import CacheRun
from otcache_core.schedule import Schedule

LINEAR, HOLD, TAYLOR2 = parse_rule("linear"), parse_rule("hold"), parse_rule("taylor2")
SIGMAS = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]


def rows(*values: float) -> torch.Tensor:
    """One stored value per sample: ``[rows, 2]``."""
    return torch.tensor([[v, v] for v in values])


def test_a_second_order_rule_falls_back_to_linear_then_hold_and_hold_to_nothing():
    assert [r.name for r in alternatives(TAYLOR2)] == ["taylor2", "linear", "hold"]
    assert [r.name for r in alternatives(LINEAR)] == ["linear", "hold"]
    assert alternatives(HOLD) == (HOLD,) and alternatives(parse_rule("meancache3")) == (parse_rule("meancache3"),)


def checked_run(check: bool) -> CacheRun:
    """Steps 0, 1 computed, 2-3 reused, 4 computed, 5-6 reused, 7 computed (linear)."""
    return CacheRun(Schedule.from_steps([0, 1, 4, 7, 8, 9], 10), mode="model", rules=LINEAR, sigmas=SIGMAS,
                    check_forecasts=check)


def feed(run: CacheRun, at_step_4: torch.Tensor) -> torch.Tensor:
    """Store rows growing linearly at steps 0 and 1 (slope 1 per step), ``at_step_4`` at step 4, and
    return the stand-in of step 5."""
    run.store("s", rows(0.0, 0.0), SIGMAS[0])
    run.store("s", rows(1.0, 1.0), SIGMAS[1])
    for step in (2, 3):
        run.standin("s", step, SIGMAS[step])
    run.store("s", at_step_4, SIGMAS[4])
    return run.standin("s", 5, SIGMAS[5])


def test_a_sample_whose_forecast_went_wrong_holds_in_the_next_segment_while_the_others_extrapolate():
    # row 0 went on as forecast (4 at step 4); row 1 turned back (0.5: holding 1 over the gap was far
    # closer to what the model did than forecasting 2 and 3)
    run = checked_run(True)
    got = feed(run, rows(4.0, 0.5))
    unchecked = feed(checked_run(False), rows(4.0, 0.5))
    assert torch.equal(got[0], unchecked[0])  # still the linear forecast
    assert torch.equal(got[1], rows(0.5)[0])  # held
    assert unchecked[1][0] < 0.4  # linear would have gone on falling
    assert "forecast checks: 1 of 2 rows fell back (hold 1)" in run.report().line()


def test_an_alternative_replaces_the_rule_only_when_clearly_closer():
    run = checked_run(True)
    feed(run, rows(4.0, 1.0))  # holding was as close as forecasting, not twice as close
    assert "forecast checks: 0 of 2 rows fell back" in run.report().line()


def test_the_rule_comes_back_once_its_forecast_is_the_closest_again():
    check = ForecastCheck()
    history = [(1.0, rows(0.0)), (0.9, rows(1.0))]
    check.forecasting("s", LINEAR)
    check.check("s", history, rows(1.0), 0.6, None)  # holding was right
    assert "s" in check.choice
    history = [(0.9, rows(1.0)), (0.6, rows(1.0))]
    check.forecasting("s", LINEAR)
    check.check("s", [(1.0, rows(0.0)), (0.9, rows(1.0))], LINEAR.standin([(1.0, rows(0.0)), (0.9, rows(1.0))], 0.6),
                0.6, None)  # exactly the forecast
    assert "s" not in check.choice


def test_a_stream_that_reused_nothing_is_not_checked():
    check = ForecastCheck()
    check.check("s", [(1.0, rows(0.0)), (0.9, rows(1.0))], rows(2.0), 0.8, None)
    assert check.checked == 0 and check.describe() is None


def test_the_check_changes_nothing_in_an_all_compute_run(make_sampler):
    sampler = make_sampler(steps=8)
    full = sampler.run([True] * 8).final
    run = CacheRun(Schedule.all_compute(8), rules=LINEAR, check_forecasts=True)
    assert run.report().notes == []
    assert torch.equal(sampler.run([True] * 8, reuse=LINEAR).final, full)


def test_a_run_without_the_check_reports_none():
    run = checked_run(False)
    feed(run, rows(4.0, 1.0))
    assert "forecast checks" not in run.report().line()
