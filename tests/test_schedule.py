"""The Schedule value type: validation, mask, speedup, JSON."""

import json

import pytest

from otcache_core.errors import FileFormatError, OTCacheError, ScheduleError
from otcache_core.schedule import Schedule, parse_step_list


def test_valid_schedule_exposes_budget_mask_and_speedup():
    s = Schedule.from_steps([0, 2, 5], 8)
    assert s.budget == 3
    assert s.mask() == [True, False, True, False, False, True, False, False]
    assert s.reused_steps == (1, 3, 4, 6, 7)
    assert s.ideal_speedup == pytest.approx(8 / 3)
    assert Schedule.from_mask(s.mask()) == s


@pytest.mark.parametrize(
    "steps, compute, message",
    [
        ([], 5, "at least one computed step"),
        ([0, 3, 2], 5, "increasing"),
        ([0, 2, 2], 5, "appears twice"),
        ([0, 5], 5, "out of range"),
        ([1, 2], 5, "step 0 must be computed"),
        ([-1, 0], 5, "negative"),
        ([0, 1.5], 5, "integers"),
    ],
)
def test_invalid_step_lists_are_rejected_with_a_reason(steps, compute, message):
    with pytest.raises(ScheduleError, match=message):
        Schedule.from_steps(steps, compute)


def test_step_count_must_be_positive():
    with pytest.raises(ScheduleError, match="at least 1"):
        Schedule.from_steps([0], 0)


def test_segments_are_graph_edges_ending_at_T():
    assert Schedule.from_steps([0, 2, 5], 8).segments() == [(0, 2), (2, 5), (5, 8)]


def test_all_compute_has_speedup_one():
    s = Schedule.all_compute(7)
    assert s.compute_steps == tuple(range(7)) and s.ideal_speedup == 1.0


def test_json_round_trip_keeps_extra_fields(tmp_path):
    s = Schedule.from_steps([0, 1, 4, 9], 10)
    path = tmp_path / "s.json"
    s.save(path, source="test")
    doc = json.loads(path.read_text())
    assert doc["format"] == "otcache.schedule" and doc["version"] == 1 and doc["source"] == "test"
    assert Schedule.load(path) == s


def test_saving_never_replaces_a_different_file_silently(tmp_path):
    path = tmp_path / "s.json"
    Schedule.from_steps([0, 1], 4).save(path)
    before = path.read_text()
    with pytest.raises(OTCacheError, match="already exists"):
        Schedule.from_steps([0, 2], 4).save(path)
    assert path.read_text() == before
    Schedule.from_steps([0, 1], 4).save(path)  # identical content: fine
    Schedule.from_steps([0, 2], 4).save(path, overwrite=True)
    assert Schedule.load(path).compute_steps == (0, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]  # no temporary files left


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "other", "version": 1}', "expected format"),
        ('{"format": "otcache.schedule", "version": 99, "steps": 4, "compute_steps": [0]}', "newer"),
        ('{"format": "otcache.schedule", "version": 1, "compute_steps": [0]}', "missing field 'steps'"),
        ('{"format": "otcache.schedule", "version": 1, "steps": 4, "compute_steps": [0, 9]}', "out of range"),
        ('{"format": "otcache.schedule", "version": 1, "steps": 4, "budget": 3, "compute_steps": [0, 1]}', "budget"),
        ('{"format": "otcache.schedule", "version": 1, "steps": "4", "compute_steps": [0]}', "must be int"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FileFormatError, match=message) as info:
        Schedule.load(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        Schedule.load(tmp_path / "absent.json")


def test_parse_step_list_accepts_commas_and_spaces():
    assert parse_step_list("0, 1,3 7") == [0, 1, 3, 7]
    with pytest.raises(ScheduleError, match="'x' is not an integer"):
        parse_step_list("0,x")
    with pytest.raises(ScheduleError, match="empty"):
        parse_step_list(" , ")


def test_saved_files_are_compact_and_readable_by_others(tmp_path):
    import os
    import stat

    path = tmp_path / "s.json"
    Schedule.from_steps([0, 1, 4, 9], 10).save(path, note="steps [0,1] in text stay as written")
    text = path.read_text()
    assert '"compute_steps": [0, 1, 4, 9]' in text and "steps [0,1] in text" in text
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask  # as any new file, not mkstemp's 0600
