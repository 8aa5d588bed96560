"""The calibration orchestrator over a real (toy) sampler: replays, edge strengths, record, resume."""

import numpy as np
import pytest
import torch

from otcache_core.calibrate import (
    DEFAULT_RULES,
    CalibrationSettings,
    EdgeCheckpoint,
    calibrate,
    default_budgets,
    edge_errors_drift,
    edge_errors_global,
    edge_errors_rollout,
    estimated_edge_calls,
)
from otcache_core.calibration import Calibration
from otcache_core.errors import OTCacheError
from otcache_core.metrics import relative_l1

T = 10
K = 4


@pytest.fixture
def sampler(make_sampler):
    return make_sampler(steps=T)


@pytest.fixture
def full(sampler):
    return sampler.run([True] * T, record=True)


def test_replay_from_a_stored_state_equals_running_from_step_zero(sampler, full):
    mask = [True] * T
    mask[4:7] = [False] * 3
    replay = sampler.run(mask, start=3, state=full.states[3])
    scratch = sampler.run(mask)
    assert torch.equal(replay.final, scratch.final)
    assert replay.model_calls == T - 3 - 3


def test_global_edges_are_end_to_end_errors_of_one_cached_segment(sampler, full):
    w, calls = edge_errors_global(sampler, full, K)
    mask = [True] * T
    mask[3:5] = [False, False]  # compute 2, reuse 3..4, compute 5
    expected = relative_l1(sampler.run(mask).final, full.final)
    assert w[2, 5] == pytest.approx(expected)
    assert calls == estimated_edge_calls("global", T, K)
    assert np.isnan(w[0, K + 1]) and w[0, 1] == 0


def test_rollout_edges_compare_clean_predictions_at_the_next_computed_step(sampler, full):
    w, calls = edge_errors_rollout(sampler, full, K)
    mask = [True] * T
    mask[3:5] = [False, False]
    probe = sampler.run(mask, record=True)
    assert w[2, 5] == pytest.approx(relative_l1(probe.denoised[5], full.denoised[5]))
    assert calls == estimated_edge_calls("rollout", T, K)
    assert calls < estimated_edge_calls("global", T, K)


def test_rollout_edge_to_the_end_compares_final_states(make_sampler):
    sampler = make_sampler(steps=6)
    full = sampler.run([True] * 6, record=True)
    w, _ = edge_errors_rollout(sampler, full, 6)
    assert w[3, 6] == pytest.approx(relative_l1(sampler.run([True] * 4 + [False] * 2).final, full.final))


def test_drift_edges_cost_no_model_calls_and_grow_with_segment_length(sampler, full):
    w, calls = edge_errors_drift(sampler, full, K)
    assert calls == 0
    for i in range(T - 2):
        row = [w[i, j] for j in range(i + 2, min(i + K, T) + 1)]
        assert all(b >= a for a, b in zip(row, row[1:]))


def test_edge_strengths_agree_on_which_segments_are_worse(sampler, full):
    g, _ = edge_errors_global(sampler, full, K)
    r, _ = edge_errors_rollout(sampler, full, K)
    mask = ~np.isnan(g) & (np.triu(np.ones_like(g), 2) > 0)
    rho = np.corrcoef(np.argsort(np.argsort(g[mask])), np.argsort(np.argsort(r[mask])))[0, 1]
    assert rho > 0.5


def test_checkpointed_rows_are_not_measured_again(sampler, full, tmp_path):
    path = tmp_path / "edges.json"
    first, calls = edge_errors_rollout(sampler, full, K, None, {}, EdgeCheckpoint(path, "k").add)
    cp = EdgeCheckpoint(path, "k")
    again, calls_again = edge_errors_rollout(sampler, full, K, None, cp.rows, cp.add)
    assert calls > 0 and calls_again == 0
    assert np.array_equal(np.nan_to_num(first, nan=-1), np.nan_to_num(again, nan=-1))
    assert EdgeCheckpoint(path, "other settings").rows == {}


def run_calibration(sampler, **overrides):
    ref, anchor = default_budgets(T)
    settings = CalibrationSettings(reference_budget=ref, anchor_budget=anchor, max_skip=K, trials=8, **overrides)
    return calibrate(sampler, settings, distance=relative_l1, objective_name="rel_l1", name="toy",
                     model={"family": "toy"})


def test_calibration_produces_a_valid_record_that_round_trips(sampler, tmp_path):
    outcome = run_calibration(sampler)
    cal = outcome.calibration
    assert cal.reference.schedule.budget == 5 and cal.anchor.schedule.budget == 2
    assert cal.reference.method in ("leximax", "uniform") and cal.anchor.method == "optuna"
    assert cal.cost["model_calls"]["trajectories"] == T
    settings = CalibrationSettings(*default_budgets(T), max_skip=K)
    assert cal.cost["model_calls"]["edges"] == estimated_edge_calls("rollout", T, K, settings.edge_rule,
                                                                    settings.history_for(T))
    assert cal.cost["model_calls"]["anchor"] > 0
    cal.save(tmp_path / "toy.json")
    back = Calibration.load(tmp_path / "toy.json")
    assert back.reference == cal.reference and back.anchor.schedule == cal.anchor.schedule
    assert np.array_equal(np.nan_to_num(back.error_matrix(), nan=-1), np.nan_to_num(outcome.errors, nan=-1))


def test_the_reference_is_the_better_of_the_graph_path_and_uniform_spacing_end_to_end(sampler):
    from otcache_core.graph import solve_reference
    from otcache_core.warp import identity_warp, sample_warp

    outcome = run_calibration(sampler)
    ref = outcome.calibration.reference
    scores = {k: v for k, v in ref.details["end_to_end"].items() if k != "objective"}
    assert set(scores) == {f"{method} {rule}" for method in ("leximax", "uniform") for rule in DEFAULT_RULES}
    winner = min(scores, key=scores.get).split()[0]
    expected = (sample_warp(identity_warp(), T, 5) if winner == "uniform"
                else solve_reference(outcome.errors, T, 5, max_skip=K).schedule)
    assert ref.method == winner and ref.schedule == expected
    # two cached generations of 5 computed steps per candidate rule
    assert outcome.calibration.cost["model_calls"]["reference"] == 2 * 5 * len(DEFAULT_RULES)
    unchecked = run_calibration(sampler, reference_check=False).calibration
    assert unchecked.reference.method == "leximax" and "reference" not in unchecked.cost["model_calls"]


def test_calibration_is_deterministic(make_sampler):
    a = run_calibration(make_sampler(steps=T)).calibration
    b = run_calibration(make_sampler(steps=T)).calibration
    assert a.reference == b.reference and a.anchor.schedule == b.anchor.schedule
    assert a.edge_errors == b.edge_errors


def test_anchor_is_no_worse_than_its_seeds(sampler):
    outcome = run_calibration(sampler)
    first_values = outcome.anchor.history[:2]  # the reference resampled and uniform spacing come first
    assert outcome.anchor.score <= min(first_values)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(reference_budget=3, anchor_budget=3), "must be at least 1 and smaller"),
        (dict(reference_budget=10, anchor_budget=2), "smaller than the 10 steps"),
        (dict(reference_budget=5, anchor_budget=2, strength="fast"), "edge strength"),
        (dict(reference_budget=2, anchor_budget=1, max_skip=3), "at least 4"),
        (dict(reference_budget=5, anchor_budget=2, max_skip=1), "at least 2"),
    ],
)
def test_bad_settings_say_what_to_change(sampler, settings, message):
    with pytest.raises(OTCacheError, match=message):
        calibrate(sampler, CalibrationSettings(**settings), distance=relative_l1, objective_name="x")


def test_too_few_steps_is_rejected(make_sampler):
    with pytest.raises(OTCacheError, match="at least 4 sampling steps"):
        calibrate(make_sampler(steps=3), CalibrationSettings(2, 1), distance=relative_l1, objective_name="x")


def test_default_budgets_are_half_and_a_sixth():
    assert default_budgets(50) == (25, 8)
    assert default_budgets(4) == (2, 1)


def test_the_rest_of_a_calibration_is_projected_from_the_pace_of_its_first_stage():
    from otcache_core.calibrate import projected_time

    assert projected_time(60, 30.0, 1460) == ("0.5 s per model call at this size (the full-compute runs): the other "
                                              "1400 calls take about 11.7 min")
    assert projected_time(60, 3600.0, 1460).endswith("about 23.3 h")
    assert projected_time(10, 1.0, 20).endswith("about 1 s")
