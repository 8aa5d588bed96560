"""OTCache Calibrate on tiny real ComfyUI models: end to end, saving, resuming, errors, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

STEPS = 12
HERE = Path(__file__).resolve().parent


@pytest.fixture
def cal(otcache_pack):
    return otcache_pack.nodes.calibrate_node


def run(cal, m, folder, **overrides):
    kwargs = dict(seed=0, samples=2, steps=STEPS, cfg=3.0, sampler_name="euler", scheduler="simple",
                  max_segment=6, strength="rollout", trials=6, name="tiny", storage="memory", folder=folder)
    kwargs.update(overrides)
    return cal.run_calibration(m.patcher, m.positive(), m.negative(), {"samples": m.make_latent()}, **kwargs)


@pytest.mark.parametrize("family", ["flux", "wan21_t2v"])
def test_calibrate_then_schedule_then_apply_then_sample(otcache_pack, cal, tiny_model, tmp_path, family):
    import comfy.sample

    m = tiny_model(family)
    record, preview, text, path = run(cal, m, tmp_path)
    assert path.exists() and record.steps == STEPS
    assert record.reference.schedule.budget == 6 and record.anchor.schedule.budget == 2
    assert record.anchor.method == "optuna" and record.model["family"] == {"flux": "flux", "wan21_t2v": "wan"}[family]
    assert preview.ndim == 3 and "model calls" in text and str(path) in text
    nodes = otcache_pack.nodes
    plan, _, _ = nodes.OTCacheSchedule().make("unused", STEPS, 4, "computed steps", 3.0, 0, calibration=record)
    (patched,) = nodes.OTCacheApply().apply(m.patcher, plan, "auto", 0.0, 1.0)
    reports = []
    remove = nodes.cache_hooks.add_report_listener(reports.append)
    try:
        latent = m.make_latent()
        out = comfy.sample.sample(patched, m.noise(latent, 5), STEPS, 3.0, "euler", "simple", m.positive(),
                                  m.negative(), latent, seed=5, disable_pbar=True)
    finally:
        remove()
    assert torch.isfinite(out).all() and len(reports[-1].computed) == 4


def test_the_saved_calibration_is_listed_as_a_preset(otcache_pack, cal, tiny_model, tmp_path):
    import folder_paths

    old = folder_paths.get_user_directory()
    folder_paths.set_user_directory(str(tmp_path))
    try:
        run(cal, tiny_model("flux"), None, name="listed")
        names = otcache_pack.nodes.OTCacheSchedule.INPUT_TYPES()["required"]["preset"][0]
        assert "listed" in names
        plan, _, summary = otcache_pack.nodes.OTCacheSchedule().make("listed", STEPS, 4, "computed steps", 3.0, 0)
        assert "calibration 'listed'" in summary
    finally:
        folder_paths.set_user_directory(old)


def test_a_different_calibration_of_the_same_name_is_never_overwritten(cal, tiny_model, tmp_path):
    m = tiny_model("flux")
    first = run(cal, m, tmp_path, name="same")[3]
    before = first.read_text()
    _, _, text, second = run(cal, m, tmp_path, name="same", seed=7)
    assert first.read_text() == before and second.name == "same-2.json"
    assert "saved as same-2.json" in text
    _, _, _, third = run(cal, m, tmp_path, name="same", seed=7, overwrite=True)
    assert third == first and first.read_text() != before


def test_calibration_is_deterministic(cal, tiny_model, tmp_path):
    m = tiny_model("flux")
    a = run(cal, m, tmp_path / "a")[0]
    b = run(cal, m, tmp_path / "b")[0]
    assert a.reference == b.reference and a.anchor.schedule == b.anchor.schedule
    assert a.edge_errors == b.edge_errors


def test_an_interrupted_calibration_resumes_without_measuring_again(cal, tiny_model, tmp_path, monkeypatch,
                                                                   otcache_pack):
    import comfy.model_management

    validation = len(otcache_pack.otcache_core.calibrate.CalibrationSettings(6, 2).validation_budgets(STEPS))
    m = tiny_model("flux")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    calls = {"n": 0}

    def interrupt_after_some_trials(value, total):
        calls["n"] += 1
        if value >= total - 3 - validation:  # during the anchor search, three trials before its end
            comfy.model_management.interrupt_current_processing(True)

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        run(cal, m, tmp_path, storage=storage, progress=interrupt_after_some_trials)
    comfy.model_management.interrupt_current_processing(False)
    record, _, text, _ = run(cal, m, tmp_path, storage=storage)
    assert record.cost["model_calls"]["edges"] == 0  # every edge row came from the checkpoint
    assert any("edge rows measured by an earlier" in n for n in record.notes)
    assert any("anchor trials from the study" in n for n in record.notes)
    fresh = run(cal, m, tmp_path / "fresh", storage="memory")[0]
    assert record.reference == fresh.reference and record.edge_errors == fresh.edge_errors


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(reference_budget=4, anchor_budget=4), "'anchor_budget'"),
        (dict(steps=3), "'steps'"),
        (dict(reference_budget=12), "'reference_budget'"),
        (dict(reference_budget=2, anchor_budget=1, max_segment=3), "'max_segment'"),
        (dict(name="///"), "'name'"),
    ],
)
def test_bad_inputs_name_the_input(otcache_pack, cal, tiny_model, tmp_path, overrides, message):
    with pytest.raises(otcache_pack.otcache_core.errors.OTCacheError, match=message):
        run(cal, tiny_model("flux"), tmp_path, **overrides)


def test_missing_conditioning_is_a_clear_error(otcache_pack, cal, tiny_model, tmp_path):
    m = tiny_model("flux")
    with pytest.raises(otcache_pack.otcache_core.errors.OTCacheError, match="'positive' and 'negative'"):
        cal.run_calibration(m.patcher, None, m.negative(), {"samples": m.make_latent()}, seed=0, samples=1,
                            steps=STEPS, cfg=3.0, sampler_name="euler", scheduler="simple", folder=tmp_path)


def test_global_and_drift_strengths_cost_what_they_say(cal, tiny_model, tmp_path, otcache_pack):
    m = tiny_model("flux")
    estimate = otcache_pack.otcache_core.calibrate.estimated_edge_calls
    rollout = run(cal, m, tmp_path / "r")[0]
    glob = run(cal, m, tmp_path / "g", strength="global")[0]
    drift = run(cal, m, tmp_path / "d", strength="drift")[0]
    rule, history = rollout.edge_errors["rule"], rollout.edge_errors["history"]
    edge_rule = otcache_pack.otcache_core.reuse.parse_rule(rule)
    assert rollout.cost["model_calls"]["edges"] == estimate("rollout", STEPS, 6, edge_rule, history)
    assert glob.cost["model_calls"]["edges"] == estimate("global", STEPS, 6, edge_rule, history)
    assert drift.cost["model_calls"]["edges"] == 0
    assert glob.edge_errors["strength"] == "global" and drift.edge_errors["strength"] == "drift"


def test_an_edge_replay_gives_the_rule_the_history_it_has_at_run_time(cal, tiny_model, otcache_pack):
    """A replay from step i under ``linear`` with earlier points 2 steps apart computes i-2, reuses i-1 as a
    run with that spacing would, computes i; the error the replay already had at i is not the edge's."""
    core = otcache_pack.otcache_core
    linear = core.reuse.parse_rule("linear")
    m = tiny_model("flux")
    sampler = cal.ComfyCalibrationSampler(m.patcher, m.positive(), m.negative(), {"samples": m.make_latent()}, [0, 1],
                                          STEPS, 3.0, "euler", "simple", "model")
    full = sampler.run([True] * STEPS, record=True)
    w, _ = core.calibrate.edge_errors_rollout(sampler, full, 4, rule=linear, history=2)
    mask = [True] * STEPS
    mask[4] = mask[6] = mask[7] = False  # compute 3, reuse 4, compute 5, reuse 6..7, compute 8
    replay = sampler.run(mask, start=3, state=full.states[3], probe=[5, 8], reuse=linear)
    already = core.metrics.relative_l1(replay.denoised[5], full.denoised[5])
    expected = max(0.0, core.metrics.relative_l1(replay.denoised[8], full.denoised[8]) - already)
    assert w[5, 8] == pytest.approx(expected, rel=1e-4, abs=1e-9)
    adjacent, _ = core.calibrate.edge_errors_rollout(sampler, full, 4, rule=linear, history=1)
    assert w[5, 8] != pytest.approx(adjacent[5, 8], rel=1e-3)


def test_a_calibration_records_each_budgets_choice_and_the_schedule_applies_it(otcache_pack, cal, tiny_model,
                                                                              tmp_path):
    m = tiny_model("flux")
    record = run(cal, m, tmp_path, mode="model")[0]
    assert record.edge_errors["candidates"] == [r.name for r in otcache_pack.otcache_core.calibrate.DEFAULT_RULES]
    assert record.budgets.validated and record.budgets.samples == 1  # samples=2: one searches, one validates
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["version"] == 3 and saved["anchor"]["rules"] == [r.name for r in record.anchor.rules]
    nodes = otcache_pack.nodes
    choice = record.budgets.choices[len(record.budgets.choices) // 2]
    budget = choice.budget
    plan, _, summary = nodes.OTCacheSchedule().make("unused", STEPS, budget, "computed steps", 3.0, 0,
                                                    calibration=record)
    assert f"at {budget} of {STEPS} steps" in summary
    reports = []
    remove = nodes.cache_hooks.add_report_listener(reports.append)
    try:
        import comfy.sample

        latent = m.make_latent()
        comfy.sample.sample(nodes.OTCacheApply().apply(m.patcher, plan, "model", 0.0, 1.0)[0], m.noise(latent, 5),
                            STEPS, 3.0, "euler", "simple", m.positive(), m.negative(), latent, seed=5,
                            disable_pbar=True)
    finally:
        remove()
    assert reports[-1].rules == {choice.rule.name: STEPS - budget}
    assert len(reports[-1].computed) == budget


def test_two_processes_share_one_anchor_study(tmp_path):
    """Two ComfyUI processes pointed at one SQLite study split the anchor trials between them."""
    import os

    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE.parent)!r})
        from comfyui.conftest import load_pack, _import_comfyui_nodes, REPO_ROOT
        _import_comfyui_nodes()
        pack = load_pack(REPO_ROOT, "otcache_pack")
        from comfyui import tiny_models
        m = tiny_models.build("flux")
        from pathlib import Path
        record, _, _, _ = pack.nodes.calibrate_node.run_calibration(
            m.patcher, m.positive(), m.negative(), {{"samples": m.make_latent()}}, seed=0, samples=2,
            steps={STEPS}, cfg=3.0, sampler_name="euler", scheduler="simple", max_segment=6, trials=24,
            name="shared", storage={storage!r}, folder=Path({str(tmp_path)!r}) / sys.argv[1])
        print("TRIALS", record.anchor.details["trials"], "CALLS", record.cost["model_calls"]["anchor"])
        """
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for name in ("one", "two")]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    lines = [next(line for line in out.splitlines() if line.startswith("TRIALS")) for out, _ in outs]
    trials = [int(line.split()[1]) for line in lines]
    assert trials == [24, 24]  # one study, exactly its trials: each process waits for the other to finish
    saved = [json.loads((tmp_path / n / "shared.json").read_text()) for n in ("one", "two")]
    assert saved[0]["reference"] == saved[1]["reference"]


def test_a_read_only_user_folder_still_returns_the_calibration(cal, tiny_model, tmp_path):
    from fault_dirs import read_only_folder

    with read_only_folder(tmp_path) as folder:
        record, _, text, path = run(cal, tiny_model("flux"), folder.path, storage="")
    assert path is None and record.anchor.method == "optuna" and record.steps == STEPS
    assert f"NOT SAVED: cannot save tiny.json in {folder.path}: " in text
    assert f"cannot keep resumable state in {folder.path / '.work'}" in text


def test_a_full_user_folder_still_returns_the_calibration(cal, tiny_model, tmp_path, monkeypatch):
    from fault_dirs import full_folder

    with full_folder(tmp_path, monkeypatch) as folder:
        record, _, text, path = run(cal, tiny_model("flux"), folder.path, storage="")
        assert not list(folder.path.rglob("*.json"))
    assert path is None and record.anchor.method == "optuna"
    assert f"NOT SAVED: cannot save tiny.json in {folder.path}: No space left on device" in text
    assert "an interruption now restarts the edge stage" in text  # the edge checkpoint could not be kept
