"""Is the quality a calibration promises the quality a user gets? Expected PSNR against held-out PSNR.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/quality_prediction.py [--testbed distilled] [--development]

On a DigitFlux testbed (``tests/comfyui/digit_flux.py``; T = 30, euler / simple), five OTCache
Calibrate draws at their default inputs with the testbed's VAE connected (as the shipped calibration
workflow connects one), one even-digit prompt each, as in ``comfyui_fidelity.py``. For each draw and
each budget, OTCache Schedule's expected PSNR (what its summary states: leave-one-out on the draw's two
validation samples) is set against the mean PSNR the same plan gets on the evaluation set (held-out:
odd-digit prompts x seeds 1000, 1001 = 40 samples; ``--development``: even-digit prompts x seeds 500,
501, the samples decisions are made on). Then ``budget_as`` = quality with targets 40, 45 and 50 dB:
the budget it picks, the evaluation mean there, and the smallest budget whose evaluation mean meets the
target (full compute meets every target).

Prints per draw and budget: expected / measured / difference; over all: the mean absolute difference,
the largest, the mean signed bias; and the target table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfyui_fidelity import (  # noqa: E402  (a sibling script)
    DRAW_DIGITS, Bench, calibrate, node_defaults, open_bench, summarize)

BUDGETS = tuple(range(20, 5, -1))
TARGETS = (40.0, 45.0, 50.0)


def quality_plan(bench: Bench, calibration: Any, target: float) -> tuple[Any, str]:
    """OTCache Schedule at its defaults with ``budget_as`` = quality and ``target_psnr``; the plan and its
    summary."""
    node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(node)
    inputs.update(steps=bench.steps, budget_as="quality", target_psnr=target)
    plan, _, text = node().make(calibration=calibration, **inputs)
    return plan, text


def budget_plan(bench: Bench, calibration: Any, budget: int) -> tuple[Any, str]:
    node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(node)
    inputs.update(steps=bench.steps, budget=budget, budget_as="computed steps")
    plan, _, text = node().make(calibration=calibration, **inputs)
    return plan, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", choices=("digitflux", "distilled"), default="digitflux")
    parser.add_argument("--development", action="store_true",
                        help="score on the development samples (even digits, seeds 500/501), where decisions are made")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draws", type=int, default=len(DRAW_DIGITS))
    parser.add_argument("--json", help="also write every cell (expected and measured, per draw and budget) here")
    args = parser.parse_args()
    started = time.perf_counter()
    pack, df, bench, where = open_bench(args.testbed, args.development, args.threads)
    testbed = bench.testbed
    T = bench.steps
    print(f"{args.testbed}: {where} samples {bench.size}; reference in {time.perf_counter() - started:.0f} s", flush=True)
    measured: dict[tuple[int, int], tuple[float, float]] = {}  # (draw, budget) -> (mean, worst) on the evaluation set

    def evaluate(n: int, record: Any, budget: int) -> tuple[float, float]:
        """The evaluation set's (mean, worst) PSNR of draw ``n`` at ``budget`` (OTCache Schedule at its defaults)."""
        if budget >= T:
            return (float("inf"), float("inf"))
        if (n, budget) not in measured:
            plan, _ = budget_plan(bench, record, budget)
            measured[n, budget] = summarize(bench.score_otcache(testbed.patcher, plan, "model", "calibrated", budget))
        return measured[n, budget]

    def smallest_meeting(n: int, record: Any, target: float) -> int:
        """The smallest budget whose evaluation mean meets ``target`` (budgets above the validated range are
        measured only when none of it does)."""
        meeting = [b for (k, b), (mean, _) in measured.items() if k == n and mean >= target]
        budget = max(b for (k, b) in measured if k == n) + 1
        while not meeting:
            if evaluate(n, record, budget)[0] >= target:
                meeting.append(budget)
            budget += 1
        return min(meeting)

    rows, targets = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n, digit in enumerate(DRAW_DIGITS[: args.draws]):
            record, seconds = calibrate(bench, Path(tmp), f"draw {digit}", [df.prompt(digit, 0)], vae=df.DigitVAE())
            expected = record.budgets.expected
            print(f"draw '{df.prompt(digit, 0)}': calibrated in {seconds:.0f} s; {len(expected)} budgets with an "
                  f"expected quality", flush=True)
            for budget in sorted(set(expected) | set(BUDGETS), reverse=True):
                mean, worst = evaluate(n, record, budget)
                q = expected.get(budget)
                if budget in BUDGETS and q is not None:
                    rows.append((n, budget, q.psnr, mean, q.worst_psnr, worst))
            for target in TARGETS:
                plan, _ = quality_plan(bench, record, target)
                chosen = plan.resolve(T).schedule.budget
                targets.append((n, target, chosen, evaluate(n, record, chosen)[0], smallest_meeting(n, record, target)))
            print(f"  evaluated at {time.perf_counter() - started:.0f} s", flush=True)
    print(f"\nexpected (leave-one-out, 2 validation samples) vs {where} mean PSNR, dB, T = {T}\n")
    print("| draw | " + " | ".join(f"B={b}" for b in BUDGETS) + " |")
    print("|---|" + "---:|" * len(BUDGETS))
    for n in range(args.draws):
        cells = {b: (e, m) for (k, b, e, m, _, _) in rows if k == n}
        print(f"| {df.prompt(DRAW_DIGITS[n], 0)} | " + " | ".join(
            f"{cells[b][0]:.1f} / {cells[b][1]:.1f}" if b in cells else "-" for b in BUDGETS) + " |")
    diffs = [e - m for (_, _, e, m, _, _) in rows]
    worst_diffs = [ew - mw for (_, _, _, _, ew, mw) in rows]
    print(f"\nexpected - measured mean: mean {statistics.fmean(diffs):+.2f} dB, mean |.| "
          f"{statistics.fmean(abs(d) for d in diffs):.2f} dB, largest |.| {max(abs(d) for d in diffs):.2f} dB "
          f"({sum(abs(d) <= 3 for d in diffs)} of {len(diffs)} within 3 dB)")
    print(f"expected worst - {where} worst sample: mean {statistics.fmean(worst_diffs):+.2f} dB")
    for b in BUDGETS:
        at = [e - m for (_, bb, e, m, _, _) in rows if bb == b]
        if at:
            print(f"  B={b}: mean difference {statistics.fmean(at):+.2f}, mean |.| {statistics.fmean(abs(d) for d in at):.2f}")
    print(f"\nbudget_as = quality: target, chosen budget, {where} mean there, smallest budget meeting it on {where}\n")
    print("| draw | target | chosen | mean at chosen | smallest meeting | met (>= target - 1) | at most one above |")
    print("|---|---:|---:|---:|---:|---|---|")
    for n, target, chosen, got, smallest in targets:
        print(f"| {df.prompt(DRAW_DIGITS[n], 0)} | {target:g} | {chosen} | {got:.2f} | {smallest} | "
              f"{'yes' if got >= target - 1 else 'NO'} | {'yes' if chosen <= smallest + 1 else 'NO'} |")
    met = sum(got >= target - 1 for _, target, _, got, _ in targets)
    close = sum(chosen <= smallest + 1 for _, _, chosen, _, smallest in targets)
    print(f"\nmet within 1 dB: {met} of {len(targets)}; chosen at most one step above the smallest: {close} of "
          f"{len(targets)}; wall {time.perf_counter() - started:.0f} s")
    if args.json:
        cells = ["draw", "budget", "expected", "measured", "expected_worst", "measured_worst"]
        Path(args.json).write_text(json.dumps({
            "testbed": args.testbed, "samples": where, "cells": [dict(zip(cells, row)) for row in rows],
            "measured": [{"draw": n, "budget": b, "mean": m, "worst": w} for (n, b), (m, w) in sorted(measured.items())],
            "targets": [dict(zip(["draw", "target", "chosen", "mean_at_chosen", "smallest_meeting"], t)) for t in targets],
        }, indent=1))


if __name__ == "__main__":
    main()
