"""Preset shapes against evenly spaced steps on the first testbed (TinyDiT, no ComfyUI needed).

    python benchmarks/testbed_generic.py [--steps 50 30] [--samples 32] [--preset schedules/generic.json ...]

For each step count, reuse mode (``blocks``, ``model``) and reuse rule (``hold``, ``linear``), and at
the testbed's default budgets, samples the held-out evaluation set (odd digits, its own seeds) with
evenly spaced computed steps and with the schedule each preset file gives for that budget (its warps
resolved as OTCache Schedule does), and prints the PSNR against full compute (mean / worst sample)
and each preset's margin over even spacing. A preset is safe on this model when no margin is
negative. Nothing is calibrated or tuned here.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from otcache_core.calibration import Calibration
from otcache_core.metrics import psnr
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.schedule import Schedule
from otcache_core.testbed.task import TaskConfig, decode, load_task
from otcache_core.warp import identity_warp, sample_warp

REPO = Path(__file__).resolve().parents[1]


def per_sample_psnr(cached, full) -> list[float]:
    a, b = decode(cached), decode(full)
    return [psnr(a[i : i + 1], b[i : i + 1]) for i in range(a.shape[0])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[50, 30])
    parser.add_argument("--samples", type=int, default=32, help="held-out evaluation samples")
    parser.add_argument("--modes", nargs="+", default=["blocks", "model"])
    parser.add_argument("--rules", nargs="+", default=["hold", "linear"])
    parser.add_argument("--preset", nargs="+", default=[str(REPO / "schedules" / "generic.json")])
    args = parser.parse_args()
    started = time.perf_counter()
    presets = {Path(p).stem: Calibration.load(p) for p in args.preset}
    print("| T | mode | reuse | B | even | " + " | ".join(f"{n} | margin" for n in presets) + " |")
    print("|---:|---|---|---:|---:|" + "---:|---:|" * len(presets))
    worst_margin = {name: float("inf") for name in presets}
    for T in args.steps:
        task = load_task(TaskConfig(steps=T, evaluation_samples=args.samples))
        for mode in args.modes:
            sampler = task.sampler(task.evaluation, mode)
            full = sampler.sample(Schedule.all_compute(T))
            for rule in args.rules:
                for B in task.budgets():
                    even = per_sample_psnr(sampler.sample(sample_warp(identity_warp(), T, B), rules=rule), full)
                    cells = [f"{statistics.fmean(even):.2f} / {min(even):.2f}"]
                    for name, cal in presets.items():
                        schedule = SchedulePlan.from_calibration(cal, BudgetRule("steps", B, T)).resolve(T).schedule
                        got = per_sample_psnr(sampler.sample(schedule, rules=rule), full)
                        margin = statistics.fmean(got) - statistics.fmean(even)
                        worst_margin[name] = min(worst_margin[name], margin)
                        cells += [f"{statistics.fmean(got):.2f} / {min(got):.2f}", f"{margin:+.2f}"]
                    print(f"| {T} | {mode} | {rule} | {B} | " + " | ".join(cells) + " |", flush=True)
    for name, margin in worst_margin.items():
        print(f"{name}: worst margin over even spacing {margin:+.2f} dB")
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
