"""What a model was patched with when it was calibrated: LoRAs and the noise schedule's shift.

A calibration measures one model as the sampler gets it. A LoRA changes the weights and a
model-sampling node (ModelSamplingFlux, ModelSamplingSD3, ...) changes the sigmas every step sees;
either moves the errors a schedule was chosen for. The calibration record keeps both under its
``model`` object (``loras``, ``sampling``), and OTCache Apply compares them with the model it runs on:
a difference is said in the log and in the run's report line, never refused (a LoRA'd model still
works, only further from what was measured).

Both fields are optional: a record without them (every file from before they existed, the shipped
presets) is compared on nothing and warns about nothing. The host layer reads the model
(``nodes/model_conditions.py``); this module only holds, checks, describes and compares the records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import FileFormatError
from .jsonfile import finite_number, require

LORAS = "loras"
SAMPLING = "sampling"
_RELATIVE_TOLERANCE = 1e-6
"""Two shifts (or sigmas) closer than this are the same setting (float noise of a JSON round trip)."""


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=_RELATIVE_TOLERANCE, abs_tol=1e-12)


@dataclass(frozen=True)
class LoraRecord:
    """The weight patches on a model (LoRA, LoKr, a model merge: anything ComfyUI patches weights with).

    ComfyUI's model object does not keep the LoRA file names, only the patches; ``digest`` identifies
    them (patched keys, strengths and a sample of each patch's numbers).
    """

    weights: int
    """Weights that carry at least one patch (0: no LoRA)."""
    patches: int
    """Patch entries over all weights (two LoRAs on the same weight are two)."""
    strengths: tuple[float, ...]
    """The distinct strengths the patches were added with, ascending."""
    digest: str

    def describe(self) -> str:
        if not self.weights:
            return "no LoRA"
        strengths = ", ".join(f"{s:g}" for s in self.strengths)
        return f"LoRA patches on {self.weights} weights (strength {strengths})"

    def same_as(self, other: LoraRecord) -> bool:
        return self.digest == other.digest

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "patches": self.patches, "strengths": list(self.strengths),
                "digest": self.digest}

    @classmethod
    def from_dict(cls, doc: Any, *, where: str) -> LoraRecord:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: field {LORAS!r} must be an object")
        here = f"{where}: {LORAS}"
        weights, patches = require(doc, "weights", int, where=here), require(doc, "patches", int, where=here)
        if weights < 0 or patches < weights:
            raise FileFormatError(f"{here}: need 0 <= weights <= patches, got {weights} and {patches}")
        strengths = doc.get("strengths", [])
        if not isinstance(strengths, list):
            raise FileFormatError(f"{here}: field 'strengths' must be a list of numbers")
        values = tuple(sorted(finite_number(s, "strengths", where=here) for s in strengths))
        return cls(weights, patches, values, require(doc, "digest", str, where=here))


@dataclass(frozen=True)
class SamplingRecord:
    """The model's noise schedule as its ``model_sampling`` object sets it (a model-sampling node's effect)."""

    kind: str
    """What the ``model_sampling`` object is made of, e.g. ``ModelSamplingFlux+CONST``."""
    shift: float | None = None
    multiplier: float | None = None
    sigma_min: float | None = None
    sigma_max: float | None = None

    def describe(self) -> str:
        if self.shift is not None:
            return f"shift {self.shift:g}"
        if self.sigma_min is not None and self.sigma_max is not None:
            return f"sigmas {self.sigma_min:.4g} to {self.sigma_max:.4g}"
        return f"model sampling {self.kind}"

    def same_as(self, other: SamplingRecord) -> bool:
        return self.kind == other.kind and all(
            _same(getattr(self, name), getattr(other, name)) for name in ("shift", "multiplier", "sigma_min", "sigma_max"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for name in ("shift", "multiplier", "sigma_min", "sigma_max"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, where: str) -> SamplingRecord:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: field {SAMPLING!r} must be an object")
        here = f"{where}: {SAMPLING}"
        numbers = {name: finite_number(doc[name], name, where=here)
                   for name in ("shift", "multiplier", "sigma_min", "sigma_max") if doc.get(name) is not None}
        return cls(require(doc, "kind", str, where=here), **numbers)


@dataclass(frozen=True)
class ModelConditions:
    """LoRAs and noise schedule of a model; ``None`` where not recorded (older calibration files)."""

    loras: LoraRecord | None = None
    sampling: SamplingRecord | None = None

    @property
    def recorded(self) -> bool:
        return self.loras is not None or self.sampling is not None

    def describe(self) -> str:
        """``"shift 3, no LoRA"``; only what is recorded."""
        parts = [record.describe() for record in (self.sampling, self.loras) if record is not None]
        return ", ".join(parts) or "nothing recorded"

    def differences(self, current: ModelConditions) -> list[str]:
        """What differs between this (the calibration's) and ``current``, for the fields both recorded."""
        out = []
        if self.sampling is not None and current.sampling is not None and not self.sampling.same_as(current.sampling):
            out.append(SAMPLING)
        if self.loras is not None and current.loras is not None and not self.loras.same_as(current.loras):
            out.append(LORAS)
        return out

    def mismatch_note(self, label: str, current: ModelConditions) -> str | None:
        """One sentence for the log and the run report when ``current`` is not what was calibrated, else ``None``."""
        differs = self.differences(current)
        if not differs:
            return None
        made, now = [], []
        for name in (SAMPLING, LORAS):  # the order describe() uses
            before, after = getattr(self, name), getattr(current, name)
            if before is None or after is None:
                continue
            made.append(before.describe())
            same_text = name in differs and after.describe() == before.describe()  # e.g. another LoRA, same size
            now.append(f"other {after.describe()}" if same_text else after.describe())
        return (f"the calibration {label!r} was made with {', '.join(made)}; this model has {', '.join(now)}: "
                "recalibrate or expect lower fidelity")

    def to_record(self) -> dict[str, Any]:
        """The fields for the calibration's ``model`` object."""
        out: dict[str, Any] = {}
        if self.loras is not None:
            out[LORAS] = self.loras.to_dict()
        if self.sampling is not None:
            out[SAMPLING] = self.sampling.to_dict()
        return out

    @classmethod
    def from_model_record(cls, model: dict[str, Any], *, where: str = "model") -> ModelConditions:
        """Read (and check) the fields of a calibration's ``model`` object; absent fields stay ``None``."""
        loras = model.get(LORAS)
        sampling = model.get(SAMPLING)
        return cls(None if loras is None else LoraRecord.from_dict(loras, where=where),
                   None if sampling is None else SamplingRecord.from_dict(sampling, where=where))
