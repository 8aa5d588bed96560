"""Reuse rules on every testbed: each rule on the shipped presets' schedules, mean and worst sample.

    python benchmarks/reuse_rules.py --testbed tinydit                      # the first testbed, no ComfyUI
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/reuse_rules.py --testbed digitflux
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/reuse_rules.py --testbed distilled

Every preset is resolved by OTCache's own plan for the testbed's step count and each budget (``generic``
is even spacing; ``flux.1-dev`` the FLUX.1-dev published shape, front-dense with long gaps), and run with
one reuse rule for every segment (OTCache Apply's ``reuse``; ``model`` mode, what ``auto`` is). PSNR of
the decoded images against full compute of the same sample, mean / worst sample, and each rule's margin
over ``hold`` and over ``linear``.

Testbeds: ``tinydit`` (the embedded DiT, T = 50, the sampler of ``otcache_core.testbed``), ``digitflux``
(a ComfyUI Flux with real CFG, T = 30, sampled by ``comfy.sample``) and ``distilled`` (its guidance-
distilled student: one model call per step at cfg 1, the strength as a guidance embedding, FLUX.1-dev's
regime). Samples are held out by default (other classes / prompts and seeds than any calibration);
``--development`` uses the development samples the defaults were chosen on instead. One torch thread.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RULES = ("hold", "linear", "quadratic", "horizon2", "horizon3")
PRESETS = ("generic", "flux.1-dev")
BUDGETS = {"tinydit": (25, 17, 13, 10, 8, 6), "digitflux": (20, 16, 14, 12, 10, 8, 6),
           "distilled": (20, 16, 14, 12, 10, 8, 6)}


def tinydit_scorer(development: bool) -> tuple[int, Callable[[Any, Any], list[float]], Any]:
    """``(T, score(schedule, rule) -> PSNR per sample, otcache_core)`` on the embedded testbed."""
    import otcache_core
    from otcache_core.metrics import psnr_per_image
    from otcache_core.testbed.task import TaskConfig, decode, load_task

    task = load_task(TaskConfig(steps=50, calibration_samples=32, evaluation_samples=32), seed=7 if development else 0)
    sampler = task.sampler(task.calibration if development else task.evaluation, mode="model")
    full = decode(sampler.run([True] * task.steps).final)
    return task.steps, lambda schedule, rule: psnr_per_image(decode(sampler.sample(schedule, rules=rule)),
                                                             full).tolist(), otcache_core


def comfy_scorer(variant: str, development: bool) -> tuple[int, Callable[[Any, Any], list[float]], Any]:
    """``(T, score(schedule, rule) -> PSNR per sample, otcache_core)`` on DigitFlux or its distilled student,
    through OTCache Apply and ``comfy.sample`` (``otcache_core``: the pack's own copy)."""
    import comfyui_fidelity as cf

    pack, df = cf.setup(1)
    testbed = df.load(variant="distilled" if variant == "distilled" else "teacher")
    prompts = df.calibration_prompts() if development else df.evaluation_prompts()
    seeds = cf.DEVELOPMENT_SEEDS if development else cf.EVAL_SEEDS
    bench = cf.Bench(pack, df, testbed, prompts, seeds, df.STEPS)
    plan_of = pack.otcache_core.plan.SchedulePlan.from_schedule

    def score(schedule, rule) -> list[float]:
        return bench.score_otcache(testbed.patcher, plan_of(schedule), "model", rule.name, schedule.budget)

    return df.STEPS, score, pack.otcache_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", choices=sorted(BUDGETS), required=True)
    parser.add_argument("--development", action="store_true", help="development samples instead of held-out ones")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--budgets", type=int, nargs="+")
    args = parser.parse_args()
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    if args.testbed == "tinydit":
        steps, score, core = tinydit_scorer(args.development)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        steps, score, core = comfy_scorer(args.testbed, args.development)
    BudgetRule, SchedulePlan = core.plan.BudgetRule, core.plan.SchedulePlan  # noqa: N806
    list_presets, load_preset, parse_rules = core.presets.list_presets, core.presets.load_preset, core.reuse.parse_rules

    rules = parse_rules(args.rules.split(","))
    budgets = tuple(args.budgets or BUDGETS[args.testbed])
    files = list_presets()
    samples = "development" if args.development else "held-out"
    print(f"# {args.testbed}, T = {steps}, {samples} samples, model mode: PSNR (dB) mean / worst sample")
    for preset in args.presets.split(","):
        calibration = load_preset(files[preset])
        results: dict[tuple[str, int], tuple[float, float]] = {}
        for rule in rules:
            for budget in budgets:
                plan = SchedulePlan.from_calibration(calibration, BudgetRule("steps", budget, steps))
                values = score(plan.resolve(steps).schedule, rule)
                results[(rule.name, budget)] = (statistics.fmean(values), min(values))
        print(f"\n## {preset}\n")
        print("| rule | " + " | ".join(f"B={b}" for b in budgets) + " |")
        print("|---|" + "---:|" * len(budgets))
        for rule in rules:
            print(f"| {rule} | " + " | ".join("{:.2f} / {:.2f}".format(*results[(rule.name, b)]) for b in budgets)
                  + " |")
        for base in ("hold", "linear"):
            if (base, budgets[0]) not in results:
                continue
            print(f"\nmargin over {base} (mean / worst, dB):")
            for rule in rules:
                if rule.name != base:
                    cells = [f"{results[(rule.name, b)][0] - results[(base, b)][0]:+.2f} / "
                             f"{results[(rule.name, b)][1] - results[(base, b)][1]:+.2f}" for b in budgets]
                    print(f"  {rule}: " + " | ".join(f"B={b} {c}" for b, c in zip(budgets, cells)))
    print(f"\nwall time {time.perf_counter() - started:.0f} s on one thread")


if __name__ == "__main__":
    main()
