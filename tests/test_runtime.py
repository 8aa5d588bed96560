"""The cache engine: step mapping, decisions, residual store, exactness, the run report."""

import torch

from otcache_core.reuse import parse_rule, parse_rules
from otcache_core.runtime import CacheRun, step_index
from otcache_core.schedule import Schedule


def test_step_index_maps_each_sigma_to_its_step():
    sigmas = [1.0, 0.75, 0.5, 0.25, 0.0]
    assert [step_index(sigmas, s) for s in sigmas[:-1]] == [0, 1, 2, 3]


def test_step_index_maps_intermediate_evaluations_to_the_step_they_belong_to():
    sigmas = [14.6, 7.0, 3.1, 1.2, 0.0]
    assert step_index(sigmas, 5.0) == 1  # a DPM2-style midpoint between sigma_1 and sigma_2
    assert step_index(sigmas, 0.0) == 3  # never beyond the last step


def test_step_index_tolerates_float32_round_off():
    sigmas = torch.linspace(1, 0, 29).tolist()
    for k, s in enumerate(sigmas[:-1]):
        assert step_index(sigmas, float(torch.tensor(s, dtype=torch.float32))) == k


def test_reuse_needs_schedule_and_a_stored_residual():
    run = CacheRun(Schedule.from_steps([0, 3], 5))
    x = torch.zeros(2, 3)
    assert not run.plan_call(0, run.ready(["a"], like=x))
    run.store("a", torch.ones(2, 3))
    assert run.plan_call(1, run.ready(["a"], like=x))
    assert not run.plan_call(1, run.ready(["a", "b"], like=x))  # stream b has nothing stored yet
    assert not run.plan_call(2, run.ready(["a"], like=torch.zeros(4, 3)))  # another layout: never reuse
    report = run.report()  # a step where any call had to compute counts as computed (forced)
    assert report.forced == [1, 2] and report.computed == [0, 1, 2] and report.reused == []


def test_forced_steps_are_reported():
    run = CacheRun(Schedule.from_steps([0], 3))
    assert not run.plan_call(1, run.ready(["a"]))  # nothing stored: forced
    report = run.report()
    assert report.forced == [1] and report.computed == [1]
    assert "forced compute at [1]" in report.line()


def test_all_compute_schedule_never_reads_the_store():
    run = CacheRun(Schedule.all_compute(4))
    run.store("a", torch.ones(1))
    assert not any(run.plan_call(k, run.ready(["a"])) for k in range(4))


def test_cached_sampling_with_all_compute_is_bit_identical_to_uncached(make_sampler):
    for mode in ("blocks", "model"):
        for cfg in (1.0, 2.5):
            sampler = make_sampler(steps=10, mode=mode, cfg=cfg)
            cached = sampler.sample(Schedule.all_compute(10))
            x = sampler.noise
            for k in range(10):
                x = x + (sampler.grid[k + 1] - sampler.grid[k]) * sampler.velocity.full(x, sampler.sigmas[k])
            assert torch.equal(cached, x), (mode, cfg)


def test_skipping_steps_changes_the_output_and_saves_block_calls(make_sampler, toy_model):
    sampler = make_sampler(steps=10)
    calls = {"n": 0}
    block = toy_model.blocks[0]
    hook = block.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        full = sampler.sample(Schedule.all_compute(10))
        full_calls = calls["n"]
        calls["n"] = 0
        cached = sampler.sample(Schedule.from_steps([0, 1, 4, 7, 9], 10))
    finally:
        hook.remove()
    assert full_calls == 10 and calls["n"] == 5
    assert not torch.equal(full, cached)
    assert (full - cached).abs().mean() < (full.abs().mean())  # close, not garbage


def test_run_report_lists_computed_and_reused_steps(make_sampler):
    sampler = make_sampler(steps=8)
    sampler.sample(Schedule.from_steps([0, 2, 5], 8))
    report = sampler.last_report
    assert report.computed == [0, 2, 5] and report.reused == [1, 3, 4, 6, 7]
    assert report.ideal_speedup == 8 / 3
    assert report.calls_computed == 3 and report.calls_reused == 5
    line = report.line()
    assert "computed 3/8 steps [0, 2, 5]" in line and "ideal speedup 2.67x" in line


def test_the_report_says_how_many_control_model_calls_were_skipped():
    run = CacheRun(Schedule.from_steps([0, 2], 4))
    run.add_controls(False, 2)  # a chain of two control models at a computed call
    run.add_controls(True, 2)
    run.add_controls(True, 1)  # one of them outside its start/end range
    report = run.report()
    assert (report.control_ran, report.control_skipped) == (2, 3)
    assert "control-model calls: 3 skipped, 2 run" in report.line()
    assert report.to_dict()["control_skipped"] == 3


def test_a_run_without_control_models_does_not_mention_them():
    assert "control" not in CacheRun(Schedule.from_steps([0, 2], 4)).report().line()


def test_a_new_run_starts_with_no_residuals(make_sampler):
    """State lives per run: a second run with another batch never sees the first run's residuals."""
    first = make_sampler(steps=6, batch=3)
    first.sample(Schedule.from_steps([0, 3], 6))
    second = make_sampler(steps=6, batch=5, seed=9)
    second.sample(Schedule.from_steps([0, 3], 6))
    assert second.last_report.forced == []


def test_a_reused_step_gets_the_linear_extrapolation_of_the_stored_outputs(make_sampler):
    """model mode stores the velocity v per stream; a linear step extrapolates it along sigma."""
    sampler = make_sampler(steps=6, mode="model", cfg=1.0)
    velocity, sigmas = sampler.velocity, sampler.sigmas
    run = CacheRun(Schedule.from_steps([0, 1], 6), mode="model", rules=parse_rule("linear"), sigmas=sigmas)
    x = sampler.noise
    v0, computed0 = velocity(run, 0, x, sigmas[0])
    v1, computed1 = velocity(run, 1, x + 0.1, sigmas[1])
    v2, computed2 = velocity(run, 2, x + 0.2, sigmas[2])
    assert computed0 and computed1 and not computed2
    expected = v1 + (sigmas[2] - sigmas[1]) * (v1 - v0) / (sigmas[1] - sigmas[0])
    assert torch.allclose(v2, expected)


def test_all_compute_is_bit_identical_under_every_rule(make_sampler):
    for mode in ("blocks", "model"):
        sampler = make_sampler(steps=8, mode=mode)
        plain = sampler.sample(Schedule.all_compute(8))
        for rule in parse_rules(["linear", "quadratic", "horizon2", "meancache3"]):
            assert torch.equal(sampler.sample(Schedule.all_compute(8), rules=rule), plain), (mode, rule)


def test_hold_is_what_a_run_without_rules_does(make_sampler):
    for mode in ("blocks", "model"):
        sampler = make_sampler(steps=10, mode=mode)
        schedule = Schedule.from_steps([0, 1, 4, 8], 10)
        assert torch.equal(sampler.sample(schedule, rules=[parse_rule("hold")] * 4), sampler.sample(schedule)), mode


def test_corrected_rules_follow_the_full_trajectory_more_closely_than_hold(make_sampler):
    for mode in ("blocks", "model"):
        sampler = make_sampler(steps=20, mode=mode)
        full = sampler.sample(Schedule.all_compute(20))
        schedule = Schedule.from_steps([0, 1, 2, 4, 7, 10, 13, 16], 20)
        hold = (sampler.sample(schedule) - full).abs().mean()
        linear = (sampler.sample(schedule, rules=parse_rule("linear")) - full).abs().mean()
        assert linear < hold, mode


def test_a_stopped_run_computes_the_rest_and_says_why_without_calling_it_forced():
    run = CacheRun(Schedule.from_steps([0, 3], 6))
    run.store("a", torch.ones(1), 1.0)
    assert run.plan_call(0, True) is False and run.plan_call(1, True) is True
    run.stop("another step cache is active")
    assert [run.plan_call(step, True) for step in range(2, 6)] == [False] * 4
    report = run.report()
    assert report.reused == [1] and report.computed == [0, 2, 3, 4, 5] and report.forced == []
    assert "caching stopped: another step cache is active" in report.line() and "forced" not in report.line()


def test_the_report_says_how_much_memory_the_stored_values_held_at_most():
    value = torch.zeros(2, 4, 8, 8)  # 2048 bytes in float32
    for rule, depth in (("hold", 1), ("linear", 2), ("taylor2", 3)):
        run = CacheRun(Schedule.from_steps([0, 1, 2, 3], 6), rules=parse_rule(rule))
        for k, sigma in enumerate((1.0, 0.8, 0.6, 0.4)):
            run.plan_call(k, ready=k > 0)
            for stream in ("cond", "uncond"):
                run.store(stream, value + k, sigma)
        run.plan_call(4, ready=True)  # held between calls: what the next call finds
        report = run.report()
        assert report.kept_bytes == 2 * depth * value.numel() * 4
        assert f"cache held {report.kept_bytes / 2**20:.1f} MiB" in report.line()
