"""Anchor search variants on the testbed: what the local search and the worst-half objective buy.

    python benchmarks/testbed_anchor_variants.py        # about 4 minutes on 2 CPU cores

The bench's calibration (T = 50, 16 calibration samples, ``rollout`` edges, anchor at B = 10 with
40 trials) three times: TPE only (``polish=0``), TPE + local search with the mean 1 - SSIM, and
TPE + local search with the worst-half 1 - SSIM (the default). Prints each anchor, its calibration
score and the held-out PSNR (32 samples of other classes) of the interpolated schedules.
"""

from __future__ import annotations

import time

from otcache_core.calibrate import CalibrationSettings, calibrate, default_budgets
from otcache_core.plan import BudgetRule, SchedulePlan
from otcache_core.schedule import Schedule
from otcache_core.testbed.task import TaskConfig, anchor_objective, fidelity, load_task

VARIANTS = (("TPE only, worst half", 0.0, 0.5), ("TPE + local search, mean", 0.6, 1.0),
            ("TPE + local search, worst half (default)", 0.6, 0.5))
BUDGETS = (17, 13, 10, 8)


def main() -> None:
    T = 50
    task = load_task(TaskConfig(steps=T, calibration_samples=16, evaluation_samples=32), 0)
    held_out = task.sampler(task.evaluation)
    full = held_out.sample(Schedule.all_compute(T))
    reference_budget, anchor_budget = default_budgets(T)
    print("| variant | anchor | calibration score | " + " | ".join(f"B={b} PSNR" for b in BUDGETS) + " | seconds |")
    print("|---|---|---:|" + "---:|" * len(BUDGETS) + "---:|")
    for label, polish, share in VARIANTS:
        t0 = time.perf_counter()
        distance, name, _ = anchor_objective(share)
        settings = CalibrationSettings(reference_budget, anchor_budget, strength="rollout", max_skip=10, trials=40,
                                       seed=0, polish=polish)
        calibration = calibrate(task.sampler(task.calibration), settings, distance=distance, objective_name=name,
                                name="variant").calibration
        psnr = []
        for B in BUDGETS:
            schedule = SchedulePlan.from_calibration(calibration, BudgetRule("steps", B, T)).resolve(T).schedule
            psnr.append(f"{fidelity(held_out.sample(schedule), full).psnr:.2f}")
        anchor = ",".join(map(str, calibration.anchor.schedule.compute_steps))
        print(f"| {label} | {anchor} | {calibration.anchor.score:.4f} | " + " | ".join(psnr)
              + f" | {time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
