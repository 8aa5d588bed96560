"""OTCache Schedule (budget): a calibration or preset plus a budget -> a schedule plan.

The plan is resolved when sampling starts, for the step count the sampler really uses; the preview and
summary show it at the ``steps`` given here.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..otcache_core.calibration import Calibration
from ..otcache_core.errors import OTCacheError
from ..otcache_core.figures import curve_plot, schedule_strips, stack_vertically
from ..otcache_core.interpolation import LAMBDA_MAPPINGS
from ..otcache_core.plan import BudgetRule, SchedulePlan, budget_for_quality
from ..otcache_core.quality import quality_curve
from ..otcache_core.reuse import rules_summary
from .storage import NO_PRESETS, find_preset, load_named_preset, preset_descriptions

BUDGET_AS = ("computed steps", "speedup", "quality")
DEFAULT_TARGET_PSNR = 40.0


def build_plan(calibration: Calibration, steps: int, budget: int, budget_as: str, speedup: float,
               warmup_steps: int, lambda_mapping: str, target_psnr: float = DEFAULT_TARGET_PSNR) -> SchedulePlan:
    """Validate the node's inputs (errors name the input to change) and build the plan."""
    if budget_as not in BUDGET_AS:
        raise OTCacheError(f"'budget_as' must be one of {', '.join(BUDGET_AS)}, got {budget_as!r}")
    quality_note = None
    if budget_as == "quality":
        rule, quality_note = budget_for_quality(calibration, float(target_psnr))
    elif budget_as == "computed steps":
        if budget > steps:
            raise OTCacheError(f"'budget' ({budget}) is more than 'steps' ({steps}): lower budget or raise steps")
        rule = BudgetRule("steps", budget, steps)
    else:
        if speedup < 1.0:
            raise OTCacheError(f"'speedup' must be at least 1.0, got {speedup}")
        rule = BudgetRule("speedup", float(speedup))
    if warmup_steps and warmup_steps >= rule.budget_for(steps):
        raise OTCacheError(
            f"'warmup_steps' ({warmup_steps}) must be smaller than the budget ({rule.budget_for(steps)} computed steps)"
        )
    if lambda_mapping not in LAMBDA_MAPPINGS:
        raise OTCacheError(f"'lambda_mapping' must be one of {', '.join(LAMBDA_MAPPINGS)}")
    plan = SchedulePlan.from_calibration(calibration, rule, mapping=lambda_mapping, warmup=warmup_steps)
    return plan if quality_note is None else dataclasses.replace(plan, notes=(*plan.notes, quality_note))


def quality_text(calibration: Calibration, plan: SchedulePlan, steps: int) -> str:
    """The quality a user can expect of this budget, or why it is not known."""
    found = plan.expected_quality(steps)
    if found is not None:
        budget, quality = found
        at = "" if steps == calibration.steps and budget == plan.resolve(steps).schedule.budget \
            else f" (measured at {budget} of {calibration.steps} steps)"
        return f"{quality.describe()}{at}"
    if calibration.budgets is None or calibration.source.get("kind") in ("published", "rule"):
        return ("quality on this model: not measured (a preset is never run on your model); OTCache Calibrate "
                "measures the PSNR of every budget against full compute")
    return "quality: not measured by this calibration (made before OTCache recorded it); recalibrate to see it"


def summarize(calibration: Calibration, plan: SchedulePlan, steps: int) -> tuple[str, np.ndarray]:
    """The text summary and preview strips of a plan at ``steps``."""
    resolved = plan.resolve(steps)
    p = resolved.prediction
    lines = [
        calibration.summary(),
        f"budget: {plan.rule.describe()} ({plan.mapping} lambda, warm-up {plan.warmup})",
        f"at {steps} steps: computes {p.schedule.budget} -> {list(p.schedule.compute_steps)}",
        f"ideal speedup {p.schedule.ideal_speedup:.2f}x, lambda {p.lam:.3f} ({p.regime})",
        f"reuse rules per segment: {rules_summary(resolved.rules)} ({resolved.rules_source})",
        quality_text(calibration, plan, steps),
        *resolved.notes,
        "the sampler's own step count decides at run time; the run log says what was computed",
    ]
    strips = schedule_strips([
        ("reference", calibration.reference.schedule),
        ("anchor", calibration.anchor.schedule),
        (f"this schedule ({plan.rule.describe()})", p.schedule),
    ])
    expected = calibration.budgets.expected if calibration.budgets is not None else {}
    if expected:
        found = plan.expected_quality(steps)
        mark = None if found is None else (calibration.steps / found[0], found[1].psnr)
        curve = curve_plot(quality_curve(expected, calibration.steps), mark=mark, width=max(360, strips.shape[1]),
                           title="expected PSNR (dB) vs full compute", x_label="ideal speedup (x)")
        strips = stack_vertically([strips, curve])
    return "\n".join(dict.fromkeys(lines)), strips


def as_comfy_image(rgb: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ComfyUI IMAGE ``[1, H, W, 3]`` float in [0, 1]."""
    return torch.from_numpy(rgb.astype(np.float32) / 255.0).unsqueeze(0)


class OTCacheSchedule:
    """OTCache Schedule (budget)."""

    DESCRIPTION = (
        "Pick a calibration (a shipped preset or your own) and a budget: how many full model computations "
        "at a given step count, or a target speedup. The schedule adapts to the sampler's real step count."
    )
    CATEGORY = "OTCache"
    FUNCTION = "make"
    RETURN_TYPES = ("OTCACHE_SCHEDULE", "IMAGE", "STRING")
    RETURN_NAMES = ("schedule", "preview", "summary")

    @classmethod
    def INPUT_TYPES(cls):
        described = preset_descriptions()  # one listing: each bad user file is reported once
        names = list(described) or [NO_PRESETS]
        default = "flux.1-dev" if "flux.1-dev" in names else names[0]
        listing = "\n".join(f"{name}: {text}" for name, text in described.items())
        return {
            "required": {
                "preset": (names, {"default": default, "tooltip": "Shipped presets and calibrations saved by OTCache Calibrate, by id. Ignored when 'calibration' is connected.\n" + listing}),
                "steps": ("INT", {"default": 50, "min": 1, "max": 10000, "tooltip": "The step count 'budget' refers to. Other step counts keep the same share of computed steps."}),
                "budget": ("INT", {"default": 10, "min": 1, "max": 10000, "tooltip": "Full model computations out of 'steps' (ideal speedup = steps / budget)."}),
                "budget_as": (list(BUDGET_AS), {"default": BUDGET_AS[0], "tooltip": "Read the budget as computed steps, use 'speedup' instead, or 'quality': the fewest computed steps whose measured PSNR meets 'target_psnr' (needs a calibration)."}),
                "speedup": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 100.0, "step": 0.1, "tooltip": "Target ideal speedup, used when budget_as is 'speedup'."}),
                "warmup_steps": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Always compute the first N steps (part of the budget)."}),
            },
            "optional": {
                "calibration": ("OTCACHE_CALIBRATION", {"tooltip": "A calibration from OTCache Calibrate; overrides 'preset'."}),
                "lambda_mapping": (list(LAMBDA_MAPPINGS), {"default": "linear", "tooltip": "How the budget maps to the reference-anchor interpolation weight: linear in the budget or in 1/budget."}),
                "target_psnr": ("FLOAT", {"default": DEFAULT_TARGET_PSNR, "min": 10.0, "max": 99.0, "step": 0.5, "tooltip": "Used when budget_as is 'quality': the smallest budget whose PSNR against full compute, measured by the connected calibration on its validation samples, meets this (dB; about 30 looks alike at a glance, 40 is hard to tell apart, 50 is nearly identical). Presets measured nothing on your model: they need a calibration."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, preset):
        """Accept a former preset id too (saved workflows keep the id they were saved with)."""
        try:
            find_preset(preset)
        except OTCacheError as exc:
            return str(exc)
        return True

    def make(self, preset, steps, budget, budget_as, speedup, warmup_steps, calibration=None, lambda_mapping="linear",
             target_psnr=DEFAULT_TARGET_PSNR):
        cal = calibration if calibration is not None else load_named_preset(preset)
        plan = build_plan(cal, steps, budget, budget_as, speedup, warmup_steps, lambda_mapping, target_psnr)
        text, strips = summarize(cal, plan, steps)
        return (plan, as_comfy_image(strips), text)
