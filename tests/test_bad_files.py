"""Malformed, truncated, wrong-version and hostile files given to every loader (property-based).

Each loader either accepts a file (and what it accepts then works: a schedule can be planned from
it) or refuses it with one :class:`FileFormatError` line that names the file and, where the problem
is a field, the field. Nothing else escapes (no RecursionError, MemoryError, OverflowError, KeyError,
TypeError from deep inside), and loading changes nothing on disk. The preset list skips a bad file
with one warning and keeps listing the others.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_dirs import tree_digest
from otcache_core.calibrate import EdgeCheckpoint
from otcache_core.calibration import BudgetChoice, BudgetChoices, Calibration, ScheduleRecord, matrix_to_json
from otcache_core.errors import FileFormatError, OTCacheError
from otcache_core.jsonfile import MAX_FILE_BYTES, dumps
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.presets import list_presets, load_preset
from otcache_core.reuse import parse_rule
from otcache_core.schedule import Schedule

T = 12
DEEP = "__deep_nesting__"
# OTCACHE_FUZZ_EXAMPLES=2000 for a longer search (the suite's default keeps CI quick)
FUZZ = settings(max_examples=int(os.environ.get("OTCACHE_FUZZ_EXAMPLES", "120")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def valid_calibration(version: int = 3) -> dict[str, Any]:
    """A calibration file as OTCache writes it: version 3 (a schedule and a rule per budget, checked end to
    end, and a rule for every segment), version 2 (reuse rules per edge and per segment), or version 1
    (every file written before rules)."""
    matrix = np.full((T + 1, T + 1), np.nan)
    for i in range(T):
        for j in range(i + 1, min(i + 5, T) + 1):
            matrix[i, j] = 0.0 if j == i + 1 else 0.01 * (j - i) ** 2
    reference = Schedule.from_steps([0, 2, 4, 6, 8, 10, 11], T)
    anchor = Schedule.from_steps([0, 4, 8, 11], T)
    edge_errors = {"strength": "rollout", "max_skip": 5, "metric": "rel_l1", "matrix": matrix_to_json(matrix)}
    reference_rules = anchor_rules = None
    budgets, rule = None, None
    if version == 2:
        names = [[("linear" if (i + j) % 2 else "hold") if j >= i + 2 and not np.isnan(matrix[i, j]) else None
                  for j in range(T + 1)] for i in range(T + 1)]
        edge_errors.update(rules=names, candidates=["hold", "linear"],
                           by_rule={"hold": matrix_to_json(matrix), "linear": matrix_to_json(matrix * 0.5)})
        reference_rules = (parse_rule("hold"),) * len(reference.segments())
        anchor_rules = tuple(parse_rule(n) for n in ("linear", "hold", "meancache3", "hold"))
    if version == 3:
        edge_errors.update(rule="linear", history=2, candidates=["linear", "horizon2"])
        reference_rules = (parse_rule("linear"),) * len(reference.segments())
        anchor_rules = (parse_rule("horizon2"),) * len(anchor.segments())
        budgets = BudgetChoices((BudgetChoice(7, "calibrated", parse_rule("linear"), {"calibrated linear": 0.01,
                                                                                         "uniform linear": 0.02}),
                                 BudgetChoice(4, "uniform", parse_rule("horizon2"), {"uniform horizon2": 0.03})),
                                "rel_l1", 2, True)
        rule = parse_rule("linear")
    record = Calibration(
        name="fuzz", steps=T,
        reference=ScheduleRecord(reference, "leximax", 0.04, {"segment_errors": [0.04] * 7, "max_skip": 5},
                                 reference_rules),
        anchor=ScheduleRecord(anchor, "optuna", 0.2, {"objective": "rel_l1", "trials": 3, "history": [0.3, 0.2, 0.25]},
                              anchor_rules),
        model={"family": "flux", "families": ["flux"], "name": "tiny",
               "loras": {"weights": 2, "patches": 3, "strengths": [0.5, 1.0], "digest": "1f3a5c7e9b2d4f60"},
               "sampling": {"kind": "ModelSamplingFlux", "shift": 1.15, "sigma_min": 0.0, "sigma_max": 1.0}},
        sampler={"sampler": "euler", "scheduler": "simple", "cfg": 3.0, "steps": T, "seeds": [0, 1]},
        edge_errors=edge_errors, cost={"model_calls": {"edges": 40}, "seconds": {"edges": 1.5}}, notes=["a note"],
        created="2026-12-01", budgets=budgets, rule=rule, rule_source="a measurement" if rule else "",
    )
    document = record.to_dict()
    assert document["version"] == version
    return document


def valid_schedule() -> dict[str, Any]:
    return Schedule.from_steps([0, 1, 3, 7, 11], T).to_dict(source={"kind": "hand-made"})


def valid_checkpoint() -> dict[str, Any]:
    row = [None, None, 0.1, 0.2, 0.3] + [None] * (T - 4)
    return {"format": "otcache.edge_checkpoint", "version": 1, "key": "k", "rows": {"0": row, "1": [None] + row[:-1]}}


# --------------------------------------------------------------------------- hostile values and mutations

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.sampled_from([-1, 0, 2**31, 2**63, 10**18, 10**19, -10**30]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 5e-324, 1e999]),
    st.text(max_size=12), st.sampled_from(["", "1", "\x00", "flux", "any", "NaN"]),
)
hostile = st.one_of(
    scalars,
    st.lists(st.integers(-3, 40), max_size=16),  # unsorted, duplicate, negative, out-of-range steps
    st.lists(scalars, max_size=6),
    st.dictionaries(st.text(max_size=6), scalars, max_size=3),
    st.integers(20, 3000).map(lambda n: (DEEP, n)),  # nesting from just under the limit to far past it
)


@st.composite
def a_path(draw, document: Any) -> tuple:
    """A path into ``document``: each key of a level equally likely, stopping at each level half the time
    (so ``notes`` is as likely as the matrix, whose entries outnumber every other field)."""
    path, node = [], document
    while isinstance(node, (dict, list)) and node:
        key = draw(st.sampled_from(list(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
        if draw(st.booleans()):
            break
    return tuple(path)


def to_text(document: Any) -> str:
    """JSON text, NaN/Infinity as the bare tokens a careless writer emits; deep nesting spliced in as text."""
    deep: list[int] = []

    def mark(value: Any) -> Any:
        if isinstance(value, tuple) and value and value[0] == DEEP:
            deep.append(value[1])
            return f"{DEEP}{len(deep) - 1}"
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(document), allow_nan=True)
    for i, depth in enumerate(deep):
        text = text.replace(json.dumps(f"{DEEP}{i}"), "[" * depth + "1" + "]" * depth)
    return text


@st.composite
def mutated(draw, base: dict[str, Any]) -> tuple[dict[str, Any], tuple]:
    """``base`` with one value replaced by a hostile one, one key deleted, or one key added."""
    document = copy.deepcopy(base)
    path = draw(a_path(document))
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        key = draw(st.text(min_size=1, max_size=8))
        parent[key] = draw(hostile)
        path = path[:-1] + (key,)
    else:
        parent[path[-1]] = draw(hostile)
    return document, path


# --------------------------------------------------------------------------- checks


def write(folder: Path, text: str | bytes, name: str = "file.json") -> Path:
    path = folder / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_refusal(error: FileFormatError, path: Path, fields: tuple = ()) -> None:
    message = str(error)
    assert "\n" not in message and len(message) < 600, message
    assert str(path) in message, message
    if "far deeper" not in message:  # the parser's own recursion limit knows no field
        assert names_a_field(message, fields), (message, fields)


def names_a_field(message: str, fields: tuple) -> bool:
    """Whether ``message`` names one of the keys on ``fields`` (as written, or as ``repr`` escapes it)."""
    names = [k for k in fields if isinstance(k, str)]
    return not names or any(name in message or repr(name)[1:-1] in message for name in names)


def use(calibration: Calibration) -> None:
    """What the nodes do with a loaded calibration; only OTCacheError may come out."""
    try:
        calibration.summary()
        calibration.error_matrix()
        dumps(calibration.to_dict())
        for budget in (1, calibration.anchor.schedule.budget, calibration.steps):
            plan = SchedulePlan.from_calibration(calibration, BudgetRule("steps", budget, calibration.steps))
            for steps in (1, 7, calibration.steps, 3 * calibration.steps):
                plan.resolve(steps)
            plan.fits("flux")
    except OTCacheError:
        pass


def load_calibration_file(path: Path, fields: tuple = ()) -> None:
    folder = path.parent
    before = tree_digest(folder)
    for loader in (Calibration.load, load_preset):
        try:
            use(loader(path))
        except FileFormatError as exc:
            check_refusal(exc, path, fields)
    warnings: list[str] = []
    listed = list_presets(folder, warnings=warnings)
    assert len(warnings) <= 1 and all("\n" not in w and str(path) in w for w in warnings)
    assert (path in listed.values()) != bool(warnings) or not _is_calibration(path)
    assert tree_digest(folder) == before  # loading and listing change nothing on disk


def _is_calibration(path: Path) -> bool:
    """Whether the preset list must account for ``path`` (list it or warn); other JSON it ignores."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except Exception:
        return True  # not JSON: the list warns about it
    return isinstance(document, dict) and document.get("format") == "otcache.calibration"


# --------------------------------------------------------------------------- calibration and preset files


@FUZZ
@given(st.one_of(mutated(valid_calibration(3)), mutated(valid_calibration(2)), mutated(valid_calibration(1))))
def test_a_mutated_calibration_is_refused_naming_its_field_or_works(case):
    document, path = case
    with tempfile.TemporaryDirectory() as folder:
        load_calibration_file(write(Path(folder), to_text(document)), path)


@FUZZ
@given(st.data())
def test_a_truncated_calibration_is_refused(data):
    text = dumps(valid_calibration(data.draw(st.sampled_from([1, 2, 3]))))
    cut = data.draw(st.integers(0, len(text) - 2))
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), text[:cut])
        with pytest.raises(FileFormatError) as error:
            Calibration.load(path)
        check_refusal(error.value, path)
        load_calibration_file(path)


@FUZZ
@given(st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(), st.text(max_size=5),
                 st.just([1])))
def test_a_calibration_of_another_version_is_refused(version):
    document = valid_calibration()
    document["version"] = version
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), to_text(document))
        if type(version) is int and version in (1, 2, 3):
            use(Calibration.load(path))
            return
        with pytest.raises(FileFormatError, match="version") as error:
            Calibration.load(path)
        check_refusal(error.value, path, ("version",))


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_are_refused(blob):
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), blob)
        with pytest.raises(FileFormatError) as error:
            Calibration.load(path)
        check_refusal(error.value, path)
        load_calibration_file(path)


def test_text_that_is_not_utf8_is_refused(tmp_path):
    document = valid_calibration()
    document["name"] = "café"
    path = write(tmp_path, to_text(document).replace("\\u00e9", "é").encode("latin-1"))
    with pytest.raises(FileFormatError, match="not UTF-8") as error:
        Calibration.load(path)
    check_refusal(error.value, path)


@pytest.mark.parametrize("depth", [33, 900, 100_000])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, depth):
    document = valid_calibration()
    document["notes"] = (DEEP, depth)
    path = write(tmp_path, to_text(document))
    with pytest.raises(FileFormatError, match="deeper than 32") as error:
        Calibration.load(path)
    check_refusal(error.value, path, ("notes",))


def test_a_50_mb_file_is_refused_before_it_is_read(tmp_path):
    document = valid_calibration()
    document["notes"] = ["x" * (50 * 2**20)]
    path = write(tmp_path, to_text(document))
    assert path.stat().st_size > MAX_FILE_BYTES
    started = time.perf_counter()
    with pytest.raises(FileFormatError, match="MiB is larger than OTCache reads") as error:
        Calibration.load(path)
    assert time.perf_counter() - started < 1.0
    check_refusal(error.value, path)
    warnings: list[str] = []
    assert path not in list_presets(tmp_path, warnings=warnings).values()
    assert len(warnings) == 1 and "MiB" in warnings[0]


def test_the_preset_list_skips_each_bad_file_with_one_warning_and_keeps_the_good_ones(tmp_path):
    good = valid_calibration()
    write(tmp_path, dumps(good), "good.json")
    write(tmp_path, dumps(good)[:100], "truncated.json")
    nan = copy.deepcopy(good)
    nan["anchor"]["score"] = float("nan")
    write(tmp_path, to_text(nan), "nan.json")
    unsorted = copy.deepcopy(good)
    unsorted["reference"]["compute_steps"] = [0, 4, 2, 6, 8, 10, 11]
    write(tmp_path, to_text(unsorted), "unsorted.json")
    write(tmp_path, b"\xff\xfe{}", "binary.json")
    write(tmp_path, json.dumps({"format": "otcache.schedule", "version": 1}), "other-format.json")  # not a preset
    warnings: list[str] = []
    listed = list_presets(tmp_path, warnings=warnings)
    assert listed["fuzz"] == tmp_path / "good.json"
    assert sorted(Path(w.split(":")[0]).name for w in warnings) == ["binary.json", "nan.json", "truncated.json",
                                                                     "unsorted.json"]
    assert any("'compute_steps'" in w and "increasing" in w for w in warnings)
    assert any("'anchor.score'" in w and "finite" in w for w in warnings)


# --------------------------------------------------------------------------- schedule files and the edge checkpoint


@FUZZ
@given(mutated(valid_schedule()))
def test_a_mutated_schedule_file_is_refused_naming_its_field_or_loads(case):
    document, fields = case
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), to_text(document))
        before = tree_digest(Path(folder))
        try:
            schedule = Schedule.load(path)
        except FileFormatError as exc:
            check_refusal(exc, path, fields)
        else:
            schedule.mask()
            SchedulePlan.from_schedule(schedule).resolve(schedule.steps + 3)
        assert tree_digest(Path(folder)) == before


@FUZZ
@given(st.one_of(mutated(valid_checkpoint()), st.binary(max_size=200).map(lambda b: (b, ()))))
def test_a_bad_edge_checkpoint_is_reported_in_one_line_and_not_used(case):
    document, fields = case
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), document if isinstance(document, bytes) else to_text(document))
        before = tree_digest(Path(folder))
        checkpoint = EdgeCheckpoint(path, "k", steps=T)
        assert tree_digest(Path(folder)) == before
        if checkpoint.problem is not None:
            assert checkpoint.rows == {} and "\n" not in checkpoint.problem and str(path) in checkpoint.problem
            if "far deeper" not in checkpoint.problem:
                assert names_a_field(checkpoint.problem, fields), (checkpoint.problem, fields)
        for i, row in checkpoint.rows.items():
            assert 0 <= i < T - 1 and len(row) == T + 1
            assert all(x is None or (isinstance(x, (int, float)) and 0 <= x < float("inf")) for x in row)
        row = [None, None, 0.5] + [None] * (T - 2)
        checkpoint.add(0, row)  # the calibration goes on: a bad file is replaced by the rows measured now
        assert checkpoint.save_problem is None and EdgeCheckpoint(path, "k", steps=T).rows[0] == row


# --------------------------------------------------------------------------- the CLI's edge-matrix file


def valid_edge_matrix() -> dict[str, Any]:
    return {"steps": T, "errors": valid_calibration(1)["edge_errors"]["matrix"]}


@FUZZ
@given(st.one_of(mutated(valid_edge_matrix()), st.binary(max_size=200).map(lambda b: (b, ()))))
def test_a_bad_edge_matrix_file_gives_the_cli_one_error_line(case):
    import contextlib
    import io

    from otcache_core.cli import main

    document, fields = case
    with tempfile.TemporaryDirectory() as folder:
        path = write(Path(folder), document if isinstance(document, bytes) else to_text(document))
        before = tree_digest(Path(folder))
        stderr, stdout = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            code = main(["reference", "--errors", str(path), "--budget", "6", "--max-skip", "5", "--json"])
        assert tree_digest(Path(folder)) == before
        if code == 0:
            json.loads(stdout.getvalue())
            return
        message = stderr.getvalue().strip()
        assert code == 2 and message.startswith("error: ") and "\n" not in message
        if "budget" not in message and "segments of at most" not in message:  # the command line's own inputs
            check_refusal(FileFormatError(message), path, fields)
