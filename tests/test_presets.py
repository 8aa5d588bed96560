"""Shipped presets (``schedules/``): they load, are internally consistent, rebuild byte-identically from
the published data when it is available, and OT interpolation between each preset's published
extremes is measured against the authors' own intermediate lists.

The measurement table is printed; see it with ``pytest -s tests/test_presets.py -k measure``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from otcache_core.calibration import Calibration
from otcache_core.cli import main
from otcache_core.errors import FileFormatError
from otcache_core.interpolation import predict
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core import presets as presets_module
from otcache_core.presets import describe_preset, list_presets, load_preset, resolve_preset_name, shipped_preset_dir
from otcache_core.schedule import Schedule
from otcache_core.warp import identity_warp, sample_warp, warp_of

REPO = Path(__file__).resolve().parents[1]
SCHEDULES = REPO / "schedules"
DATA_VARIABLE = "OTCACHE_PUBLISHED_SCHEDULES"
"""Where the project's ``published_schedules.json`` is (it is not part of the repository)."""
DATA = Path(os.environ.get(DATA_VARIABLE, "")).expanduser() if os.environ.get(DATA_VARIABLE) else None

# file -> (name, family, families, T, reference budget, anchor budget, method)
EXPECTED = {
    "flux.1-dev.json": ("flux.1-dev", "flux", ["flux"], 50, 26, 10, "LeMiCa"),
    "flux.2-dev.json": ("flux.2-dev", "flux2", ["flux2", "flux"], 50, 26, 15, "LeMiCa"),
    "qwen-image.json": ("qwen-image", "qwen_image", ["qwen_image"], 50, 25, 10, "LeMiCa"),
    "qwen-image-2512.json": ("qwen-image-2512", "qwen_image", ["qwen_image"], 50, 25, 10, "MeanCache"),
    "wan2.1-t2v-1.3b.json": ("wan2.1-t2v-1.3b", "wan", ["wan"], 50, 25, 14, "LeMiCa"),
    "wan2.1-t2v-14b.json": ("wan2.1-t2v-14b", "wan", ["wan"], 50, 25, 14, "LeMiCa"),
    "wan2.1-i2v-14b.json": ("wan2.1-i2v-14b", "wan", ["wan"], 40, 25, 14, "LeMiCa"),
    "hunyuanvideo-1.5.json": ("hunyuanvideo-1.5", "hunyuan_video15", ["hunyuan_video15", "hunyuan_video"], 50, 25, 10, "LeMiCa"),
    "z-image.json": ("z-image", "z_image", ["z_image", "lumina2"], 50, 25, 13, "MeanCache"),
}
"""The presets built from published lists; ``generic.json`` (evenly spaced steps) is checked on its own."""
GENERIC = "generic.json"
SHIPPED_NAMES = {v[0] for v in EXPECTED.values()} | {"generic"}
SOURCE_FIELDS = ("repo", "path", "commit", "line", "license")
PUBLIC_REPOS = ("UnicomAI/MeanCache", "scruffynerf/LeMiCa (fork of UnicomAI/LeMiCa)")
ANCHOR_NOTE = "the anchor is a published graph schedule, not an Optuna-searched one"


def preset_files() -> list[Path]:
    return sorted(SCHEDULES.glob("*.json"))


def check_source(source: dict, where: str) -> None:
    for key in SOURCE_FIELDS:
        assert key in source, f"{where}: source lacks {key!r}"
    assert source["license"] == "Apache-2.0", where
    assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), where
    assert isinstance(source["line"], int) and source["line"] > 0, where
    assert source["repo"] in PUBLIC_REPOS, where


def test_the_shipped_folder_holds_exactly_the_expected_presets():
    assert shipped_preset_dir() == SCHEDULES
    assert {p.name for p in preset_files()} == set(EXPECTED) | {GENERIC}
    assert (SCHEDULES / "README.md").is_file()


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_preset_loads_and_is_consistent(filename):
    path = SCHEDULES / filename
    cal = load_preset(path)
    name, family, families, T, ref_b, anc_b, method = EXPECTED[filename]
    assert cal.name == name and cal.steps == T
    assert cal.model["family"] == family and cal.model["families"] == families and cal.model["name"]
    assert cal.family in cal.model["families"]
    assert cal.edge_errors is None and cal.error_matrix() is None and cal.cost == {}
    assert cal.created == "2026-11-27"
    for role, record, budget in (("reference", cal.reference, ref_b), ("anchor", cal.anchor, anc_b)):
        s = record.schedule
        assert record.method == "published" and record.score is None, role
        assert s.steps == T and s.budget == budget == record.details["published_budget"], role
        assert s.compute_steps[0] == 0 and s.compute_steps[-1] == T - 1, role
        check_source(record.details["source"], f"{filename} {role}")
    assert cal.reference.schedule.budget > cal.anchor.schedule.budget

    src = cal.source
    assert src["kind"] == "published" and src["license"] == "Apache-2.0" and src["method"] == method
    assert src["authors"] == "LeMiCa / MeanCache authors (UnicomAI)"
    cited = {(s["repo"], s["commit"]) for s in [cal.reference.details["source"], cal.anchor.details["source"],
                                                 *(i["source"] for i in src["published_lists"]),
                                                 *src.get("duplicate_sources", [])]}
    repositories = [(r["repo"], r["commit"]) for r in src["repositories"]]
    assert len(repositories) == len(set(repositories)) and set(repositories) == cited
    assert all(r["license"] == "Apache-2.0" for r in src["repositories"])
    same_method = [cal.reference.schedule.budget, cal.anchor.schedule.budget]
    for item in src["published_lists"]:
        listed = Schedule.from_steps(item["compute_steps"], T)  # validates
        assert listed.budget == item["budget"] and listed.compute_steps[-1] == T - 1
        check_source(item["source"], f"{filename} B={item['budget']}")
        if item["method"] == method:  # intermediate budgets of the preset's own method
            assert anc_b < item["budget"] < ref_b
            same_method.append(item["budget"])
    assert len(same_method) == len(set(same_method)), "two lists of one method at one budget"
    assert any(n.startswith(ANCHOR_NOTE) for n in cal.notes)
    for dup in src.get("duplicate_sources", []):
        check_source(dup, f"{filename} duplicate")
        assert dup["path"].startswith("ComfyUI-LeMiCa/")


def test_model_specific_facts_are_recorded():
    hunyuan = load_preset(SCHEDULES / "hunyuanvideo-1.5.json")
    assert hunyuan.source["identical_lists_in_data"] == ["hunyuanvideo-1.5-i2v"]
    assert any("I2V lists are identical" in n for n in hunyuan.notes)
    qwen = load_preset(SCHEDULES / "qwen-image.json")
    assert {i["method"] for i in qwen.source["published_lists"]} == {"LeMiCa", "MeanCache"}
    assert qwen.source["duplicate_sources"][0]["path"] == "ComfyUI-LeMiCa/nodes.py"
    for name in ("qwen-image-2512.json", "z-image.json"):
        assert any("MeanCache" in n for n in load_preset(SCHEDULES / name).notes)


# --- the generic preset ------------------------------------------------------------------------------


def test_the_generic_preset_is_evenly_spaced_steps_for_any_model():
    generic = load_preset(SCHEDULES / GENERIC)
    assert generic.name == "generic" and generic.model["families"] == ["any"] and generic.edge_errors is None
    assert generic.source == {"kind": "rule", "method": "evenly spaced steps"}
    assert generic.description().startswith("any model; evenly spaced steps")
    assert any("starting point" in n for n in generic.notes)
    for record in (generic.reference, generic.anchor):
        steps = record.schedule.compute_steps
        assert record.method == "even" and len({b - a for a, b in zip(steps, steps[1:])}) == 1


@pytest.mark.parametrize("steps", [20, 28, 30, 50])
def test_generic_gives_even_spacing_at_every_budget(steps):
    generic = load_preset(SCHEDULES / GENERIC)
    for budget in range(1, steps + 1):
        got = SchedulePlan.from_calibration(generic, BudgetRule("steps", budget, steps)).resolve(steps).schedule
        even = sample_warp(identity_warp(), steps, budget)
        gaps = np.diff(got.compute_steps)
        assert got.budget == budget and (budget < 3 or gaps.max() - gaps.min() <= 1), (steps, budget, got)
        # the same steps, except where an exact half step rounds the other way (28 steps, budget 19)
        assert got == even or (steps, budget) == (28, 19), (steps, budget, got, even)


def test_the_generic_preset_is_what_the_builder_makes():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import build_presets
    finally:
        sys.path.remove(str(REPO / "tools"))
    assert build_presets.generic_preset().to_dict() == load_preset(SCHEDULES / GENERIC).to_dict()


@pytest.mark.parametrize("filename", sorted(EXPECTED))
def test_plan_reproduces_the_published_extremes_at_their_own_budgets(filename):
    cal = load_preset(SCHEDULES / filename)
    for record in (cal.reference, cal.anchor):
        rule = BudgetRule("steps", record.schedule.budget, cal.steps)
        resolved = SchedulePlan.from_calibration(cal, rule).resolve(cal.steps)
        assert resolved.schedule == record.schedule


def test_cli_schedule_from_a_preset(capsys):
    code = main(["schedule", "--calibration", str(SCHEDULES / "flux.1-dev.json"), "--steps", "28", "--budget", "8",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["steps"] == 28 and doc["budget"] == 8 and len(doc["compute_steps"]) == 8
    assert doc["compute_steps"][0] == 0 and doc["compute_steps"][-1] == 27
    assert doc["source_steps"] == 50 and any("resampled" in n for n in doc["notes"])
    assert any("published graph schedule" in n for n in doc["notes"])


# --- listing and loading -------------------------------------------------------------------------


def write(path: Path, document) -> Path:
    path.write_text(document if isinstance(document, str) else json.dumps(document), encoding="utf-8")
    return path


def test_list_presets_shipped_first_then_user_files_with_suffix(tmp_path):
    shipped = list_presets()
    assert set(shipped) == SHIPPED_NAMES
    assert all(p.parent == SCHEDULES for p in shipped.values())

    flux = json.loads((SCHEDULES / "flux.1-dev.json").read_text(encoding="utf-8"))
    write(tmp_path / "a_flux_copy.json", flux)  # same name as a shipped preset
    write(tmp_path / "b_flux_copy.json", flux)
    write(tmp_path / "mine.json", {**flux, "name": "my model"})
    write(tmp_path / "unnamed.json", {**flux, "name": ""})
    write(tmp_path / "schedule.json", Schedule.from_steps([0, 2, 5], 8).to_dict())  # another format: ignored
    write(tmp_path / "workflow.json", {"nodes": []})  # not an OTCache file: ignored
    write(tmp_path / "notes.txt", "not json")  # not *.json: ignored
    write(tmp_path / "broken.json", "{ not json")
    write(tmp_path / "bad_budget.json", {**flux, "anchor": flux["reference"]})  # anchor budget == reference
    warnings: list[str] = []
    found = list_presets(tmp_path, SCHEDULES, warnings=warnings)  # the shipped folder again: not listed twice

    assert list(found)[: len(shipped)] == list(shipped)
    assert found["flux.1-dev"] == SCHEDULES / "flux.1-dev.json"
    assert found["flux.1-dev (user)"] == tmp_path / "a_flux_copy.json"
    assert found["flux.1-dev (user 2)"] == tmp_path / "b_flux_copy.json"
    assert found["my model"] == tmp_path / "mine.json"
    assert found["unnamed"] == tmp_path / "unnamed.json"
    assert len(found) == len(shipped) + 4
    assert len(warnings) == 2
    assert any("broken.json" in w and "not valid JSON" in w for w in warnings)
    assert any("bad_budget.json" in w and "budget" in w for w in warnings)


def test_list_presets_reports_a_missing_folder(tmp_path):
    warnings: list[str] = []
    found = list_presets(tmp_path / "nowhere", warnings=warnings)
    assert set(found) == SHIPPED_NAMES
    assert len(warnings) == 1 and "nowhere" in warnings[0]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{ nope", "not valid JSON"),
        ({"format": "otcache.schedule", "version": 1}, "expected format"),
        ("BAD_BUDGET", "budget"),
        ("BAD_STEP", "out of range"),
    ],
)
def test_load_preset_names_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "preset.json"
    flux = json.loads((SCHEDULES / "flux.1-dev.json").read_text(encoding="utf-8"))
    if content == "BAD_BUDGET":
        content = {**flux, "anchor": flux["reference"]}
    elif content == "BAD_STEP":
        content = {**flux, "anchor": {**flux["anchor"], "compute_steps": flux["anchor"]["compute_steps"][:-1] + [50]}}
    if content is not None:
        write(path, content)
    with pytest.raises(FileFormatError) as info:
        load_preset(path)
    assert str(path) in str(info.value) and message in str(info.value)


# --- rebuild from the data -----------------------------------------------------------------------


def strings_in(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [value] if isinstance(value, str) else []


@pytest.mark.parametrize("filename", sorted([*EXPECTED, GENERIC]))
def test_a_preset_cites_no_local_path(filename):
    """Sources are public repositories, files in them and commits: never a path of the machine that built it."""
    for text in strings_in(json.loads((SCHEDULES / filename).read_text(encoding="utf-8"))):
        assert not text.startswith(("/", "~", "./", "../")) and "shared/" not in text and ":\\" not in text, text


@pytest.mark.skipif(DATA is None or not DATA.is_file(),
                    reason=f"set {DATA_VARIABLE} to the project's published_schedules.json to check the rebuild")
def test_build_presets_rebuilds_identical_files(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_presets.py"), str(DATA), str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    built = sorted(p.name for p in tmp_path.glob("*.json"))
    assert built == sorted(p.name for p in preset_files())
    for name in built:
        assert (tmp_path / name).read_bytes() == (SCHEDULES / name).read_bytes(), f"{name} differs; rerun the build"
    # every reference/anchor/published list is one of the data's lists, verbatim
    data = json.loads(DATA.read_text(encoding="utf-8"))
    index = {(e["source"]["path"], e["source"]["line"], e["budget"]): e for e in data["entries"]}
    for path in preset_files():
        cal = Calibration.load(path)
        if path.name == GENERIC:
            continue  # not from the data
        items = [{"compute_steps": list(r.schedule.compute_steps), "budget": r.schedule.budget,
                  "source": r.details["source"]} for r in (cal.reference, cal.anchor)]
        for item in items + cal.source["published_lists"]:
            entry = index[(item["source"]["path"], item["source"]["line"], item["budget"])]
            assert entry["checks"]["ok"] and entry["steps"] == cal.steps
            assert entry["compute_steps"] == item["compute_steps"]
            assert entry["source"]["commit"] == item["source"]["commit"]


# --- measurement: OT interpolation vs the authors' intermediate lists --------------------------------


def overlap_and_diff(predicted, published) -> tuple[float, float]:
    p, q = np.asarray(predicted), np.asarray(published)
    return len(set(p.tolist()) & set(q.tolist())) / len(q), float(np.abs(p - q).mean())


def measurement_rows() -> list[dict]:
    rows = []
    for path in preset_files():
        cal = load_preset(path)
        if cal.source.get("kind") != "published":  # generic: evenly spaced steps
            continue
        ref, anc, T = cal.reference.schedule, cal.anchor.schedule, cal.steps
        for item in cal.source["published_lists"]:
            B = item["budget"]
            if not anc.budget < B < ref.budget:
                continue
            published = item["compute_steps"]
            predicted = list(predict(ref, anc, T, B).schedule.compute_steps)
            baselines = {
                "inverse": predict(ref, anc, T, B, mapping="inverse").schedule.compute_steps,
                "ref only": sample_warp(warp_of(ref), T, B).compute_steps,
                "anchor only": sample_warp(warp_of(anc), T, B).compute_steps,
                "uniform": np.round(np.linspace(0, T - 1, B)).astype(int),
            }
            ov, md = overlap_and_diff(predicted, published)
            rows.append({
                "model": cal.name, "method": item["method"], "own": item["method"] == cal.source["method"],
                "T": T, "B": B, "overlap": ov, "diff": md, "predicted": predicted, "published": published,
                "baselines": {k: overlap_and_diff(v, published) for k, v in baselines.items()},
            })
    return rows


def test_measure_interpolation_against_published_intermediate_lists():
    rows = measurement_rows()
    own = [r for r in rows if r["own"]]
    assert len(own) == 16  # every intermediate list of the nine presets' own methods

    lines = ["OT interpolation (linear lambda) between each preset's published reference and anchor,",
             "vs the authors' own list at the same budget (overlap = |pred & pub| / B; diff = mean |pred_k - pub_k|)",
             f"{'model':17s} {'method':9s} {'T':>2s} {'B':>2s} {'overlap':>7s} {'diff':>5s}  predicted | published"]
    for r in rows:
        flag = "" if r["own"] else "  (other method's list)"
        lines.append(f"{r['model']:17s} {r['method']:9s} {r['T']:2d} {r['B']:2d} {r['overlap']:7.2f} {r['diff']:5.2f}  "
                     f"{r['predicted']} | {r['published']}{flag}")
    mean_ov = float(np.mean([r["overlap"] for r in own]))
    mean_diff = float(np.mean([r["diff"] for r in own]))
    lines.append(f"mean over the {len(own)} own-method lists: overlap {mean_ov:.3f}, diff {mean_diff:.3f}")
    baseline_means = {}
    for key in own[0]["baselines"]:
        b_ov = float(np.mean([r["baselines"][key][0] for r in own]))
        b_diff = float(np.mean([r["baselines"][key][1] for r in own]))
        baseline_means[key] = b_diff
        lines.append(f"  baseline {key:12s}: overlap {b_ov:.3f}, diff {b_diff:.3f}")
    print("\n" + "\n".join(lines))

    # floors the current code meets (regressions show); exact-step overlap is a noisy measure, the
    # mean position difference is the informative one
    for r in own:
        assert r["overlap"] >= 0.3 and r["diff"] <= 4.0, r
    assert mean_ov >= 0.5 and mean_diff <= 2.2
    # interpolating the two published extremes predicts better than either one alone or uniform spacing
    assert mean_diff < min(baseline_means["ref only"], baseline_means["anchor only"], baseline_means["uniform"])


# --- preset ids and former ids ---------------------------------------------------------------------


def test_a_former_id_resolves_to_the_preset_that_replaced_it():
    shipped = list_presets()
    assert resolve_preset_name("generic (FLUX.1-dev published shape, any model)", shipped) == "generic"
    assert resolve_preset_name("flux.1-dev", shipped) == "flux.1-dev"
    assert resolve_preset_name("no such preset", shipped) is None


def test_a_listed_name_wins_over_an_alias_and_renames_chain(monkeypatch):
    monkeypatch.setattr(presets_module, "PRESET_ALIASES", {"old": "middle", "middle": "new", "loop": "loop"})
    assert resolve_preset_name("old", ["new"]) == "new"
    assert resolve_preset_name("old", ["old", "new"]) == "old"  # e.g. a user calibration called "old"
    assert resolve_preset_name("old", ["other"]) is None
    assert resolve_preset_name("loop", ["other"]) is None


def test_every_alias_leads_to_a_shipped_preset():
    shipped = list_presets()
    for former in presets_module.PRESET_ALIASES:
        assert former not in shipped and resolve_preset_name(former, shipped) in shipped


def test_a_preset_description_names_model_origin_and_budgets():
    assert describe_preset(SCHEDULES / "flux.1-dev.json") == (
        "FLUX.1-dev; LeMiCa published schedules, 50 steps, reference 26 / anchor 10 computed")
