"""How much better than the graph path can any schedule be? An upper bound on the testbed.

    python benchmarks/testbed_oracle.py bench.json [--budgets 10 8] [--mode blocks] [--evaluations 250]

Reads the output of ``python -m otcache_core bench --json bench.json`` and, for each budget, starts
from that run's ``lemica`` schedule and runs the anchor's local search (:func:`otcache_core.anchor.
local_search`) on the PSNR of the *held-out evaluation samples themselves*: a schedule tuned on the
test set, which no method can use. It prints the PSNR of lemica, otcache and this oracle, so the gap
OTCache could possibly open over the graph path is measured rather than guessed.
"""

from __future__ import annotations

import argparse
import json
import time

from otcache_core.anchor import local_search
from otcache_core.schedule import Schedule
from otcache_core.testbed.task import TaskConfig, fidelity, load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json")
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 8])
    parser.add_argument("--mode", default="blocks", choices=("blocks", "model"))
    parser.add_argument("--evaluations", type=int, default=250, help="sampling runs per budget, at most")
    parser.add_argument("--seed", type=int, default=0, help="the bench's --seed")
    args = parser.parse_args()

    doc = json.load(open(args.bench_json, encoding="utf-8"))
    task_doc = doc["task"]
    T = doc["steps"]
    config = TaskConfig(steps=T, calibration_samples=task_doc["calibration_samples"],
                        evaluation_samples=task_doc["evaluation_samples"])
    task = load_task(config, args.seed)
    sampler = task.sampler(task.evaluation, args.mode)
    full = sampler.sample(Schedule.all_compute(T))
    psnr_of = {(r["method"], r["budget"]): r["psnr"] for r in doc["results"] if r["mode"] == "blocks"}

    print("| B | lemica PSNR | otcache PSNR | oracle PSNR | oracle - lemica | oracle schedule | runs | seconds |")
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for B in args.budgets:
        start = next(Schedule(T, tuple(r["compute_steps"])) for r in doc["results"]
                     if r["method"] == "lemica" and r["budget"] == B)
        scores: dict[tuple[int, ...], float] = {}

        def negative_psnr(schedule: Schedule) -> float:
            if schedule.compute_steps not in scores:
                scores[schedule.compute_steps] = -fidelity(sampler.sample(schedule), full).psnr
            return scores[schedule.compute_steps]

        t0 = time.perf_counter()
        lemica = -negative_psnr(start)
        best = local_search(negative_psnr, start, lambda: len(scores) < args.evaluations)
        oracle = -negative_psnr(best)
        print(f"| {B} | {lemica:.2f} | {psnr_of.get(('otcache', B), float('nan')):.2f} | {oracle:.2f} | "
              f"{oracle - lemica:+.2f} | {','.join(map(str, best.compute_steps))} | {len(scores)} | "
              f"{time.perf_counter() - t0:.0f} |", flush=True)


if __name__ == "__main__":
    main()
