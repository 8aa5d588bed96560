"""The LoRAs and shift a calibration was made with: recorded, described, compared, and absent in old files."""

from __future__ import annotations

import pytest
from test_bad_files import valid_calibration

from otcache_core.calibration import Calibration
from otcache_core.conditions import LoraRecord, ModelConditions, SamplingRecord
from otcache_core.errors import FileFormatError

NO_LORA = LoraRecord(0, 0, (), "")
ONE_LORA = LoraRecord(12, 12, (0.8,), "1f3a5c7e9b2d4f60")
OTHER_LORA_SAME_SIZE = LoraRecord(12, 12, (0.8,), "0000aaaa1111bbbb")
SHIFT_3 = SamplingRecord("ModelSamplingDiscreteFlow", shift=3.0, multiplier=1000.0, sigma_min=0.0029, sigma_max=1.0)
SHIFT_8 = SamplingRecord("ModelSamplingDiscreteFlow", shift=8.0, multiplier=1000.0, sigma_min=0.0079, sigma_max=1.0)


def older_file() -> dict:
    """A calibration file as OTCache wrote it before LoRAs and shift were recorded."""
    document = valid_calibration()
    for field in ("loras", "sampling"):
        document["model"].pop(field)
    return document


def calibration_with(model_extra: dict) -> Calibration:
    document = older_file()
    document["model"].update(model_extra)
    return Calibration.from_dict(document)


def test_a_record_round_trips_through_the_calibration_file(tmp_path):
    made = ModelConditions(ONE_LORA, SHIFT_3)
    calibration_with(made.to_record()).save(tmp_path / "c.json")
    assert Calibration.load(tmp_path / "c.json").conditions == made


def test_a_file_without_the_fields_loads_with_nothing_recorded_and_nothing_to_compare():
    old = Calibration.from_dict(older_file())
    assert not old.conditions.recorded
    assert "made with" not in old.summary()
    assert old.conditions.mismatch_note("old", ModelConditions(ONE_LORA, SHIFT_8)) is None


def test_the_summary_says_what_the_calibration_was_made_with():
    summary = calibration_with(ModelConditions(NO_LORA, SHIFT_3).to_record()).summary()
    assert "made with: shift 3, no LoRA" in summary


def test_the_same_loras_and_shift_give_no_note():
    made = ModelConditions(ONE_LORA, SHIFT_3)
    assert made.mismatch_note("x", ModelConditions(ONE_LORA, SHIFT_3)) is None


def test_another_shift_and_a_lora_are_both_named_with_what_to_do():
    note = ModelConditions(NO_LORA, SHIFT_3).mismatch_note("x", ModelConditions(ONE_LORA, SHIFT_8))
    assert note == ("the calibration 'x' was made with shift 3, no LoRA; this model has shift 8, LoRA patches on 12 "
                    "weights (strength 0.8): recalibrate or expect lower fidelity")


def test_another_lora_of_the_same_size_and_strength_is_told_apart_by_its_digest():
    note = ModelConditions(ONE_LORA, SHIFT_3).mismatch_note("x", ModelConditions(OTHER_LORA_SAME_SIZE, SHIFT_3))
    assert note is not None and "this model has shift 3, other LoRA patches on 12 weights" in note


def test_a_shift_equal_up_to_float_noise_is_the_same():
    nearly = SamplingRecord("ModelSamplingDiscreteFlow", shift=3.0 * (1 + 1e-9), multiplier=1000.0,
                            sigma_min=0.0029, sigma_max=1.0)
    assert ModelConditions(sampling=SHIFT_3).differences(ModelConditions(sampling=nearly)) == []


def test_only_fields_recorded_on_both_sides_are_compared():
    assert ModelConditions(sampling=SHIFT_3).differences(ModelConditions(ONE_LORA, SHIFT_3)) == []


@pytest.mark.parametrize(("field", "value", "named"), [
    ("loras", [1, 2], "'loras' must be an object"),
    ("loras", {"weights": 2, "patches": 1, "strengths": [], "digest": "a"}, "weights <= patches"),
    ("loras", {"weights": 1, "patches": 1, "strengths": ["x"], "digest": "a"}, "'strengths'"),
    ("loras", {"weights": 1, "patches": 1, "strengths": [1.0]}, "'digest'"),
    ("sampling", {"shift": 3.0}, "'kind'"),
    ("sampling", {"kind": "X", "shift": "3"}, "'shift'"),
])
def test_a_bad_record_is_refused_naming_the_field(field, value, named):
    with pytest.raises(FileFormatError, match=field) as error:
        calibration_with({field: value})
    assert named in str(error.value)
