"""Do edge errors rank schedules and rules like the end-to-end errors do? Before and after run-time history.

    python benchmarks/edge_ranking.py --testbed tinydit
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/edge_ranking.py --testbed digitflux

On development samples (never the held-out ones), for a set of schedules (random ones with segments of at
most K steps, plus even spacing, at several budgets):

* **schedules**: the Spearman rank correlation between a schedule's edge-predicted error (the sum of its
  segments' edge errors; the largest one, which the leximax path minimises, in brackets) and its measured
  end-to-end error (relative L1 of the final latent against full compute), both under one rule;
* **rules**: for each schedule, whether the edges predict the same winner between ``hold`` and ``linear``
  as the end-to-end run does (the share of schedules where they agree);
* **per-segment rules**: each segment given the rule whose edge error was smaller (what version-2
  calibrations did), run end to end, against the same schedule with ``linear`` everywhere.

"Before" is how calibrations measured edges until version 3: each edge replayed with the rule's earlier
points at the adjacent steps, computed (``history = 1``). "After" is version 3: the earlier points as far
apart as the reference's spacing, the steps between them reused as in a run (``history = round(T / B_ref)``).
Both measure ``rollout`` edges (the default strength). One torch thread.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def random_schedules(core: Any, steps: int, budget: int, max_skip: int, count: int,
                     rng: random.Random) -> list[Any]:
    """``count`` distinct random schedules of ``budget`` steps with segments of at most ``max_skip`` steps."""
    Schedule = core.schedule.Schedule  # noqa: N806

    found: dict[tuple[int, ...], Any] = {}
    for _ in range(count * 200):
        if len(found) == count:
            break
        inner = sorted(rng.sample(range(1, steps), budget - 1))
        points = [0, *inner, steps]
        if max(b - a for a, b in zip(points, points[1:])) <= max_skip:
            found[tuple([0, *inner])] = Schedule.from_steps([0, *inner], steps)
    return list(found.values())


def sampler_for(testbed: str) -> tuple[Any, Any]:
    """The calibration sampler over the development samples of ``testbed``, and the ``otcache_core`` it
    runs with (in ComfyUI, the pack's own copy: its rule objects are the ones the sampler knows)."""
    if testbed == "tinydit":
        import otcache_core
        from otcache_core.testbed.task import TaskConfig, load_task

        task = load_task(TaskConfig(steps=30, calibration_samples=8), seed=7)  # T = 30 as the ComfyUI testbeds
        return task.sampler(task.calibration, mode="model"), otcache_core
    sys.path.insert(0, str(REPO / "benchmarks"))
    import comfyui_fidelity as cf

    pack, df = cf.setup(1)
    testbed_model = df.load(variant="distilled" if testbed == "distilled" else "teacher")
    prompts = df.calibration_prompts()[::4]  # five even digits
    conds = [testbed_model.positive(p) for p in prompts]
    import torch

    context = torch.cat([c[0][0] for c in conds]).repeat_interleave(2, dim=0)
    extras = {k: (torch.cat([c[0][1][k] for c in conds]).repeat_interleave(2, dim=0) if torch.is_tensor(v) else v)
              for k, v in conds[0][0][1].items()}
    return pack.nodes.calibrate_node.ComfyCalibrationSampler(
        testbed_model.patcher, [[context, extras]], testbed_model.negative(), {"samples": df.empty_latent(1)},
        list(cf.DEVELOPMENT_SEEDS) * len(prompts), df.STEPS, testbed_model.cfg, df.SAMPLER, df.SCHEDULER,
        "model"), pack.otcache_core


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", choices=("tinydit", "digitflux", "distilled"), default="tinydit")
    parser.add_argument("--per-budget", type=int, default=12, help="random schedules per budget")
    parser.add_argument("--max-skip", type=int, default=6)
    args = parser.parse_args()
    started = time.perf_counter()
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(1)
    sampler, core = sampler_for(args.testbed)
    default_budgets, edge_errors_rollout = core.calibrate.default_budgets, core.calibrate.edge_errors_rollout
    path_errors, relative_l1 = core.graph.path_errors, core.metrics.relative_l1
    HOLD_RULE, LINEAR_RULE = core.reuse.HOLD_RULE, core.reuse.LINEAR_RULE  # noqa: N806
    identity_warp, sample_warp = core.warp.identity_warp, core.warp.sample_warp
    T, K = sampler.steps, args.max_skip
    full = sampler.run([True] * T, record=True)
    history = round(T / default_budgets(T)[0])
    rng = random.Random(0)
    schedules = []
    for budget in (round(T / 2), round(T / 3), round(T / 5)):
        schedules += [sample_warp(identity_warp(), T, budget), *random_schedules(core, T, budget, K, args.per_budget, rng)]
    edges = {}
    for name, spacing in (("before", 1), ("after", history)):
        for rule in (HOLD_RULE, LINEAR_RULE):
            edges[(name, rule)] = edge_errors_rollout(sampler, full, K, rule=rule, history=spacing)[0]
    measured = {rule: [relative_l1(sampler.run(s.mask(), reuse=rule).final, full.final) for s in schedules]
                for rule in (HOLD_RULE, LINEAR_RULE)}
    print(f"# {args.testbed}: T = {T}, K = {K}, {len(schedules)} schedules at budgets {round(T / 2)}, {round(T / 3)}, "
          f"{round(T / 5)} (development samples); run-time spacing {history}\n")
    print("| edges | rule | Spearman (sum of segments) | Spearman (largest segment) | rules agree (hold vs linear) |")
    print("|---|---|---:|---:|---:|")
    for name in ("before", "after"):
        predicted = {rule: [path_errors(edges[(name, rule)], s) for s in schedules] for rule in (HOLD_RULE, LINEAR_RULE)}
        sums = {rule: [float(np.nansum(p)) for p in predicted[rule]] for rule in predicted}
        agree = np.mean([(sums[HOLD_RULE][k] < sums[LINEAR_RULE][k]) == (measured[HOLD_RULE][k] < measured[LINEAR_RULE][k])
                         for k in range(len(schedules))])
        for rule in (HOLD_RULE, LINEAR_RULE):
            total = spearmanr(sums[rule], measured[rule]).statistic
            worst = spearmanr([float(np.nanmax(p)) for p in predicted[rule]], measured[rule]).statistic
            print(f"| {name} (history {1 if name == 'before' else history}) | {rule} | {total:+.3f} | {worst:+.3f} | "
                  f"{agree:.0%} |")
    wins = np.mean([measured[LINEAR_RULE][k] < measured[HOLD_RULE][k] for k in range(len(schedules))])
    print(f"\nend to end, linear beats hold on {wins:.0%} of the schedules")
    for name in ("before", "after"):
        mixed = []
        for schedule in schedules:
            rules = tuple(min((HOLD_RULE, LINEAR_RULE), key=lambda r: edges[(name, r)][i, j]) if j > i + 1
                          else HOLD_RULE for i, j in schedule.segments())
            per_step = core.reuse.step_rules(schedule, rules)
            mixed.append(relative_l1(sampler.run(schedule.mask(), reuse=per_step).final, full.final))
        ratio = [m / l for m, l in zip(mixed, measured[LINEAR_RULE])]
        print(f"per-segment rules from the {name} edges against linear everywhere: worse on "
              f"{np.mean([r > 1.0 for r in ratio]):.0%} of the schedules, error x{np.median(ratio):.2f} (median), "
              f"x{max(ratio):.2f} (worst)")
    print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
