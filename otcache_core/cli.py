"""Command line: ``python -m otcache_core <command>``.

Commands: ``schedule`` (predict a schedule for any budget and step count), ``reference`` (leximax path
over an edge-error matrix), ``demo`` (all three stages on the embedded testbed) and ``bench`` (the
fidelity benchmark). Bad input exits with status 2 and one line on stderr saying what to change.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from .calibration import Calibration
from .reuse import rules_summary
from .errors import OTCacheError
from .graph import edge_weight_matrix, solve_reference
from .interpolation import LAMBDA_MAPPINGS, predict
from .jsonfile import read_json_file
from .plan import BudgetRule, SchedulePlan
from .schedule import Schedule, check_steps, parse_step_list


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(f"{self.prog}: {message}")


def _schedule_command(args: argparse.Namespace) -> dict:
    if args.calibration:
        if args.reference or args.anchor:
            raise UsageError("give either --calibration or --reference/--anchor, not both")
        calibration = Calibration.load(args.calibration)
        plan = SchedulePlan.from_calibration(
            calibration, BudgetRule("steps", args.budget, args.steps), mapping=args.mapping, warmup=args.warmup
        )
        resolved = plan.resolve(args.steps)
        prediction, notes, rules = resolved.prediction, list(resolved.notes), resolved.rules
        notes.append(f"reuse rules: {resolved.rules_source}")
        if calibration.anchor.method == "published":
            notes.append("the anchor is a published graph schedule, not an Optuna-searched one")
        source_steps = calibration.steps
    else:
        if not (args.reference and args.anchor):
            raise UsageError("give --reference and --anchor step lists (or --calibration FILE)")
        source_steps = args.source_steps or args.steps
        reference = Schedule.from_steps(parse_step_list(args.reference, name="--reference"), source_steps)
        anchor = Schedule.from_steps(parse_step_list(args.anchor, name="--anchor"), source_steps)
        prediction = predict(reference, anchor, args.steps, args.budget, mapping=args.mapping, warmup=args.warmup)
        notes = [] if source_steps == args.steps else [f"schedule resampled from T={source_steps} to T={args.steps}"]
        rules = None
    out = prediction.to_dict()
    out["source_steps"] = source_steps
    if rules is not None:
        out["rules"] = [rule.name for rule in rules]
    out["notes"] = notes
    return out


def _reference_command(args: argparse.Namespace) -> dict:
    doc = read_json_file(args.errors)
    if not isinstance(doc, dict) or "steps" not in doc or "errors" not in doc:
        raise OTCacheError(f"{args.errors}: expected an object with 'steps' and 'errors'")
    steps = doc["steps"]
    checks = (("steps", lambda: check_steps(steps)), ("errors", lambda: edge_weight_matrix(doc["errors"], steps)))
    for field, check in checks:  # errors naming the file and the field
        try:
            check()
        except OTCacheError as exc:
            raise OTCacheError(f"{args.errors}: field {field!r}: {str(exc)[:200]}") from None
    start = time.perf_counter()
    path = solve_reference(
        doc["errors"], steps, args.budget, max_skip=args.max_skip, objective=args.objective, gamma=args.gamma
    )
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "budget": path.schedule.budget,
        "compute_steps": list(path.schedule.compute_steps),
        "ideal_speedup": path.schedule.ideal_speedup,
        "objective": path.objective,
        "segment_errors": list(path.segment_errors),
        "worst_segment": path.worst_segment,
        "solve_seconds": seconds,
    }


def _print_schedule(out: dict) -> None:
    print(f"schedule: {out['budget']}/{out['steps']} steps computed, ideal speedup {out['ideal_speedup']:.2f}x")
    print(f"compute_steps: {','.join(str(s) for s in out['compute_steps'])}")
    if "lambda" in out:
        extra = " (extrapolated below the anchor)" if out.get("extrapolated") else ""
        print(f"lambda: {out['lambda']:.4f}, regime: {out['regime']}{extra}")
    if "rules" in out:
        print(f"reuse rules per segment: {','.join(out['rules'])} ({rules_summary(out['rules'])})")
    for note in out.get("notes", []):
        print(f"note: {note}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="otcache", description="OTCache: step-caching schedules for diffusion models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("schedule", help="predict a schedule for any budget and step count")
    p.add_argument("--reference", help="reference schedule on T0 steps, e.g. 0,1,2,4,7,...")
    p.add_argument("--anchor", help="anchor schedule on T0 steps (lower budget than the reference)")
    p.add_argument("--source-steps", type=int, help="T0, the step count of --reference/--anchor (default: --steps)")
    p.add_argument("--calibration", help="a calibration JSON file instead of --reference/--anchor")
    p.add_argument("--steps", type=int, required=True, help="T, steps of the run")
    p.add_argument("--budget", type=int, required=True, help="B, computed steps (1..T)")
    p.add_argument("--mapping", choices=LAMBDA_MAPPINGS, default="linear", help="lambda(B): linear in B or in 1/B")
    p.add_argument("--warmup", type=int, default=0, help="always compute the first P steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("reference", help="leximax reference path over an edge-error matrix")
    p.add_argument("--errors", required=True, help='JSON {"steps": T, "errors": (T+1)x(T+1) matrix}')
    p.add_argument("--budget", type=int, required=True, help="B, computed steps")
    p.add_argument("--max-skip", type=int, default=None, help="K, longest segment j - i (default: no bound)")
    p.add_argument("--objective", choices=("leximax", "power"), default="leximax")
    p.add_argument("--gamma", type=float, default=2.0, help="exponent of the power objective")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("demo", help="run all three stages on the embedded testbed model")
    p.add_argument("--out", default="otcache_out", help="output folder (default: otcache_out)")
    p.add_argument("--quick", action="store_true", help="smaller run (half the samples and trials)")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("bench", help="fidelity benchmark on the testbed (prints a markdown table)")
    p.add_argument("--json", dest="json_out", help="write results to this JSON file")
    p.add_argument("--quick", action="store_true", help="fewer samples and budgets")
    p.add_argument("--seed", type=int, default=0)
    return parser


def _limit_threads(limit: int = 2) -> None:
    """The testbed model is small: more than two CPU threads mostly adds contention (and timings
    from a fixed thread count are comparable across machines)."""
    import torch

    torch.set_num_threads(max(1, min(limit, torch.get_num_threads())))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command == "schedule":
            out = _schedule_command(args)
            print(json.dumps(out)) if args.json else _print_schedule(out)
        elif args.command == "reference":
            out = _reference_command(args)
            print(json.dumps(out)) if args.json else _print_schedule(out)
        elif args.command == "demo":
            from .testbed.demo import run_demo

            _limit_threads()
            run_demo(out_dir=args.out, quick=args.quick, seed=args.seed)
        elif args.command == "bench":
            from .testbed.bench import run_bench

            _limit_threads()
            run_bench(json_path=args.json_out, quick=args.quick, seed=args.seed)
    except (UsageError, OTCacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
