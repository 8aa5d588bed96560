"""ComfyUI glue of the cache engine: per-run state, the per-call decision, and the block hooks.

Four hooks, all through ComfyUI's public extension points (no model forward is copied):

* ``OUTER_SAMPLE`` wrapper (once per sampling run, on the guider): resolves the schedule for the
  run's own step count, creates a fresh :class:`RunState` in the guider's cloned ``model_options``,
  and reports and drops it in ``finally``. Nothing lives on the model, the patcher or module globals.
* ``APPLY_MODEL`` wrapper (every model call, every model type): maps the call to a step through the
  run's sigmas and decides compute or reuse once for the call. In ``model`` mode it also does the
  reuse: it keeps the model's noise prediction ``eps = (x - denoised) / sigma`` per stream and
  returns ``x - sigma * eps^`` at reused steps (for flow models ``eps`` is the velocity), where
  ``eps^`` is the stand-in of the step's reuse rule at the call's own sigma (``hold``: the stored
  ``eps``; ``linear``: extrapolated from the last two computed steps, see ``otcache_core.reuse``).
  The sampler itself is untouched: it integrates the corrected model output.
* ``CALC_COND_BATCH`` wrapper (every step's batch of conds): defers the conds' control models
  (ControlNet, T2I-Adapter) to the model call, which runs them only when it computes
  (:mod:`.control_models`).
* ``blocks`` mode: ``dit`` block replacements (or object patches on block ``forward`` where a family
  has no replacement). A stage's residual is ``output of its last block - input of its first
  block``, kept per stream (cond uuid, context window); at a reused step the first block clones its
  input, the blocks in between pass their input through, and the last returns input + the rule's
  stand-in for the residual.

Reuse rules come per segment of the schedule from the plan (a calibration's per-edge rules; ``hold``
for files without rules) unless OTCache Apply's ``reuse`` input names one rule for every segment.

Streams: a call's rows are split evenly over ``transformer_options["uuids"]``, so cond and uncond,
batched or in separate calls, never share a residual; the context window (if any) is part of the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..otcache_core.plan import SchedulePlan
from ..otcache_core.reuse import ReuseRule, step_rules
from ..otcache_core.runtime import CacheRun, RunReport, step_index
from ..otcache_core.schedule import Schedule
from .control_models import HeldControls, PendingControl, defer_controls
from .families import FamilySpec, stage_blocks
from .foreign_caches import OWN_KEY_PREFIX, find_foreign_caches, labels
from .model_conditions import conditions_note

log = logging.getLogger("OTCache")

KEY = OWN_KEY_PREFIX
"""Key of our wrappers (``add_wrapper_with_key``)."""
RUN_KEY = f"{OWN_KEY_PREFIX}_run"
"""Key of the per-run state in ``transformer_options``."""

MODES = ("blocks", "model")
CALIBRATED = "calibrated"
"""The ``reuse`` choice that takes the rules from the plan (the calibration's or the preset's)."""


@dataclass(frozen=True)
class CacheConfig:
    """What OTCache Apply attached to a model: small, immutable, safe to deep-copy with the patcher."""

    plan: SchedulePlan
    mode: str
    family: FamilySpec
    start_percent: float = 0.0
    end_percent: float = 1.0
    quiet: bool = False
    """Report at debug level (the many short runs of a calibration)."""
    reuse: ReuseRule | None = None
    """``None`` (``calibrated``): the plan's reuse rules; a rule: that rule for every segment."""
    skip_control_models: bool = True
    """Run control models (ControlNet, T2I-Adapter) only for model calls that compute."""
    check_forecasts: bool = False
    """Check each segment's forecast at its end and fall back per sample where hold (or a lower order)
    was clearly closer (:mod:`otcache_core.forecast_check`)."""
    cache_device: str = "model"
    """``cpu``: keep the stored values in CPU memory (:class:`~otcache_core.runtime.CacheRun`'s ``store_device``)."""


@dataclass
class CallState:
    """One model call of a run."""

    step: int
    reuse: bool
    streams: list[tuple[Hashable, slice]]
    sigma: float = 0.0
    """The call's noise level: reused stages extrapolate their residual to it."""
    saved: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """Stage kind -> stream name -> clone of the stage input."""
    finished: set[str] = field(default_factory=set)
    """Stages whose last block ran (computed) or returned input + residual (reused)."""


class RunState:
    """Everything one sampling run keeps; created by the OUTER_SAMPLE wrapper, dropped at its end."""

    def __init__(self, config: CacheConfig, sigmas: list[float], schedule: Schedule, notes: list[str],
                 stage_last: dict[str, int], rules: list[str] | None = None) -> None:
        self.config = config
        self.sigmas = sigmas
        self.cache = CacheRun(schedule, mode=config.mode, notes=notes, rules=rules, sigmas=sigmas,
                              check_forecasts=config.check_forecasts,
                              store_device="cpu" if config.cache_device == "cpu" else None)
        self.stage_last = stage_last
        self.stage_outputs: dict[str, tuple[str, ...]] = {}
        """Stage kind -> the keys its last block returns (what a replacement must return)."""
        self.stage_streams: dict[str, tuple[str, ...]] = {}
        """Stage kind -> the tensor streams among them, whose residuals are cached."""
        self.call: CallState | None = None
        self.disabled: str | None = None
        self.passthrough = False
        """While true, model calls bypass the cache entirely (calibration probes of the full model)."""
        self.held_controls = HeldControls()
        self.foreign_controls: set[str] = set()
        """Control classes that ran at every call because they are not ComfyUI's own."""

    def disable(self, reason: str) -> None:
        """Stop reusing for the rest of the run (every later call computes) and say why."""
        if self.disabled is None:
            self.disabled = reason
            self.cache.stop(reason)
            _warn(self.config, "OTCache: %s; computing every remaining step", reason)


def _warn(config: CacheConfig, message: str, *args: Any) -> None:
    (log.debug if config.quiet else log.warning)(message, *args)


# --------------------------------------------------------------------------------------------------
# Per run
# --------------------------------------------------------------------------------------------------


def _extend_with_forced_range(schedule: Schedule, start: float, end: float) -> tuple[Schedule, str | None]:
    """Compute every step before ``start`` and from ``end`` on (fractions of the run)."""
    T = schedule.steps
    first, last = math.floor(start * T + 1e-9), math.ceil(end * T - 1e-9)
    extra = [k for k in range(T) if k < first or k >= last]
    if not extra:
        return schedule, None
    merged = Schedule.from_steps(sorted(set(schedule.compute_steps) | set(extra)), T)
    return merged, f"steps outside {start:.0%}-{end:.0%} of the run computed: {merged.budget - schedule.budget} more"


def _sampler_name(sampler: Any) -> str:
    fn = getattr(sampler, "sampler_function", None)
    return getattr(fn, "__name__", type(sampler).__name__)


def _max_sigma(patcher: Any) -> float | None:
    try:
        return float(patcher.get_model_object("model_sampling").sigma_max)
    except Exception:  # some model_sampling objects have no sigma_max
        return None


def start_run(config: CacheConfig, patcher: Any, sigmas: torch.Tensor, sampler: Any) -> RunState:
    """Resolve the plan for this run's step count and build its state, with every note the report needs."""
    sigma_list = [float(s) for s in sigmas.flatten().tolist()]
    T = len(sigma_list) - 1
    resolved = config.plan.resolve(T)
    notes = [f"schedule: {config.plan.label or 'custom'}", *resolved.notes]
    if config.reuse is None:
        rules = step_rules(resolved.schedule, resolved.rules)
        notes.append(f"rules from: {resolved.rules_source}")
    else:
        rules = step_rules(resolved.schedule, config.reuse)
        notes.append(f"reuse rule {config.reuse} for every segment (chosen on OTCache Apply)")
    schedule, note = _extend_with_forced_range(resolved.schedule, config.start_percent, config.end_percent)
    if note:
        notes.append(note)
    if schedule.budget >= T:
        notes.append(f"nothing to skip: the schedule computes all {T} steps (budget >= steps; few-step run?)")
        _warn(config, "OTCache: the schedule computes all %d steps of this run; nothing is skipped", T)
    name = _sampler_name(sampler)
    if "ancestral" in name or "sde" in name:
        notes.append(f"sampler {name} adds noise every step: reused residuals were computed on other noise")
        _warn(config, "OTCache: sampler %s adds noise every step; expect lower fidelity from reused steps", name)
    mismatch = conditions_note(config.plan, patcher)  # LoRAs / shift other than calibrated
    if mismatch:
        notes.append(mismatch)
        _warn(config, "OTCache: %s", mismatch)
    top = _max_sigma(patcher)
    if top is not None and sigma_list[0] < top * 0.999:
        notes.append(f"partial run (starts at sigma {sigma_list[0]:.4g} < {top:.4g}): scheduled as its own {T}-step run")
    stage_last: dict[str, int] = {}
    if config.mode == "blocks":
        dm = patcher.model.diffusion_model
        for stage in config.family.stages:
            blocks = stage_blocks(dm, stage)
            if blocks:
                stage_last[stage.kind] = blocks[-1]
    return RunState(config, sigma_list, schedule, notes, stage_last, rules)


class OuterSampleWrapper:
    """``OUTER_SAMPLE``: one fresh :class:`RunState` per sampling run, reported and dropped at its end."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config

    def __call__(self, executor, *args, **kwargs):
        import comfy.model_patcher

        guider = executor.class_obj
        sigmas = args[3] if len(args) > 3 else kwargs["sigmas"]
        sampler = args[2] if len(args) > 2 else kwargs.get("sampler")
        if sigmas.numel() < 2:
            return executor(*args, **kwargs)
        try:
            run = start_run(self.config, guider.model_patcher, sigmas, sampler)
        except Exception as exc:  # a problem of ours must not cost the user the generation
            log.error("OTCache: disabled for this run, the schedule could not be prepared: %s", exc)
            return executor(*args, **kwargs)
        foreign = find_foreign_caches(guider.model_patcher, guider.model_options)
        if foreign:  # added after OTCache Apply (which refuses a model that has one)
            run.disable(f"another step cache is active on this model ({labels(foreign)}): OTCache skips no step, "
                        "the output is the other cache's alone (remove one of the two)")
        original = guider.model_options
        guider.model_options = comfy.model_patcher.create_model_options_clone(original)
        guider.model_options.setdefault("transformer_options", {})[RUN_KEY] = run
        try:
            return executor(*args, **kwargs)
        finally:
            guider.model_options = original
            if run.foreign_controls:
                run.cache.notes.append(
                    f"control models {sorted(run.foreign_controls)} ran at every step (not ComfyUI's own control "
                    "classes: they may keep state across steps)")
            report = run.cache.report()
            run.cache.clear()
            run.held_controls.clear()
            (log.debug if self.config.quiet else log.info)(report.line())
            _notify(report)


_listeners: list[Callable[[RunReport], None]] = []


def add_report_listener(listener: Callable[[RunReport], None]) -> Callable[[], None]:
    """Receive every run report (tests, UI); returns a function that removes the listener."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def _notify(report: RunReport) -> None:
    for listener in list(_listeners):
        listener(report)


# --------------------------------------------------------------------------------------------------
# Per model call
# --------------------------------------------------------------------------------------------------


def layout_token(t: torch.Tensor) -> torch.Tensor:
    """A one-element tensor viewed with ``t``'s shape, dtype and device: remembers a layout for free."""
    return t.new_empty((1,) * t.ndim).expand(t.shape)


def _streams(transformer_options: dict, rows: int) -> list[tuple[Hashable, slice]]:
    """Split a call's rows over its conds (uuids); the context window, if any, is part of the key."""
    uuids = list(transformer_options.get("uuids") or [None])
    window = transformer_options.get("context_window")
    window_id = tuple(getattr(window, "index_list", ()) or ()) if window is not None else None
    if rows % len(uuids):
        return [((None, window_id), slice(0, rows))]
    per = rows // len(uuids)
    return [((u, window_id), slice(k * per, (k + 1) * per)) for k, u in enumerate(uuids)]


def _transformer_options(args: tuple, kwargs: dict) -> dict:
    to = args[5] if len(args) > 5 else kwargs.get("transformer_options")
    return to if isinstance(to, dict) else {}


# ``BaseModel.apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)``
_CONTROL_ARG = 4


def _pending_control(args: tuple, kwargs: dict) -> PendingControl | None:
    control = args[_CONTROL_ARG] if len(args) > _CONTROL_ARG else kwargs.get("control")
    return control if isinstance(control, PendingControl) else None


def _with_control(args: tuple, kwargs: dict, control: Any) -> tuple[tuple, dict]:
    if len(args) > _CONTROL_ARG:
        return (*args[:_CONTROL_ARG], control, *args[_CONTROL_ARG + 1:]), kwargs
    return args, {**kwargs, "control": control}


def _call_control(run: RunState, pending: PendingControl, reuse: bool, streams: list, x: torch.Tensor) -> Any:
    """The control the model gets on this call (see :mod:`.control_models`); counts what ran and what not.

    Computing: the control's own output. Reusing: nothing in ``model`` mode (the model does not run),
    in ``blocks`` mode the output held from the last computed call of the same streams, or, when none
    matches (streams batched differently since), the control's own output.
    """
    hold = run.config.mode == "blocks"
    key = tuple(sid for sid, _ in streams)
    if reuse:
        found, control = run.held_controls.take(key, x) if hold else (True, None)
        if found:
            run.cache.add_controls(True, pending.evaluations())
            return control
    elif hold:
        run.held_controls.forget(key)  # never two outputs of one composition alive at once
    control = pending.resolve()
    run.cache.add_controls(False, pending.evaluations())
    if hold and not reuse:
        run.held_controls.store(key, layout_token(x), control)
    return control


class CalcCondBatchWrapper:
    """``CALC_COND_BATCH``: the conds' control models are deferred to the model call (see module doc)."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config

    def __call__(self, executor, model, conds, *args, **kwargs):
        model_options = args[2] if len(args) > 2 else kwargs.get("model_options", {})
        run: RunState | None = (model_options.get("transformer_options") or {}).get(RUN_KEY)
        if run is None or run.passthrough or run.disabled is not None or not self.config.skip_control_models:
            return executor(model, conds, *args, **kwargs)
        return executor(model, defer_controls(conds, run.foreign_controls), *args, **kwargs)


class ApplyModelWrapper:
    """``APPLY_MODEL``: the per-call decision, and the whole reuse in ``model`` mode."""

    def __init__(self, config: CacheConfig) -> None:
        self.config = config

    def __call__(self, executor, *args, **kwargs):
        to = _transformer_options(args, kwargs)
        run: RunState | None = to.get(RUN_KEY)
        pending = _pending_control(args, kwargs)
        if run is None or run.passthrough:  # outside a sampling run, or a calibration probe
            if pending is not None:
                args, kwargs = _with_control(args, kwargs, pending.resolve())
            return executor(*args, **kwargs)
        x, t = args[0], args[1]
        sigma = float(t.reshape(-1)[0])
        step = step_index(run.sigmas, sigma)
        streams = _streams(to, x.shape[0])
        if run.config.mode == "model":
            return self._model_mode(run, executor, args, kwargs, x, t, step, streams, sigma, pending)
        return self._blocks_mode(run, executor, args, kwargs, x, step, streams, sigma, pending)

    @staticmethod
    def _model_mode(run, executor, args, kwargs, x, t, step, streams, sigma_value, pending):
        cache = run.cache
        keys = [("model", sid) for sid, _ in streams]
        ready = run.disabled is None and all(cache.has(k, x[rows]) for k, (_, rows) in zip(keys, streams))
        reuse = cache.plan_call(step, ready)
        start = cache.clock(x.device)
        if pending is not None:
            args, kwargs = _with_control(args, kwargs, _call_control(run, pending, reuse, streams, x))
        sigma = t.reshape([-1] + [1] * (x.ndim - 1)).to(x.dtype)
        if reuse:
            eps = torch.cat([cache.standin(k, step, sigma_value) for k in keys])
            out = x - sigma * eps
        else:
            out = executor(*args, **kwargs)
            if bool((sigma > 0).all()) and out.shape == x.shape:
                eps = (x - out) / sigma
                for key, (_, rows) in zip(keys, streams):
                    cache.store(key, eps[rows], sigma_value)
        cache.add_call(reuse, cache.clock(x.device) - start)
        return out

    @staticmethod
    def _blocks_mode(run, executor, args, kwargs, x, step, streams, sigma, pending):
        cache = run.cache
        ready = run.disabled is None and bool(run.stage_streams) and all(
            cache.has((kind, name, sid))
            for kind, names in run.stage_streams.items()
            for name in names
            for sid, _ in streams
        ) and all(cache.has(("latent", sid), x[rows]) for sid, rows in streams)
        reuse = cache.plan_call(step, ready)
        start = cache.clock(x.device)
        if pending is not None:
            args, kwargs = _with_control(args, kwargs, _call_control(run, pending, reuse, streams, x))
        call = CallState(step, reuse, streams, sigma)
        run.call = call
        try:
            out = executor(*args, **kwargs)
        finally:
            run.call = None
        cache.add_call(reuse, cache.clock(x.device) - start)
        if not reuse:
            for sid, rows in streams:  # the layout a later reuse must match
                cache.store(("latent", sid), layout_token(x[rows]))
            missing = set(run.stage_last) - call.finished
            if missing:
                run.disable(f"the model did not run the hooked block stages {sorted(missing)}")
        elif set(run.stage_streams) - call.finished:
            # cannot happen unless the model skipped our last block hook; the output is then wrong
            raise RuntimeError("OTCache: a reused step did not reach the last block of every stage")
        return out


# --------------------------------------------------------------------------------------------------
# Per block
# --------------------------------------------------------------------------------------------------

_STREAM_CANDIDATES = ("img", "txt", "x")


def cached_block(run: RunState, kind: str, index: int, inputs: dict[str, Any],
                 compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The stage logic shared by dit replacements and object-patched layers (see module doc)."""
    call = run.call
    last = run.stage_last.get(kind)
    if call is None or last is None:
        return compute()
    if kind not in call.saved:  # first block of this stage in this call: keep the stage input
        names = run.stage_streams.get(kind) or tuple(k for k in _STREAM_CANDIDATES if k in inputs)
        call.saved[kind] = {k: inputs[k].clone() for k in names if isinstance(inputs.get(k), torch.Tensor)}
    if call.reuse:
        outputs, cached = run.stage_outputs[kind], run.stage_streams[kind]
        if index != last:
            return {k: inputs.get(k) for k in outputs}
        saved = call.saved[kind]
        out = {}
        for k in outputs:  # a stream the last block returned as None (SD3's text) stays None
            if k in cached:
                residual = torch.cat([run.cache.standin((kind, k, sid), call.step, call.sigma) for sid, _ in call.streams])
                out[k] = saved[k] + residual
            else:
                out[k] = None
        call.finished.add(kind)
        return out
    out = compute()
    if index == last:
        saved = call.saved[kind]
        names = tuple(out)
        for k in names:
            value = out[k]
            if not isinstance(value, torch.Tensor):
                continue  # e.g. SD3's last block returns no text stream
            if k not in saved or saved[k].shape != value.shape:
                run.disable(f"stage {kind} changes the shape of stream {k!r}")
                continue
            residual = value - saved[k]
            for sid, rows in call.streams:
                run.cache.store((kind, k, sid), residual[rows], call.sigma)
        if run.disabled is None:
            run.stage_outputs[kind] = names
            run.stage_streams[kind] = tuple(k for k in names if isinstance(out[k], torch.Tensor))
        call.finished.add(kind)
    return out


class BlockReplacement:
    """A ``dit`` block replacement: ``fn(args, {"original_block": f}) -> dict of streams``."""

    def __init__(self, kind: str, index: int) -> None:
        self.kind, self.index = kind, index

    def __call__(self, args: dict, extra: dict) -> dict:
        original = extra["original_block"]
        to = args.get("transformer_options")
        run = to.get(RUN_KEY) if isinstance(to, dict) else None
        if run is None:
            return original(args)
        return cached_block(run, self.kind, self.index, args, lambda: original(args))


class LayerForward:
    """An object patch for ``<layers>.<i>.forward`` where a family has no block replacement.

    ``original`` is the layer's own bound ``forward``; the layer maps the joint sequence ``x`` (its
    first argument) to the new sequence.
    """

    def __init__(self, kind: str, index: int, original: Callable[..., torch.Tensor]) -> None:
        self.kind, self.index, self.original = kind, index, original

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        to = kwargs.get("transformer_options")
        run = to.get(RUN_KEY) if isinstance(to, dict) else None
        if run is None:
            return self.original(x, *args, **kwargs)
        out = cached_block(run, self.kind, self.index, {"x": x}, lambda: {"x": self.original(x, *args, **kwargs)})
        return out["x"]
