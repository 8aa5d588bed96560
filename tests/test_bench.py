"""The benchmark: the published-style hand schedule rule, and the JSON/markdown of a tiny run."""

import io
import json

import pytest

from otcache_core.testbed.baselines import hand_schedule
from otcache_core.testbed.bench import BenchSettings, run_bench, winners
from otcache_core.testbed.task import ProgressBar, TaskConfig, tiny_task


def test_hand_rule_gives_the_published_list_at_t50_b10():
    assert list(hand_schedule(50, 10).compute_steps) == [0, 1, 3, 7, 14, 21, 28, 35, 42, 49]


@pytest.mark.parametrize("steps", [4, 10, 20, 28, 50])
def test_hand_rule_gives_exactly_b_steps_ending_at_the_last(steps):
    for budget in range(1, steps + 1):
        schedule = hand_schedule(steps, budget)  # Schedule validates: starts at 0, strictly increasing
        assert schedule.budget == budget and schedule.steps == steps
        if budget == 1:
            continue
        assert schedule.compute_steps[-1] == steps - 1
        gaps = [b - a for a, b in zip(schedule.compute_steps, schedule.compute_steps[1:])]
        # shape: doubling gaps 1, 2, 4, ... then even gaps (rounded: they differ by at most 1)
        assert any(gaps[:m] == [2**k for k in range(m)] and max(gaps[m:]) - min(gaps[m:]) <= 1
                   for m in range(len(gaps))), gaps


def test_bench_json_structure_on_a_tiny_run(tmp_path):
    T = 10
    task = tiny_task(steps=T)
    settings = BenchSettings(task=task.config, budgets=(5, 3), trials=3, max_skip=4, global_samples=1,
                             repeats=1, tune_evaluations=20)
    out, err = io.StringIO(), io.StringIO()
    path = tmp_path / "bench.json"
    result = run_bench(path, task=task, settings=settings, stream=out, progress=ProgressBar(err))
    doc = json.loads(path.read_text())
    assert doc["steps"] == T and doc == result.document
    methods = {r["method"] for r in doc["results"]}
    assert {"otcache", "otcache-inverse", "otcache-warmup3", "otcache-global", "otcache-drift", "otcache-model",
            "lemica", "lemica-global", "lemica-drift", "lemica-model", "uniform", "hand", "teacache", "magcache", "easycache",
            "otcache-corrected", "otcache-model-corrected", "lemica-corrected", "lemica-model-corrected",
            "uniform-linear", "uniform-model-linear", "uniform-horizon2", "uniform-model-horizon2"} <= methods
    for r in doc["results"]:
        for key in ("method", "budget", "psnr", "psnr_worst", "ssim", "rel_l1", "speedup_ideal", "speedup_measured"):
            assert key in r
        if r["psnr"] is not None:
            assert r["psnr_worst"] <= r["psnr"] + 1e-9
        if r["method"].startswith("otcache") and r["method"].endswith("corrected"):  # one count per reused step
            counts = [int(part.split(" x")[1]) for part in r["rules"].split(", ")]
            assert sum(counts) == T - r["budget"], r["method"]
        elif r["method"].startswith("lemica") and r["method"].endswith("corrected"):  # the edges' rule
            assert r["rules"] == "linear", r["method"]
        elif r["method"].startswith("uniform") and "-" in r["method"]:
            assert r["rules"] == r["method"].rsplit("-", 1)[1], r["method"]
        assert len(r["compute_steps"]) == r["budget"], r["method"]  # equal compute for every method
        assert r["speedup_ideal"] == pytest.approx(T / r["budget"])
    assert {r["budget"] for r in doc["results"]} == {5, 3}
    cost = doc["calibration_cost"]
    assert cost["otcache"]["total_model_calls"] > 0 and cost["edges"]["global"]["samples"] == 1
    assert cost["edges"]["drift"]["model_calls"] == 0
    assert set(doc["calibration"]["corrected"]) == {"blocks", "model"}
    text = out.getvalue()
    assert "| method | mode | B |" in text and "| otcache | blocks | 5 |" in text and "Calibration cost" in text
    assert "vs uniform-model-linear" in text and "worst-image PSNR" in text


def test_bench_settings_are_the_issue_s():
    settings = BenchSettings()
    assert settings.task.steps == 50 and settings.budgets == (25, 17, 13, 10, 8)
    assert set(TaskConfig().calibration_classes).isdisjoint(TaskConfig().evaluation_classes)


def test_otcache_is_compared_with_methods_of_its_own_reuse_mode():
    def row(method, mode, psnr):
        return {"method": method, "mode": mode, "budget": 8, "psnr": psnr}

    rows = [row("otcache", "blocks", 28.0), row("lemica", "blocks", 28.5), row("uniform", "blocks", 27.0),
            row("otcache-model", "model", 30.0), row("lemica-model", "model", 29.0)]
    (line,) = winners(rows)[2:]
    assert line.startswith("- B=8: best otcache-model (30.00 dB)")
    assert "otcache 28.00 dB, -0.50 dB vs best other blocks-mode method (lemica)" in line
    assert "otcache-model 30.00 dB, +1.00 dB vs best other model-mode method (lemica-model)" in line
