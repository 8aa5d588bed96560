"""Reuse rules: the stand-in each rule gives, the per-edge rule table of version-2 files, and the engine's
history."""

import pytest
import torch

from otcache_core.errors import OTCacheError
from otcache_core.reuse import EdgeRules, parse_rule, parse_rules, rules_summary, segment_rules_of, step_rules
from otcache_core.runtime import CacheRun
from otcache_core.schedule import Schedule


def line(sigma: float) -> torch.Tensor:
    return torch.tensor([1.0, -2.0]) + sigma * torch.tensor([0.5, 3.0])


def parabola(sigma: float) -> torch.Tensor:
    return line(sigma) + sigma**2 * torch.tensor([2.0, -1.0])


def history(fn, sigmas):
    return [(s, fn(s)) for s in sigmas]


def test_hold_returns_the_last_stored_tensor_itself():
    stored = history(line, [0.9, 0.8])
    assert parse_rule("hold").standin(stored, 0.5) is stored[-1][1]


def test_linear_extrapolates_the_secant_of_the_last_two_computed_steps():
    assert torch.allclose(parse_rule("linear").standin(history(parabola, [1.0, 0.9, 0.8]), 0.6),
                          parabola(0.8) + (0.6 - 0.8) * (parabola(0.8) - parabola(0.9)) / (0.8 - 0.9))
    assert torch.allclose(parse_rule("linear").standin(history(line, [0.9, 0.8]), 0.3), line(0.3))


def test_quadratic_is_exact_on_a_parabola_and_linear_with_two_values():
    assert torch.allclose(parse_rule("quadratic").standin(history(parabola, [1.0, 0.9, 0.8]), 0.55), parabola(0.55))
    assert torch.allclose(parse_rule("quadratic").standin(history(line, [0.9, 0.8]), 0.3), line(0.3))


def test_taylor2_adds_the_curvature_with_the_last_secant_as_the_slope():
    sigmas = [1.0, 0.9, 0.7]  # uneven, as schedules are
    d1 = (parabola(0.7) - parabola(0.9)) / (0.7 - 0.9)
    d1_before = (parabola(0.9) - parabola(1.0)) / (0.9 - 1.0)
    d2 = 2 * (d1 - d1_before) / (0.7 - 1.0)
    h = 0.4 - 0.7
    got = parse_rule("taylor2").standin(history(parabola, sigmas), 0.4)
    assert torch.allclose(got, parabola(0.7) + h * d1 + 0.5 * h * h * d2)
    assert torch.allclose(d2, 2 * torch.tensor([2.0, -1.0]))  # the parabola's true second derivative


def test_taylor2_adds_half_the_curvature_quadratic_adds_over_one_gap():
    stored = history(parabola, [1.0, 0.9, 0.8])
    linear = parse_rule("linear").standin(stored, 0.7)
    taylor = parse_rule("taylor2").standin(stored, 0.7)
    quadratic = parse_rule("quadratic").standin(stored, 0.7)
    assert torch.allclose(taylor - linear, 0.5 * (quadratic - linear), atol=1e-5)


def test_taylor2_is_linear_with_two_values_and_exact_on_a_line():
    assert torch.allclose(parse_rule("taylor2").standin(history(line, [0.9, 0.8]), 0.3), line(0.3))
    assert torch.allclose(parse_rule("taylor2").standin(history(line, [1.0, 0.9, 0.8]), 0.3), line(0.3))


GRID = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]


def test_horizon_is_linear_for_its_steps_past_the_last_computed_step_then_holds_what_it_reached():
    stored = history(parabola, [1.0, 0.9])
    linear = parse_rule("linear")
    for sigma in (0.8, 0.7):  # one and two steps past 0.9
        assert torch.equal(parse_rule("horizon2").standin(stored, sigma, grid=GRID), linear.standin(stored, sigma))
    for sigma in (0.6, 0.45, 0.3):  # beyond: the value at 0.7
        assert torch.equal(parse_rule("horizon2").standin(stored, sigma, grid=GRID), linear.standin(stored, 0.7))
    assert torch.equal(parse_rule("horizon1").standin(stored, 0.5, grid=GRID), linear.standin(stored, 0.8))


def test_horizon_without_the_runs_schedule_is_linear():
    stored = history(parabola, [1.0, 0.9])
    assert torch.equal(parse_rule("horizon2").standin(stored, 0.4), parse_rule("linear").standin(stored, 0.4))


def test_corrected_rules_hold_with_a_single_value_and_at_the_stored_sigma():
    one = history(line, [0.8])
    for name in ("linear", "quadratic", "horizon2", "meancache3"):
        assert torch.equal(parse_rule(name).standin(one, 0.5, 0.4), line(0.8))
    two = history(line, [0.9, 0.8])
    assert torch.equal(parse_rule("linear").standin(two, 0.8), line(0.8))


def test_meancache_moves_the_last_value_by_the_window_slope_over_the_coming_step():
    # steps at 1.0, 0.9, 0.8 with values v_k; the current step is at 0.7, the next at 0.6
    values = [torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([3.0])]
    window = list(zip([1.0, 0.9, 0.8], values))
    average = (-0.1 * 0.0 - 0.1 * 1.0 - 0.1 * 3.0) / (0.7 - 1.0)  # (x_t - x_{t-K}) / (sigma_t - sigma_{t-K})
    slope = (average - 0.0) / (0.7 - 1.0)
    got = parse_rule("meancache3").standin(window, 0.7, 0.6)
    assert got.item() == pytest.approx(3.0 + slope * (0.6 - 0.7))
    # a window of two reads only the last two steps
    two = parse_rule("meancache2").standin(window, 0.7, 0.6)
    assert two.item() == pytest.approx(3.0 + ((1.0 + 3.0) / 2 - 1.0) / (0.7 - 0.9) * (0.6 - 0.7))


def test_meancache_of_a_constant_velocity_is_that_velocity():
    window = [(s, torch.tensor([2.5])) for s in (1.0, 0.9, 0.8, 0.7)]
    assert parse_rule("meancache4").standin(window, 0.6, 0.5).item() == pytest.approx(2.5)


def test_half_precision_values_are_combined_in_float32_and_keep_their_dtype():
    stored = [(0.9, torch.tensor([1.0, 2.0], dtype=torch.bfloat16)), (0.8, torch.tensor([1.5, 2.5], dtype=torch.bfloat16))]
    out = parse_rule("linear").standin(stored, 0.7)
    assert out.dtype == torch.bfloat16 and torch.equal(out, torch.tensor([2.0, 3.0], dtype=torch.bfloat16))


@pytest.mark.parametrize("name, message", [("cubic", "unknown reuse rule"), ("meancache1", "1 is 'hold'"),
                                           ("meancache", "unknown reuse rule"), ("horizon0", "0 is 'hold'"),
                                           (3, "unknown reuse rule")])
def test_unknown_rules_say_which_exist(name, message):
    with pytest.raises(OTCacheError, match=message):
        parse_rule(name)


def test_rules_are_parsed_once_into_canonical_objects_and_memory_is_stated_per_rule():
    assert [r.name for r in parse_rules([" Linear", "hold", "linear", "MEANCACHE3", "Horizon2"])] == [
        "linear", "hold", "meancache3", "horizon2"]
    assert parse_rule(parse_rule("linear")) == parse_rule("linear")
    names = ("hold", "linear", "horizon3", "quadratic", "meancache5")
    assert [parse_rule(n).depth for n in names] == [1, 2, 2, 3, 5]
    assert [parse_rule(n).lookback for n in names] == [0, 1, 1, 2, 4]


def rules(*names):
    return [parse_rule(n) for n in names]


def test_step_rules_give_each_step_the_rule_of_its_segment():
    schedule = Schedule.from_steps([0, 3, 5], 7)
    assert step_rules(schedule, rules("linear", "hold", "quadratic")) == rules(*["linear"] * 3, "hold", "hold",
                                                                              "quadratic", "quadratic")
    assert step_rules(schedule, None) == rules(*["hold"] * 7)
    assert step_rules(schedule, parse_rule("horizon2")) == rules(*["horizon2"] * 7)
    with pytest.raises(OTCacheError, match="one per segment"):
        step_rules(schedule, rules("linear"))


def test_segment_rules_of_is_the_inverse_of_step_rules():
    schedule = Schedule.from_steps([0, 1, 3, 5], 7)
    segment = rules("hold", "linear", "quadratic", "horizon2")
    assert segment_rules_of(schedule, step_rules(schedule, segment)) == tuple(segment)


def test_rules_summary_counts_most_used_first():
    assert rules_summary(["hold", "linear", "linear"]) == "linear x2, hold x1"
    assert rules_summary({"hold": 2, "linear": 7}) == "linear x7, hold x2"


# -- per-edge rules ----------------------------------------------------------------------------------


def table(fallback="majority") -> EdgeRules:
    return EdgeRules.from_matrix(_matrix({(0, 3): "linear", (3, 6): "quadratic", (6, 10): "hold", (0, 2): "linear"}),
                                 10, fallback)


def _matrix(named: dict) -> list:
    return [[named.get((i, j)) for j in range(11)] for i in range(11)]


def test_measured_segments_take_their_edge_rule():
    found, fallbacks = table().segment_rules(Schedule.from_steps([0, 3, 6], 10))
    assert found == tuple(rules("linear", "quadratic", "hold")) and fallbacks == 0


def test_segments_that_reuse_nothing_need_no_rule():
    found, fallbacks = table().segment_rules(Schedule.from_steps([0, 1, 2, 3, 6], 10))
    assert found[:3] == tuple(rules("hold", "hold", "hold")) and fallbacks == 0


def test_unmeasured_segments_take_the_majority_rule_or_the_nearest_edge_in_normalised_time():
    found, fallbacks = table().segment_rules(Schedule.from_steps([0, 6, 12], 20))  # the same cut at T = 20
    assert found == tuple(rules(*["linear"] * 3)) and fallbacks == 3
    found, fallbacks = table("nearest").segment_rules(Schedule.from_steps([0, 6, 12], 20))
    assert found == tuple(rules("linear", "quadratic", "hold")) and fallbacks == 3


def test_edge_rules_round_trip_through_their_matrix():
    t = table()
    assert EdgeRules.from_matrix(t.to_matrix(), 10) == t
    assert EdgeRules.from_matrix(table("nearest").to_matrix(), 10, "nearest") == table("nearest")


# -- the engine's per-stream history -------------------------------------------------------------------


def test_a_run_keeps_only_the_history_its_rules_need():
    for given, depth in ((None, 1), (parse_rule("linear"), 2), (rules("hold", "quadratic", "hold"), 3)):
        run = CacheRun(Schedule.from_steps([0], 3), rules=given)
        for s in (1.0, 0.9, 0.8, 0.7):
            run.store("a", line(s), s)
        assert run.kept("a") == depth, given


def test_standin_uses_the_rule_of_the_step():
    run = CacheRun(Schedule.from_steps([0, 1, 4], 6), rules=rules("hold", "linear", "linear", "linear", "hold", "hold"))
    run.store("a", line(1.0), 1.0)
    run.store("a", line(0.8), 0.8)
    assert torch.allclose(run.standin("a", 3, 0.4), line(0.4))  # linear
    assert torch.equal(run.standin("a", 5, 0.2), line(0.8))  # hold


def test_a_second_value_at_the_same_sigma_replaces_the_first():
    run = CacheRun(Schedule.from_steps([0], 4), rules=parse_rule("linear"))
    run.store("a", line(1.0), 1.0)
    run.store("a", line(0.5) * 7, 0.5)
    run.store("a", line(0.5), 0.5)  # e.g. Heun's second evaluation, then the next step's first
    assert run.kept("a") == 2 and torch.allclose(run.standin("a", 2, 0.25), line(0.25))


def test_a_layout_change_restarts_the_history():
    run = CacheRun(Schedule.from_steps([0], 4), rules=parse_rule("linear"))
    run.store("a", torch.zeros(2), 1.0)
    run.store("a", torch.ones(3), 0.5)
    assert run.kept("a") == 1 and torch.equal(run.standin("a", 2, 0.25), torch.ones(3))


def test_a_per_step_rule_gives_one_stand_in_per_step_and_remembers_it():
    sigmas = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    run = CacheRun(Schedule.from_steps([0, 1], 5), rules=parse_rule("meancache2"), sigmas=sigmas)
    run.store("a", torch.tensor([0.0]), 1.0)
    run.store("a", torch.tensor([1.0]), 0.8)
    first = run.standin("a", 2, 0.6)
    assert run.standin("a", 2, 0.5) is first  # a second call of step 2 (another sigma) gets the same
    # the window average of steps 0..1 is 0.5, the slope (0.5 - 0) / (0.6 - 1.0): one step on from 1.0
    assert first.item() == pytest.approx(1.0 + (0.5 / -0.4) * (0.4 - 0.6))
    second = run.standin("a", 3, 0.4)  # its window holds step 1 (computed) and step 2 (the stand-in)
    average = (1.0 + first.item()) / 2
    assert second.item() == pytest.approx(first.item() + (average - 1.0) / (0.4 - 0.8) * (0.2 - 0.4))


def test_a_horizon_rule_reads_the_runs_schedule():
    run = CacheRun(Schedule.from_steps([0, 1], 8), rules=parse_rule("horizon1"), sigmas=GRID)
    run.store("a", line(1.0), 1.0)
    run.store("a", line(0.9), 0.9)
    assert torch.allclose(run.standin("a", 2, 0.8), line(0.8))
    assert torch.allclose(run.standin("a", 5, 0.5), line(0.8))  # held one step past the last computed one


def test_the_report_names_the_rules_of_the_reused_steps():
    run = CacheRun(Schedule.from_steps([0, 3], 6), rules=rules(*["linear"] * 3, *["hold"] * 3))
    run.store("a", torch.ones(1), 1.0)
    for step in range(6):
        run.plan_call(step, True)
    report = run.report()
    assert report.rules == {"linear": 2, "hold": 2}
    assert "rules: hold x2, linear x2" in report.line()
    assert "rules" not in CacheRun(Schedule.all_compute(3)).report().line()
