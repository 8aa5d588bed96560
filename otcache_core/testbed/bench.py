"""``python -m otcache_core bench``: schedule methods side by side on the testbed, at equal compute.

One run, one model, one set of held-out evaluation samples (other seeds and classes than the
calibration samples), the same budgets ``B`` (computed steps of ``T``) for every method:

* **otcache**: one calibration (edge errors, leximax reference at ``B_ref ~ T/2``, Optuna anchor at
  ``B_anchor ~ T/6``), every budget by quantile interpolation; variants: ``lambda`` linear in ``1/B``
  (``otcache-inverse``), a warm-up prefix (``otcache-warmupP``), the reference from ``global`` or
  ``drift`` edge errors with the same anchor (``otcache-global``, ``otcache-drift``), and reuse of the
  whole model output instead of the block-stack residual (``otcache-model``, mode ``model``; the same
  schedules unless ``calibrate_model_mode``);
* **lemica**: the leximax graph path solved at each budget from the same edge errors (and from
  ``global`` errors, LeMiCa's own strength: ``lemica-global``, and from ``drift``: ``lemica-drift``;
  ``lemica-model``: the same paths with ``model`` reuse, next to ``otcache-model``);
* **corrected reuse** (:mod:`otcache_core.reuse`): ``otcache-corrected`` / ``otcache-model-corrected``,
  one calibration per reuse mode that measures every edge under each candidate rule, every segment
  reusing with the rule its edge did best with; ``lemica-corrected`` / ``lemica-model-corrected``, the
  graph path at each budget from the same best-rule edge errors with the same per-edge rules (the
  MeanCache-style baseline: graph-path steps, a correction chosen per segment); and evenly spaced
  steps with plain linear extrapolation everywhere (``uniform-linear`` / ``uniform-model-linear``);
* **uniform** spacing and the published-style **hand** schedule
  (:func:`otcache_core.testbed.baselines.hand_schedule`);
* runtime-adaptive **teacache**, **magcache**, **easycache** (:mod:`otcache_core.testbed.baselines`), their
  thresholds bisected on the evaluation batch until they compute exactly ``B`` steps.

Fidelity is PSNR (mean over images and the worst image) and SSIM of decoded images and relative L1
of latents against full compute; speedups are ideal (``T/B``) and measured (median wall time of full
runs over cached runs, same process).
This is a benchmark, not a test: the numbers are what they are.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch

from ..calibrate import (
    DEFAULT_RULES,
    CalibrationSettings,
    calibrate,
    default_budgets,
    edge_errors_drift,
    edge_errors_global,
    edge_errors_rollout,
    estimated_edge_calls,
)
from ..calibration import Calibration, ScheduleRecord, matrix_to_json
from ..graph import solve_reference
from ..jsonfile import save_json
from ..plan import BudgetRule, SchedulePlan
from ..reuse import HOLD_RULE, HORIZON2_RULE, LINEAR_RULE, ReuseRule, parse_rule, rules_summary, step_rules
from ..schedule import Schedule
from ..warp import identity_warp, sample_warp
from .baselines import hand_schedule, make_policies, tune_threshold
from .task import (
    ProgressBar,
    SpeedMeter,
    Task,
    TaskConfig,
    anchor_objective,
    fidelity,
    load_task,
    timed,
)

BENCH_FORMAT = "otcache.bench"
BENCH_VERSION = 1


@dataclass(frozen=True)
class BenchSettings:
    """Sizes of one benchmark run."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig(steps=50, calibration_samples=16, evaluation_samples=32))
    budgets: tuple[int, ...] = (25, 17, 13, 10, 8)
    trials: int = 40
    anchor_share: float = 0.5
    """The anchor objective averages the worst this share of calibration images (1: all)."""
    max_skip: int = 10
    strength: str = "rollout"
    """Edge strength of the main OTCache calibration (and of ``lemica``)."""
    other_strengths: tuple[str, ...] = ("global", "drift")
    global_samples: int | None = 8
    """Calibration samples for the ``global`` edge errors (``None``: all): ~K T^2 / 2 calls each, so the
    first 8 of the 16 keep it to minutes on two CPU cores."""
    warmup: int = 3
    model_mode: bool = True
    """Also run OTCache with ``model`` reuse (the whole model output change)."""
    calibrate_model_mode: bool = False
    """``True``: a separate calibration in ``model`` mode; ``False``: the ``blocks`` calibration's schedules."""
    rules: tuple[ReuseRule, ...] = DEFAULT_RULES
    """Candidate reuse rules of the corrected calibrations (one per reuse mode); empty: none."""
    repeats: int = 3
    tune_evaluations: int = 30


def bench_settings(quick: bool) -> BenchSettings:
    """The full benchmark (T = 50) or a smoke run (T = 20, few samples and trials)."""
    if quick:
        return BenchSettings(
            task=TaskConfig(steps=20, calibration_samples=2, evaluation_samples=4),
            budgets=(10, 7, 5, 4), trials=8, global_samples=2, repeats=1, tune_evaluations=20,
        )
    return BenchSettings()


@dataclass
class BenchRow:
    """One method at one budget."""

    method: str
    budget: int
    psnr: float
    ssim: float
    rel_l1: float
    speedup_ideal: float
    speedup_measured: float
    mode: str = "blocks"
    compute_steps: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    psnr_worst: float = float("nan")
    """PSNR of the worst evaluation image."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "budget": self.budget, "psnr": _finite(self.psnr),
            "psnr_worst": _finite(self.psnr_worst), "ssim": self.ssim,
            "rel_l1": self.rel_l1, "speedup_ideal": self.speedup_ideal, "speedup_measured": self.speedup_measured,
            "mode": self.mode, "compute_steps": list(self.compute_steps), **self.extra,
        }


@dataclass
class BenchResult:
    steps: int
    rows: list[BenchRow]
    calibration_cost: dict[str, Any]
    document: dict[str, Any]
    seconds: float


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


# -- calibrations ---------------------------------------------------------------------------------------


@dataclass
class Calibrations:
    """Everything the static methods are built from."""

    main: Calibration
    errors: dict[str, np.ndarray]
    """Edge-error matrix per strength."""
    references: dict[str, Schedule]
    """Leximax reference at ``B_ref`` per strength."""
    model_mode: Calibration | None
    cost: dict[str, Any]
    corrected: dict[str, tuple[Calibration, np.ndarray]] = field(default_factory=dict)
    """Reuse mode -> the calibration that measured the reuse rules, and its best-rule edge errors."""


def _calibrate_all(task: Task, settings: BenchSettings, seed: int, bar: ProgressBar) -> Calibrations:
    T = task.steps
    ref_budget, anchor_budget = default_budgets(T)
    distance, objective_name, why = anchor_objective(settings.anchor_share)
    if why:
        bar.message(f"note: {why}")
    search, validation = task.calibration.split()

    def run(mode: str, rules: tuple[ReuseRule, ...] = (HOLD_RULE,)) -> tuple[Calibration, np.ndarray]:
        bar.message(f"calibration ({mode} reuse, {settings.strength} edges, rules {', '.join(map(str, rules))}, "
                    f"{len(search)} search + {0 if validation is None else len(validation)} validation samples)")
        cal_settings = CalibrationSettings(ref_budget, anchor_budget, strength=settings.strength,
                                           max_skip=settings.max_skip, trials=settings.trials, seed=seed, rules=rules)
        outcome = calibrate(task.sampler(search, mode), cal_settings, distance=distance,
                            objective_name=objective_name, name=f"testbed-T{T}-{mode}", model=task.model_info,
                            sampler_info=task.sampler_info(mode), progress=bar, log=bar.message,
                            validation=None if validation is None else task.sampler(validation, mode))
        return outcome.calibration, outcome.errors

    main, main_errors = run("blocks")
    cost: dict[str, Any] = {"otcache": _cost_entry(main, len(task.calibration), objective_name)}
    errors = {settings.strength: main_errors}
    references = {settings.strength: main.reference.schedule}
    edge_cost = {settings.strength: {"samples": len(task.calibration), "model_calls": main.cost["model_calls"]["edges"],
                                     "seconds": main.cost["seconds"]["edges"]}}
    for strength in settings.other_strengths:
        samples = task.calibration
        if strength == "global" and settings.global_samples:
            samples = samples.subset(settings.global_samples)
        sampler = task.sampler(samples)
        bar.message(f"{strength} edge errors on {len(samples)} samples: about "
                    f"{estimated_edge_calls(strength, T, settings.max_skip)} model calls (hold)")
        (full, full_s) = timed(lambda: sampler.run([True] * T, record=True))
        start = time.perf_counter()
        if strength == "global":
            w, calls = edge_errors_global(sampler, full, settings.max_skip, bar)
        elif strength == "rollout":
            w, calls = edge_errors_rollout(sampler, full, settings.max_skip, bar)
        else:
            w, calls = edge_errors_drift(sampler, full, settings.max_skip)
        seconds = time.perf_counter() - start
        errors[strength] = w
        references[strength] = solve_reference(w, T, ref_budget, max_skip=settings.max_skip).schedule
        edge_cost[strength] = {"samples": len(samples), "model_calls": calls, "seconds": round(seconds, 3),
                               "trajectory_calls": full.model_calls, "trajectory_seconds": round(full_s, 3)}
        bar.message(f"{strength}: reference {list(references[strength].compute_steps)} "
                    f"({calls} calls, {seconds:.1f} s)")
    cost["edges"] = edge_cost
    model_mode = None
    if settings.model_mode and settings.calibrate_model_mode:
        model_mode, _ = run("model")
        cost["otcache-model"] = _cost_entry(model_mode, len(task.calibration), objective_name)
    corrected = {}
    if settings.rules:
        for mode in ("blocks", "model") if settings.model_mode else ("blocks",):
            corrected[mode] = run(mode, tuple(settings.rules))
            cost[CORRECTED[mode]] = _cost_entry(corrected[mode][0], len(task.calibration), objective_name)
    return Calibrations(main, errors, references, model_mode, cost, corrected)


def _cost_entry(calibration: Calibration, samples: int, objective: str) -> dict[str, Any]:
    calls, seconds = calibration.cost["model_calls"], calibration.cost["seconds"]
    return {"samples": samples, "strength": calibration.edge_errors["strength"], "objective": objective,
            "rules": calibration.edge_errors.get("candidates", ["hold"]),
            "model_calls": calls, "seconds": seconds, "total_model_calls": sum(calls.values()),
            "total_seconds": round(sum(seconds.values()), 3)}


def _with_reference(calibration: Calibration, reference: Schedule, strength: str) -> Calibration:
    """The main calibration with another reference (same anchor): isolates the edge strength."""
    return replace(calibration, reference=ScheduleRecord(reference, "leximax", None, {"strength": strength}))


# -- methods ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """What a static method runs at one budget: the schedule, its segments' reuse rules, and facts."""

    schedule: Schedule
    rules: tuple[ReuseRule, ...] | ReuseRule | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StaticMethod:
    """A method that fixes the schedule (and its segments' reuse rules) before sampling."""

    name: str
    plan: Callable[[int], Planned]
    mode: str = "blocks"
    min_budget: int = 1
    """Smallest budget the method can meet exactly (a warm-up prefix of P needs P + 1)."""


CORRECTED = {"blocks": "otcache-corrected", "model": "otcache-model-corrected"}
"""The corrected OTCache row of each reuse mode."""


def static_methods(task: Task, cals: Calibrations, settings: BenchSettings) -> list[StaticMethod]:
    T, K = task.steps, settings.max_skip

    def otcache(calibration: Calibration, **plan_kwargs: Any) -> Callable[[int], Planned]:
        def make(B: int) -> Planned:
            plan = SchedulePlan.from_calibration(calibration, BudgetRule("steps", B, T), **plan_kwargs)
            resolved = plan.resolve(T)
            p = resolved.prediction
            return Planned(p.schedule, resolved.rules, {"lambda": p.lam, "regime": p.regime,
                                                         "extrapolated": p.extrapolated,
                                                         "rules_from": resolved.rules_source})
        return make

    def graph(errors: np.ndarray, calibration: Calibration | None = None) -> Callable[[int], Planned]:
        """The graph path at each budget, reusing with the rule its edges were measured under."""
        rule = parse_rule(calibration.edge_errors.get("rule", "hold")) if calibration is not None else None

        def make(B: int) -> Planned:
            path = solve_reference(errors, T, B, max_skip=K)
            return Planned(path.schedule, rule, {"worst_segment": path.worst_segment})
        return make

    def uniform(rule: ReuseRule | None = None) -> Callable[[int], Planned]:
        return lambda B: Planned(sample_warp(identity_warp(), T, B), rule)

    main = cals.main
    methods = [
        StaticMethod("otcache", otcache(main)),
        StaticMethod("otcache-inverse", otcache(main, mapping="inverse")),
        StaticMethod(f"otcache-warmup{settings.warmup}", otcache(main, warmup=settings.warmup),
                     min_budget=settings.warmup + 2),
    ]
    for strength in settings.other_strengths:
        methods.append(StaticMethod(f"otcache-{strength}",
                                    otcache(_with_reference(main, cals.references[strength], strength))))
    if settings.model_mode:
        methods.append(StaticMethod("otcache-model", otcache(cals.model_mode or main), mode="model"))
    methods.append(StaticMethod("lemica", graph(cals.errors[settings.strength])))
    for strength in settings.other_strengths:
        methods.append(StaticMethod(f"lemica-{strength}", graph(cals.errors[strength])))
    if settings.model_mode:
        methods.append(StaticMethod("lemica-model", graph(cals.errors[settings.strength]), mode="model"))
    methods.append(StaticMethod("uniform", uniform()))
    methods.append(StaticMethod("hand", lambda B: Planned(hand_schedule(T, B))))
    for mode, (calibration, errors) in cals.corrected.items():
        suffix = "" if mode == "blocks" else "-model"
        methods += [
            StaticMethod(CORRECTED[mode], otcache(calibration), mode=mode),
            StaticMethod(f"lemica{suffix}-corrected", graph(errors, calibration), mode=mode),
            StaticMethod(f"uniform{suffix}-linear", uniform(LINEAR_RULE), mode=mode),
            StaticMethod(f"uniform{suffix}-horizon2", uniform(HORIZON2_RULE), mode=mode),
        ]
    return methods


# -- the run ----------------------------------------------------------------------------------------------


def run_bench(json_path: str | Path | None = None, quick: bool = False, seed: int = 0, *,
              task: Task | None = None, settings: BenchSettings | None = None,
              stream: TextIO | None = None, progress: ProgressBar | None = None) -> BenchResult:
    """Run every method at every budget; print the markdown table; write ``json_path`` if given."""
    started = time.perf_counter()
    out = stream if stream is not None else sys.stdout
    bar = progress or ProgressBar()
    settings = settings or bench_settings(quick)
    task = task or load_task(settings.task, seed)
    T = task.steps
    budgets = sorted({b for b in settings.budgets if 1 <= b <= T}, reverse=True)

    cals = _calibrate_all(task, settings, seed, bar)
    bar.message("adaptive baselines: calibrating from one full run of the calibration samples")
    (policies, policy_info), policy_s = timed(lambda: make_policies(task.sampler(task.calibration), task.model,
                                                                    max_skip=settings.max_skip))
    cals.cost["adaptive"] = {**{k: v for k, v in policy_info.items() if k != "calibration_calls"},
                             "samples": len(task.calibration), "model_calls": policy_info["calibration_calls"],
                             "seconds": round(policy_s, 3), "tuning_runs": {}}

    samplers = {"blocks": task.sampler(task.evaluation, "blocks")}
    if settings.model_mode:
        samplers["model"] = task.sampler(task.evaluation, "model")
    every = Schedule.all_compute(T)
    full = samplers["blocks"].sample(every)
    meter = SpeedMeter(lambda: samplers["blocks"].sample(every), repeats=settings.repeats)
    methods = static_methods(task, cals, settings)
    rows: list[BenchRow] = []
    lower: dict[str, float] = {}
    total = len(budgets) * (len(methods) + len(policies))
    done = 0
    for B in budgets:
        meter.refresh_full()  # full-compute timings next to this budget's cached ones
        for method in methods:
            done += 1
            bar("methods", done, total)
            if method.min_budget > B:
                continue
            planned = method.plan(B)
            sampler = samplers[method.mode]
            extra = dict(planned.extra)
            if isinstance(planned.rules, ReuseRule):
                extra["rules"] = planned.rules.name
            elif planned.rules is not None:  # counted over the reused steps
                per_step = step_rules(planned.schedule, planned.rules)
                extra["rules"] = rules_summary(r for r, computed in zip(per_step, planned.schedule.mask()) if not computed)
            rows.append(_evaluate(method.name, method.mode, sampler, meter, full, B, extra,
                                  lambda: sampler.sample(planned.schedule, rules=planned.rules), planned.schedule))
        for name, policy in policies.items():
            tuned = tune_threshold(samplers["blocks"], policy, B, lower=lower.get(name),
                                   max_evaluations=settings.tune_evaluations)
            lower[name] = tuned.policy.threshold
            cals.cost["adaptive"]["tuning_runs"][f"{name}@{B}"] = tuned.evaluations
            sampler = samplers["blocks"]
            extra = {"threshold": tuned.policy.threshold, "capped": tuned.capped, "tuning_runs": tuned.evaluations}
            rows.append(_evaluate(name, "blocks", sampler, meter, full, B, extra,
                                  lambda: sampler.sample(every, policy=tuned.policy), None))
            done += 1
            bar("methods", done, total)

    document = _document(task, settings, cals, rows, time.perf_counter() - started)
    if json_path is not None:
        path = Path(json_path)
        existed = path.exists()
        save_json(path, document, overwrite=True)  # the file named on the command line is the output
        bar.message(f"{'replaced' if existed else 'wrote'} {path}")
    print(format_report(document), file=out)
    return BenchResult(T, rows, cals.cost, document, time.perf_counter() - started)


def _evaluate(method: str, mode: str, sampler, meter: SpeedMeter, full: torch.Tensor, budget: int,
              extra: dict[str, Any], run: Callable[[], torch.Tensor], schedule: Schedule | None) -> BenchRow:
    """Fidelity and speed of one run; for adaptive runs the schedule is what the policy computed."""
    cached, seconds = timed(run)
    steps = list(sampler.last_report.computed) if schedule is None else list(schedule.compute_steps)
    speed, _ = meter.speedup(run, seconds)
    fid = fidelity(cached, full)
    T = sampler.steps
    return BenchRow(method, budget, fid.psnr, fid.ssim, fid.rel_l1, T / len(steps), speed, mode, steps, extra,
                    fid.psnr_worst)


def _document(task: Task, settings: BenchSettings, cals: Calibrations, rows: Sequence[BenchRow],
              seconds: float) -> dict[str, Any]:
    main = cals.main
    return {
        "format": BENCH_FORMAT,
        "version": BENCH_VERSION,
        "steps": task.steps,
        "budgets": sorted({r.budget for r in rows}, reverse=True),
        "results": [r.to_dict() for r in rows],
        "calibration_cost": cals.cost,
        "calibration": {
            "reference": list(main.reference.schedule.compute_steps),
            "anchor": list(main.anchor.schedule.compute_steps),
            "anchor_score": main.anchor.score,
            "references": {k: list(v.compute_steps) for k, v in cals.references.items()},
            "model_mode_anchor": None if cals.model_mode is None else list(cals.model_mode.anchor.schedule.compute_steps),
            "edge_errors": {k: matrix_to_json(v) for k, v in cals.errors.items()},
            "corrected": {mode: cal.to_dict() for mode, (cal, _) in cals.corrected.items()},
        },
        "task": {
            "model": task.model_info, "sampler": task.sampler_info(), "calibration_samples": len(task.calibration),
            "evaluation_samples": len(task.evaluation), "evaluation_classes": list(task.config.evaluation_classes),
            "calibration_classes": list(task.config.calibration_classes),
            "global_samples": settings.global_samples or len(task.calibration),
            "trials": settings.trials, "max_skip": settings.max_skip, "repeats": settings.repeats,
            "torch_threads": torch.get_num_threads(),
        },
        "seconds": round(seconds, 1),
    }


# -- reporting --------------------------------------------------------------------------------------------


def format_report(document: dict[str, Any]) -> str:
    """The results as markdown: the full table, PSNR by method and budget, winners, calibration cost."""
    rows = document["results"]
    T = document["steps"]
    lines = [f"## OTCache bench: T={T}, held-out samples vs full compute", "",
             "| method | mode | B | ideal speedup | measured speedup | PSNR (dB) | worst PSNR | SSIM | rel L1 | "
             "rules | compute steps |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in sorted(rows, key=lambda r: -r["budget"]):
        lines.append(f"| {r['method']} | {r['mode']} | {r['budget']} | {r['speedup_ideal']:.2f}x | "
                     f"{r['speedup_measured']:.2f}x | {_db(r['psnr'])} | {_db(r.get('psnr_worst'))} | {r['ssim']:.4f} | {r['rel_l1']:.4f} | "
                     f"{r.get('rules', 'hold')} | {','.join(map(str, r['compute_steps']))} |")
    lines += ["", pivot_table(rows, "psnr", "PSNR (dB)"), "", pivot_table(rows, "psnr_worst", "worst-image PSNR (dB)"),
              "", pivot_table(rows, "ssim", "SSIM", digits=4), ""]
    lines += winners(rows)
    lines += ["", *corrected_margins(rows)]
    lines += ["", "### Calibration cost", "", "| what | samples | model calls | seconds |", "|---|---:|---:|---:|"]
    cost = document["calibration_cost"]
    for key in ("otcache", "otcache-model", *CORRECTED.values()):
        if key in cost:
            c = cost[key]
            lines.append(f"| {key} (all stages, {c['strength']} edges, rules {', '.join(c.get('rules', ['hold']))}) | "
                         f"{c['samples']} | {c['total_model_calls']} | {c['total_seconds']:.1f} |")
    for strength, c in cost.get("edges", {}).items():
        lines.append(f"| {strength} edge errors only | {c['samples']} | {c['model_calls']} | {c['seconds']:.1f} |")
    if "adaptive" in cost:
        c = cost["adaptive"]
        runs = sum(c["tuning_runs"].values())
        lines.append(f"| adaptive baselines (ratios, polynomial) | {c['samples']} | {c['model_calls']} | {c['seconds']:.1f} |")
        lines.append(f"| adaptive threshold tuning (sampling runs on the evaluation batch) | - | {runs} runs | - |")
    lines.append("")
    lines.append(f"bench finished in {document['seconds']:.0f} s")
    return "\n".join(lines)


def pivot_table(rows: Sequence[dict], key: str, label: str, digits: int = 2) -> str:
    """``key`` by method (rows) and budget (columns); the best value per budget in bold."""
    budgets = sorted({r["budget"] for r in rows}, reverse=True)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    value = {(r["method"], r["budget"]): (r.get(key) if r.get(key) is not None else float("inf")) for r in rows}
    best = {b: max(value[(m, b)] for m in methods if (m, b) in value) for b in budgets}
    lines = [f"| {label} | " + " | ".join(f"B={b}" for b in budgets) + " |",
             "|---|" + "---:|" * len(budgets)]
    for m in methods:
        cells = []
        for b in budgets:
            v = value.get((m, b))
            text = "-" if v is None else f"{v:.{digits}f}"
            cells.append(f"**{text}**" if v is not None and v == best[b] else text)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MAIN_OTCACHE = {"otcache": ("blocks", "lemica"), "otcache-model": ("model", "lemica-model"),
                "otcache-corrected": ("blocks", "lemica-corrected"),
                "otcache-model-corrected": ("model", "lemica-model-corrected")}
"""The OTCache rows compared with the other methods of their reuse mode, and the graph path of each."""


def winners(rows: Sequence[dict]) -> list[str]:
    """Per budget: the best method by PSNR, and, per reuse mode, OTCache's margin over the best other
    method of that mode and over LeMiCa (the graph path) of that mode."""
    out = ["### Per budget (PSNR)", ""]
    for b in sorted({r["budget"] for r in rows}, reverse=True):
        at_budget = [r for r in rows if r["budget"] == b]
        psnr = {r["method"]: (r["psnr"] if r["psnr"] is not None else float("inf")) for r in at_budget}
        best = max(psnr, key=psnr.get)
        parts = [f"best {best} ({psnr[best]:.2f} dB)"]
        for ours, (mode, lemica) in MAIN_OTCACHE.items():
            if ours not in psnr:
                continue
            others = {r["method"]: psnr[r["method"]] for r in at_budget
                      if r["mode"] == mode and not r["method"].startswith("otcache")}
            text = f"{ours} {psnr[ours]:.2f} dB"
            if others:
                rival = max(others, key=others.get)
                text += f", {psnr[ours] - others[rival]:+.2f} dB vs best other {mode}-mode method ({rival})"
            if lemica in psnr:
                text += f", {psnr[ours] - psnr[lemica]:+.2f} dB vs {lemica}"
            parts.append(text)
        out.append(f"- B={b}: " + "; ".join(parts))
    return out


CORRECTION_PAIRS = (("otcache-corrected", "otcache", "uniform-linear", "lemica-corrected"),
                    ("otcache-model-corrected", "otcache-model", "uniform-model-linear", "lemica-model-corrected"))


def corrected_margins(rows: Sequence[dict]) -> list[str]:
    """Per budget and reuse mode: corrected OTCache against OTCache with hold, against evenly spaced steps
    with linear extrapolation and against the corrected graph path, in mean and worst-image PSNR."""
    index = {(r["method"], r["budget"]): r for r in rows}
    out = ["### Corrected reuse (PSNR mean / worst image, dB)", ""]
    for ours, hold, uniform, lemica in CORRECTION_PAIRS:
        for b in sorted({r["budget"] for r in rows}, reverse=True):
            row = index.get((ours, b))
            if row is None:
                continue
            parts = [f"{ours} {_db(row['psnr'])} / {_db(row.get('psnr_worst'))}"]
            for other in (hold, uniform, lemica):
                o = index.get((other, b))
                if o is not None:
                    parts.append(f"{_margin(row['psnr'], o['psnr'])} / {_margin(row.get('psnr_worst'), o.get('psnr_worst'))}"
                                 f" vs {other}")
            out.append(f"- B={b}: " + "; ".join(parts))
    return out


def _db(x: float | None) -> str:
    return "inf" if x is None else f"{x:.2f}"


def _margin(a: float | None, b: float | None) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.2f}"
