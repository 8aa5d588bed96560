"""Runtime-adaptive baselines: the engine's policy hook, exact budgets after tuning, exactness."""

from dataclasses import dataclass

import pytest
import torch

from otcache_core.testbed.baselines import (
    EasyCachePolicy,
    MagCachePolicy,
    TeaCachePolicy,
    ThresholdPolicy,
    fit_teacache_polynomial,
    magnitude_ratios,
    make_policies,
    modulated_input_signal,
    record_full_run,
    tune_threshold,
)
from otcache_core.runtime import CacheRun
from otcache_core.schedule import Schedule
from otcache_core.testbed.task import random_tinydit

T = 16


@pytest.fixture(scope="module")
def toy_policies(toy_model):
    from conftest import make_toy_sampler

    return make_policies(make_toy_sampler(toy_model, steps=T), toy_model, max_skip=8)


@dataclass
class EveryOther:
    """A scripted policy: computes even steps."""

    seen: list

    def reset(self, steps):
        self.seen.clear()

    def decide(self, step, features):
        self.seen.append(step)
        return step % 2 == 0

    def observe(self, step, features, output):
        pass


def test_the_engine_asks_a_policy_once_per_step_and_reports_its_decisions():
    policy = EveryOther([])
    run = CacheRun(Schedule.all_compute(5), policy=policy)
    assert not run.plan_call(0, False)
    run.store("a", torch.ones(1))
    assert run.plan_call(1, True) and run.plan_call(1, True)  # a second evaluation of step 1: same decision
    assert not run.plan_call(2, True)
    assert policy.seen == [0, 1, 2]
    report = run.report()
    assert report.scheduled.compute_steps == (0, 2, 3, 4) and report.reused == [1]  # 3, 4: not yet run


@pytest.mark.parametrize("name", ["teacache", "magcache", "easycache"])
@pytest.mark.parametrize("mode", ["blocks", "model"])
def test_threshold_zero_computes_every_step_bit_for_bit(make_sampler, toy_policies, name, mode):
    policies, _ = toy_policies
    sampler = make_sampler(steps=T, mode=mode)
    full = sampler.sample(Schedule.all_compute(T))
    cached = sampler.sample(Schedule.all_compute(T), policy=policies[name])
    assert torch.equal(cached, full)
    assert sampler.last_report.computed == list(range(T))


@pytest.mark.parametrize("name", ["teacache", "magcache", "easycache"])
def test_tuning_hits_the_exact_number_of_computed_steps(make_sampler, toy_policies, name):
    policies, _ = toy_policies
    sampler = make_sampler(steps=T)
    lower = None
    for budget in (10, 7, 5, 3):
        tuned = tune_threshold(sampler, policies[name], budget, lower=lower)
        lower = tuned.policy.threshold
        sampler.sample(Schedule.all_compute(T), policy=tuned.policy)
        assert len(sampler.last_report.computed) == budget == tuned.computed, (name, budget)
        assert list(tuned.schedule.compute_steps) == sampler.last_report.computed


@dataclass
class ConstantRate(ThresholdPolicy):
    """``e_t = 1``: computes every ``ceil(tau)`` steps, so some counts are unreachable by threshold."""

    needs_features: bool = False

    def estimate(self, step, features):
        return 1.0


def test_unreachable_counts_are_made_exact_by_the_budget_cap(make_sampler):
    sampler = make_sampler(steps=12)  # counts by threshold: 12, 6, 4, 3, ... never 5
    tuned = tune_threshold(sampler, ConstantRate(), 5)
    assert tuned.capped and tuned.computed == 5
    assert tuned.schedule.compute_steps == (0, 2, 4, 6, 8)


def test_teacache_computes_the_last_step_and_magcache_bounds_segments(make_sampler, toy_policies):
    policies, _ = toy_policies
    sampler = make_sampler(steps=T)
    tea = tune_threshold(sampler, policies["teacache"], 4)
    assert tea.schedule.compute_steps[-1] == T - 1
    mag = tune_threshold(sampler, policies["magcache"], 3)
    assert all(b - a <= 8 for a, b in zip(mag.schedule.compute_steps, mag.schedule.compute_steps[1:]))


def test_calibrated_quantities_from_a_full_run(make_sampler):
    model = random_tinydit()
    from otcache_core.testbed.task import load_task, TaskConfig

    task = load_task(TaskConfig(steps=8, calibration_samples=2, evaluation_samples=1), model=model)
    sampler = task.sampler(task.calibration)
    signal = modulated_input_signal(model)
    record = record_full_run(sampler, signal)
    assert len(record.signals) == len(record.inputs) == len(record.outputs) == 8
    assert record.signals[0].shape == record.inputs[0].shape  # LN(h)(1 + scale) + shift has h's shape
    ratios = magnitude_ratios(record)
    assert len(ratios) == 8 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert len(fit_teacache_polynomial(record)) == 5  # degree 4


def test_easycache_estimates_output_change_from_input_change():
    from otcache_core.testbed.flow import StepInputs

    policy = EasyCachePolicy(threshold=10.0)
    policy.reset(6)
    x0, x1, x2 = torch.zeros(4), torch.ones(4), torch.full((4,), 1.5)
    for step, (x, out) in enumerate([(x0, torch.full((4,), 2.0)), (x1, torch.full((4,), 4.0))]):
        features = StepInputs(x, x, None, 0.0)
        assert policy.decide(step, features)  # warm-up: k needs two computed steps
        policy.observe(step, features, out)
    # k = |4 - 2| / |1 - 0| = 2; estimate = k |x2 - x1| / |o_1| = 2 * 0.5 / 4
    assert policy.estimate(2, StepInputs(x2, x2, None, 0.0)) == pytest.approx(0.25)
    assert isinstance(MagCachePolicy(ratios=(1.0,) * 6), ThresholdPolicy) and TeaCachePolicy().force_last
