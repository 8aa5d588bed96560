"""Fidelity inside ComfyUI: a trained ComfyUI Flux, ComfyUI's own sampling, held-out prompts.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/comfyui_fidelity.py [--json out.json] [--quick]

The model is the DigitFlux testbed (``tests/comfyui/digit_flux.py``: a ``comfy.ldm.flux.model.Flux``
trained on MNIST, prompts encoded by a real ``comfy.sd.CLIP``). Every output is sampled by
``comfy.sample.sample`` (the KSampler path), euler / simple, T = 30, cfg 4, and compared with the
full-compute output of the same prompt and seed: PSNR of the decoded 28x28 digits in [0, 1], mean
and worst sample.

Held out: calibrations see only even-digit prompts and seeds 0, 1 (the node's default seeds); the
evaluation uses the odd-digit prompts, four phrasings each, with seeds 1000 and 1001 (40 samples),
none of which any calibration or setting here was chosen on.

Methods, each at exactly B computed steps of 30 (checked from OTCache's run reports), each with a
reuse mode (``blocks`` / ``model``) and a reuse rule (OTCache Apply's ``reuse`` input):

* **default pipeline**: OTCache Calibrate -> OTCache Schedule -> OTCache Apply with every input at
  its default (mode auto, reuse rules measured per segment, reuse ``calibrated``) except what must
  match the sampling (steps, cfg, sampler, scheduler) and the prompt: one calibration prompt
  connected as the positive;
* **calibration draws**: a calibration is a draw (its few samples decide much); each setting is
  also calibrated three times on other prompts (the connected positive "a handwritten digit zero",
  "four", "eight"; for five prompts, the phrasings rotated) and the mean of the three is reported:
  the default pipeline, five prompts x two seeds (one prompt per even digit, through the
  ``prompts`` input) and one prompt x ten seeds (as many samples, one prompt);
* **otcache**: the default calibration in ``model`` mode, and with ``hold`` as the only measured
  rule, in each mode;
* **even**: evenly spaced computed steps with each single rule (``hold``, ``linear``,
  ``quadratic``), in each mode. The shipped ``generic`` preset gives the same schedules (checked at
  every budget), so its rows are these;
* **former generic**: the FLUX.1-dev published shape (the ``flux.1-dev`` preset, which the
  ``generic`` preset used to copy), with ``hold`` and ``linear``, in each mode;
* **easycache**: ComfyUI's own EasyCache node, its ``reuse_threshold`` bisected until the run
  computes B steps. Two faults of EasyCache at ComfyUI 0.3.64 would make it lose for reasons that
  are not its method (COMFYUI_NOTES.md): it adds its cached difference *in place* to the model
  input, which for an fp32 model is the sampler's own state, and it adds every stream's difference
  to every row of a batched cond/uncond call. It gets a fair run here: an outer ``DIFFUSION_MODEL``
  wrapper hands it one stream per call (the rows of one cond uuid, as a copy), which is what
  upstream's later fix amounts to. Its own defaults always compute the first 15 % and the last 5 %
  of the run; budgets that cannot be reached with them are bisected with 0 % / 100 % instead. The
  wrapper's own effect is measured: EasyCache at threshold 0 through it must reproduce the
  full-compute output.

It prints its own wall time: about 5 minutes on one thread of a shared 2-core machine. One torch thread
is the default: with two, every small operation waited for a core another process held, and the same
run took 31 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

BUDGETS = (14, 12, 10, 8, 6)
EVAL_SEEDS = (1000, 1001)
MODES = ("blocks", "model")
RULES = ("hold", "linear", "quadratic")
DRAW_DIGITS = (0, 4, 8)
"""The connected positive of the three calibrations of one setting: a handwritten digit zero, four, eight."""



@dataclass
class Row:
    """One method's PSNR per budget: mean and worst sample over the evaluation set."""

    method: str
    mode: str
    rule: str
    mean: dict[int, float] = field(default_factory=dict)
    worst: dict[int, float] = field(default_factory=dict)
    note: str = ""


class Bench:
    """The evaluation set, its full-compute reference and the scoring of a patched model."""

    def __init__(self, pack: Any, df: Any, testbed: Any, prompts: list[str], seeds: tuple[int, ...], steps: int) -> None:
        import comfy.sample
        import torch

        self.pack, self.df, self.testbed, self.steps = pack, df, testbed, steps
        self.size = len(prompts) * len(seeds)
        conds = [testbed.encode(p)[0] for p in prompts]
        rows = [(c, s) for c in conds for s in seeds]  # prompt-major
        context = torch.cat([c[0] for c, _ in rows])
        pooled = torch.cat([c[1]["pooled_output"] for c, _ in rows])
        self.positive = [[context, {"pooled_output": pooled}]]
        self.negative = testbed.negative()
        self.latent = df.empty_latent(self.size)
        self.noise = torch.cat([comfy.sample.prepare_noise(df.empty_latent(1), s) for _, s in rows])
        self.reports: list[Any] = []
        self.pack.nodes.cache_hooks.add_report_listener(self.reports.append)
        self.reference = self.sample(testbed.patcher)

    def sample(self, model: Any) -> Any:
        """Decoded digits in [0, 1] of one run of the whole evaluation set through ``comfy.sample.sample``."""
        import comfy.sample

        out = comfy.sample.sample(model, self.noise, self.steps, self.df.CFG, self.df.SAMPLER, self.df.SCHEDULER,
                                  self.positive, self.negative, self.latent, seed=0, disable_pbar=True)
        return ((self.df.decode_latent(out) + 1.0) / 2.0).clamp(0.0, 1.0)

    def psnrs(self, images: Any) -> list[float]:
        """PSNR of each sample against its full-compute output (capped at 100 dB)."""
        from_core = self.pack.otcache_core.metrics.psnr
        return [from_core(images[i : i + 1], self.reference[i : i + 1]) for i in range(self.size)]

    def score_otcache(self, model: Any, plan: Any, mode: str, rule: str, budget: int) -> list[float]:
        """OTCache Apply with ``plan`` in ``mode`` with ``rule`` (its ``reuse`` input), sample, check that
        exactly ``budget`` steps were computed, score."""
        (patched,) = self.pack.nodes.OTCacheApply().apply(model, plan, mode, 0.0, 1.0, rule)
        before = len(self.reports)
        images = self.sample(patched)
        computed = len(self.reports[-1].computed) if len(self.reports) > before else None
        if computed != budget:
            raise RuntimeError(f"{plan.label}: the run computed {computed} steps, expected {budget}")
        return self.psnrs(images)


def summarize(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), min(values)


# --------------------------------------------------------------------------------------------------
# EasyCache, given a fair run
# --------------------------------------------------------------------------------------------------


class OneStreamPerCall:
    """``DIFFUSION_MODEL`` wrapper outside EasyCache: one call per cond uuid, on a copy of its rows."""

    def __call__(self, executor, *args, **kwargs):
        import torch

        x, options = args[0], args[-1]
        uuids = options.get("uuids") or [None]
        n = x.shape[0] // len(uuids)
        outputs = []
        for i, uuid in enumerate(uuids):
            rows = slice(i * n, (i + 1) * n)

            def take(value):
                if torch.is_tensor(value) and value.ndim and value.shape[0] == x.shape[0]:
                    return value[rows].clone()
                return value

            own = {**options, "uuids": [uuid]}
            if "cond_or_uncond" in options:
                own["cond_or_uncond"] = [options["cond_or_uncond"][i]]
            outputs.append(executor(*[take(a) for a in args[:-1]], own, **{k: take(v) for k, v in kwargs.items()}))
        return torch.cat(outputs)


class ComputedSteps:
    """``DIFFUSION_MODEL`` wrapper inside EasyCache: the distinct sigmas at which the model really ran."""

    def __init__(self) -> None:
        self.sigmas: set[float] = set()

    def __call__(self, executor, *args, **kwargs):
        self.sigmas.add(round(float(args[-1]["sigmas"].reshape(-1)[0]), 7))
        return executor(*args, **kwargs)


def easycache_model(model: Any, threshold: float, start: float, end: float) -> tuple[Any, ComputedSteps]:
    import comfy.patcher_extension as pe
    from comfy_extras.nodes_easycache import EasyCacheNode

    outer = model.clone()
    outer.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_one_stream_per_call", OneStreamPerCall())
    patched = EasyCacheNode.execute(outer, threshold, start, end, False).result[0]
    counter = ComputedSteps()
    patched.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_computed_steps", counter)
    return patched, counter


class EasyCacheSearch:
    """EasyCache's threshold bisected (geometrically) to a computed-step count; every probe is kept, so
    later budgets start from the bracket earlier probes already found."""

    def __init__(self, bench: Bench, start: float, end: float) -> None:
        self.bench, self.start, self.end = bench, start, end
        self.probes: dict[float, tuple[int, Any]] = {}

    def probe(self, threshold: float) -> int:
        if threshold not in self.probes:
            model, counter = easycache_model(self.bench.testbed.patcher, threshold, self.start, self.end)
            images = self.bench.sample(model)
            self.probes[threshold] = (len(counter.sigmas), images)
        return self.probes[threshold][0]

    def at(self, budget: int, tries: int = 12) -> tuple[list[float], str] | None:
        """PSNRs of a run computing exactly ``budget`` steps, and its threshold; ``None`` if not found."""
        for _ in range(tries):
            hits = [t for t, (n, _) in self.probes.items() if n == budget]
            if hits:
                t = hits[0]
                return self.bench.psnrs(self.probes[t][1]), f"threshold {t:.4g} (start {self.start:.0%}, end {self.end:.0%})"
            lo = max([t for t, (n, _) in self.probes.items() if n > budget], default=1e-4)
            hi = min([t for t, (n, _) in self.probes.items() if n < budget], default=3.0)  # the node's maximum
            if hi <= lo or (hi in self.probes and lo in self.probes and hi / lo < 1.0005):
                return None
            self.probe(math.sqrt(lo * hi))
        return None


def easycache_row(bench: Bench, budgets: tuple[int, ...]) -> Row:
    """EasyCache at its own start / end percent (15 %, 95 %); where that cannot reach a budget, at 0 / 100 %."""
    row = Row("easycache (ComfyUI node)", "model", "its own")
    searches = [EasyCacheSearch(bench, 0.15, 0.95), EasyCacheSearch(bench, 0.0, 1.0)]
    notes = []
    for budget in budgets:
        found = searches[0].at(budget) or searches[1].at(budget)
        if not found:
            notes.append(f"B={budget}: not reached")
            continue
        values, how = found
        row.mean[budget], row.worst[budget] = summarize(values)
        notes.append(f"B={budget}: {how}")
    row.note = "; ".join(notes)
    return row


# --------------------------------------------------------------------------------------------------
# OTCache
# --------------------------------------------------------------------------------------------------


def node_defaults(node_class: Any) -> dict[str, Any]:
    """The default value of every widget input of a node (what a freshly added node holds)."""
    defaults = {}
    for section in ("required", "optional"):
        for name, spec in (node_class.INPUT_TYPES().get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if "default" in options:
                defaults[name] = options["default"]
            elif isinstance(spec[0], (list, tuple)) and spec[0]:
                defaults[name] = spec[0][0]
    return defaults


def calibrate(bench: Bench, folder: Path, name: str, prompts: list[str], **overrides: Any) -> tuple[Any, float]:
    """OTCache Calibrate at its defaults (plus ``overrides``) on ``prompts``: the first is the connected
    positive, the others go to the ``prompts`` input. Returns the record and its wall time."""
    df, nodes = bench.df, bench.pack.nodes
    inputs = node_defaults(nodes.OTCacheCalibrate)
    inputs.update(steps=bench.steps, cfg=df.CFG, sampler_name=df.SAMPLER, scheduler=df.SCHEDULER, name=name,
                  storage="memory", prompts="\n".join(prompts[1:]), **overrides)
    inputs["rules"] = nodes.calibrate_node.parse_rule_list(inputs.pop("reuse_rules"))  # as the node parses it
    start = time.perf_counter()
    record, _, _, _ = nodes.calibrate_node.run_calibration(
        bench.testbed.patcher, bench.testbed.encode(prompts[0]), bench.negative, {"samples": df.empty_latent(1)},
        clip=bench.testbed.clip, folder=folder, **{k: v for k, v in inputs.items() if k != "latent_image"})
    return record, time.perf_counter() - start


def plan_from(bench: Bench, calibration: Any, budget: int) -> Any:
    """OTCache Schedule at its defaults with ``calibration`` connected and ``budget`` of ``steps``."""
    schedule_node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(schedule_node)
    inputs.update(steps=bench.steps, budget=budget, budget_as="computed steps")
    return schedule_node().make(calibration=calibration, **inputs)[0]


def otcache_row(bench: Bench, label: str, mode: str, rule: str, plan_for: Callable[[int], Any],
                budgets: tuple[int, ...]) -> Row:
    row = Row(label, mode, rule)
    for budget in budgets:
        row.mean[budget], row.worst[budget] = summarize(
            bench.score_otcache(bench.testbed.patcher, plan_for(budget), mode, rule, budget))
    return row


def draws_row(bench: Bench, label: str, mode: str, records: list[Any], budgets: tuple[int, ...]) -> Row:
    """Several calibrations of one setting (other prompts): the mean of their mean PSNRs, the worst
    sample of all, and each calibration's mean in the note."""
    rows = [otcache_row(bench, label, mode, "calibrated", lambda b, r=r: plan_from(bench, r, b), budgets)
            for r in records]
    row = Row(f"{label}, mean of {len(rows)}", mode, "calibrated")
    for b in budgets:
        row.mean[b] = statistics.fmean(r.mean[b] for r in rows)
        row.worst[b] = min(r.worst[b] for r in rows)
    row.note = "per calibration: " + "; ".join(f"B={b} " + " / ".join(f"{r.mean[b]:.2f}" for r in rows)
                                              for b in budgets)
    return row


def even_plan(bench: Bench, budget: int) -> Any:
    core = bench.pack.otcache_core
    schedule = core.warp.sample_warp(core.warp.identity_warp(), bench.steps, budget)
    return core.plan.SchedulePlan.from_schedule(schedule, label=f"even {budget}")


def preset_plan(bench: Bench, preset: str, budget: int) -> Any:
    """OTCache Schedule at its defaults with a shipped ``preset`` and ``budget`` of ``steps``."""
    schedule_node = bench.pack.nodes.OTCacheSchedule
    inputs = node_defaults(schedule_node)
    inputs.update(preset=preset, steps=bench.steps, budget=budget, budget_as="computed steps")
    return schedule_node().make(**inputs)[0]


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def print_table(rows: list[Row], budgets: tuple[int, ...], steps: int) -> None:
    head = " | ".join(f"B={b}" for b in budgets)
    print(f"\nPSNR (dB) against full compute, held-out prompts, T = {steps}: mean / worst sample\n")
    print(f"| method | mode | reuse | {head} |")
    print("|---|---|---|" + "---:|" * len(budgets))
    for row in rows:
        cells = " | ".join(f"{row.mean[b]:.2f} / {row.worst[b]:.2f}" if b in row.mean else "-" for b in budgets)
        print(f"| {row.method} | {row.mode} | {row.rule} | {cells} |")
    for row in rows:
        if row.note:
            print(f"  {row.method}: {row.note}")


def setup(threads: int) -> tuple[Any, Any]:
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    from comfyui.conftest import REPO_ROOT, _import_comfyui_nodes, load_pack  # sets up comfy for the CPU

    import torch

    torch.set_num_threads(threads)
    _import_comfyui_nodes()
    pack = load_pack(REPO_ROOT, "otcache_pack")
    from comfyui import digit_flux

    return pack, digit_flux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 is fastest on a shared machine (a second thread waits on a busy core)")
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--quick", action="store_true", help="4 evaluation prompts, one seed, no EasyCache (a smoke run)")
    parser.add_argument("--json", help="also write the table here")
    parser.add_argument("--weights", help="another DigitFlux weight file (default: the shipped one)")
    args = parser.parse_args()
    started = time.perf_counter()
    pack, df = setup(args.threads)
    budgets = tuple(args.budgets)
    testbed = df.load(args.weights)
    prompts = df.evaluation_prompts()[:: 5 if args.quick else 1]
    seeds = EVAL_SEEDS[:1] if args.quick else EVAL_SEEDS
    bench = Bench(pack, df, testbed, prompts, seeds, df.STEPS)
    print(f"evaluation: {len(prompts)} held-out prompts x {len(seeds)} seeds = {bench.size} samples; "
          f"full-compute reference in {time.perf_counter() - started:.0f} s", flush=True)

    rows: list[Row] = []
    several = [df.prompt(d, k % len(df.TEMPLATES)) for k, d in enumerate(range(0, 10, 2))]
    one = several[:1]
    timings: dict[str, float] = {}

    def calibrated(label: str, mode: str, rule: str, record: Any) -> None:
        rows.append(otcache_row(bench, label, mode, rule, lambda b: plan_from(bench, record, b), budgets))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)

        def calibration(key: str, prompts: list[str], **overrides: Any) -> Any:
            record, timings[key] = calibrate(bench, folder, key, prompts, **overrides)
            return record

        default = calibration("default", one)
        calibrated("default pipeline (1 prompt, 2 seeds)", "auto", "calibrated", default)
        # Calibrations are draws: the same setting on other prompts. Three of each, phrasings rotated.
        draws = [[df.prompt(d, (k + n) % len(df.TEMPLATES)) for k, d in enumerate(range(0, 10, 2))] for n in range(3)]
        singles = [[df.prompt(d, 0)] for d in DRAW_DIGITS]
        rows.append(draws_row(bench, "default pipeline (1 prompt, 2 seeds)", "auto",
                              [default] + [calibration(f"default {p[0]}", p) for p in singles[1:]], budgets))
        rows.append(draws_row(bench, f"otcache ({len(several)} prompts, 2 seeds)", "auto",
                              [calibration(f"prompts {n}", p) for n, p in enumerate(draws)], budgets))
        rows.append(draws_row(bench, f"otcache (1 prompt, {2 * len(several)} seeds)", "auto",
                              [calibration(f"seeds {p[0]}", p, samples=2 * len(several)) for p in singles], budgets))
        auto_mode = bench.pack.nodes.apply_node.AUTO_MODE
        for mode in MODES:
            if mode != auto_mode:  # auto_mode: the default pipeline above
                calibrated("otcache (1 prompt, 2 seeds)", mode, "calibrated", calibration(mode, one, mode=mode))
            calibrated("otcache (1 prompt, 2 seeds, hold only)", mode, "hold",
                       calibration(f"{mode} hold", one, mode=mode, reuse_rules="hold"))
            for rule in RULES:
                rows.append(otcache_row(bench, "even", mode, rule, lambda b: even_plan(bench, b), budgets))
            for rule in RULES[:2]:
                rows.append(otcache_row(bench, "former generic (flux.1-dev shape)", mode, rule,
                                        lambda b: preset_plan(bench, "flux.1-dev", b), budgets))
            print(f"mode {mode} done at {time.perf_counter() - started:.0f} s", flush=True)
    same = all(preset_plan(bench, "generic", b).resolve(bench.steps).schedule
               == even_plan(bench, b).resolve(bench.steps).schedule for b in budgets)
    print(f"generic preset: {'the same schedules as even spacing' if same else 'SCHEDULES DIFFER FROM EVEN'} "
          f"at every budget (its rows are the even rows)", flush=True)
    if not args.quick:
        model, _ = easycache_model(testbed.patcher, 0.0, 0.15, 0.95)
        exact = summarize(bench.psnrs(bench.sample(model)))
        rows.append(easycache_row(bench, budgets))
        rows[-1].note += f"; threshold 0 through the fair-run wrapper: {exact[0]:.1f} dB mean against full compute"
    print_table(rows, budgets, df.STEPS)
    print("\ncalibration wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    wall = time.perf_counter() - started
    print(f"wall time: {wall:.0f} s ({wall / 60:.1f} min) on {args.threads} thread(s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [row.__dict__ for row in rows], "wall_seconds": wall,
                                               "samples": bench.size}, indent=1))


if __name__ == "__main__":
    main()
