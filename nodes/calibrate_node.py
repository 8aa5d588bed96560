"""OTCache Calibrate: the three stages on the user's own model, with ComfyUI's own sampling.

:class:`ComfyCalibrationSampler` implements ``otcache_core.calibrate.Sampler`` on
``comfy.sample.sample_custom`` with the OTCache hooks applied for each masked run, so calibration
measures exactly what OTCache Apply will later do. A replay from a stored state swaps the sampler's
starting latent for that state (nothing else of ComfyUI changes); probes of the full model at reused
steps run through the same hooks in pass-through mode.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..otcache_core.calibrate import (
    DEFAULT_RULES,
    CalibrationSettings,
    EdgeCheckpoint,
    SamplingResult,
    calibrate,
    checked_range,
    default_budgets,
    estimated_calls,
    settings_key,
)
from ..otcache_core.calibration import Calibration
from ..otcache_core.anchor import open_storage, require_optuna
from ..otcache_core.errors import OTCacheError, SaveError
from ..otcache_core.figures import heatmap, line_plot, schedule_strips, side_by_side, stack_vertically
from ..otcache_core.metrics import perceptual_objective, ssim
from ..otcache_core.quality import IMAGES, LATENTS, FiguresFn, SampleFigures, per_sample_psnr
from ..otcache_core.plan import SchedulePlan
from ..otcache_core.reuse import ReuseRule, parse_rules, segment_rules_of
from ..otcache_core.runtime import step_index
from ..otcache_core.schedule import Schedule
from .apply_node import apply_otcache
from .cache_hooks import RUN_KEY, add_report_listener
from .calibration_prompts import prompt_sampler
from .families import model_identity
from .model_conditions import model_conditions
from .previews import temp_preview
from .schedule_node import as_comfy_image
from .storage import user_calibration_dir

log = logging.getLogger("OTCache.calibrate")

PROBE_KEY = "otcache_probe"
STRENGTHS = ("rollout", "global", "drift")
MIN_STEPS = 4


class ProbeWrapper:
    """``PREDICT_NOISE``: at listed reused steps, first run the full model (cache bypassed) once."""

    def __init__(self, steps: Collection[int], offset: int, sink: dict[int, torch.Tensor]) -> None:
        self.steps, self.offset, self.sink = set(steps), offset, sink

    def __call__(self, executor, x, timestep, model_options, seed=None):
        run = model_options.get("transformer_options", {}).get(RUN_KEY)
        if run is not None:
            local = step_index(run.sigmas, float(timestep.reshape(-1)[0]))
            step = local + self.offset
            if step in self.steps and step not in self.sink and not run.cache.scheduled_compute(local):
                run.passthrough = True
                try:
                    self.sink[step] = executor(x, timestep, model_options, seed)
                finally:
                    run.passthrough = False
        return executor(x, timestep, model_options, seed)


class ComfyCalibrationSampler:
    """The calibration ``Sampler`` protocol on ComfyUI's sampling of a batch of seeds."""

    def __init__(self, model: Any, positive: Any, negative: Any, latent: dict, seeds: Sequence[int], steps: int,
                 cfg: float, sampler_name: str, scheduler: str, mode: str = "auto",
                 on_run: Callable[[], None] | None = None) -> None:
        import comfy.sample
        import comfy.samplers

        self.model, self.positive, self.negative = model, positive, negative
        self.cfg, self.sampler_name, self.mode, self.on_run = cfg, sampler_name, mode, on_run
        self.seed = int(seeds[0])
        samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
        self.latent_image = samples.repeat(len(seeds), *([1] * (samples.ndim - 1)))
        self.noise = torch.cat([comfy.sample.prepare_noise(samples, int(s)) for s in seeds])
        ksampler = comfy.samplers.KSampler(model, steps=steps, device=model.load_device, sampler=sampler_name,
                                           scheduler=scheduler, denoise=1.0, model_options=model.model_options)
        self.sigmas = ksampler.sigmas.cpu()
        self.steps = len(self.sigmas) - 1
        self.model_calls = 0

    def _sampler(self, initial: torch.Tensor | None, stash: dict) -> Any:
        import comfy.samplers

        base = comfy.samplers.sampler_object(self.sampler_name)
        function = base.sampler_function

        def run_from_state(model, x, sigmas, *args, **kwargs):
            if initial is not None:
                x = initial.to(device=x.device, dtype=x.dtype)
            out = function(model, x, sigmas, *args, **kwargs)
            stash["final"] = out  # the raw state, before ComfyUI's output scaling
            return out

        return comfy.samplers.KSAMPLER(run_from_state, extra_options=base.extra_options,
                                       inpaint_options=base.inpaint_options)

    def run(self, mask: Sequence[bool], *, start: int = 0, state: torch.Tensor | None = None,
            stop: int | None = None, record: bool = False, probe: Collection[int] = (),
            reuse: ReuseRule | Sequence[ReuseRule] | None = None) -> SamplingResult:
        import comfy.model_management
        import comfy.patcher_extension as pe
        import comfy.sample

        T = self.steps
        stop = checked_range(T, mask, start, stop, state)
        comfy.model_management.throw_exception_if_processing_interrupted()
        schedule = Schedule.from_mask([True] + list(mask[start + 1 : stop]))
        local_rules = reuse if reuse is None or isinstance(reuse, ReuseRule) else list(reuse)[start:stop]
        plan = SchedulePlan.from_schedule(schedule, label="calibration", rules=segment_rules_of(schedule, local_rules))
        patched = apply_otcache(self.model, plan, self.mode, quiet=True)
        probes: dict[int, torch.Tensor] = {}
        if probe:
            patched.add_wrapper_with_key(pe.WrappersMP.PREDICT_NOISE, PROBE_KEY, ProbeWrapper(probe, start, probes))
        stash: dict[str, torch.Tensor] = {}
        states: list[torch.Tensor] = []
        denoised: dict[int, torch.Tensor] = {}

        def on_step(i, x0, x, total):
            comfy.model_management.throw_exception_if_processing_interrupted()
            step = start + i
            if step not in denoised:  # multi-evaluation samplers call back once per step anyway
                denoised[step] = x0.detach().cpu()
                if record:
                    states.append(x.detach().cpu())

        reports = []
        remove = add_report_listener(reports.append)
        try:
            comfy.sample.sample_custom(
                patched, torch.zeros_like(self.noise) if start > 0 else self.noise, self.cfg,
                self._sampler(state if start > 0 else None, stash), self.sigmas[start : stop + 1],
                self.positive, self.negative, self.latent_image, callback=on_step, disable_pbar=True,
                seed=self.seed,
            )
        finally:
            remove()
        final = stash["final"].detach().cpu()
        calls = (reports[-1].calls_computed if reports else 0) + len(probes)
        self.model_calls += calls
        if self.on_run:
            self.on_run()
        result = SamplingResult(final=final, model_calls=calls)
        result.denoised = {**denoised, **{k: v.detach().cpu() for k, v in probes.items()}}
        if record:
            result.states = states + [final]
            sig = [float(s) for s in self.sigmas]
            result.step_sizes = [abs(b - a) for a, b in zip(sig, sig[1:])]
            result.sigmas = sig
            for k in schedule.compute_steps:
                step = start + k
                if step < stop and sig[step] > 0:
                    result.outputs[step] = (result.states[step - start] - denoised[step]) / sig[step]
        return result


@dataclass(frozen=True)
class CalibrationObjective:
    """The end-to-end distance a calibration minimises, and the per-sample figures its validation keeps."""

    name: str
    distance: Callable[[torch.Tensor, torch.Tensor], float]
    figures: FiguresFn | None
    """``None``: figures of the latents (no decoder)."""
    space: str
    note: str = ""


def calibration_objective(vae: Any, model: Any) -> CalibrationObjective:
    """On decoded images with a VAE (LPIPS, else 1 - SSIM; PSNR and SSIM per image in [0, 1]), else on latents."""
    if vae is None:
        objective = perceptual_objective("latent", images=False)
        return CalibrationObjective(objective.name, objective.distance, None, LATENTS,
                                    "no VAE connected: the anchor objective is the latent error and the expected "
                                    "PSNR is measured on latents; connect the VAE for PSNR of decoded images")
    objective = perceptual_objective("lpips", images=True)
    latent_format = model.model.latent_format
    recent: list[tuple[torch.Tensor, torch.Tensor]] = []  # (latent, its images): each final is decoded once

    def images(latent: torch.Tensor) -> torch.Tensor:
        found = [pair for pair in recent if pair[0] is latent]
        if found:
            pixels = found[0][1]
        else:
            pixels = vae.decode(latent_format.process_out(latent.float()))
            pixels = pixels.reshape(-1, *pixels.shape[-3:]).movedim(-1, 1).float().cpu()
        # least recently used last: the full final and the run being scored stay decoded
        recent[:] = [(latent, pixels), *[pair for pair in recent if pair[0] is not latent][:2]]
        return pixels

    def distance(cached: torch.Tensor, full: torch.Tensor) -> float:
        return objective.distance(images(cached), images(full))

    def figures(cached: torch.Tensor, full: torch.Tensor) -> SampleFigures:
        a, b = images(cached), images(full)
        rows = [(a[i : i + 1], b[i : i + 1]) for i in range(b.shape[0])]
        per = tuple(objective.distance(x, y) for x, y in rows)
        return SampleFigures(per, per_sample_psnr(a.clamp(0, 1), b.clamp(0, 1), 1.0),
                             tuple(ssim(x, y) for x, y in rows), per if objective.name == "lpips" else None)

    return CalibrationObjective(objective.name, distance, figures, IMAGES, objective.note)


def _fingerprint(model: Any, positives: Sequence[Any], negative: Any, latent: torch.Tensor) -> str:
    """A cheap identity of the weights, LoRA patches and conditionings: part of the resume key."""
    digest = hashlib.sha256()
    dm = model.model.diffusion_model
    state = dm.state_dict()
    # the tensors themselves: packs with their own layers (ComfyUI-GGUF) put meta placeholders in state_dict()
    tensors = {**dict(dm.named_buffers()), **dict(dm.named_parameters())}
    names = sorted(state)
    for name in [names[0], names[len(names) // 2], names[-1]] if names else []:
        digest.update(name.encode())
        value = tensors.get(name, state[name])
        digest.update(value.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    digest.update(str(getattr(model, "patches_uuid", "")).encode())
    digest.update(repr(model_conditions(model).to_record()).encode())  # a shift is an object patch: no new uuid
    for cond in (*positives, negative):
        for item in cond or []:
            digest.update(item[0].detach().flatten()[:65536].float().cpu().numpy().tobytes())
    digest.update(str(tuple(latent.shape)).encode())
    return digest.hexdigest()[:16]


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")


def file_stem(name: str) -> str:
    """The file name for a calibration ``name``: other characters than letters, digits, ``._ -`` become ``_``."""
    if not re.search(r"[A-Za-z0-9]", name):
        raise OTCacheError(f"'name' must contain letters or digits, got {name!r}")
    return _SAFE_NAME.sub("_", name).strip(" .")


def calibration_path(name: str, folder: Path, record: Calibration, overwrite: bool) -> tuple[Path, str | None]:
    """Where to save: ``<name>.json``, or the next free ``<name>-2.json``... when a different file is there."""
    safe = file_stem(name)
    target = folder / f"{safe}.json"
    if overwrite or not target.exists():
        return target, None
    try:
        if Calibration.load(target).to_dict() == record.to_dict():
            return target, None
    except OTCacheError:
        pass  # unreadable file of that name: keep it, save beside it
    n = 2
    while (folder / f"{safe}-{n}.json").exists():
        n += 1
    other = folder / f"{safe}-{n}.json"
    return other, f"{target.name} already holds a different calibration: saved as {other.name} (set 'overwrite' to replace)"


def resumable_state(work: Path, key: str, steps: int, storage: str) -> tuple[EdgeCheckpoint | None, str | None,
                                                                         list[str]]:
    """The edge checkpoint and the anchor study's storage URL (``None``: in memory) for a calibration.

    ``storage`` is the node's input: empty for a SQLite study in ``work``, ``memory``, or a URL. A
    ``work`` folder that cannot be written (a read-only or full user directory) does not stop the
    calibration: it runs without what it cannot keep, and the returned warnings say that an
    interruption would start it over.
    """
    url = storage.strip()
    if url.lower() == "memory":
        url = None
    warnings: list[str] = []
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        warnings.append(f"cannot keep resumable state in {work}: {exc.strerror or exc}; an interruption restarts "
                        "this calibration")
        return None, url or None, warnings
    checkpoint = EdgeCheckpoint(work / f"{key}.edges.json", key, steps=steps)
    if checkpoint.problem:
        warnings.append(checkpoint.problem)
    if url != "":
        return checkpoint, url, warnings
    url, optuna = f"sqlite:///{(work / 'studies.db').as_posix()}", require_optuna()
    try:
        open_storage(optuna, url)  # creates the file and its tables now, not after the edge stage
    except Exception as exc:  # read-only or full folder: SQLAlchemy's OperationalError
        warnings.append(f"anchor study kept in memory: cannot use {work / 'studies.db'} ({_first_line(exc)})")
        url = None
    return checkpoint, url, warnings


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def save_calibration(record: Calibration, name: str, folder: Path, overwrite: bool) -> tuple[Path | None, str]:
    """Save ``record`` in ``folder`` (never over a different file unless ``overwrite``); returns the path and
    a line for the summary. A folder that cannot be written returns ``None`` and a line saying where and why:
    the calibration still goes to the graph."""
    path, moved = calibration_path(name, folder, record, overwrite)
    old_name, old_notes = record.name, list(record.notes)
    if moved:
        record.notes.append(moved)
        record.name = path.stem
    try:
        record.save(path, overwrite=overwrite)
    except SaveError as exc:
        record.name, record.notes = old_name, old_notes
        return None, (f"NOT SAVED: {exc}; the 'calibration' output still carries it to OTCache Schedule, or make "
                      "the folder writable and queue again")
    return path, f"saved: {path}"


def preview_image(outcome: Any) -> np.ndarray:
    """Edge-error heatmap, reference and anchor strips, and the anchor search history."""
    cal = outcome.calibration
    strips = schedule_strips([("reference", cal.reference.schedule), ("anchor", cal.anchor.schedule)])
    history = outcome.anchor.history
    plot = line_plot([("trial", history, (150, 150, 150)), ("best so far", outcome.anchor.best_so_far(), (200, 40, 40))],
                     title=f"anchor search ({cal.anchor.details.get('objective')})", x_label="trial")
    cell = max(2, min(8, 400 // max(1, cal.steps + 1)))
    return stack_vertically([side_by_side([heatmap(outcome.errors, cell=cell, title="edge errors i -> j"), plot]),
                             strips])


def parse_rule_list(text: str) -> tuple[ReuseRule, ...]:
    """``"linear, horizon2"`` -> the rules; an error names the input."""
    names = [part for part in text.replace(",", " ").split() if part]
    if not names:
        raise OTCacheError("'reuse_rules' is empty; list at least one rule, e.g. linear, horizon2")
    try:
        return parse_rules(names)
    except OTCacheError as exc:
        raise OTCacheError(f"'reuse_rules': {exc}") from None


def split_seeds(seed: int, samples: int) -> tuple[list[int], list[int]]:
    """``samples`` seeds from ``seed`` on: the first half (rounded up) searches, the rest validates."""
    seeds = [seed + k for k in range(samples)]
    search = (samples + 1) // 2
    return seeds[:search], seeds[search:]


def validate_inputs(steps: int, reference_budget: int, anchor_budget: int, max_segment: int, trials: int,
                    strength: str, positive: Any, negative: Any) -> None:
    """Errors that name the input to change."""
    if positive is None or negative is None:
        raise OTCacheError("connect both 'positive' and 'negative' conditioning (any prompt; an empty one works)")
    if steps < MIN_STEPS:
        raise OTCacheError(f"'steps' must be at least {MIN_STEPS} to calibrate, got {steps}")
    if strength not in STRENGTHS:
        raise OTCacheError(f"'strength' must be one of {', '.join(STRENGTHS)}")
    if reference_budget >= steps:
        raise OTCacheError(f"'reference_budget' ({reference_budget}) must be smaller than 'steps' ({steps})")
    if not 1 <= anchor_budget < reference_budget:
        raise OTCacheError(
            f"'anchor_budget' ({anchor_budget}) must be at least 1 and smaller than 'reference_budget' "
            f"({reference_budget})"
        )
    if max_segment < 2:
        raise OTCacheError(f"'max_segment' must be at least 2, got {max_segment}")
    if reference_budget * max_segment < steps:
        raise OTCacheError(
            f"'reference_budget' {reference_budget} cannot cover {steps} steps with 'max_segment' {max_segment}: "
            f"raise one of them"
        )
    if trials < 1:
        raise OTCacheError("'trials' must be at least 1")


def run_calibration(model: Any, positive: Any, negative: Any, latent: dict, *, seed: int, samples: int, steps: int,
                    cfg: float, sampler_name: str, scheduler: str, reference_budget: int = 0,
                    anchor_budget: int = 0, max_segment: int = 10, strength: str = "rollout", trials: int = 40,
                    name: str = "my-calibration", vae: Any = None, storage: str = "", mode: str = "auto",
                    overwrite: bool = False, folder: Path | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    rules: Sequence[ReuseRule | str] = DEFAULT_RULES, clip: Any = None,
                    prompts: str = "") -> tuple[Calibration, np.ndarray, str, Path | None]:
    """Calibrate, save and describe; returns ``(record, preview RGB, summary text, saved path)``; the path is
    ``None`` when the folder could not be written (the summary says why).

    The samples are ``positive`` plus each line of ``prompts`` (encoded with ``clip``), each with the
    seeds ``seed .. seed + samples - 1``; see :mod:`.calibration_prompts`. The first half of the seeds
    (rounded up) search, the other half validate (:func:`split_seeds`).
    """
    auto_ref, auto_anchor = default_budgets(max(steps, MIN_STEPS))
    reference_budget = reference_budget or auto_ref
    anchor_budget = anchor_budget or min(auto_anchor, reference_budget - 1)
    validate_inputs(steps, reference_budget, anchor_budget, max_segment, trials, strength, positive, negative)
    file_stem(name)
    if samples < 1:
        raise OTCacheError("'samples' must be at least 1")
    folder = folder or user_calibration_dir()
    search_seeds, check_seeds = split_seeds(seed, samples)
    rows = latent["samples"].shape[0]

    def sampler_for(seeds: list[int]) -> tuple[Any, list[str], list[Any]]:
        return prompt_sampler(
            lambda cond, n: ComfyCalibrationSampler(model, cond, negative, latent, seeds * n, steps, cfg, sampler_name,
                                                    scheduler, mode),
            positive, clip, prompts, len(seeds) * rows, latent["samples"][0].numel())

    sampler, prompt_labels, positives = sampler_for(search_seeds)
    validation = sampler_for(check_seeds)[0] if check_seeds else None
    T = sampler.steps
    if T != steps:
        log.info("OTCache Calibrate: the %s sampler runs %d steps for steps=%d", sampler_name, T, steps)
    identity = model_identity(model)
    key = settings_key(identity, _fingerprint(model, positives, negative, sampler.latent_image), search_seeds, T, cfg,
                       sampler_name, scheduler, strength, max_segment, mode)
    rules = parse_rules(rules)
    settings = CalibrationSettings(
        reference_budget=reference_budget, anchor_budget=anchor_budget, strength=strength, max_skip=max_segment,
        trials=trials, seed=seed, rules=rules)
    budgets = settings.validation_budgets(T) if validation is not None else []
    total = 1 + (T - 1 if strength != "drift" else 0) + trials + len(budgets)
    done = {"trajectories": 0, "edges": 0, "anchor": 0, "validation": 0}

    def on_progress(stage: str, value: int, of: int) -> None:
        import comfy.model_management

        done[stage] = value
        if progress:
            progress(min(total, sum(done.values())), total)
        comfy.model_management.throw_exception_if_processing_interrupted()

    estimate = estimated_calls(settings, T, validation is not None)
    log.info("OTCache Calibrate: about %d model calls in all (%s) for each of %d prompt(s), with %d search and %d "
             "validation seed(s)", sum(estimate.values()), ", ".join(f"{k} {v}" for k, v in estimate.items()),
             len(positives), len(search_seeds), len(check_seeds))
    objective = calibration_objective(vae, model)
    checkpoint, storage_url, warnings = resumable_state(folder / ".work", key, T, storage)
    settings.storage, settings.study_name = storage_url, f"{name}-{key}-{settings_key(rules, 'end-to-end rules')}"
    if validation is None:
        warnings.append("no validation samples (samples = 1): the calibrated schedules were not checked against "
                        "even spacing on samples the search never saw; use samples >= 2")
    resumed_rows = len(checkpoint.for_rule(settings.edge_rule, settings.history_for(T)).rows) if checkpoint else 0
    started = time.perf_counter()
    outcome = calibrate(
        sampler, settings, distance=objective.distance, objective_name=objective.name, name=name,
        model={**identity, "families": [identity["family"]], **model_conditions(model).to_record()},
        sampler_info={"sampler": sampler_name, "scheduler": scheduler, "cfg": cfg, "steps": T, "seeds": search_seeds,
                      "validation_seeds": check_seeds, "prompts": prompt_labels,
                      "latent_shape": list(sampler.latent_image.shape[1:]), "mode": mode},
        progress=on_progress, checkpoint=checkpoint, log=lambda msg: log.info("OTCache Calibrate: %s", msg),
        validation=validation, figures=objective.figures, figures_space=objective.space,
    )
    record = outcome.calibration
    if objective.note:
        record.notes.append(objective.note)
    if resumed_rows:
        record.notes.append(f"resumed: {resumed_rows} edge rows measured by an earlier, interrupted run")
    if outcome.anchor.resumed_trials:
        record.notes.append(f"resumed: {outcome.anchor.resumed_trials} anchor trials from the study")
    if checkpoint and checkpoint.save_problem:
        warnings.append(checkpoint.save_problem)
    path, saved = save_calibration(record, name, folder, overwrite)
    warnings += [] if path else [saved]
    for warning in warnings:
        log.warning("OTCache Calibrate: %s", warning)
    seconds = time.perf_counter() - started
    calls = record.cost.get("model_calls", {})
    secs = record.cost.get("seconds", {})
    lines = [
        record.summary(),
        f"cost: {sum(calls.values())} model calls, {seconds:.1f} s  ("
        + ", ".join(f"{stage} {calls.get(stage, 0)} calls / {secs.get(stage, 0):.1f} s" for stage in calls) + ")",
        f"calibrated on {len(positives)} prompt(s) x {len(search_seeds)} seed(s), validated on {len(check_seeds)} "
        f"other seed(s): {', '.join(prompt_labels)}",
        f"edge strength {strength} (K={max_segment}), reuse rules tried {', '.join(map(str, rules))}: estimated "
        f"{sum(estimate.values())} calls before it ran",
        f"reference worst segment {record.reference.score:.4g}; anchor {objective.name} {record.anchor.score:.4g} "
        f"over {record.anchor.details.get('trials')} trials",
        *warnings,
        *([saved] if path else []),
    ]
    text = "\n".join(dict.fromkeys(lines))
    log.info("OTCache Calibrate: done in %.1f s, %s", seconds, saved)
    return record, preview_image(outcome), text, path


class OTCacheCalibrate:
    """OTCache Calibrate."""

    DESCRIPTION = (
        "Calibrate OTCache for this model and sampler setting, once: measures segment errors by replay, "
        "finds the reference schedule (leximax graph path) and the low-budget anchor (Optuna), and saves "
        "the calibration for OTCache Schedule. Re-running resumes an interrupted calibration."
    )
    CATEGORY = "OTCache"
    FUNCTION = "calibrate"
    OUTPUT_NODE = True  # it saves a file, like Save Image: Calibrate and its inputs alone make a valid prompt
    RETURN_TYPES = ("OTCACHE_CALIBRATION", "IMAGE", "STRING")
    RETURN_NAMES = ("calibration", "preview", "summary")

    @classmethod
    def INPUT_TYPES(cls):
        import comfy.samplers

        return {
            "required": {
                "model": ("MODEL",),
                "positive": ("CONDITIONING",),
                "negative": ("CONDITIONING",),
                "latent_image": ("LATENT", {"tooltip": "The size to calibrate at (an empty latent)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                                 "tooltip": "First calibration seed. Kept fixed: a new seed means a new calibration."}),
                "samples": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Calibration samples per prompt: seeds seed .. seed+samples-1. The first half searches, the other half validates: every budget runs with what did best on it end to end (the calibrated schedule or even spacing, and the reuse rule)."}),
                "steps": ("INT", {"default": 30, "min": MIN_STEPS, "max": 1000}),
                "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
                "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
                "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
                "reference_budget": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Computed steps of the reference; 0 = about steps/2."}),
                "anchor_budget": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "Computed steps of the anchor; 0 = about steps/6. Budgets below it extrapolate the anchor: put it at the lowest budget you will use."}),
                "max_segment": ("INT", {"default": 10, "min": 2, "max": 1000, "tooltip": "Longest run of reused steps the reference may use."}),
                "strength": (list(STRENGTHS), {"default": "rollout", "tooltip": "Edge errors: rollout (about 10 generations at T=50, K=10), global (LeMiCa, about 20x more), drift (free, coarse)."}),
                "trials": ("INT", {"default": 40, "min": 1, "max": 10000, "tooltip": "Optuna trials of the anchor search (one cached generation each)."}),
                "name": ("STRING", {"default": "my-calibration", "tooltip": "File name in <user>/otcache; listed by OTCache Schedule."}),
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Decode to images for the anchor objective (LPIPS if available, else SSIM)."}),
                "storage": ("STRING", {"default": "", "tooltip": "Optuna storage URL for the anchor study. Empty: a SQLite file in <user>/otcache/.work (resumable); 'memory': none; a postgresql:// URL lets several machines share one study."}),
                "mode": (["auto", "blocks", "model"], {"default": "auto"}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing calibration of the same name."}),
                "reuse_rules": ("STRING", {"default": ", ".join(map(str, DEFAULT_RULES)), "tooltip": "Reuse rules tried end to end, on whole schedules: each budget keeps the one that did best on the validation samples (one rule for all its segments). The first is the rule the edge errors are measured under. hold: the last computed output; linear / quadratic: extrapolated along sigma; horizonK: linear for K steps past the last computed step, then held; meancacheK: MeanCache's average-velocity correction. Each rule costs a few cached generations."}),
                "clip": ("CLIP", {"tooltip": "The text encoder that encodes 'prompts' (as CLIP Text Encode does)."}),
                "prompts": ("STRING", {"default": "", "multiline": True, "tooltip": "More prompts to calibrate on, one per line, encoded with 'clip'; each runs every seed, next to the connected positive. The published step caches calibrate on tens of prompts."}),
            },
        }

    def calibrate(self, model, positive, negative, latent_image, seed, samples, steps, cfg, sampler_name, scheduler,
                  reference_budget, anchor_budget, max_segment, strength, trials, name, vae=None, storage="",
                  mode="auto", overwrite=False, reuse_rules=", ".join(map(str, DEFAULT_RULES)), clip=None, prompts=""):
        import comfy.utils

        bar = comfy.utils.ProgressBar(1)

        def progress(value: int, total: int) -> None:
            bar.update_absolute(value, total)

        record, preview, text, _ = run_calibration(
            model, positive, negative, latent_image, seed=seed, samples=samples, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, reference_budget=reference_budget,
            anchor_budget=anchor_budget, max_segment=max_segment, strength=strength, trials=trials, name=name,
            vae=vae, storage=storage, mode=mode, overwrite=overwrite, progress=progress,
            rules=parse_rule_list(reuse_rules), clip=clip, prompts=prompts,
        )
        return {"ui": {"images": [temp_preview(preview, "OTCache_calibration")]},
                "result": (record, as_comfy_image(preview), text)}
