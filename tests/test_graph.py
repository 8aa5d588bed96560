"""Reference paths: exact leximax DP against brute force, the power objective, bounds and errors."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otcache_core.errors import OTCacheError, ScheduleError
from otcache_core.graph import path_errors, solve_reference
from otcache_core.schedule import Schedule


def brute_force(w, T, B, K, key):
    best = None
    for inner in itertools.combinations(range(1, T), B - 1):
        nodes = (0,) + inner + (T,)
        if any(j - i > K for i, j in zip(nodes, nodes[1:])):
            continue
        weights = [0.0 if j == i + 1 else w[i][j] for i, j in zip(nodes, nodes[1:])]
        if any(np.isnan(x) for x in weights):
            continue
        k = key(weights)
        if best is None or k < best:
            best = k
    return best


def leximax_key(weights):
    return tuple(sorted(weights, reverse=True))


@given(st.integers(2, 9), st.data())
@settings(max_examples=250, deadline=None)
def test_leximax_dp_equals_brute_force(T, data):
    B = data.draw(st.integers(1, T))
    K = data.draw(st.integers(1, T))
    seed = data.draw(st.integers(0, 10_000))
    rng = np.random.default_rng(seed)
    # few distinct values so that ties are common
    w = rng.integers(0, 4, size=(T + 1, T + 1)).astype(float)
    expected = brute_force(w, T, B, K, leximax_key)
    if expected is None:
        with pytest.raises(ScheduleError):
            solve_reference(w, T, B, max_skip=K)
        return
    path = solve_reference(w, T, B, max_skip=K)
    assert path.schedule.budget == B
    assert path.sorted_errors() == expected


@given(st.integers(2, 9), st.data())
@settings(max_examples=150, deadline=None)
def test_power_dp_equals_brute_force(T, data):
    B = data.draw(st.integers(1, T))
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    w = rng.random((T + 1, T + 1))
    expected = brute_force(w, T, B, T, lambda ws: sum(x**2 for x in ws))
    path = solve_reference(w, T, B, objective="power", gamma=2.0)
    assert sum(x**2 for x in path.segment_errors) == pytest.approx(expected)


def test_leximax_prefers_smaller_worst_segment_over_smaller_sum():
    T = 4
    w = np.zeros((5, 5))
    # path 0-2-4: segments 0.5 and 0.5 (sum 1.0, worst 0.5); path 0-1-4... uses 1->4 = 0.6
    w[0, 2], w[2, 4], w[1, 4], w[0, 3] = 0.5, 0.5, 0.6, 0.9
    lex = solve_reference(w, T, 2)
    assert lex.schedule.compute_steps == (0, 2)
    w[1, 4] = 0.45  # now 0-1-4 has worst 0.45 < 0.5
    assert solve_reference(w, T, 2).schedule.compute_steps == (0, 1)


def test_unmeasured_edges_are_never_used():
    T = 6
    w = np.full((7, 7), np.nan)
    w[0, 3], w[3, 6] = 1.0, 1.0
    w[0, 2] = 0.1  # cheap, but 2 -> 6 is unmeasured
    path = solve_reference(w, T, 2)
    assert path.schedule.compute_steps == (0, 3)


def test_budget_too_small_for_max_skip_says_what_to_change():
    with pytest.raises(ScheduleError, match="at least 5"):
        solve_reference(np.zeros((51, 51)), 50, 4, max_skip=10)


def test_matrix_shape_must_match_steps():
    with pytest.raises(OTCacheError, match="11 x 11"):
        solve_reference(np.zeros((5, 5)), 10, 3)


def test_negative_errors_are_rejected():
    w = np.zeros((5, 5))
    w[0, 3] = -1
    with pytest.raises(OTCacheError, match="non-negative"):
        solve_reference(w, 4, 2)


def test_full_budget_is_all_compute_with_zero_error():
    path = solve_reference(np.ones((9, 9)), 8, 8)
    assert path.schedule == Schedule.all_compute(8) and path.worst_segment == 0.0


def test_path_errors_reads_segments_of_any_schedule():
    w = np.arange(36, dtype=float).reshape(6, 6)
    assert path_errors(w, Schedule.from_steps([0, 1, 3], 5)) == (0.0, w[1, 3], w[3, 5])
