"""Wall-time speedup of OTCache Apply inside ComfyUI, against the unpatched model in the same run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_speed.py [--size 48] [--repeats 7] [--threads 1]

A tiny real ComfyUI Flux (4 double + 8 single blocks, hidden 256; random weights) samples T = 20
steps with euler. For budgets 10 and 5 it prints, for ``blocks`` and ``model`` mode:

* the measured speedup (median unpatched run time / median patched run time) and its ratio to T/B;
* the share ``s`` of a full model call spent outside the blocks (embedders, final layer), from the
  per-call timings of the run report (a reused call in blocks mode runs exactly that part);
* the speedup that share predicts for blocks mode, ``T / (B + (T - B) s)``, with the ratio of measured
  to predicted (the cache's own bookkeeping should be invisible: within 5 %).

The host machine is shared and noisy: runs alternate between configurations and the medians of
several repeats are compared, all in one process. One thread on a two-core machine leaves a core for
the rest of the system and gave the steadiest ratios (two threads varied by about 10 % run to run).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="latent side (48 -> 576 image tokens)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 5])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    comfy_root = os.environ.get("COMFYUI_PATH")
    if not comfy_root:
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(args.threads)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    from comfyui import tiny_models

    import comfy.sample

    m = tiny_models.build("flux_bench")
    latent = m.make_latent(1, args.size, args.size)
    noise = m.noise(latent, 0)
    T = args.steps
    core = pack.otcache_core
    reports = []
    pack.nodes.cache_hooks.add_report_listener(reports.append)

    def run(patcher) -> float:
        start = time.perf_counter()
        comfy.sample.sample(patcher, noise, T, 3.0, "euler", "simple", m.positive(), m.negative(), latent, seed=0,
                            disable_pbar=True)
        return time.perf_counter() - start

    configs = {"unpatched": m.patcher}
    for budget in args.budgets:
        schedule = core.warp.sample_warp(core.warp.identity_warp(), T, budget)
        plan = core.plan.SchedulePlan.from_schedule(schedule, label=f"uniform B={budget}")
        for mode in ("blocks", "model"):
            configs[f"{mode} B={budget}"] = pack.nodes.apply_node.apply_otcache(m.patcher, plan, mode, quiet=True)
    run(m.patcher)  # warm-up: one-off lazy imports and allocations
    times: dict[str, list[float]] = {name: [] for name in configs}
    last_report = {}
    for _ in range(args.repeats):
        for name, patcher in configs.items():
            times[name].append(run(patcher))
            if name != "unpatched":
                last_report[name] = reports[-1]
    base = statistics.median(times["unpatched"])
    print(f"tiny Flux (4 double + 8 single blocks, hidden 256), latent {args.size}x{args.size}, T={T}, "
          f"{args.threads} threads, median of {args.repeats}; unpatched {base:.3f} s")
    print("| mode | B | T/B | measured speedup | measured / (T/B) | outside-blocks share | predicted | measured / predicted |")
    print("|---|---|---|---|---|---|---|---|")
    for name, report in last_report.items():
        mode, budget = name.split(" B=")
        budget = int(budget)
        speed = base / statistics.median(times[name])
        ideal = T / budget
        row = f"| {mode} | {budget} | {ideal:.2f} | {speed:.2f} | {speed / ideal:.3f} |"
        if mode == "blocks" and report.calls_reused and report.calls_computed:
            share = (report.seconds_reused / report.calls_reused) / (report.seconds_computed / report.calls_computed)
            predicted = T / (budget + (T - budget) * share)
            row += f" {share:.3f} | {predicted:.2f} | {speed / predicted:.3f} |"
        else:
            row += " - | - | - |"
        print(row)


if __name__ == "__main__":
    main()
