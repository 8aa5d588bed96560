"""The command line: a stable interface with one-line errors and exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pytest

from otcache_core.reuse import DEFAULT_RULE
from otcache_core.calibration import Calibration, ScheduleRecord
from otcache_core.cli import main
from otcache_core.schedule import Schedule

REF = "0,1,2,3,4,5,6,7,8,9,10,12,15,18,20,25,30,35,39,42,44,45,46,47,48,49"
ANCHOR = "0,1,3,7,14,21,28,35,42,49"


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_schedule_json_has_the_documented_fields(capsys):
    code, out, _ = run_cli(capsys, "schedule", "--reference", REF, "--anchor", ANCHOR, "--steps", "50",
                           "--budget", "15", "--json")
    assert code == 0
    doc = json.loads(out)
    for key in ("steps", "budget", "compute_steps", "ideal_speedup", "lambda", "extrapolated"):
        assert key in doc
    assert doc["budget"] == 15 and len(doc["compute_steps"]) == 15 and doc["ideal_speedup"] == pytest.approx(50 / 15)


def test_schedule_resamples_from_source_steps(capsys):
    code, out, _ = run_cli(capsys, "schedule", "--reference", REF, "--anchor", ANCHOR, "--source-steps", "50",
                           "--steps", "28", "--budget", "8", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["steps"] == 28 and doc["compute_steps"][-1] == 27 and doc["notes"]


def test_schedule_from_a_calibration_file(capsys, tmp_path):
    cal = Calibration(
        name="x", steps=50,
        reference=ScheduleRecord(Schedule.from_steps([int(s) for s in REF.split(",")], 50), "published"),
        anchor=ScheduleRecord(Schedule.from_steps([int(s) for s in ANCHOR.split(",")], 50), "published"),
    )
    cal.save(tmp_path / "c.json")
    code, out, _ = run_cli(capsys, "schedule", "--calibration", str(tmp_path / "c.json"), "--steps", "50",
                           "--budget", "10", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["compute_steps"] == [int(s) for s in ANCHOR.split(",")]
    # a calibration without rules runs with the measured default, and says so
    assert set(doc["rules"]) == {DEFAULT_RULE.name} and any("names no rule" in n for n in doc["notes"])


def test_schedule_from_a_calibration_with_rules_lists_each_segments_rule(capsys, tmp_path):
    from otcache_core.reuse import EdgeRules, parse_rule

    anchor = Schedule.from_steps([int(s) for s in ANCHOR.split(",")], 50)
    rules = tuple("hold" if j - i < 5 else "linear" for i, j in anchor.segments())
    table = EdgeRules(50, tuple((i, j, parse_rule(r)) for (i, j), r in zip(anchor.segments(), rules) if j > i + 1))
    cal = Calibration(
        name="x", steps=50,
        reference=ScheduleRecord(Schedule.from_steps([int(s) for s in REF.split(",")], 50), "published"),
        anchor=ScheduleRecord(anchor, "optuna", rules=tuple(parse_rule(r) for r in rules)),
        edge_errors={"strength": "rollout", "max_skip": 10, "metric": "rel_l1",
                     "matrix": [[None] * 51 for _ in range(51)], "rules": table.to_matrix()},
    )
    cal.save(tmp_path / "c.json")
    code, out, _ = run_cli(capsys, "schedule", "--calibration", str(tmp_path / "c.json"), "--steps", "50",
                           "--budget", "10", "--json")
    assert code == 0 and json.loads(out)["rules"] == list(rules)
    code, out, _ = run_cli(capsys, "schedule", "--calibration", str(tmp_path / "c.json"), "--steps", "50",
                           "--budget", "10")
    assert "reuse rules per segment: " + ",".join(rules) in out and "linear x6, hold x4" in out


def test_schedule_text_output_lists_the_steps(capsys):
    code, out, _ = run_cli(capsys, "schedule", "--reference", REF, "--anchor", ANCHOR, "--steps", "50", "--budget", "26")
    assert code == 0 and f"compute_steps: {REF}" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["schedule", "--reference", REF, "--anchor", ANCHOR, "--steps", "50", "--budget", "60"], "more than the 50"),
        (["schedule", "--reference", "0,2,1", "--anchor", ANCHOR, "--steps", "50", "--budget", "9"], "increasing"),
        (["schedule", "--reference", REF, "--anchor", ANCHOR, "--steps", "20", "--budget", "9"], "out of range"),
        (["schedule", "--steps", "50", "--budget", "9"], "--reference"),
        (["schedule", "--calibration", "/nonexistent.json", "--steps", "5", "--budget", "2"], "no such file"),
        (["reference", "--errors", "/nonexistent.json", "--budget", "3"], "no such file"),
        (["schedule", "--reference", REF], "required"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err


def test_reference_command_solves_the_leximax_path(capsys, tmp_path):
    T = 50
    rng = np.random.default_rng(0)
    w = rng.random((T + 1, T + 1))
    (tmp_path / "e.json").write_text(json.dumps({"steps": T, "errors": w.tolist()}))
    code, out, _ = run_cli(capsys, "reference", "--errors", str(tmp_path / "e.json"), "--budget", "10",
                           "--max-skip", "50", "--json")
    doc = json.loads(out)
    assert code == 0 and len(doc["compute_steps"]) == 10 and doc["compute_steps"][0] == 0
    assert doc["worst_segment"] == max(doc["segment_errors"])


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "otcache_core", "schedule", "--reference", REF, "--anchor", ANCHOR,
                           "--steps", "50", "--budget", "70"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and proc.stdout == ""


def test_the_schedule_commands_do_not_import_torch():
    # A schedule is arithmetic on step lists; torch's import alone would take longer than the answer.
    probe = "import sys, otcache_core.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
