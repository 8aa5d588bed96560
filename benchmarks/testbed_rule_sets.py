"""Which candidate reuse rules should a calibration measure? Full OTCache pipelines on the testbed.

    python benchmarks/testbed_rule_sets.py bench.json [--rules hold,linear] [--modes model blocks]

For each reuse mode it calibrates OTCache (rollout edges, the bench's settings) with the candidate
rules given by ``--rules`` and compares it with the corrected calibration of the same mode in
``bench.json`` (written by ``python -m otcache_core bench``, whose calibrations measure the default
candidates), and with evenly spaced steps under plain linear extrapolation. Every budget is
evaluated on two sets, printed side by side: a *development* set (32 new samples of the calibration
classes, seed 888), on which a choice may be made, and the bench's held-out evaluation set (other
classes), which only reports. PSNR mean / worst image, dB. About 15 minutes per mode on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from otcache_core.testbed.bench import BenchSettings  # noqa: E402
from otcache_core.calibrate import CalibrationSettings, calibrate, default_budgets  # noqa: E402
from otcache_core.calibration import Calibration  # noqa: E402
from otcache_core.plan import BudgetRule, SchedulePlan  # noqa: E402
from otcache_core.schedule import Schedule  # noqa: E402
from otcache_core.testbed.task import (  # noqa: E402
    CALIBRATION_CLASSES,
    anchor_objective,
    fidelity,
    load_task,
    make_samples,
)
from otcache_core.warp import identity_warp, sample_warp  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json")
    parser.add_argument("--rules", default="hold,linear")
    parser.add_argument("--modes", nargs="+", default=["model", "blocks"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = BenchSettings()
    task = load_task(settings.task)
    T = task.steps
    development = make_samples("development", 32, CALIBRATION_CLASSES, 888, task.calibration.noise.shape[1:])
    bench = json.loads(Path(args.bench_json).read_text())
    distance, objective_name, _ = anchor_objective(settings.anchor_share)
    ref, anchor = default_budgets(T)
    rules = tuple(args.rules.split(","))
    for mode in args.modes:
        calibrations = {"bench (" + ",".join(bench["calibration"]["corrected"][mode]["edge_errors"]["candidates"]) + ")":
                        Calibration.from_dict(bench["calibration"]["corrected"][mode])}
        outcome = calibrate(task.sampler(task.calibration, mode),
                            CalibrationSettings(ref, anchor, strength=settings.strength, max_skip=settings.max_skip,
                                                trials=settings.trials, seed=0, rules=rules),
                            distance=distance, objective_name=objective_name, name=f"rules-{mode}")
        calibrations["(" + ",".join(rules) + ")"] = outcome.calibration
        print(f"\n{mode} mode: PSNR mean / worst (dB), development set | held-out set\n")
        print("| method | " + " | ".join(f"B={b}" for b in settings.budgets) + " |")
        print("|---|" + "---|" * len(settings.budgets))
        for name, samples in (("development", development), ("held-out", task.evaluation)):
            sampler = task.sampler(samples, mode)
            full = sampler.sample(Schedule.all_compute(T))

            def score(schedule: Schedule, reuse) -> str:
                fid = fidelity(sampler.sample(schedule, rules=reuse), full)
                return f"{fid.psnr:.2f} / {fid.psnr_worst:.2f}"

            cells = [score(sample_warp(identity_warp(), T, b), "linear") for b in settings.budgets]
            print(f"| uniform-linear, {name} | " + " | ".join(cells) + " |")
            for label, cal in calibrations.items():
                cells = []
                for b in settings.budgets:
                    resolved = SchedulePlan.from_calibration(cal, BudgetRule("steps", b, T)).resolve(T)
                    cells.append(score(resolved.schedule, list(resolved.segment_rules())))
                print(f"| otcache {label}, {name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
