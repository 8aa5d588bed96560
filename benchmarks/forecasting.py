"""Forecasting reuse rules against the real TaylorSeer node, and the run-time forecast check.

    COMFYUI_PATH=... OTCACHE_PEER_PACKS=... python benchmarks/forecasting.py [--testbed distilled] [--development]

On a DigitFlux testbed (T = 30, euler / simple; see ``comfyui_fidelity.py``), PSNR against full compute
(mean / worst sample) of:

* **TaylorSeer Lite**, the real node of philipy1219/ComfyUI-TaylorSeer from ``$OTCACHE_PEER_PACKS``
  (model_type flux, first_enhance 3, last_enhance at its default), order 1 and 2, intervals 3-6: its
  natural computed counts 3 + floor(27 / interval) = 12, 9, 8, 7 (counted by a hook on the model's
  final layer, which only a computed step runs);
* OTCache on **the same steps** (the first three, then one every ``interval``) with each rule, with and
  without the run-time forecast check (``otcache_core/forecast_check.py``);
* OTCache with **even spacing** at the same counts and at every budget given, each rule, check off / on.

Every OTCache run goes through OTCache Apply in ``model`` mode and must compute exactly the budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfyui_fidelity import (  # noqa: E402  (a sibling script)
    TAYLORSEER_INTERVALS, Row, even_plan, load_taylorseer, open_bench, print_table,
    summarize, taylorseer_row, taylorseer_steps)

RULES = ("linear", "horizon2", "quadratic", "taylor2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", choices=("digitflux", "distilled"), default="digitflux")
    parser.add_argument("--development", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--budgets", type=int, nargs="*", default=[16, 14, 10])
    parser.add_argument("--rules", nargs="+", default=list(RULES))
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    pack, df, bench, where = open_bench(args.testbed, args.development, args.threads)
    testbed = bench.testbed
    T = bench.steps
    core = pack.otcache_core
    print(f"{args.testbed}: {where} samples {bench.size}", flush=True)
    rows: list[Row] = []
    node, missing = load_taylorseer()
    for order in (2, 1) if node is not None else ():
        rows.append(taylorseer_row(bench, node, order))
    if node is None:
        print(f"TaylorSeer Lite not measured: {missing}", flush=True)
    for check in (False, True):
        suffix = ", check" if check else ""
        for rule in args.rules:
            row = Row(f"TaylorSeer's steps{suffix}", "model", rule)
            for interval in TAYLORSEER_INTERVALS:
                schedule = core.schedule.Schedule.from_steps(taylorseer_steps(T, interval), T)
                plan = core.plan.SchedulePlan.from_schedule(schedule, label=f"taylorseer {interval}")
                row.mean[schedule.budget], row.worst[schedule.budget] = summarize(
                    bench.score_otcache(testbed.patcher, plan, "model", rule, schedule.budget, check))
            rows.append(row)
            even = Row(f"even{suffix}", "model", rule)
            for budget in sorted({*args.budgets, *(len(taylorseer_steps(T, i)) for i in TAYLORSEER_INTERVALS)}, reverse=True):
                even.mean[budget], even.worst[budget] = summarize(
                    bench.score_otcache(testbed.patcher, even_plan(bench, budget), "model", rule, budget, check))
            rows.append(even)
            print(f"{rule}{suffix} done at {time.perf_counter() - started:.0f} s", flush=True)
    budgets = tuple(sorted({b for r in rows for b in r.mean}, reverse=True))
    print_table(rows, budgets, T)
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"testbed": args.testbed, "samples": where,
                                               "rows": [r.__dict__ for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
