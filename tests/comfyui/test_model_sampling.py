"""Model-sampling nodes with OTCache: ComfyUI's own ModelSamplingFlux (Flux) and ModelSamplingSD3 (Wan, SD3,
Qwen-Image) before and after OTCache Apply, shifts changing between runs, and the calibration record
saying which shift it was made with.

A model-sampling node replaces the model's ``model_sampling`` object (an object patch): every sigma
of the run moves, while the weights stay. OTCache maps calls to steps through the run's own sigmas, so
a shift must change nothing but the sigmas; a calibration made under another shift is warned about.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
import torch

from .test_apply_runtime import STEPS, apply, hooks, plan_for, sample  # noqa: F401  (hooks: a fixture)

PARTIAL = [0, 1, 3, 6, 9]
FAMILY_MODES = [(family, mode) for family in ("flux", "wan21_t2v") for mode in ("blocks", "model")]


def shifted(model, family: str, shift: float):
    """``model`` through the model-sampling node users put on that family, set to ``shift``."""
    from comfy_extras import nodes_model_advanced as advanced

    if family == "flux":  # ModelSamplingFlux derives the shift from the image size: solve for the size
        base, top = 0.5, 1.15
        pixels = (shift - base + (top - base) / (4096 - 256) * 256) / ((top - base) / (4096 - 256)) * 256
        side = int(round(pixels ** 0.5))
        (out,) = advanced.ModelSamplingFlux().patch(model, top, base, side, side)
    else:
        (out,) = advanced.ModelSamplingSD3().patch(model, shift)
    return out


def shift_of(patcher) -> float:
    return float(patcher.get_model_object("model_sampling").shift)


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_model_sampling_before_apply_all_compute_is_bit_identical(otcache_pack, core, tiny_model, family, mode):
    m = tiny_model(family)
    model = shifted(m.patcher, family, 3.0)
    unpatched = sample(m, model)
    assert not torch.equal(unpatched, sample(m)), "the shift must change the output"
    assert torch.equal(sample(m, apply(otcache_pack, replace(m, patcher=model), plan_for(core, range(STEPS)), mode)),
                       unpatched)


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_model_sampling_after_apply_all_compute_is_bit_identical(otcache_pack, core, tiny_model, reports, family,
                                                                 mode):
    m = tiny_model(family)
    applied = apply(otcache_pack, m, plan_for(core, range(STEPS)), mode)
    assert torch.equal(sample(m, shifted(applied, family, 3.0)), sample(m, shifted(m.patcher, family, 3.0)))
    assert reports[-1].computed == list(range(STEPS))


@pytest.mark.parametrize(("family", "mode"), FAMILY_MODES)
def test_shift_changes_between_runs_leave_no_stale_state(otcache_pack, core, tiny_model, reports, family, mode):
    m = tiny_model(family)
    applied = apply(otcache_pack, m, plan_for(core, PARTIAL), mode)
    shifts = [3.0, 8.0, 1.5, 3.0, 8.0]
    outputs = []
    for shift in shifts:
        model = shifted(applied, family, shift)
        assert shift_of(model) == pytest.approx(shift, rel=1e-2)  # Flux: from a whole-pixel image size
        outputs.append(sample(m, model))
        assert reports[-1].computed == PARTIAL  # steps follow the run's own sigmas, whatever the shift
    assert torch.equal(outputs[0], outputs[3]) and torch.equal(outputs[1], outputs[4])
    assert not torch.equal(outputs[0], outputs[1])


# --------------------------------------------------------------------------------------------------
# The calibration record and the warning
# --------------------------------------------------------------------------------------------------

def calibrate(otcache_pack, m, patcher, folder, storage="memory", name="shifted", strength="drift"):
    cal = otcache_pack.nodes.calibrate_node
    return cal.run_calibration(
        patcher, m.positive(), m.negative(), {"samples": m.make_latent()}, seed=0, samples=1, steps=8, cfg=3.0,
        sampler_name="euler", scheduler="simple", max_segment=4, strength=strength, trials=2, name=name,
        storage=storage, folder=folder, rules=("hold",))


@pytest.fixture(scope="module")
def wan_shift_4(otcache_pack, tiny_model, tmp_path_factory):
    """A calibration of the tiny Wan with ModelSamplingSD3 at shift 4 (its own default is 8)."""
    m = tiny_model("wan21_t2v")
    record, _, text, _ = calibrate(otcache_pack, m, shifted(m.patcher, "wan21_t2v", 4.0),
                                   tmp_path_factory.mktemp("cal"))
    return record, text


def test_the_calibration_record_says_which_shift_it_was_made_with(wan_shift_4):
    record, text = wan_shift_4
    sampling = record.model["sampling"]
    assert sampling["shift"] == 4.0 and sampling["multiplier"] == 1000.0
    assert sampling["kind"] == "ModelSamplingDiscreteFlow+CONST"
    assert record.model["loras"]["weights"] == 0
    assert "made with: shift 4, no LoRA" in text


def schedule_from(otcache_pack, record):
    plan, _, summary = otcache_pack.nodes.OTCacheSchedule().make("unused", 8, 4, "computed steps", 3.0, 0,
                                                                  calibration=record)
    return plan, summary


def mismatch_lines(caplog):
    return [r.getMessage() for r in caplog.records if "recalibrate or expect lower fidelity" in r.getMessage()]


def test_the_schedule_summary_states_the_shift_of_the_calibration(otcache_pack, wan_shift_4):
    _, summary = schedule_from(otcache_pack, wan_shift_4[0])
    assert "made with: shift 4, no LoRA" in summary


@pytest.mark.parametrize("where", ["before", "after"])
def test_apply_warns_when_the_shift_differs_from_the_calibrated_one(otcache_pack, tiny_model, wan_shift_4, reports,
                                                                   caplog, where):
    m = tiny_model("wan21_t2v")
    plan, _ = schedule_from(otcache_pack, wan_shift_4[0])
    if where == "before":
        model = apply(otcache_pack, replace(m, patcher=shifted(m.patcher, "wan21_t2v", 8.0)), plan)
    else:
        model = shifted(apply(otcache_pack, m, plan), "wan21_t2v", 8.0)
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, model, steps=8)
    (warning,) = mismatch_lines(caplog)
    note = ("the calibration 'shifted' was made with shift 4, no LoRA; this model has shift 8, no LoRA: recalibrate "
            "or expect lower fidelity")
    assert warning == f"OTCache: {note}"
    assert note in reports[-1].line() and len(reports[-1].computed) == 4  # warned, not refused


def test_the_calibrated_shift_gives_no_warning(otcache_pack, tiny_model, wan_shift_4, reports, caplog):
    m = tiny_model("wan21_t2v")
    plan, _ = schedule_from(otcache_pack, wan_shift_4[0])
    with caplog.at_level(logging.WARNING, logger="OTCache"):
        sample(m, shifted(apply(otcache_pack, m, plan), "wan21_t2v", 4.0), steps=8)
    assert mismatch_lines(caplog) == [] and len(reports[-1].computed) == 4


def test_a_calibration_under_another_shift_does_not_resume_the_edges_of_the_first(otcache_pack, tiny_model, tmp_path):
    """Resumable state is keyed by the model: a shift (an object patch, no new weights) is part of the key."""
    m = tiny_model("wan21_t2v")
    first = calibrate(otcache_pack, m, shifted(m.patcher, "wan21_t2v", 4.0), tmp_path, storage="", name="a",
                      strength="rollout")[0]
    again = calibrate(otcache_pack, m, shifted(m.patcher, "wan21_t2v", 4.0), tmp_path, storage="", name="b",
                      strength="rollout")[0]
    other = calibrate(otcache_pack, m, shifted(m.patcher, "wan21_t2v", 6.0), tmp_path, storage="", name="c",
                      strength="rollout")[0]
    assert not any(n.startswith("resumed: ") and "edge rows" in n for n in first.notes)
    assert any(n.startswith("resumed: ") and "edge rows" in n for n in again.notes)  # same model: the rows are kept
    assert not any("edge rows" in n for n in other.notes) and other.model["sampling"]["shift"] == 6.0
