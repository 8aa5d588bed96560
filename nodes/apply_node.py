"""OTCache Apply: MODEL + schedule -> MODEL that skips the scheduled steps."""

from __future__ import annotations

import logging
from typing import Any

from ..otcache_core.errors import OTCacheError
from ..otcache_core.plan import SchedulePlan
from ..otcache_core.reuse import ReuseRule, parse_rule
from .cache_hooks import (
    CALIBRATED,
    KEY,
    MODES,
    ApplyModelWrapper,
    BlockReplacement,
    CacheConfig,
    CalcCondBatchWrapper,
    LayerForward,
    OuterSampleWrapper,
)
from .families import detect_family, stage_blocks
from .foreign_caches import find_foreign_caches

log = logging.getLogger("OTCache")

MODE_CHOICES = ("auto", *MODES)
AUTO_MODE = "model"
"""What ``auto`` picks, for every family: reusing the whole model output was closer to full compute than
reusing the block-stack residual, with every reuse rule, on the testbed (trained DiT, held-out
samples) and on a trained ComfyUI Flux (benchmarks/RESULTS.md), and it skips the embedders too."""
CACHE_DEVICES = ("model", "cpu")
"""Where a run keeps what reused steps stand in with: on the model's device, or in CPU memory (long video
clips in blocks mode: what it holds there is stated in docs/nodes.md and every run's log line)."""
REUSE_CHOICES = (CALIBRATED, "hold", "linear", "horizon1", "horizon2", "horizon3", "quadratic", "taylor2", "meancache2",
                 "meancache3")
"""OTCache Apply's ``reuse`` input: the schedule's own rules (a calibration's or a preset's), or one rule
everywhere."""


def _remove_previous(patcher: Any) -> bool:
    """Drop an earlier OTCache from a (cloned) patcher; ``True`` if there was one."""
    import comfy.patcher_extension as pe

    found = False
    for wrapper_type in (pe.WrappersMP.OUTER_SAMPLE, pe.WrappersMP.CALC_COND_BATCH, pe.WrappersMP.APPLY_MODEL):
        if patcher.get_wrappers(wrapper_type, KEY):
            patcher.remove_wrappers_with_key(wrapper_type, KEY)
            found = True
    dit = patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for key in [k for k, v in dit.items() if isinstance(v, BlockReplacement)]:
        del dit[key]
        found = True
    for name in [n for n, v in patcher.object_patches.items() if isinstance(v, LayerForward)]:
        del patcher.object_patches[name]
        found = True
    return found


def apply_otcache(model: Any, plan: SchedulePlan, mode: str = "auto", start_percent: float = 0.0,
                  end_percent: float = 1.0, *, reuse: str | ReuseRule = CALIBRATED, quiet: bool = False,
                  skip_control_models: bool = True, check_forecasts: bool = False, cache_device: str = "model") -> Any:
    """A clone of ``model`` with OTCache's wrappers and block hooks for ``plan``.

    ``reuse``: ``calibrated`` (the plan's rules: what the calibration chose end to end per budget, a
    preset's rule, or for a schedule without rules the measured default) or one reuse rule for every
    segment. ``quiet`` reports runs at debug level (calibration makes
    hundreds of short runs). ``skip_control_models=False`` runs ControlNets and T2I-Adapters at every
    model call, reused ones included (what OTCache did before it skipped them; kept for measuring the
    difference). ``cache_device`` ``cpu`` keeps the stored values in CPU memory (stand-ins are computed on
    the model's device from them, bit for bit as without). ``check_forecasts`` turns on the run-time
    forecast check (:mod:`otcache_core.forecast_check`; measured, not a default: benchmarks/RESULTS.md).
    """
    if not isinstance(plan, SchedulePlan):
        raise OTCacheError("'schedule' must come from an OTCache Schedule node")
    if mode not in MODE_CHOICES:
        raise OTCacheError(f"'mode' must be one of {', '.join(MODE_CHOICES)}, got {mode!r}")
    if cache_device not in CACHE_DEVICES:
        raise OTCacheError(f"'cache_device' must be one of {', '.join(CACHE_DEVICES)}, got {cache_device!r}")
    rule = None
    if reuse != CALIBRATED:
        try:
            rule = parse_rule(reuse)
        except OTCacheError as exc:
            raise OTCacheError(f"'reuse' must be {CALIBRATED} or a reuse rule: {exc}") from None
    if not 0.0 <= start_percent < end_percent <= 1.0:
        raise OTCacheError(
            f"need 0 <= 'start_percent' < 'end_percent' <= 1, got {start_percent} and {end_percent}"
        )
    dm = model.model.diffusion_model
    family = detect_family(dm)
    if not plan.fits(family.family):
        raise OTCacheError(
            f"the schedule {plan.label!r} was calibrated for {', '.join(plan.families)}, but this model is "
            f"{family.family}: pick a matching 'preset' (or the generic one) or calibrate this model"
        )
    if mode == "blocks" and family.patch == "none":
        raise OTCacheError(
            f"'mode' blocks is not available for {family.family} models ({family.note or 'no block hook'}); "
            "use mode 'model' or 'auto'"
        )
    foreign = find_foreign_caches(model)
    if foreign:
        raise OTCacheError(
            f"this model already has another step cache: {'; '.join(f.describe() for f in foreign)}. Two caches "
            f"that skip steps independently corrupt the output: keep either OTCache or "
            f"{'it' if len(foreign) == 1 else 'them'}, not both"
        )
    chosen = mode if mode != "auto" else AUTO_MODE
    patched = model.clone()
    if _remove_previous(patched) and not quiet:
        log.warning("OTCache Apply: this model already went through OTCache Apply; the earlier one is replaced")
    config = CacheConfig(plan, chosen, family, start_percent, end_percent, quiet, rule, skip_control_models,
                         check_forecasts, cache_device)
    import comfy.patcher_extension as pe

    patched.add_wrapper_with_key(pe.WrappersMP.OUTER_SAMPLE, KEY, OuterSampleWrapper(config))
    patched.add_wrapper_with_key(pe.WrappersMP.CALC_COND_BATCH, KEY, CalcCondBatchWrapper(config))
    patched.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, KEY, ApplyModelWrapper(config))
    if chosen == "blocks":
        for stage in family.stages:
            for i in stage_blocks(dm, stage):
                if family.patch == "dit":
                    patched.set_model_patch_replace(BlockReplacement(stage.kind, i), "dit", stage.kind, i)
                else:
                    path = f"diffusion_model.{stage.attr}.{i}"
                    original = patched.get_model_object(path).forward
                    patched.add_object_patch(f"{path}.forward", LayerForward(stage.kind, i, original))
    return patched


class OTCacheApply:
    """OTCache Apply."""

    DESCRIPTION = (
        "Make a model skip the full computation at the steps the schedule reuses. 'blocks' reuses the residual "
        "of the transformer block stack (embedders and final layer still run); 'model' reuses the whole model "
        "output and works for any model, UNets included ('auto' = model). A skipped step stands in with its "
        "segment's reuse rule (the calibration's, or the one chosen in 'reuse'). Every run logs what it computed "
        "and which rules it used."
    )
    CATEGORY = "OTCache"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "schedule": ("OTCACHE_SCHEDULE",),
                "mode": (list(MODE_CHOICES), {"default": "auto", "tooltip": "auto: model (measured closer to full compute than blocks on trained models, and works for any model). blocks: reuse only the transformer blocks' residual."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Steps before this share of the run are always computed."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Steps from this share of the run on are always computed."}),
            },
            "optional": {
                "reuse": (list(REUSE_CHOICES), {"default": CALIBRATED, "tooltip": "What a skipped step stands in with. calibrated: the schedule's own rule (a calibration's, chosen end to end per budget; a preset's, measured; horizon2 for schedules without one); hold: the last computed output; linear / quadratic: extrapolated along sigma from the last two / three computed steps; taylor2: TaylorSeer's second-order forecast (linear plus a damped curvature term); horizonK: linear for K steps past the last computed step, then held (for long gaps); meancacheK: MeanCache's average-velocity correction over K steps."}),
                "cache_device": (list(CACHE_DEVICES), {"default": "model", "tooltip": "Where the run keeps what reused steps stand in with. model: on the model's device (in model mode a few latent-sized tensors: tens of MB even for Wan 14B at 720p). cpu: in CPU memory, brought back for each reused step; the same output bit for bit. For blocks mode on long video clips, whose residuals take GBs (the run's log line says how much)."}),
            },
        }

    def apply(self, model, schedule, mode="auto", start_percent=0.0, end_percent=1.0, reuse=CALIBRATED,
              cache_device="model"):
        return (apply_otcache(model, schedule, mode, start_percent, end_percent, reuse=reuse,
                              cache_device=cache_device),)
