"""The demo on a tiny random model: it writes the calibration and the figure and prints the table."""

import io

from PIL import Image

from otcache_core.calibration import Calibration
from otcache_core.testbed.demo import DemoSettings, output_paths, run_demo, xy_chart
from otcache_core.testbed.task import ProgressBar, default_budgets, tiny_task


def run_tiny(out_dir):
    task = tiny_task(steps=10)
    settings = DemoSettings(task=task.config, trials=3, max_skip=4, repeats=1, grid_samples=2)
    out, err = io.StringIO(), io.StringIO()
    result = run_demo(out_dir, task=task, settings=settings, stream=out, progress=ProgressBar(err))
    return result, out.getvalue(), err.getvalue()


def test_demo_writes_calibration_and_figure_and_prints_the_table(tmp_path):
    result, out, err = run_tiny(tmp_path)
    calibration = Calibration.load(result.calibration_path)
    assert calibration.steps == 10 and calibration.reference.schedule.budget == 5
    assert calibration.anchor.method == "optuna"
    image = Image.open(result.figure_path)
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
    assert "| budget (of 10) |" in out and str(tmp_path.resolve()) in out
    assert [r.budget for r in result.rows] == default_budgets(10) == [5, 3, 2]
    assert all(len(r.compute_steps) == r.budget for r in result.rows)
    assert "stage 4/4" in err  # the progress and log lines go to stderr (the last stage: the validation)


def test_each_demo_row_says_which_schedule_and_rule_it_ran(tmp_path):
    result, out, _ = run_tiny(tmp_path)
    calibration = Calibration.load(result.calibration_path)
    for row in result.rows:
        choice = calibration.budgets.nearest(row.budget / 10, 10)
        schedule = "even spacing" if choice.schedule == "uniform" else "calibrated"
        assert row.rule == str(choice.rule)
        assert f"| {row.budget} | {schedule} + {choice.rule} |" in out


def test_a_second_demo_never_replaces_the_first_calibration(tmp_path):
    first, _, _ = run_tiny(tmp_path)
    before = first.calibration_path.read_text()
    second, out, _ = run_tiny(tmp_path)
    assert first.calibration_path.read_text() == before
    assert second.calibration_path.name == "calibration-2.json" and second.figure_path.name == "demo-2.png"
    assert output_paths(tmp_path)[0].name == "calibration-3.json"


def test_xy_chart_draws_each_series_in_its_colour():
    chart = xy_chart([("a", [1, 2, 3], [30, 25, 20], (200, 0, 0)), ("b", [1, 2], [28, 22], (0, 0, 200))],
                     width=200, height=120)
    assert chart.shape == (120, 200, 3)
    assert (chart == [200, 0, 0]).all(axis=-1).any() and (chart == [0, 0, 200]).all(axis=-1).any()
