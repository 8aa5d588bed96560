"""Calibrations with reuse rules: measured per edge, recorded (version 2), read back, and the files
written before rules (every shipped preset included) loading and reusing with hold as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from otcache_core.calibrate import (
    CalibrationSettings,
    EdgeCheckpoint,
    best_rules,
    calibrate,
    default_budgets,
    edge_errors_drift,
    edge_errors_rollout,
    estimated_edge_calls,
)
from otcache_core.calibration import Calibration
from otcache_core.errors import FileFormatError
from otcache_core.metrics import relative_l1
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.reuse import step_rules
from otcache_core.schedule import Schedule

T, K = 10, 4
RULES = ("hold", "linear", "quadratic")
SCHEDULES = Path(__file__).resolve().parents[1] / "schedules"


@pytest.fixture
def sampler(make_sampler):
    return make_sampler(steps=T)


@pytest.fixture
def full(sampler):
    return sampler.run([True] * T, record=True)


@pytest.fixture(scope="module")
def outcome(toy_model):
    from tests.conftest import make_toy_sampler

    ref, anchor = default_budgets(T)
    settings = CalibrationSettings(ref, anchor, max_skip=K, trials=6, rules=RULES)
    return calibrate(make_toy_sampler(toy_model, steps=T), settings, distance=relative_l1, objective_name="rel_l1",
                     name="toy", model={"family": "toy"})


def test_a_rollout_edge_under_a_rule_replays_with_the_full_trajectory_as_history(sampler, full):
    w, _ = edge_errors_rollout(sampler, full, K, rule="linear")
    mask = [True] * T
    mask[4:6] = [False, False]  # compute 0..3, reuse 4..5 from the secant of steps 2 and 3, compute 6
    probe = sampler.run(mask, record=True, reuse="linear")
    assert w[3, 6] == pytest.approx(relative_l1(probe.denoised[6], full.denoised[6]))


def test_each_rule_costs_its_rollouts_plus_the_steps_it_looks_back(sampler, full):
    calls = {rule: edge_errors_rollout(sampler, full, K, rule=rule)[1] for rule in RULES}
    assert calls["hold"] == estimated_edge_calls("rollout", T, K)
    assert calls["linear"] == estimated_edge_calls("rollout", T, K) + (T - 2)  # rows 1 .. T-2 replay one step more
    assert sum(calls.values()) == estimated_edge_calls("rollout", T, K, RULES)


def test_drift_under_hold_is_the_drift_of_before_rules(sampler, full):
    w, _ = edge_errors_drift(sampler, full, K)
    scale = float(full.final.abs().double().mean())
    expected = sum(full.step_sizes[k] * float((full.outputs[k].double() - full.outputs[2].double()).abs().mean())
                   for k in (3, 4)) / scale
    assert w[2, 5] == pytest.approx(expected)


def test_drift_under_linear_measures_the_extrapolation_error(sampler, full):
    w, _ = edge_errors_drift(sampler, full, K, "linear")
    o, s = full.outputs, full.sigmas
    standin = o[2] + (s[3] - s[2]) * (o[2] - o[1]) / (s[2] - s[1])
    expected = full.step_sizes[3] * float((o[3].double() - standin.double()).abs().mean()) / float(full.final.abs().double().mean())
    assert w[2, 4] == pytest.approx(expected)


def test_the_edge_weight_is_the_best_rules_error_and_the_rule_is_recorded():
    a = np.full((4, 4), np.nan)
    b = np.full((4, 4), np.nan)
    a[0, 2], b[0, 2] = 0.5, 0.2
    a[1, 3], b[1, 3] = 0.1, 0.1  # a tie goes to the earlier candidate
    a[0, 3] = 0.7  # measured by one rule only
    errors, table = best_rules({"hold": a, "linear": b}, 3)
    assert errors[0, 2] == 0.2 and errors[1, 3] == 0.1 and errors[0, 3] == 0.7
    assert table.to_matrix()[0][2] == "linear" and table.to_matrix()[1][3] == "hold"
    assert table.to_matrix()[0][3] == "hold"


def test_a_calibration_records_the_rule_of_every_edge_and_segment(outcome):
    cal = outcome.calibration
    table = cal.edge_rules()
    assert cal.edge_errors["candidates"] == list(RULES) and set(cal.edge_errors["by_rule"]) == set(RULES)
    measured = ~np.isnan(outcome.errors) & (np.triu(np.ones_like(outcome.errors), 2) > 0)
    stacked = np.stack([np.asarray(cal.edge_errors["by_rule"][r], dtype=float) for r in RULES])
    assert np.allclose(stacked.min(axis=0)[measured], outcome.errors[measured])
    assert cal.reference.rules == table.segment_rules(cal.reference.schedule)[0]
    assert cal.anchor.rules == table.segment_rules(cal.anchor.schedule)[0]
    assert "rules:" in cal.summary().splitlines()[1]


def test_the_anchor_score_is_its_schedule_run_with_its_segment_rules(outcome, make_sampler):
    cal = outcome.calibration
    sampler = make_sampler(steps=T)
    full = sampler.run([True] * T).final
    schedule = cal.anchor.schedule
    cached = sampler.run(schedule.mask(), reuse=step_rules(schedule, cal.anchor.rules)).final
    assert cal.anchor.score == pytest.approx(relative_l1(cached, full))


def test_a_calibration_with_rules_is_version_2_and_round_trips(outcome, tmp_path):
    cal = outcome.calibration
    cal.save(tmp_path / "toy.json")
    assert json.loads((tmp_path / "toy.json").read_text())["version"] == 2
    back = Calibration.load(tmp_path / "toy.json")
    assert back.reference == cal.reference and back.anchor == cal.anchor
    assert back.edge_rules() == cal.edge_rules()


def test_plans_look_their_segments_rules_up_and_count_the_fallbacks(outcome):
    cal = outcome.calibration
    plan = SchedulePlan.from_calibration(cal, BudgetRule("steps", cal.reference.schedule.budget, T))
    resolved = plan.resolve(T)
    assert resolved.schedule == cal.reference.schedule and resolved.rules == cal.reference.rules
    assert resolved.fallbacks == 0  # the reference uses measured segments only
    other = plan.resolve(2 * T)  # another step count: no edge of the calibration measured these segments
    assert other.fallbacks == len([s for s in other.schedule.segments() if s[1] > s[0] + 1])
    assert any("not measured by the calibration" in n for n in other.notes)


def test_checkpoints_keep_each_rules_rows_apart(sampler, full, tmp_path):
    checkpoint = EdgeCheckpoint(tmp_path / "edges.json", "k")
    for rule in ("hold", "linear"):
        part = checkpoint.for_rule(rule)
        edge_errors_rollout(sampler, full, K, None, part.rows, part.add, rule)
    again = EdgeCheckpoint(tmp_path / "edges.json", "k")
    assert again.rows and again.for_rule("linear").rows
    assert again.rows != again.for_rule("linear").rows
    assert again.for_rule("quadratic").rows == {}


# -- files from before rules ----------------------------------------------------------------------------


def version_1_document() -> dict:
    """A calibration as OTCache wrote it before reuse rules (format version 1)."""
    return {
        "format": "otcache.calibration", "version": 1, "name": "old", "steps": 10,
        "model": {"family": "flux"}, "sampler": {"sampler": "euler"},
        "reference": {"compute_steps": [0, 1, 2, 4, 6, 8], "budget": 6, "steps": 10, "method": "leximax",
                      "score": 0.1, "segment_errors": [0, 0, 0.1, 0.1, 0.1, 0.1]},
        "anchor": {"compute_steps": [0, 3, 7], "budget": 3, "steps": 10, "method": "optuna", "score": 0.2},
        "edge_errors": {"strength": "rollout", "max_skip": 4, "metric": "rel_l1",
                        "matrix": [[None] * 11 for _ in range(11)]},
        "cost": {}, "source": {}, "notes": [], "created": "2026-11-01T00:00:00+00:00", "otcache_version": "0.1.0",
    }


def test_a_version_1_file_loads_and_every_segment_holds(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1_document()))
    cal = Calibration.load(path)
    assert not cal.has_rules and cal.edge_rules() is None
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", 4, 10)).resolve(10)
    assert resolved.rules is None and set(resolved.segment_rules()) == {"hold"}
    assert "every reused step holds" in cal.summary()
    cal.save(tmp_path / "again.json")  # still a version-1 document: nothing in it needs version 2
    assert json.loads((tmp_path / "again.json").read_text())["version"] == 1


@pytest.mark.parametrize("path", sorted(SCHEDULES.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_preset_loads_and_holds(path):
    cal = Calibration.load(path)
    assert not cal.has_rules
    plan = SchedulePlan.from_calibration(cal, BudgetRule("steps", cal.anchor.schedule.budget, cal.steps))
    assert plan.reuse is None and plan.resolve(cal.steps).rules is None
    assert cal.to_dict()["version"] == 1


def test_a_bad_rule_in_a_file_is_named(tmp_path):
    document = version_1_document()
    document["version"] = 2
    document["anchor"]["rules"] = ["linear", "cubic", "hold"]
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(FileFormatError, match="anchor.*cubic"):
        Calibration.load(tmp_path / "bad.json")


def test_sampling_with_a_version_1_calibration_is_what_it_was(make_sampler):
    """Hold, bit for bit: a run given a hold-only plan equals a run given no rules at all."""
    sampler = make_sampler(steps=10, mode="model")
    cal = Calibration.from_dict(version_1_document())
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", 4, 10)).resolve(10)
    with_plan = sampler.sample(resolved.schedule, rules=list(resolved.segment_rules()))
    assert torch.equal(with_plan, sampler.sample(resolved.schedule))
