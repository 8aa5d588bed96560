"""Reuse rules in a calibration: edges measured with the history a rule has at run time, rules chosen
end to end on whole schedules, every budget validated on samples the search never saw (version 3), and
the files of every earlier version loading as they did."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from otcache_core.calibrate import (
    CalibrationSettings,
    EdgeCheckpoint,
    calibrate,
    default_budgets,
    edge_errors_drift,
    edge_errors_global,
    edge_errors_rollout,
    estimated_calls,
    estimated_edge_calls,
)
from otcache_core.calibration import UNIFORM, BudgetChoice, BudgetChoices, Calibration, score_key
from otcache_core.errors import FileFormatError
from otcache_core.interpolation import predict
from otcache_core.metrics import relative_l1
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.reuse import DEFAULT_RULE, parse_rule, parse_rules
from otcache_core.schedule import Schedule
from otcache_core.warp import identity_warp, sample_warp

T, K = 10, 4
LINEAR, HOLD = parse_rule("linear"), parse_rule("hold")
RULES = parse_rules(["linear", "horizon1", "hold"])
SCHEDULES = Path(__file__).resolve().parents[1] / "schedules"


@pytest.fixture
def sampler(make_sampler):
    return make_sampler(steps=T)


@pytest.fixture
def full(sampler):
    return sampler.run([True] * T, record=True)


def settings(**overrides) -> CalibrationSettings:
    ref, anchor = default_budgets(T)
    return CalibrationSettings(ref, anchor, max_skip=K, trials=6, rules=RULES, **overrides)


def run(sampler, validation=None, **overrides):
    return calibrate(sampler, settings(**overrides), distance=relative_l1, objective_name="rel_l1", name="toy",
                     model={"family": "toy"}, validation=validation)


@pytest.fixture(scope="module")
def validated(toy_model):
    from tests.conftest import make_toy_sampler

    return run(make_toy_sampler(toy_model, steps=T), validation=make_toy_sampler(toy_model, steps=T, seed=7))


# -- edges under the history a rule has at run time -----------------------------------------------------


def test_an_edge_replays_with_the_rules_earlier_point_as_far_back_as_the_runs_spacing(sampler, full):
    w, _ = edge_errors_rollout(sampler, full, K, rule=LINEAR, history=2)
    mask = [True] * T
    mask[3] = False  # compute 2, reuse 3 (as a run with gaps of 2 would), compute 4, reuse 5, compute 6
    mask[5] = False
    replay = sampler.run(mask, start=2, state=full.states[2], probe=[4, 6], reuse=LINEAR)
    already = relative_l1(replay.denoised[4], full.denoised[4])
    assert w[4, 6] == pytest.approx(max(0.0, relative_l1(replay.denoised[6], full.denoised[6]) - already))


def test_a_history_of_one_step_replays_with_adjacent_computed_steps(sampler, full):
    w, _ = edge_errors_rollout(sampler, full, K, rule=LINEAR, history=1)
    mask = [True] * T
    mask[4:6] = [False, False]  # compute 0..3, reuse 4..5 from the secant of steps 2 and 3, compute 6
    probe = sampler.run(mask, record=True, reuse=LINEAR)
    assert w[3, 6] == pytest.approx(relative_l1(probe.denoised[6], full.denoised[6]))


@pytest.mark.parametrize("strength", ["rollout", "global"])
@pytest.mark.parametrize("history", [1, 2, 3])
def test_the_edge_stage_costs_what_it_says_before_it_starts(sampler, full, strength, history):
    measure = edge_errors_rollout if strength == "rollout" else edge_errors_global
    _, calls = measure(sampler, full, K, rule=LINEAR, history=history)
    assert calls == estimated_edge_calls(strength, T, K, LINEAR, history)


def test_drift_under_linear_extrapolates_from_the_recorded_outputs_the_history_apart(sampler, full):
    w, _ = edge_errors_drift(sampler, full, K, LINEAR, history=2)
    o, s = full.outputs, full.sigmas
    standin = o[4] + (s[5] - s[4]) * (o[4] - o[2]) / (s[4] - s[2])
    expected = full.step_sizes[5] * float((o[5].double() - standin.double()).abs().mean()) / float(
        full.final.abs().double().mean())
    assert w[4, 6] == pytest.approx(expected)


def test_checkpoints_keep_rows_of_other_rules_and_spacings_apart(sampler, full, tmp_path):
    checkpoint = EdgeCheckpoint(tmp_path / "edges.json", "k")
    for rule, history in ((HOLD, 1), (LINEAR, 1), (LINEAR, 2)):
        part = checkpoint.for_rule(rule, history)
        edge_errors_rollout(sampler, full, K, None, part.rows, part.add, rule, history)
    again = EdgeCheckpoint(tmp_path / "edges.json", "k")
    rows = [again.rows, again.for_rule(LINEAR).rows, again.for_rule(LINEAR, 2).rows]
    assert all(rows) and rows[0] != rows[1] != rows[2]
    assert again.for_rule(parse_rule("quadratic")).rows == {}


# -- rules chosen end to end ----------------------------------------------------------------------------


def test_the_reference_is_the_best_schedule_and_rule_pair_end_to_end(sampler):
    outcome = run(sampler)
    ref = outcome.calibration.reference
    scores = {k: v for k, v in ref.details["end_to_end"].items() if k != "objective"}
    best = min(scores, key=scores.get)
    assert score_key(ref.method, ref.rules[0]) == best
    assert len(set(ref.rules)) == 1  # one rule for every segment
    assert len(scores) == 2 * len(RULES) or ref.method == UNIFORM


def test_the_anchor_runs_with_the_rule_that_did_best_on_its_own_schedule(sampler, make_sampler):
    cal = run(sampler).calibration
    scores = cal.anchor.details["end_to_end"]
    assert cal.anchor.rules == (min(RULES, key=lambda r: scores[score_key("calibrated", r)]),) * len(
        cal.anchor.schedule.segments())
    rerun = make_sampler(steps=T)
    cached = rerun.run(cal.anchor.schedule.mask(), reuse=cal.anchor.rules[0]).final
    assert scores[score_key("calibrated", cal.anchor.rules[0])] == pytest.approx(
        relative_l1(cached, rerun.run([True] * T).final))


def test_without_validation_samples_the_reference_and_anchor_are_the_only_choices(sampler):
    cal = run(sampler).calibration
    assert [c.budget for c in cal.budgets.choices] == [cal.reference.schedule.budget, cal.anchor.schedule.budget]
    assert not cal.budgets.validated and "no validation samples" in cal.summary()


def pooled(choices, kind: str, budget: int, window: int):
    """The rule with the smallest geometric mean distance of ``kind`` over the budgets within ``window``."""
    import math

    def score(choice, rule):
        return choice.scores.get(score_key(kind, rule), choice.scores.get(score_key("calibrated", rule)))

    near = [c for c in choices if abs(c.budget - budget) <= window]
    return min(RULES, key=lambda r: sum(math.log(score(c, r)) for c in near))


def test_each_budget_keeps_the_calibrated_schedule_only_where_it_is_clearly_closer_than_even_spacing(validated):
    cal, margin, window = validated.calibration, settings().uniform_margin, settings().rule_window
    assert [c.budget for c in cal.budgets.choices] == settings().validation_budgets(T)
    for choice in cal.budgets.choices:
        rule = {kind: pooled(cal.budgets.choices, kind, choice.budget, window) for kind in ("calibrated", "uniform")}
        assert choice.rule == rule[choice.schedule]  # the rule its neighbouring budgets voted for
        if any(k.startswith("uniform") for k in choice.scores):
            closer = choice.scores[score_key("calibrated", rule["calibrated"])] <= (1 - margin) * choice.scores[
                score_key("uniform", rule["uniform"])]
            assert (choice.schedule == "calibrated") == closer


def test_one_budgets_noisy_vote_does_not_flip_the_rule_its_neighbours_agree_on():
    from otcache_core.calibrate import pooled_rule

    linear, horizon = parse_rules(["linear", "horizon2"])
    measured = {b: {"calibrated linear": 1.0, "calibrated horizon2": 2.0} for b in range(4, 11)}
    measured[7] = {"calibrated linear": 1.0, "calibrated horizon2": 0.95}  # alone it would pick horizon2
    assert pooled_rule(measured, "calibrated", 7, (linear, horizon), window=2) == linear
    assert pooled_rule(measured, "calibrated", 7, (linear, horizon), window=0) == horizon


def test_every_validation_score_is_the_end_to_end_distance_on_the_validation_samples(validated, make_sampler):
    cal = validated.calibration
    checker = make_sampler(steps=T, seed=7)
    full = checker.run([True] * T).final
    for choice in cal.budgets.choices:
        schedule = (sample_warp(identity_warp(), T, choice.budget) if choice.schedule == UNIFORM
                    else predict(cal.reference.schedule, cal.anchor.schedule, T, choice.budget).schedule)
        cached = checker.run(schedule.mask(), reuse=choice.rule).final
        assert choice.scores[score_key(choice.schedule, choice.rule)] == pytest.approx(relative_l1(cached, full))


def test_a_calibration_costs_what_it_says_before_it_starts(validated):
    cal = validated.calibration
    assert sum(cal.cost["model_calls"].values()) <= sum(estimated_calls(settings(), T, validation=True).values())
    assert cal.cost["estimated_calls"] == estimated_calls(settings(), T, validation=True)


def test_a_plan_runs_each_budget_with_its_choice(validated):
    cal = validated.calibration
    for choice in cal.budgets.choices:
        resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", choice.budget, T)).resolve(T)
        assert set(resolved.rules) <= {choice.rule}
        if choice.schedule == UNIFORM:
            assert resolved.schedule == sample_warp(identity_warp(), T, choice.budget)
            assert "even spacing beat the calibrated schedule" in resolved.rules_source
        assert f"at {choice.budget} of {T} steps" in resolved.rules_source


def test_other_step_counts_take_the_choice_of_the_nearest_share_of_steps():
    choices = BudgetChoices((BudgetChoice(8, "calibrated", LINEAR), BudgetChoice(4, UNIFORM, HOLD)))
    assert choices.nearest(0.42, 10).budget == 4 and choices.nearest(0.6, 10).budget == 8
    assert choices.nearest(0.6, 10) is choices.nearest(0.65, 10)


def test_a_version_3_calibration_round_trips(validated, tmp_path):
    cal = validated.calibration
    cal.save(tmp_path / "toy.json")
    document = json.loads((tmp_path / "toy.json").read_text())
    assert document["version"] == 3 and document["budgets"]["validated"] is True
    back = Calibration.load(tmp_path / "toy.json")
    assert back.budgets == cal.budgets and back.reference == cal.reference and back.anchor == cal.anchor


def test_the_summary_lists_every_budgets_choice(validated):
    summary = validated.calibration.summary()
    assert "validation sample(s) no search stage saw" in summary
    for choice in validated.calibration.budgets.choices:
        assert choice.describe(T) in summary


# -- files of earlier versions ----------------------------------------------------------------------------


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


def version_2_document() -> dict:
    """A calibration with reuse rules measured per edge (format version 2)."""
    document = version_1_document()
    rules = [[None] * 11 for _ in range(11)]
    rules[0][3], rules[3][7], rules[7][10] = "linear", "hold", "quadratic"
    document["version"] = 2
    document["edge_errors"].update(rules=rules, candidates=["hold", "linear", "quadratic"])
    document["anchor"]["rules"] = ["linear", "hold", "quadratic"]
    return document


def test_a_version_1_file_loads_and_runs_with_the_measured_default_rule(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps(version_1_document()))
    cal = Calibration.load(path)
    assert not cal.has_rules and cal.edge_rules() is None and cal.budgets is None
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", 4, 10)).resolve(10)
    assert set(resolved.rules) == {DEFAULT_RULE} and "names no rule" in resolved.rules_source
    assert f"it runs with {DEFAULT_RULE}" in cal.summary()
    cal.save(tmp_path / "again.json")  # still a version-1 document: nothing in it needs a later version
    assert json.loads((tmp_path / "again.json").read_text())["version"] == 1


def test_a_version_2_file_keeps_its_per_edge_rules(tmp_path):
    cal = Calibration.from_dict(version_2_document())
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", 3, 10)).resolve(10)
    assert resolved.schedule == cal.anchor.schedule and resolved.rules == tuple(parse_rules(["linear", "hold",
                                                                                               "quadratic"]))
    cal.save(tmp_path / "v2.json")
    assert json.loads((tmp_path / "v2.json").read_text())["version"] == 2


@pytest.mark.parametrize("path", sorted(SCHEDULES.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_preset_states_the_rule_it_runs_with(path):
    cal = Calibration.load(path)
    assert cal.rule is not None and cal.rule_source
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", cal.anchor.schedule.budget, cal.steps)).resolve(
        cal.steps)
    assert set(resolved.rules) == {cal.rule} and resolved.rules_source == "the rule its file states, measured"
    assert cal.rule_source in cal.summary()


@pytest.mark.parametrize("where, value, message", [
    (("anchor", "rules"), ["linear", "cubic", "hold"], "anchor.*cubic"),
    (("budgets",), {"budgets": [{"budget": 4, "schedule": "diagonal", "rule": "linear"}]}, "budgets\\[0\\].*diagonal"),
    (("budgets",), {"budgets": [{"budget": 40, "schedule": "uniform", "rule": "linear"}]}, "between 1 and 10"),
    (("reuse",), {"rule": "cubic", "source": "x"}, "reuse.*cubic"),
])
def test_a_bad_rule_or_choice_in_a_file_is_named(tmp_path, where, value, message):
    document = version_1_document()
    document["version"] = 3
    target = document
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    (tmp_path / "bad.json").write_text(json.dumps(document))
    with pytest.raises(FileFormatError, match=message):
        Calibration.load(tmp_path / "bad.json")


def test_a_hold_plan_samples_exactly_as_a_run_without_rules(make_sampler):
    sampler = make_sampler(steps=10, mode="model")
    cal = Calibration.from_dict(version_1_document())
    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", 4, 10)).resolve(10)
    assert torch.equal(sampler.sample(resolved.schedule, rules=HOLD), sampler.sample(resolved.schedule))


def test_an_all_compute_run_is_exact_under_every_rule_a_calibration_may_choose(make_sampler):
    sampler = make_sampler(steps=10, mode="model")
    plain = sampler.sample(Schedule.all_compute(10))
    for rule in (*RULES, DEFAULT_RULE):
        assert torch.equal(sampler.sample(Schedule.all_compute(10), rules=rule), plain), rule
    assert np.isfinite(float(plain.abs().mean()))
