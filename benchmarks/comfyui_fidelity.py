"""Fidelity inside ComfyUI: trained ComfyUI Flux models, ComfyUI's own sampling, held-out prompts.

    COMFYUI_PATH=/path/to/ComfyUI OTCACHE_PEER_PACKS=/path/to/packs python benchmarks/comfyui_fidelity.py \
        [--testbed distilled] [--development] [--reuse-rules "linear, horizon2"] [--vae] [--json out.json]

The models are the DigitFlux testbeds (``tests/comfyui/digit_flux.py``): ``digitflux``, a
``comfy.ldm.flux.model.Flux`` trained on MNIST, sampled with real CFG (cfg 4, two model calls per
step); ``distilled``, its guidance-distilled student (FLUX.1-dev's regime: cfg 1, one model call per
step, the strength 4 as a guidance embedding set as FluxGuidance does). Every output is sampled by
``comfy.sample.sample`` (the KSampler path), euler / simple, T = 30, and compared with the full-compute
output of the same prompt and seed: PSNR of the decoded 28x28 digits in [0, 1], mean and worst sample.

Held out: calibrations see only even-digit prompts and seeds 0 .. 3 (the node's default seeds); the
evaluation uses the odd-digit prompts, four phrasings each, with seeds 1000 and 1001 (40 samples),
none of which any calibration or default here was chosen on (the defaults were chosen on the
development samples: even-digit prompts with seeds 500 and 501).

Methods, each at exactly B computed steps of 30 (checked from OTCache's run reports), ``model`` mode
(what ``auto`` is) unless said otherwise:

* **default pipeline**: OTCache Calibrate -> OTCache Schedule -> OTCache Apply with every input at its
  default except what must match the sampling (steps, cfg, sampler, scheduler) and the prompt: one
  calibration prompt connected as the positive. A calibration is a draw, so there are five, one per
  even digit ("a handwritten digit zero", "two", ... "eight"): each draw's mean PSNR, the mean over
  draws and the worst sample of all; each draw also against **its own schedules with the best single
  rule** (the calibration's schedules, OTCache Apply's ``reuse`` set to one rule for all segments),
  and what it runs at each budget (the schedule and rule its validation chose);
* **even**: evenly spaced computed steps (= the shipped ``generic`` preset, checked at every budget)
  with each single rule; "best single rule" is the best of them at each budget, on these very samples
  (an advantage no calibration has);
* **TaylorSeer Lite**, the real node of philipy1219/ComfyUI-TaylorSeer (at 94dc45d, from
  ``$OTCACHE_PEER_PACKS/philipy1219+ComfyUI-TaylorSeer``; skipped with the reason printed without it),
  order 2 and 1, at its natural counts (3 warm-up steps, then every 3-6: 12, 9, 8, 7 of 30; the count
  checked on the model's final layer);
* **fixed interval**, kept as a labelled extra row: our own re-implementation of the same idea: the
  first W = 3 steps computed, then one every N steps, the model output extrapolated from the last
  computed outputs (order 1: ``linear``, order 2: ``quadratic``), at its natural counts
  W + ceil((T - W) / N);
* with ``--extended``: the default pipeline in ``blocks`` mode, five prompts per calibration (three
  draws), and **easycache**, ComfyUI's own EasyCache node, its ``reuse_threshold`` bisected until the
  run computes B steps. Two faults of EasyCache at ComfyUI 0.3.64 would make it lose for reasons that
  are not its method (COMFYUI_NOTES.md): it adds its cached difference *in place* to the model input,
  which for an fp32 model is the sampler's own state, and it adds every stream's difference to every
  row of a batched cond/uncond call. It gets a fair run here: an outer ``DIFFUSION_MODEL`` wrapper hands
  it one stream per call (the rows of one cond uuid, as a copy), which is what upstream's later fix
  amounts to. Its own defaults always compute the first 15 % and the last 5 % of the run; budgets that
  cannot be reached with them are bisected with 0 % / 100 % instead. The wrapper's own effect is
  measured: EasyCache at threshold 0 through it must reproduce the full-compute output.

One torch thread is the default: with two, every small operation waited for a core another process
held, and a run took six times as long.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

BUDGETS = (20, 16, 14, 12, 10, 9, 8, 7, 6)
EVAL_SEEDS = (1000, 1001)
DEVELOPMENT_SEEDS = (500, 501)
"""Seeds of the development samples (even-digit prompts), on which the defaults were chosen."""
RULES = ("hold", "linear", "quadratic", "horizon2")
DRAW_DIGITS = (0, 2, 4, 6, 8)
"""The connected positive of the calibration draws: a handwritten digit zero, two, four, six, eight."""
WARMUP = 3
"""Warm-up steps of the fixed-interval forecaster (always computed)."""
INTERVALS = (3, 4, 5, 6, 7, 9)
"""Its intervals: 12, 10, 9, 8, 7 and 6 computed steps of 30."""



@dataclass
class Row:
    """One method's PSNR per budget: mean and worst sample over the evaluation set."""

    method: str
    mode: str
    rule: str
    mean: dict[int, float] = field(default_factory=dict)
    worst: dict[int, float] = field(default_factory=dict)
    note: str = ""


class Bench:
    """The evaluation set, its full-compute reference and the scoring of a patched model."""

    def __init__(self, pack: Any, df: Any, testbed: Any, prompts: list[str], seeds: tuple[int, ...], steps: int) -> None:
        import comfy.sample
        import torch

        self.pack, self.df, self.testbed, self.steps = pack, df, testbed, steps
        self.size = len(prompts) * len(seeds)
        conds = [testbed.positive(p)[0] for p in prompts]
        rows = [(c, s) for c in conds for s in seeds]  # prompt-major
        context = torch.cat([c[0] for c, _ in rows])
        pooled = torch.cat([c[1]["pooled_output"] for c, _ in rows])
        settings = {k: v for k, v in conds[0][1].items() if not torch.is_tensor(v)}  # the guidance, if any
        self.positive = [[context, {"pooled_output": pooled, **settings}]]
        self.negative = testbed.negative()
        self.latent = df.empty_latent(self.size)
        self.noise = torch.cat([comfy.sample.prepare_noise(df.empty_latent(1), s) for _, s in rows])
        self.reports: list[Any] = []
        self.pack.nodes.cache_hooks.add_report_listener(self.reports.append)
        self.reference = self.sample(testbed.patcher)

    def sample(self, model: Any) -> Any:
        """Decoded digits in [0, 1] of one run of the whole evaluation set through ``comfy.sample.sample``."""
        import comfy.sample

        out = comfy.sample.sample(model, self.noise, self.steps, self.testbed.cfg, self.df.SAMPLER, self.df.SCHEDULER,
                                  self.positive, self.negative, self.latent, seed=0, disable_pbar=True)
        return ((self.df.decode_latent(out) + 1.0) / 2.0).clamp(0.0, 1.0)

    def psnrs(self, images: Any) -> list[float]:
        """PSNR of each sample against its full-compute output (capped at 100 dB)."""
        from_core = self.pack.otcache_core.metrics.psnr
        return [from_core(images[i : i + 1], self.reference[i : i + 1]) for i in range(self.size)]

    def score_otcache(self, model: Any, plan: Any, mode: str, rule: str, budget: int,
                      check_forecasts: bool = False) -> list[float]:
        """OTCache Apply with ``plan`` in ``mode`` with ``rule`` (its ``reuse`` input; ``check_forecasts``: the
        run-time forecast check, an option of ``apply_otcache`` only), sample, check that exactly ``budget``
        steps were computed, score."""
        if check_forecasts:
            patched = self.pack.nodes.apply_node.apply_otcache(model, plan, mode, reuse=rule, check_forecasts=True)
        else:
            (patched,) = self.pack.nodes.OTCacheApply().apply(model, plan, mode, 0.0, 1.0, rule)
        before = len(self.reports)
        images = self.sample(patched)
        computed = len(self.reports[-1].computed) if len(self.reports) > before else None
        if computed != budget:
            raise RuntimeError(f"{plan.label}: the run computed {computed} steps, expected {budget}")
        return self.psnrs(images)


def evaluation_set(df: Any, development: bool, quick: bool = False) -> tuple[list[str], tuple[int, ...], str]:
    """``(prompts, seeds, name)`` of the samples a benchmark scores on: the held-out ones (odd-digit prompts,
    :data:`EVAL_SEEDS`), or with ``development`` the ones defaults are decided on (even-digit prompts,
    :data:`DEVELOPMENT_SEEDS`); ``quick``: every fifth prompt and one seed."""
    if development:
        prompts = [df.prompt(d, t) for d in range(0, 10, 2) for t in range(len(df.TEMPLATES))]
        seeds, name = DEVELOPMENT_SEEDS, "development"
    else:
        prompts, seeds, name = df.evaluation_prompts(), EVAL_SEEDS, "held-out"
    return (prompts[::5], seeds[:1], name) if quick else (prompts, seeds, name)


def open_bench(testbed_name: str, development: bool, threads: int, quick: bool = False) -> tuple[Any, Any, Bench, str]:
    """``(pack, digit_flux module, bench, samples' name)``: ComfyUI set up, the DigitFlux testbed
    (``digitflux`` or ``distilled``) loaded and its evaluation set sampled at full compute."""
    pack, df = setup(threads)
    testbed = df.load(variant="distilled" if testbed_name == "distilled" else "teacher")
    prompts, seeds, where = evaluation_set(df, development, quick)
    return pack, df, Bench(pack, df, testbed, prompts, seeds, df.STEPS), where


def summarize(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), min(values)


# --------------------------------------------------------------------------------------------------
# EasyCache, given a fair run
# --------------------------------------------------------------------------------------------------


class OneStreamPerCall:
    """``DIFFUSION_MODEL`` wrapper outside EasyCache: one call per cond uuid, on a copy of its rows."""

    def __call__(self, executor, *args, **kwargs):
        import torch

        x, options = args[0], args[-1]
        uuids = options.get("uuids") or [None]
        n = x.shape[0] // len(uuids)
        outputs = []
        for i, uuid in enumerate(uuids):
            rows = slice(i * n, (i + 1) * n)

            def take(value):
                if torch.is_tensor(value) and value.ndim and value.shape[0] == x.shape[0]:
                    return value[rows].clone()
                return value

            own = {**options, "uuids": [uuid]}
            if "cond_or_uncond" in options:
                own["cond_or_uncond"] = [options["cond_or_uncond"][i]]
            outputs.append(executor(*[take(a) for a in args[:-1]], own, **{k: take(v) for k, v in kwargs.items()}))
        return torch.cat(outputs)


class ComputedSteps:
    """``DIFFUSION_MODEL`` wrapper inside EasyCache: the distinct sigmas at which the model really ran."""

    def __init__(self) -> None:
        self.sigmas: set[float] = set()

    def __call__(self, executor, *args, **kwargs):
        self.sigmas.add(round(float(args[-1]["sigmas"].reshape(-1)[0]), 7))
        return executor(*args, **kwargs)


def easycache_model(model: Any, threshold: float, start: float, end: float) -> tuple[Any, ComputedSteps]:
    import comfy.patcher_extension as pe
    from comfy_extras.nodes_easycache import EasyCacheNode

    outer = model.clone()
    outer.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_one_stream_per_call", OneStreamPerCall())
    patched = EasyCacheNode.execute(outer, threshold, start, end, False).result[0]
    counter = ComputedSteps()
    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_computed_steps", counter)
    return patched, counter


class ThresholdSearch:
    """A peer's threshold bisected (geometrically) to a computed-step count; every probe is kept, so
    later budgets start from the bracket earlier probes already found.

    ``build(threshold)`` returns the patched model and a function that, called after the run, says how
    many steps it computed; ``low`` and ``high`` bracket the node's threshold range (more computed steps
    at ``low``); ``describe`` names the other settings in the row's note."""

    def __init__(self, bench: Bench, build: Callable[[float], tuple[Any, Callable[[], int]]], describe: str,
                 low: float = 1e-4, high: float = 3.0) -> None:
        self.bench, self.build, self.describe, self.low, self.high = bench, build, describe, low, high
        self.probes: dict[float, tuple[int, Any]] = {}

    def probe(self, threshold: float) -> int:
        if threshold not in self.probes:
            model, computed = self.build(threshold)
            images = self.bench.sample(model)
            self.probes[threshold] = (computed(), images)
        return self.probes[threshold][0]

    def at(self, budget: int, tries: int = 12) -> tuple[list[float], str] | None:
        """PSNRs of a run computing exactly ``budget`` steps, and its threshold; ``None`` if not found."""
        for _ in range(tries):
            hits = [t for t, (n, _) in self.probes.items() if n == budget]
            if hits:
                t = hits[0]
                return self.bench.psnrs(self.probes[t][1]), f"threshold {t:.4g} ({self.describe})"
            if all(n > budget for n, _ in self.probes.values()) and self.probe(self.high) > budget:
                return None  # not even the node's largest threshold skips enough
            lo = max([t for t, (n, _) in self.probes.items() if n > budget], default=self.low)
            hi = min([t for t, (n, _) in self.probes.items() if n < budget], default=self.high)
            if hi <= lo or (hi in self.probes and lo in self.probes and hi / lo < 1.0005):
                return None
            self.probe(math.sqrt(lo * hi))
        return None


def easycache_search(bench: Bench, start: float, end: float) -> ThresholdSearch:
    """ComfyUI's EasyCache at ``start`` / ``end`` percent, its threshold up to the node's maximum 3."""

    def build(threshold: float) -> tuple[Any, Callable[[], int]]:
        model, counter = easycache_model(bench.testbed.patcher, threshold, start, end)
        return model, lambda: len(counter.sigmas)

    return ThresholdSearch(bench, build, f"start {start:.0%}, end {end:.0%}")


def easycache_row(bench: Bench, budgets: tuple[int, ...]) -> Row:
    """EasyCache at its own start / end percent (15 %, 95 %); where that cannot reach a budget, at 0 / 100 %."""
    row = Row("easycache (ComfyUI node)", "model", "its own")
    searches = [easycache_search(bench, 0.15, 0.95), easycache_search(bench, 0.0, 1.0)]
    notes = []
    for budget in budgets:
        found = searches[0].at(budget) or searches[1].at(budget)
        if not found:
            notes.append(f"B={budget}: not reached")
            continue
        values, how = found
        row.mean[budget], row.worst[budget] = summarize(values)
        notes.append(f"B={budget}: {how}")
    row.note = "; ".join(notes)
    return row


# --------------------------------------------------------------------------------------------------
# TaylorSeer Lite, the real node
# --------------------------------------------------------------------------------------------------

TAYLORSEER_PACK = "philipy1219+ComfyUI-TaylorSeer"
TAYLORSEER_INTERVALS = (3, 4, 5, 6)
"""Its ``fresh_threshold``: 12, 9, 8 and 7 computed steps of 30 (3 warm-up steps, then every N-th)."""


def taylorseer_steps(steps: int, interval: int, warmup: int = WARMUP) -> list[int]:
    """The steps TaylorSeer Lite computes: the warm-up, then every ``interval``-th step after it."""
    return sorted(set(range(warmup)) | set(range(warmup - 1 + interval, steps, interval)))


class FinalLayerCalls:
    """Counts calls of the model's final layer: TaylorSeer Lite runs it only at the steps it computes."""

    def __init__(self, module: Any) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_: Any) -> None:
        self.calls += 1


def load_peer_node(pack: str, node: str, commit: str) -> tuple[Any, str]:
    """The node class ``node`` of the pack ``$OTCACHE_PEER_PACKS/<pack>`` (``owner+repo``), or the reason
    it is not there."""
    from comfyui.conftest import PEER_PACKS_ENV, load_pack

    root = os.environ.get(PEER_PACKS_ENV, "").strip()
    folder = Path(root) / pack
    if not root or not (folder / "__init__.py").is_file():
        return None, f"{PEER_PACKS_ENV}/{pack} not found (fetch github:{pack.replace('+', '/')} at {commit})"
    try:
        return load_pack(folder, "peer_" + pack.split("+")[-1].replace("-", "_").lower()).NODE_CLASS_MAPPINGS[node], ""
    except Exception as exc:  # e.g. a head that needs a newer ComfyUI than 0.3.64, or a missing dependency
        return None, f"{pack} does not load on this ComfyUI: {type(exc).__name__}: {exc}"


def load_taylorseer() -> tuple[Any, str]:
    """philipy1219/ComfyUI-TaylorSeer's ``TaylorSeerLite`` class, or the reason it is not there."""
    return load_peer_node(TAYLORSEER_PACK, "TaylorSeerLite", "94dc45d")


def taylorseer_row(bench: Bench, node: Any, order: int, model_type: str = "flux", head: str = "final_layer") -> Row:
    """The real TaylorSeer Lite node (first_enhance 3, last_enhance at its default 50) at its natural
    computed counts; the count is checked on the model's output layer ``head``."""
    row = Row(f"TaylorSeer Lite (real node, order {order}, {model_type})", "its own", f"order {order}")
    counter = FinalLayerCalls(getattr(bench.testbed.patcher.model.diffusion_model, head))
    try:
        for interval in TAYLORSEER_INTERVALS:
            (model,) = node().apply_taylorseer_lite(bench.testbed.patcher, model_type, interval, order, WARMUP, 50)
            counter.calls = 0
            images = bench.sample(model)
            budget = len(taylorseer_steps(bench.steps, interval))
            if counter.calls not in (budget, 2 * budget):  # cond and uncond: one batched call, or two
                raise RuntimeError(f"TaylorSeer interval {interval}: {counter.calls} computed steps, expected {budget}")
            row.mean[budget], row.worst[budget] = summarize(bench.psnrs(images))
            row.note += f"B={budget}: interval {interval}; "
    finally:
        counter.handle.remove()
    return row


# --------------------------------------------------------------------------------------------------
# OTCache
# --------------------------------------------------------------------------------------------------


def node_defaults(node_class: Any) -> dict[str, Any]:
    """The default value of every widget input of a node (what a freshly added node holds)."""
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in (node_class.INPUT_TYPES().get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in options:
                defaults[name] = options["default"]
            elif isinstance(spec[0], (list, tuple)) and spec[0]:
                defaults[name] = spec[0][0]
    return defaults


def calibrate(bench: Bench, folder: Path, name: str, prompts: list[str], **overrides: Any) -> tuple[Any, float]:
    """OTCache Calibrate at its defaults (plus ``overrides``) on ``prompts``: the first is the connected
    positive, the others go to the ``prompts`` input. Returns the record and its wall time."""
    df, nodes = bench.df, bench.pack.nodes
    inputs = node_defaults(nodes.OTCacheCalibrate)
    inputs.update(steps=bench.steps, cfg=bench.testbed.cfg, sampler_name=df.SAMPLER, scheduler=df.SCHEDULER, name=name,
                  storage="memory", prompts="\n".join(prompts[1:]), **overrides)
    inputs["rules"] = nodes.calibrate_node.parse_rule_list(inputs.pop("reuse_rules"))  # as the node parses it
    start = time.perf_counter()
    record, _, _, _ = nodes.calibrate_node.run_calibration(
        bench.testbed.patcher, bench.testbed.positive(prompts[0]), bench.negative, {"samples": df.empty_latent(1)},
        clip=bench.testbed.clip, folder=folder, **{k: v for k, v in inputs.items() if k != "latent_image"})
    return record, time.perf_counter() - start


def plan_from(bench: Bench, calibration: Any, budget: int) -> Any:
    """OTCache Schedule at its defaults with ``calibration`` connected and ``budget`` of ``steps``."""
    schedule_node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(schedule_node)
    inputs.update(steps=bench.steps, budget=budget, budget_as="computed steps")
    return schedule_node().make(calibration=calibration, **inputs)[0]


def otcache_row(bench: Bench, label: str, mode: str, rule: str, plan_for: Callable[[int], Any],
                budgets: tuple[int, ...]) -> Row:
    row = Row(label, mode, rule)
    for budget in budgets:
        row.mean[budget], row.worst[budget] = summarize(
            bench.score_otcache(bench.testbed.patcher, plan_for(budget), mode, rule, budget))
    return row


def draws_row(bench: Bench, label: str, mode: str, records: list[Any], budgets: tuple[int, ...]) -> Row:
    """Several calibrations of one setting (other prompts): the mean of their mean PSNRs, the worst
    sample of all, and each calibration's mean in the note."""
    rows = [otcache_row(bench, label, mode, "calibrated", lambda b, r=r: plan_from(bench, r, b), budgets)
            for r in records]
    return mean_of(rows, f"{label}, mean of {len(rows)}", mode, "calibrated", budgets)


def mean_of(rows: list[Row], label: str, mode: str, rule: str, budgets: tuple[int, ...]) -> Row:
    """The mean of the rows' mean PSNRs and the worst of their worst samples, each row's mean in the note."""
    row = Row(label, mode, rule)
    for b in budgets:
        row.mean[b] = statistics.fmean(r.mean[b] for r in rows)
        row.worst[b] = min(r.worst[b] for r in rows)
    row.note = "per calibration: " + "; ".join(f"B={b} " + " / ".join(f"{r.mean[b]:.2f}" for r in rows)
                                              for b in budgets)
    return row


def best_single_rule(bench: Bench, label: str, plan_for: Callable[[int], Any], budgets: tuple[int, ...],
                     rules: tuple[str, ...] = RULES) -> Row:
    """Schedules run with one rule for every segment, the best rule at each budget (on these samples)."""
    rows = {rule: otcache_row(bench, label, "model", rule, plan_for, budgets) for rule in rules}
    row = Row(f"{label}, best single rule", "model", "best of " + "/".join(rules))
    for b in budgets:
        best = max(rows.values(), key=lambda r: r.mean[b])
        row.mean[b], row.worst[b] = best.mean[b], best.worst[b]
        row.note += f"B={b} {best.rule}; "
    return row


def fixed_interval_schedule(core: Any, steps: int, interval: int, warmup: int = WARMUP) -> Any:
    """The first ``warmup`` steps, then one computed step every ``interval`` steps."""
    return core.schedule.Schedule.from_steps(sorted(set(range(warmup)) | set(range(warmup, steps, interval))), steps)


def fixed_interval_row(bench: Bench, order: int) -> Row:
    """The fixed-interval forecaster at its natural counts, the model output extrapolated at ``order``."""
    core = bench.pack.otcache_core
    rule = {1: "linear", 2: "quadratic"}[order]
    row = Row(f"fixed interval (warm-up {WARMUP}, order {order})", "model", rule)
    for interval in INTERVALS:
        schedule = fixed_interval_schedule(core, bench.steps, interval)
        plan = core.plan.SchedulePlan.from_schedule(schedule, label=f"every {interval}")
        row.mean[schedule.budget], row.worst[schedule.budget] = summarize(
            bench.score_otcache(bench.testbed.patcher, plan, "model", rule, schedule.budget))
        row.note += f"B={schedule.budget}: every {interval} steps; "
    return row


def margins(ours: Row, other: Row, budgets: tuple[int, ...]) -> str:
    """``B=14 +1.23 / -0.40`` (mean / worst sample) at every budget both rows have."""
    return ", ".join(f"B={b} {ours.mean[b] - other.mean[b]:+.2f} / {ours.worst[b] - other.worst[b]:+.2f}"
                     for b in budgets if b in ours.mean and b in other.mean)


def what_runs(bench: Bench, calibration: Any, budgets: tuple[int, ...]) -> str:
    """What a calibration runs at each budget: the schedule its validation chose and the rule."""
    def one(budget: int) -> str:
        resolved = plan_from(bench, calibration, budget).resolve(bench.steps)
        schedule = "even" if resolved.prediction.regime == bench.pack.otcache_core.calibration.UNIFORM else "calibrated"
        return f"B={budget} {schedule} + {resolved.rules[0] if resolved.rules else 'none'}"
    return ", ".join(one(b) for b in budgets)


def even_plan(bench: Bench, budget: int) -> Any:
    core = bench.pack.otcache_core
    schedule = core.warp.sample_warp(core.warp.identity_warp(), bench.steps, budget)
    return core.plan.SchedulePlan.from_schedule(schedule, label=f"even {budget}")


def preset_plan(bench: Bench, preset: str, budget: int, steps: int | None = None) -> Any:
    """OTCache Schedule at its defaults with a shipped ``preset`` and ``budget`` of ``steps`` (the bench's)."""
    schedule_node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(schedule_node)
    inputs.update(preset=preset, steps=steps or bench.steps, budget=budget, budget_as="computed steps")
    return schedule_node().make(**inputs)[0]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], budgets: tuple[int, ...], steps: int) -> None:
    head = " | ".join(f"B={b}" for b in budgets)
    print(f"\nPSNR (dB) against full compute, held-out prompts, T = {steps}: mean / worst sample\n")
    print(f"| method | mode | reuse | {head} |")
    print("|---|---|---|" + "---:|" * len(budgets))
    for row in rows:
        cells = " | ".join(f"{row.mean[b]:.2f} / {row.worst[b]:.2f}" if b in row.mean else "-" for b in budgets)
        print(f"| {row.method} | {row.mode} | {row.rule} | {cells} |")
    for row in rows:
        if row.note:
            print(f"  {row.method}: {row.note}")


def setup(threads: int) -> tuple[Any, Any]:
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(threads)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    from comfyui import digit_flux

    return pack, digit_flux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", choices=("digitflux", "distilled"), default="digitflux")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on a shared machine (a second thread waits on a busy core)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--quick", action="store_true", help="4 evaluation prompts, one seed, two draws (a smoke run)")
    parser.add_argument("--extended", action="store_true",
                        help="also blocks mode, five prompts per calibration and ComfyUI's EasyCache")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--development", action="store_true",
                        help="evaluate on the development samples (even-digit prompts, seeds 500/501), where "
                             "defaults are decided, instead of the held-out ones")
    parser.add_argument("--reuse-rules", help="Calibrate's reuse_rules for the draws (default: the node's)")
    parser.add_argument("--vae", action="store_true", help="connect the testbed's VAE to Calibrate, as the "
                        "shipped calibration workflow does (objective on decoded digits, PSNR of images)")
    args = parser.parse_args()
    started = time.perf_counter()
    pack, df, bench, where = open_bench(args.testbed, args.development, args.threads, args.quick)
    budgets, testbed = tuple(args.budgets), bench.testbed
    print(f"{args.testbed}: cfg {testbed.cfg}, guidance {testbed.guidance}; evaluation: {where} samples, "
          f"{bench.size} of them; full-compute reference in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    rows: list[Row] = []
    timings: dict[str, float] = {}
    digits = DRAW_DIGITS[:2] if args.quick else DRAW_DIGITS
    lines: list[str] = []

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def calibration(key: str, prompts: list[str], **overrides: Any) -> Any:
            record, timings[key] = calibrate(bench, folder, key, prompts, **overrides)
            return record

        settings = {**({"reuse_rules": args.reuse_rules} if args.reuse_rules else {}),
                    **({"vae": df.DigitVAE()} if args.vae else {})}
        records = [calibration(f"draw {d}", [df.prompt(d, 0)], **settings) for d in digits]
        draws = [otcache_row(bench, f"default pipeline, draw '{df.prompt(d, 0)}'", "model", "calibrated",
                             lambda b, r=r: plan_from(bench, r, b), budgets) for d, r in zip(digits, records)]
        rows.extend(draws)
        rows.append(mean_of(draws, f"default pipeline, mean of {len(draws)} draws", "model", "calibrated", budgets))
        even = best_single_rule(bench, "even", lambda b: even_plan(bench, b), budgets)
        for rule in RULES:
            rows.append(otcache_row(bench, "even", "model", rule, lambda b: even_plan(bench, b), budgets))
        rows.append(even)
        for d, record, draw in zip(digits, records, draws):
            own = best_single_rule(bench, f"draw '{df.prompt(d, 0)}' schedules", lambda b, r=record: plan_from(
                bench, r, b), budgets, RULES[1:])
            lines.append(f"draw '{df.prompt(d, 0)}' runs {what_runs(bench, record, budgets)}")
            lines.append(f"    over even + best single rule {margins(draw, even, budgets)}")
            lines.append(f"    over its own schedules with the best single rule {margins(draw, own, budgets)}"
                         f" (best: {own.note.strip().rstrip(';')})")
        lines.append(f"mean of draws over even + best single rule: {margins(rows[len(draws)], even, budgets)}")
        node, missing = load_taylorseer()
        if node is None:
            print(f"TaylorSeer Lite not measured: {missing}", flush=True)
        for order in (2, 1) if node is not None else ():
            peer = taylorseer_row(bench, node, order)
            rows.append(peer)
            lines.append(f"mean of draws over {peer.method}: {margins(rows[len(draws)], peer, budgets)}")
        for order in (1, 2):
            forecaster = fixed_interval_row(bench, order)
            forecaster.method += ", our re-implementation"
            rows.append(forecaster)
            lines.append(f"mean of draws over {forecaster.method}: {margins(rows[len(draws)], forecaster, budgets)}")
        print(f"default pipeline and baselines done at {time.perf_counter() - started:.0f} s", flush=True)
        if args.extended:
            rows.append(otcache_row(bench, "default pipeline, draw 'zero', blocks mode", "blocks", "calibrated",
                                    lambda b: plan_from(bench, calibration("blocks", [df.prompt(0, 0)], mode="blocks"),
                                                        b), budgets))
            several = [[df.prompt(d, (k + n) % len(df.TEMPLATES)) for k, d in enumerate(range(0, 10, 2))]
                       for n in range(3)]
            rows.append(draws_row(bench, "5 prompts per calibration", "model",
                                  [calibration(f"prompts {n}", p) for n, p in enumerate(several)], budgets))
    same = all(preset_plan(bench, "generic", b).resolve(bench.steps).schedule
               == even_plan(bench, b).resolve(bench.steps).schedule for b in budgets)
    print(f"generic preset: {'the same schedules as even spacing' if same else 'SCHEDULES DIFFER FROM EVEN'} "
          f"at every budget (its rows are the even rows)", flush=True)
    if args.extended and not args.quick:
        model, _ = easycache_model(testbed.patcher, 0.0, 0.15, 0.95)
        exact = summarize(bench.psnrs(bench.sample(model)))
        rows.append(easycache_row(bench, budgets))
        rows[-1].note += f"; threshold 0 through the fair-run wrapper: {exact[0]:.1f} dB mean against full compute"
    print_table(rows, tuple(sorted({b for r in rows for b in r.mean}, reverse=True)), df.STEPS)
    print("\n" + "\n".join(lines))
    costs = [sum(r.cost["model_calls"].values()) for r in records]
    print(f"\ncalibration model calls per draw: {costs}; wall time: " + ", ".join(
        f"{k} {v:.0f} s" for k, v in timings.items()))
    wall = time.perf_counter() - started
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min) on {args.threads} thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"testbed": args.testbed, "rows": [row.__dict__ for row in rows],
                                               "margins": lines, "wall_seconds": wall, "samples": bench.size},
                                              indent=1))


if __name__ == "__main__":
    main()
