"""Wall-time speedup of OTCache Apply inside ComfyUI, against the unpatched model in the same run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_speed.py [--size 48] [--repeats 7] [--threads 1]
        [--controlnet 2 2]

A tiny real ComfyUI Flux (4 double + 8 single blocks, hidden 256; random weights) samples T = 20
steps with euler. For budgets 10 and 5 it prints, for ``blocks`` and ``model`` mode and each reuse rule
(``--reuse``, default ``hold`` and ``linear``: a corrected rule costs a few tensor operations per
reused call):

* the measured speedup (median unpatched run time / median patched run time) and its ratio to T/B;
* the share ``s`` of a full model call spent outside the blocks (embedders, final layer), from the
  per-call timings of the run report (a reused call in blocks mode runs exactly that part);
* the speedup that share predicts for blocks mode, ``T / (B + (T - B) s)``, with the ratio of measured
  to predicted (the cache's own bookkeeping should be invisible: within 5 %).

With ``--controlnet D S`` it then measures the same with a FLUX ControlNet of ComfyUI's own class
(``ControlNetFlux`` with D double and S single blocks at the model's width, random weights, applied to
both conds with ``ControlNetApplyAdvanced``), for each mode before (``skip_control_models=False``: the
control model runs at every step, reused ones included) and after (it runs at computed steps only).
It prints the control model's cost per call as a share ``c`` of the main model's (forward-hook timings
of the unpatched runs) and the speedup the control model leaves when it always runs,
``T (1 + c) / (B (1 + c) + (T - B) c)`` in model mode.

The host machine is shared and noisy: runs alternate between configurations and the medians of
several repeats are compared, all in one process; ``--clock cpu`` times the process's CPU time instead
of the wall clock (with one thread, what other processes do shows less). One thread on a two-core machine leaves a core for
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


class ForwardTimer:
    """Time spent in a module's forward (pre and post hooks), summed over calls."""

    def __init__(self, module, clock) -> None:
        self.clock = clock
        self.seconds, self.calls, self._start = 0.0, 0, 0.0
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, *_):
        self._start = self.clock()

    def _post(self, *_):
        self.seconds += self.clock() - self._start
        self.calls += 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def measure(configs: dict, run, repeats: int, reports: list) -> tuple[dict[str, float], dict]:
    """Median run time per configuration (runs alternate between them) and each one's last report."""
    times: dict[str, list[float]] = {name: [] for name in configs}
    last_report = {}
    for _ in range(repeats):
        for name, patcher in configs.items():
            times[name].append(run(patcher))
            if name != "unpatched":
                last_report[name] = reports[-1]
    return {name: statistics.median(t) for name, t in times.items()}, last_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="latent side (48 -> 576 image tokens)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budgets", type=int, nargs="+", default=[10, 5])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time runs by wall clock, or by the process's CPU time (with one thread: less "
                             "disturbed by other processes on a shared machine)")
    parser.add_argument("--controlnet", type=int, nargs=2, metavar=("DOUBLE", "SINGLE"),
                        help="also measure with a FLUX ControlNet of this many double and single blocks")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="measure the case without a ControlNet (default on)")
    parser.add_argument("--reuse", nargs="+", default=["hold", "linear"], help="reuse rules to time")
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
    apply_otcache = pack.nodes.apply_node.apply_otcache
    reports = []
    pack.nodes.cache_hooks.add_report_listener(reports.append)
    conds = {"positive": m.positive(), "negative": m.negative()}

    clock = time.perf_counter if args.clock == "wall" else time.process_time

    def run(patcher) -> float:
        start = clock()
        comfy.sample.sample(patcher, noise, T, 3.0, "euler", "simple", conds["positive"], conds["negative"], latent,
                            seed=0, disable_pbar=True)
        return clock() - start

    plans = {}
    for budget in args.budgets:
        schedule = core.warp.sample_warp(core.warp.identity_warp(), T, budget)
        plans[budget] = core.plan.SchedulePlan.from_schedule(schedule, label=f"uniform B={budget}")
    run(m.patcher)  # warm-up: one-off lazy imports and allocations
    header = (f"tiny Flux (4 double + 8 single blocks, hidden 256), latent {args.size}x{args.size}, T={T}, "
              f"{args.threads} threads, median of {args.repeats}, {args.clock} clock")
    if args.plain:
        configs = {"unpatched": m.patcher}
        for budget, plan in plans.items():
            for mode in ("blocks", "model"):
                for reuse in args.reuse:
                    configs[f"{mode} {reuse} B={budget}"] = apply_otcache(m.patcher, plan, mode, quiet=True,
                                                                          reuse=reuse)
        medians, last_report = measure(configs, run, args.repeats, reports)
        print_plain_table(header, medians, last_report, T)
    if args.controlnet:
        controlnet_case(args, m, latent, plans, conds, run, clock, reports, apply_otcache, header)


def print_plain_table(header: str, medians: dict[str, float], last_report: dict, T: int) -> None:
    base = medians["unpatched"]
    print(f"{header}; unpatched {base:.3f} s")
    print("| mode | reuse | B | T/B | measured speedup | measured / (T/B) | outside-blocks share | predicted | "
          "measured / predicted |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, report in last_report.items():
        kind, budget = name.split(" B=")
        mode, reuse = kind.split()
        budget = int(budget)
        speed = base / medians[name]
        ideal = T / budget
        row = f"| {mode} | {reuse} | {budget} | {ideal:.2f} | {speed:.2f} | {speed / ideal:.3f} |"
        if mode == "blocks" and report.calls_reused and report.calls_computed:
            share = (report.seconds_reused / report.calls_reused) / (report.seconds_computed / report.calls_computed)
            predicted = T / (budget + (T - budget) * share)
            row += f" {share:.3f} | {predicted:.2f} | {speed / predicted:.3f} |"
        else:
            row += " - | - | - |"
        print(row)


def controlnet_case(args, m, latent, plans, conds, run, clock, reports, apply_otcache, header) -> None:
    """Speedups with a FLUX ControlNet, control model always run (before) and skipped at reused steps (after)."""
    import nodes
    from comfyui.tiny_controls import build_flux_controlnet_like, hint_image

    double, single = args.controlnet
    control = build_flux_controlnet_like(m, double, single)
    conds["positive"], conds["negative"] = nodes.ControlNetApplyAdvanced().apply_controlnet(
        m.positive(), m.negative(), control, hint_image(latent), 1.0, 0.0, 1.0)
    T = args.steps
    run(m.patcher)  # warm-up with the ControlNet
    main_timer = ForwardTimer(m.patcher.model.diffusion_model, clock)
    control_timer = ForwardTimer(control.control_model, clock)
    for _ in range(3):
        run(m.patcher)
    main_timer.remove()
    control_timer.remove()
    share = (control_timer.seconds / control_timer.calls) / (main_timer.seconds / main_timer.calls)
    configs = {"unpatched": m.patcher}
    for budget, plan in plans.items():
        for mode in ("blocks", "model"):
            for skip in (False, True):
                configs[(mode, budget, skip)] = apply_otcache(m.patcher, plan, mode, quiet=True,
                                                              skip_control_models=skip)
    medians, last_report = measure(configs, run, args.repeats, reports)
    base = medians["unpatched"]
    print(f"{header}; with a FLUX ControlNet ({double} double + {single} single blocks, hidden 256) on both conds; "
          f"control model per call = {share:.2f} of the main model; unpatched {base:.3f} s")
    print("| mode | B | T/B | control model | measured speedup | measured / (T/B) | skipped / run control calls |")
    print("|---|---|---|---|---|---|---|")
    for (mode, budget, skip), report in last_report.items():
        speed = base / medians[(mode, budget, skip)]
        ideal = T / budget
        print(f"| {mode} | {budget} | {ideal:.2f} | {'skipped at reused steps' if skip else 'every step'} | "
              f"{speed:.2f} | {speed / ideal:.3f} | "
              f"{f'{report.control_skipped} / {report.control_ran}' if skip else '- (all run)'} |")
    for budget in plans:
        bound = T * (1 + share) / (budget * (1 + share) + (T - budget) * share)
        print(f"model mode, B={budget}, control model at every step: at most {bound:.2f}x "
              f"(T (1 + c) / (B (1 + c) + (T - B) c))")


if __name__ == "__main__":
    main()
