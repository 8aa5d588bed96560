"""Warps, resampling and the rounding/repair rule."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otcache_core.errors import ScheduleError
from otcache_core.schedule import Schedule
from otcache_core.warp import (
    Warp,
    identity_warp,
    interpolate_warps,
    resample,
    round_to_schedule,
    sample_warp,
    warp_of,
)


@st.composite
def schedules(draw, max_steps=60):
    steps = draw(st.integers(1, max_steps))
    rest = draw(st.sets(st.integers(1, max(1, steps - 1)), max_size=steps - 1)) if steps > 1 else set()
    return Schedule.from_steps(sorted({0} | {s for s in rest if s < steps}), steps)


def test_warp_passes_through_normalised_schedule_points():
    phi = warp_of(Schedule.from_steps([0, 3, 9], 10))
    assert phi.knots_u == (0.0, 0.5, 1.0)
    assert phi.knots_v == pytest.approx((0.0, 1 / 3, 1.0))
    assert phi(0.25) == pytest.approx(1 / 6)


def test_single_step_schedule_has_constant_zero_warp():
    phi = warp_of(Schedule.from_steps([0], 10))
    assert phi(np.array([0.0, 0.5, 1.0])).tolist() == [0.0, 0.0, 0.0]


@given(schedules())
@settings(max_examples=300, deadline=None)
def test_resampling_to_own_steps_and_budget_is_identity(schedule):
    assert resample(schedule, schedule.steps, schedule.budget) == schedule


@given(schedules(), st.integers(1, 80), st.data())
@settings(max_examples=300, deadline=None)
def test_every_budget_gives_exactly_that_many_distinct_steps(schedule, steps, data):
    budget = data.draw(st.integers(1, steps))
    out = resample(schedule, steps, budget)
    assert out.steps == steps and out.budget == budget
    assert out.compute_steps[0] == 0
    assert list(out.compute_steps) == sorted(set(out.compute_steps))


@given(schedules(), st.integers(2, 80), st.data())
@settings(max_examples=200, deadline=None)
def test_last_step_is_kept_when_the_warp_keeps_it(schedule, steps, data):
    budget = data.draw(st.integers(2, steps))
    out = resample(schedule, steps, budget)
    if schedule.compute_steps[-1] == schedule.steps - 1 and schedule.budget > 1:
        assert out.compute_steps[-1] == steps - 1


def test_full_budget_computes_every_step():
    assert resample(Schedule.from_steps([0, 7, 9], 10), 12, 12) == Schedule.all_compute(12)


def test_round_to_schedule_repairs_collisions_deterministically():
    # five targets crowded at the start must spread into five distinct steps
    out = round_to_schedule(np.array([0.0, 0.2, 0.4, 0.6, 9.0]), 10, keep_last=True)
    assert out.compute_steps == (0, 1, 2, 3, 9)
    assert round_to_schedule(np.array([0.0, 0.2, 0.4, 0.6, 9.0]), 10, keep_last=True) == out


def test_round_to_schedule_is_l1_closest_among_increasing_sequences():
    targets = np.array([0.0, 4.0, 4.0, 4.0, 4.0])
    out = round_to_schedule(targets, 10)
    # 3..6 and 2..5 both cost 4 (1+0+1+2, 2+1+0+1); ties go to the earlier steps (lower medians)
    cost = sum(abs(s - t) for s, t in zip(out.compute_steps[1:], targets[1:]))
    assert cost == 4
    assert out.compute_steps == (0, 2, 3, 4, 5)


@given(st.lists(st.floats(0, 49), min_size=1, max_size=50))
@settings(max_examples=300, deadline=None)
def test_round_to_schedule_always_valid(values):
    targets = np.sort(np.array(values))
    targets[0] = 0.0
    out = round_to_schedule(targets, 50)
    assert out.budget == len(values)


@given(st.lists(st.integers(0, 39), min_size=2, max_size=12, unique=True))
@settings(max_examples=200, deadline=None)
def test_repair_is_l1_optimal_against_brute_force_on_small_cases(values):
    import itertools

    T = 12
    targets = np.sort(np.array(values, dtype=float) * (T - 1) / 39)
    targets[0] = 0.0
    B = len(targets)
    if B > T:
        return
    out = round_to_schedule(targets, T)
    rounded = np.floor(targets + 0.5)

    def cost(seq):
        return sum(abs(s - r) for s, r in zip(seq, rounded))

    best = min(cost((0,) + c) for c in itertools.combinations(range(1, T), B - 1))
    assert cost(out.compute_steps) == best


def test_warmup_prefix_is_computed_and_rest_follows_the_warp():
    out = sample_warp(identity_warp(), 50, 10, warmup=3)
    assert out.compute_steps[:3] == (0, 1, 2)
    assert out.budget == 10 and out.compute_steps[-1] == 49
    gaps = np.diff(out.compute_steps[3:])
    assert gaps.max() - gaps.min() <= 1  # uniform after the prefix


def test_warmup_must_leave_budget_for_the_warp():
    with pytest.raises(ScheduleError, match="warm-up"):
        sample_warp(identity_warp(), 20, 4, warmup=4)


def test_interpolating_warps_hits_both_ends_exactly():
    a = warp_of(Schedule.from_steps([0, 1, 2, 5, 9], 10))
    b = warp_of(Schedule.from_steps([0, 4, 9], 10))
    assert interpolate_warps(a, b, 0.0) is a
    assert interpolate_warps(a, b, 1.0) is b
    mid = interpolate_warps(a, b, 0.5)
    u = np.linspace(0, 1, 17)
    assert np.allclose(mid(u), 0.5 * a(u) + 0.5 * b(u))
    assert mid.keeps_last


def test_interpolation_weight_outside_unit_interval_is_rejected():
    with pytest.raises(ScheduleError):
        interpolate_warps(identity_warp(), identity_warp(), 1.5)


def test_malformed_warps_are_rejected():
    with pytest.raises(ScheduleError):
        Warp((0.0, 0.5), (0.0, 1.0))
    with pytest.raises(ScheduleError):
        Warp((0.0, 1.0), (0.5, 0.2))
