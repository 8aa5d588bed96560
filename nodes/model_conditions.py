"""A ComfyUI model's LoRAs and noise schedule, as the calibration record keeps them, and the check at run time.

OTCache Calibrate records what the model carried when it was calibrated (its weight patches: LoRAs,
LoKr, merges; and its ``model_sampling`` shift); the plan carries it (``SchedulePlan.made_with``); each
sampling run with OTCache Apply compares it with the model the sampler really got (after every LoRA
and model-sampling node, before or after Apply) and says so when they differ. The records and the
comparison are :mod:`otcache_core.conditions`; this module only reads ComfyUI's objects.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch

from ..otcache_core.conditions import LoraRecord, ModelConditions, SamplingRecord
from ..otcache_core.plan import SchedulePlan

log = logging.getLogger("OTCache")

_SAMPLED_VALUES = 256
"""Values of each patch tensor that enter the LoRA digest (enough to tell LoRAs apart, cheap on big ones)."""


def _digest_value(digest: Any, value: Any) -> None:
    """Feed a patch's data into ``digest``: tensors by shape, dtype and their first values; containers
    and weight adapters (``comfy.weight_adapter``) by their contents; the rest by type and text."""
    if isinstance(value, torch.Tensor):
        digest.update(f"T{tuple(value.shape)}{value.dtype}".encode())
        sample = value.detach().flatten()[:_SAMPLED_VALUES]
        if sample.dtype.is_floating_point or sample.dtype in (torch.int8, torch.uint8):
            digest.update(sample.to(device="cpu", dtype=torch.float64).numpy().tobytes())
    elif isinstance(value, (tuple, list)):
        digest.update(b"(")
        for item in value:
            _digest_value(digest, item)
        digest.update(b")")
    elif hasattr(value, "weights") and not callable(value.weights):  # a WeightAdapter (LoRA, LoHa, ...)
        digest.update(type(value).__name__.encode())
        _digest_value(digest, value.weights)
    elif value is None or isinstance(value, (str, int, float, bool)):
        digest.update(repr(value).encode())
    else:  # a function or object: its name, never its address
        digest.update(getattr(value, "__qualname__", type(value).__qualname__).encode())


def lora_record(patcher: Any) -> LoraRecord:
    """The weight patches of a ``ModelPatcher`` (``patcher.patches``: key -> list of
    ``(strength, data, strength_model, offset, function)``); the file names are not kept by ComfyUI."""
    patches = getattr(patcher, "patches", None) or {}
    digest = hashlib.sha256()
    strengths: set[float] = set()
    weights = entries = 0
    for key in sorted(patches):
        if not patches[key]:
            continue
        weights += 1
        digest.update(key.encode())
        for entry in patches[key]:
            entries += 1
            strength, data, *rest = tuple(entry)
            strengths.add(float(strength))
            _digest_value(digest, (float(strength), data, *rest))
    return LoraRecord(weights, entries, tuple(sorted(strengths)), digest.hexdigest()[:16] if weights else "")


def _number(obj: Any, name: str) -> float | None:
    try:
        value = getattr(obj, name)
    except Exception:  # a property that does not apply to this sampling type
        return None
    if isinstance(value, torch.Tensor):
        value = value.reshape(-1)[0] if value.numel() else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def sampling_record(patcher: Any) -> SamplingRecord | None:
    """The noise schedule the model's ``model_sampling`` object gives (model-sampling nodes replace it)."""
    try:
        sampling = patcher.get_model_object("model_sampling")
    except Exception:  # not a diffusion model patcher
        return None
    # ComfyUI builds the object from a local class each time (``ModelSampling``, ``ModelSamplingAdvanced``):
    # its kind is the sampling and prediction classes it is made of
    kind = "+".join(c.__name__ for c in type(sampling).__mro__ if c.__module__ == "comfy.model_sampling")
    return SamplingRecord(kind or type(sampling).__name__, _number(sampling, "shift"), _number(sampling, "multiplier"),
                          _number(sampling, "sigma_min"), _number(sampling, "sigma_max"))


def model_conditions(patcher: Any) -> ModelConditions:
    """LoRAs and noise schedule of the model as a sampler would get it; a part that cannot be read (an
    unknown patch type of another pack) is left unrecorded rather than stopping a calibration or a run."""
    read = []
    for reader in (lora_record, sampling_record):
        try:
            read.append(reader(patcher))
        except Exception as exc:  # never cost the user a generation over a record
            log.debug("OTCache: could not read the model's %s: %s", reader.__name__, exc)
            read.append(None)
    return ModelConditions(*read)


def conditions_note(plan: SchedulePlan, patcher: Any) -> str | None:
    """The warning for a run whose model differs from the calibrated one in LoRAs or shift, else ``None``."""
    if not plan.made_with.recorded:
        return None
    return plan.made_with.mismatch_note(plan.label or "custom", model_conditions(patcher))
