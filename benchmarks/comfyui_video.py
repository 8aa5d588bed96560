"""Video fidelity inside ComfyUI: DigitWan (a trained ComfyUI Wan 2.1 T2V drawing moving digits).

    COMFYUI_PATH=... OTCACHE_PEER_PACKS=... python benchmarks/comfyui_video.py [--quick] [--json out.json]

The model is ``tests/comfyui/digit_wan.py`` (a ``comfy.ldm.wan.model.WanModel`` from ComfyUI's Wan 2.1
T2V config, its discrete-flow sampling at shift 8, 8 latent frames of 32 x 32 pixels), sampled by
``comfy.sample.sample`` (euler / simple, T = 30, cfg as the testbed sets). Every output is compared with
the full-compute clip of the same prompt and seed, two figures per sample:

* **PSNR over all decoded frames** (the clip's mean squared error over every pixel of every frame);
* **motion PSNR**: the PSNR of the consecutive-frame differences ``f[t+1] - f[t]`` against full
  compute's, which falls when motion freezes (a cached clip whose frames lag or stand still) or jitters.

Held out as on DigitFlux: calibrations see even-digit prompts only; the evaluation set is the odd-digit
prompts (every motion) with other seeds. Rows (every OTCache row checked to compute exactly B steps):

* **default pipeline**: OTCache Calibrate at its defaults on one even digit (five draws), Schedule, Apply;
* **even** spacing with each rule;
* the **Wan presets** (``wan2.1-t2v-1.3b``, ``wan2.1-t2v-14b``) at Apply's defaults (their own rule) and
  with ``hold``, ``horizon1`` and ``horizon2``;
* **peers**, each its real node at equal computed steps: ComfyUI's EasyCache (threshold bisected) and
  TaylorSeer Lite (``wanvideo``, its natural counts), TeaCache and MagCache (their Wan 2.1 T2V 1.3B
  settings, threshold bisected; computed steps counted on the first transformer block), the last three
  from ``$OTCACHE_PEER_PACKS``;
* **calibrate small, run big**: the default pipeline calibrated on fewer latent frames (``--small-frames``,
  default 4 of the 8) and run at 8, against the same calibration made at 8 frames;
* **Wan 2.2's two experts** as the shipped workflow runs them: two KSamplerAdvanced over 20 steps, the
  first (steps 0-10, adding the noise, returning it with its leftover noise) and the second (10-20, no
  noise added), each model through its own OTCache Apply with its own schedule of its 10 steps (DigitWan
  as both experts, and with ``--experts`` a high- and a low-noise expert fine-tuned from it by
  ``tools/train_digit_wan.py --init --sigmas``). Budget splits of 10
  computed steps (high-noise + low-noise: 6 + 4 as shipped, 5 + 5, 4 + 6, 7 + 3) against the split's
  own full compute, the workflow's Schedule nodes (:data:`SPLIT_PRESETS`) at 6 + 4, and one schedule of
  10 of 20 across one sampler's whole run against that run's; on the development prompts (where the
  split is chosen) and on the held-out ones (where it is confirmed).

``--only`` runs one part (``default``, ``small``, ``presets``: development and held-out clips, ``splits``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfyui_fidelity import (  # noqa: E402  (a sibling script)
    Bench, Row, ThresholdSearch, calibrate, easycache_search, even_plan, load_peer_node, load_taylorseer, mean_of,
    node_defaults, plan_from, preset_plan, setup, summarize, taylorseer_row)

BUDGETS = (20, 16, 14, 12, 10, 9, 8, 7, 6)
SHORT_BUDGETS = (20, 16, 14, 12, 10, 8)
"""Where the presets and the small calibrations are measured (the CPU time of a full run is the limit)."""
RULES = ("hold", "linear", "horizon2", "taylor2")
DRAWS = (0, 2, 4, 6, 8)
WAN_PRESETS = ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b")


class VideoBench(Bench):
    """:class:`comfyui_fidelity.Bench` on clips: ``psnrs`` over all frames, and the motion figure."""

    def __init__(self, pack: Any, dw: Any, testbed: Any, prompts: list[str], seeds: tuple[int, ...]) -> None:
        self.motion: list[list[float]] = []  # the motion PSNRs of every sampled run, in order
        super().__init__(pack, dw, testbed, prompts, seeds, dw.STEPS)

    def sample(self, model: Any) -> torch.Tensor:
        import comfy.sample

        out = comfy.sample.sample(model, self.noise, self.steps, self.testbed.cfg, self.df.SAMPLER, self.df.SCHEDULER,
                                  self.positive, self.negative, self.latent, seed=0, disable_pbar=True)
        return ((self.df.decode_latent(out) + 1.0) / 2.0).clamp(0.0, 1.0)  # [N, T, 1, H, W]

    def psnrs(self, clips: torch.Tensor) -> list[float]:
        """PSNR over all frames of each clip; the motion PSNRs go to :attr:`motion`."""
        self.motion.append(clip_psnr(frame_steps(clips), frame_steps(self.reference)))
        return clip_psnr(clips, self.reference)


def frame_steps(clips: torch.Tensor) -> torch.Tensor:
    """``f[t+1] - f[t]`` of clips ``[N, T, ...]``."""
    return clips[:, 1:] - clips[:, :-1]


def clip_psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """``10 log10(1 / MSE)`` per clip over every element (capped at 100 dB)."""
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)
    return [min(100.0, 10 * math.log10(1.0 / max(float(m), 1e-30))) for m in mse]


def scored(bench: VideoBench, row: Row, budget: int, values: list[float], motion: dict[str, dict[int, float]]) -> None:
    row.mean[budget], row.worst[budget] = summarize(values)
    motion.setdefault(row.method + " | " + row.rule, {})[budget] = statistics.fmean(bench.motion[-1])


def otcache_video_row(bench: VideoBench, label: str, mode: str, rule: str, plan_for: Callable[[int], Any],
                      budgets: tuple[int, ...], motion: dict) -> Row:
    row = Row(label, mode, rule)
    for budget in budgets:
        scored(bench, row, budget, bench.score_otcache(bench.testbed.patcher, plan_for(budget), mode, rule, budget),
               motion)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="4 prompts, one seed, one draw")
    parser.add_argument("--all-seeds", action="store_true", help="both evaluation seeds (40 clips; default 20)")
    parser.add_argument("--draws", type=int, default=len(DRAWS), help="calibration draws (even digits)")
    parser.add_argument("--weights", help="another DigitWan file (default: the shipped one)")
    parser.add_argument("--experts", nargs=2, metavar=("HIGH", "LOW"),
                        help="Wan 2.2-style expert files (tools/train_digit_wan.py --init --sigmas) for the split rows")
    parser.add_argument("--only", choices=("default", "small", "presets", "splits"),
                        help="only the default pipeline's draws (and, with 'small', its calibrations at fewer frames), "
                             "the preset rows (development and held out) or the Wan 2.2 split rows")
    parser.add_argument("--small-frames", type=int, help="latent frames of the small calibrations (default: half)")
    parser.add_argument("--reuse-rules", help="Calibrate's reuse_rules for the default pipeline rows (default: its own)")
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    pack, _ = setup(args.threads)
    from comfyui import digit_wan as dw

    testbed = dw.load(args.weights)
    prompts = dw.evaluation_prompts()[:: 5 if args.quick else 1]
    seeds = dw.EVALUATION_SEEDS if args.all_seeds and not args.quick else dw.EVALUATION_SEEDS[:1]
    bench = VideoBench(pack, dw, testbed, prompts, seeds)
    print(f"DigitWan: {bench.size} held-out clips, T = {bench.steps}, cfg {testbed.cfg}; reference in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    if args.only == "splits":
        print_splits(expert_splits(pack, dw, testbed, bench, args))
        return
    if args.only == "presets":
        development = VideoBench(pack, dw, testbed, dw.calibration_prompts(), dw.CALIBRATION_SEEDS[:1])
        for side, b in (("development", development), ("held out", bench)):
            print_video_table(preset_rows(b, {}), {}, b.steps, f"{side} clips")
        return
    motion: dict[str, dict[int, float]] = {}
    rows: list[Row] = []
    lines: list[str] = []
    draws = DRAWS[:1] if args.quick else DRAWS[: args.draws]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rules = {"reuse_rules": args.reuse_rules} if args.reuse_rules else {}
        records = [calibrate(bench, folder, f"draw {d}", [dw.prompt(d, d // 2 % len(dw.MOTIONS))], **rules)[0]
                   for d in draws]
        print(f"calibrations done at {time.perf_counter() - started:.0f} s", flush=True)
        own = [otcache_video_row(bench, f"default pipeline, draw '{dw.prompt(d, d // 2 % len(dw.MOTIONS))}'", "model",
                                 "calibrated", lambda b, r=r: plan_from(bench, r, b), BUDGETS, motion)
               for d, r in zip(draws, records)]
        rows += own + [mean_of(own, f"default pipeline, mean of {len(own)} draws", "model", "calibrated", BUDGETS)]
        motion[rows[-1].method + " | calibrated"] = {
            b: statistics.fmean(motion[r.method + " | calibrated"][b] for r in own) for b in BUDGETS}
        if args.only == "default":
            print(f"reuse rules tried: {args.reuse_rules or 'Calibrate default'}")
            print_video_table(rows, motion, bench.steps)
            return
        frames = args.small_frames or dw.FRAMES // 2
        small_latent = {"samples": torch.zeros(1, dw.CHANNELS, frames, dw.LATENT, dw.LATENT)}
        small = []
        for d in draws:
            df_calibrate = calibrate_at(bench, folder, f"small {d}", dw.prompt(d, d // 2 % len(dw.MOTIONS)), small_latent)
            small.append(otcache_video_row(bench, f"calibrated at {frames} frames, draw {d}", "model", "calibrated",
                                           lambda b, r=df_calibrate: plan_from(bench, r, b), SHORT_BUDGETS, motion))
        rows.append(mean_of(small, f"calibrated at {frames} of {dw.FRAMES} frames, run at {dw.FRAMES}, mean of "
                                   f"{len(small)} draws", "model", "calibrated", SHORT_BUDGETS))
        lines.append("calibrate small, run big (mean of draws), against calibrating at full size: " + ", ".join(
            f"B={b} {rows[-1].mean[b] - rows[len(own)].mean[b]:+.2f}" for b in SHORT_BUDGETS))
        lines.append("  per draw: " + "; ".join(f"B={b} " + " / ".join(f"{s.mean[b] - o.mean[b]:+.2f}" for s, o in
                                                                        zip(small, own)) for b in SHORT_BUDGETS))
        print(f"default pipeline done at {time.perf_counter() - started:.0f} s", flush=True)
        if args.only == "small":
            print_video_table(rows, motion, bench.steps)
            print("\n" + "\n".join(lines))
            return
    for rule in RULES:
        rows.append(otcache_video_row(bench, "even", "model", rule, lambda b: even_plan(bench, b), BUDGETS, motion))
    rows += preset_rows(bench, motion)
    print(f"even and presets done at {time.perf_counter() - started:.0f} s", flush=True)
    # peers, each its real node
    rows.append(searched_row(bench, "EasyCache (ComfyUI node, fair run)", [easycache_search(bench, 0.15, 0.95)], motion))
    node, why = load_taylorseer()
    if node is None:
        print(f"TaylorSeer Lite not measured: {why}", flush=True)
    else:
        try:
            row = taylorseer_row(bench, node, 2, "wanvideo", "head")
            motion[row.method + " | " + row.rule] = dict(zip(row.mean, (statistics.fmean(m) for m in
                                                                        bench.motion[-len(row.mean):])))
            rows.append(row)
        except Exception as exc:  # the node refuses this model
            print(f"TaylorSeer Lite not measured: {type(exc).__name__}: {exc}", flush=True)
    for label, searches in block_cache_searches(bench):
        if isinstance(searches, str):
            print(f"{label} not measured: {searches}", flush=True)
        else:
            rows.append(searched_row(bench, label, searches, motion))
    splits = expert_splits(pack, dw, testbed, bench, args)
    print_video_table(rows, motion, bench.steps)
    print_splits(splits)
    print("\n" + "\n".join(lines))
    default = rows[len(draws)]
    for row in rows[len(draws) + 2:]:
        common = [b for b in BUDGETS if b in row.mean]
        if common:
            print(f"default pipeline over {row.method} ({row.rule}): " + ", ".join(
                f"B={b} {default.mean[b] - row.mean[b]:+.2f}" for b in common))
    print(f"\nwall {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [r.__dict__ for r in rows], "motion": motion, "lines": lines,
                                               "splits": splits}, indent=1))


PRESET_RULES = ("calibrated", "hold", "horizon1", "horizon2")
"""The Wan presets' rows: Apply's default (the preset's own rule), and the rules it was chosen among."""


def preset_rows(bench: VideoBench, motion: dict) -> list[Row]:
    return [otcache_video_row(bench, f"preset {preset}", "model", rule, lambda b, p=preset: preset_plan(bench, p, b),
                              SHORT_BUDGETS, motion) for preset in WAN_PRESETS for rule in PRESET_RULES]


def searched_row(bench: VideoBench, label: str, searches: list[ThresholdSearch], motion: dict) -> Row:
    """A peer at every budget it reaches: the first search (setting) that reaches it exactly."""
    row = Row(label, "its own", "its own")
    for budget in BUDGETS:
        found = next((f for f in (s.at(budget) for s in searches) if f), None)
        if found:
            scored(bench, row, budget, found[0], motion)
        row.note += f"B={budget}: {found[1] if found else 'not reached'}; "
    return row


class BlockSteps:
    """The steps at which a Wan's first transformer block ran: TeaCache and MagCache replace the Wan's
    ``forward_orig`` and skip the blocks (not the call) at the steps they reuse. A ``DIFFUSION_MODEL``
    wrapper notes each call's sigma; a forward hook on ``blocks[0]`` collects it. :meth:`computed` ends
    the count (removes the hook)."""

    def __init__(self, model: Any) -> None:
        import comfy.patcher_extension as pe

        self.sigma = None
        self.sigmas: set[float] = set()
        model.add_wrapper_with_key(pe.WrappersMP.DIFFUSION_MODEL, "bench_block_steps", self.note_sigma)
        self.handle = model.model.diffusion_model.blocks[0].register_forward_hook(self.block_ran)

    def note_sigma(self, executor: Any, *args: Any, **kwargs: Any) -> Any:
        self.sigma = round(float(args[-1]["sigmas"].reshape(-1)[0]), 7)
        return executor(*args, **kwargs)

    def block_ran(self, *_: Any) -> None:
        self.sigmas.add(self.sigma)

    def computed(self) -> int:
        self.handle.remove()
        return len(self.sigmas)


TEACACHE = ("welltop-cn+ComfyUI-TeaCache", "TeaCache", "91dff8e")
MAGCACHE = ("Zehong-Ma+ComfyUI-MagCache", "MagCache", "47bdd2a")
MAGCACHE_SETTINGS = ((0.2, 4), (0.2, 6), (0.1, 6))
"""Retention ratio and K: its README's Wan 2.1 1.3B setting, then the node's largest K, then also its
smallest retention (the first 20 % or 10 % of the steps are always computed)."""


def block_cache_searches(bench: VideoBench) -> list[tuple[str, list[ThresholdSearch] | str]]:
    """The real TeaCache and MagCache nodes with their published Wan 2.1 T2V 1.3B settings (their READMEs:
    TeaCache retention mode, start 10 %; MagCache retention ratio 0.2, K = 4), each threshold bisected to
    the budget; MagCache also at :data:`MAGCACHE_SETTINGS` where its own cannot skip enough. Either
    searches or the reason a node is not measured."""
    out: list[tuple[str, list[ThresholdSearch] | str]] = []

    def counted(patched: Any) -> tuple[Any, Any]:
        counter = BlockSteps(patched)
        return patched, counter.computed

    tea, why = load_peer_node(*TEACACHE)
    label = "TeaCache (real node, wan2.1_t2v_1.3B_ret_mode, start 10 %)"
    if tea is None:
        out.append((label, why))
    else:
        def build_tea(threshold: float) -> tuple[Any, Any]:
            (patched,) = tea().apply_teacache(bench.testbed.patcher, "wan2.1_t2v_1.3B_ret_mode", threshold, 0.1, 1.0,
                                              "cpu")
            return counted(patched)

        out.append((label, [ThresholdSearch(bench, build_tea, "ret mode, start 10 %", 1e-4, 10.0)]))
    mag, why = load_peer_node(*MAGCACHE)
    label = "MagCache (real node, wan2.1_t2v_1.3B)"
    if mag is None:
        out.append((label, why))
    else:
        def build_mag(retention: float, k: int) -> Callable[[float], tuple[Any, Any]]:
            def build(threshold: float) -> tuple[Any, Any]:
                (patched,) = mag().apply_magcache(bench.testbed.patcher, "wan2.1_t2v_1.3B", threshold, retention, k,
                                                  0, -1)
                return counted(patched)
            return build

        out.append((label, [ThresholdSearch(bench, build_mag(r, k), f"retention {r}, K = {k}", 1e-4, 0.3)
                            for r, k in MAGCACHE_SETTINGS]))
    return out


def expert_splits(pack: Any, dw: Any, testbed: Any, bench: VideoBench, args: argparse.Namespace) -> dict[str, list]:
    """The split rows on the development prompts (where the split is chosen) and the held-out ones (where
    it is confirmed), with the testbed as both experts and, given ``--experts``, with the two experts."""
    development = VideoBench(pack, dw, testbed, dw.calibration_prompts()[:: 5 if args.quick else 1],
                             dw.CALIBRATION_SEEDS[:1])
    sides = {"development (even digits, calibration seed)": development, "held out": bench}
    out = {f"DigitWan as both experts, {side}": expert_split_rows(b) for side, b in sides.items()}
    if args.experts:
        experts = tuple(dw.load(f).patcher for f in args.experts)
        out.update({f"high- and low-noise experts, {side}": expert_split_rows(b, experts) for side, b in sides.items()})
    return out


def print_splits(splits: dict[str, list]) -> None:
    for side, split in splits.items():
        print(f"\nWan 2.2's two experts ({side}): 20 steps split at 10, even schedules, model mode; PSNR over all "
              "frames mean / worst / motion PSNR against the split's own full compute\n")
        print(split[0] + "\n\n| run | PSNR |\n|---|---:|\n" + "\n".join(split[1:]))


SPLIT_STEPS, SPLIT_AT = 20, 10
EXPERT_SPLITS = ((6, 4), (5, 5), (4, 6), (7, 3))
SPLIT_PRESETS = tuple(("wan2.1-t2v-14b", rule) for rule in PRESET_RULES) + (
    ("generic", "calibrated"), ("generic", "horizon1"))
"""The Wan 2.2 workflow's Schedule nodes: the Wan 14B preset (what it shipped with) under each rule, and
the generic preset (even spacing within each expert's own steps)."""


def split_run(bench: VideoBench, first: Any, second: Any) -> torch.Tensor:
    """Wan 2.2's two KSamplerAdvanced (see the module doc) with models ``first`` and ``second``: decoded clips."""
    import comfy.sample

    s = bench.df
    common = (SPLIT_STEPS, bench.testbed.cfg, s.SAMPLER, s.SCHEDULER, bench.positive, bench.negative)
    high = comfy.sample.sample(first, bench.noise, *common, bench.latent, start_step=0, last_step=SPLIT_AT,
                               force_full_denoise=False, disable_pbar=True, seed=0)
    low = comfy.sample.sample(second, torch.zeros_like(bench.noise), *common, high, disable_noise=True,
                              start_step=SPLIT_AT, last_step=10000, force_full_denoise=True, disable_pbar=True, seed=0)
    return ((s.decode_latent(low) + 1.0) / 2.0).clamp(0.0, 1.0)


def expert_split_rows(bench: VideoBench, experts: tuple[Any, Any] | None = None) -> list[str]:
    """The budget splits of the two experts (module doc); ``experts``: the high- and low-noise models
    (default: the testbed as both, and then also one schedule across the whole run)."""
    import comfy.sample

    core, apply = bench.pack.otcache_core, bench.pack.nodes.apply_node.apply_otcache
    model = bench.testbed.patcher
    high_model, low_model = experts or (model, model)

    def even(budget: int, steps: int) -> Any:
        return core.plan.SchedulePlan.from_schedule(core.warp.sample_warp(core.warp.identity_warp(), steps, budget))

    def score(clips: torch.Tensor, against: torch.Tensor) -> str:
        mean, worst = summarize(clip_psnr(clips, against))
        moved = statistics.fmean(clip_psnr(frame_steps(clips), frame_steps(against)))
        return f"{mean:.2f} / {worst:.2f} / {moved:.2f}"

    reference = split_run(bench, high_model, low_model)
    s = bench.df
    whole = comfy.sample.sample(model, bench.noise, SPLIT_STEPS, bench.testbed.cfg, s.SAMPLER, s.SCHEDULER,
                                bench.positive, bench.negative, bench.latent, disable_pbar=True, seed=0)
    whole = ((s.decode_latent(whole) + 1.0) / 2.0).clamp(0.0, 1.0)
    lines = [f"the split's full compute against one 20-step run of the testbed: "
             f"{statistics.fmean(clip_psnr(reference, whole)):.2f} dB"]
    for high, low in EXPERT_SPLITS:
        clips = split_run(bench, apply(high_model, even(high, SPLIT_AT), "model", quiet=True),
                          apply(low_model, even(low, SPLIT_STEPS - SPLIT_AT), "model", quiet=True))
        computed = [len(r.computed) for r in bench.reports[-2:]]
        lines.append(f"| two samplers, two Applies: {high} + {low} of 10 + 10 (computed {computed}) | "
                     f"{score(clips, reference)} |")
    for preset, rule in SPLIT_PRESETS:  # the workflow's Schedule nodes: a preset, 6 + 4 of 10 + 10, each its own
        clips = split_run(bench, apply(high_model, preset_plan(bench, preset, 6, SPLIT_AT), "model", reuse=rule,
                                       quiet=True),
                          apply(low_model, preset_plan(bench, preset, 4, SPLIT_STEPS - SPLIT_AT), "model",
                                reuse=rule, quiet=True))
        lines.append(f"| workflow layout: preset {preset}, 6 + 4, reuse {rule} | {score(clips, reference)} |")
    if experts:
        return lines
    for rule in ("calibrated", "linear"):  # calibrated: a schedule without rules runs the measured default
        patched = apply(model, even(10, SPLIT_STEPS), "model", reuse=rule, quiet=True)
        clips = comfy.sample.sample(patched, bench.noise, SPLIT_STEPS, bench.testbed.cfg, s.SAMPLER, s.SCHEDULER,
                                    bench.positive, bench.negative, bench.latent, disable_pbar=True, seed=0)
        clips = ((s.decode_latent(clips) + 1.0) / 2.0).clamp(0.0, 1.0)
        lines.append(f"| one sampler, one schedule of 10 of 20 across the whole run ({rule}; against one 20-step "
                     f"run) | {score(clips, whole)} |")
    return lines


def calibrate_at(bench: VideoBench, folder: Path, name: str, prompt: str, latent: dict) -> Any:
    """OTCache Calibrate at its defaults on ``prompt`` at the size of ``latent`` (fewer frames)."""
    nodes = bench.pack.nodes
    inputs = node_defaults(nodes.OTCacheCalibrate)
    inputs.update(steps=bench.steps, cfg=bench.testbed.cfg, sampler_name=bench.df.SAMPLER,
                  scheduler=bench.df.SCHEDULER, name=name, storage="memory")
    inputs["rules"] = nodes.calibrate_node.parse_rule_list(inputs.pop("reuse_rules"))
    record, _, _, _ = nodes.calibrate_node.run_calibration(
        bench.testbed.patcher, bench.testbed.positive(prompt), bench.negative, latent, clip=bench.testbed.clip,
        folder=folder, **{k: v for k, v in inputs.items() if k != "latent_image"})
    return record


def print_video_table(rows: list[Row], motion: dict[str, dict[int, float]], steps: int,
                      clips: str = "held-out clips") -> None:
    budgets = tuple(sorted({b for r in rows for b in r.mean}, reverse=True))
    print(f"\nPSNR over all frames (dB) against full compute, {clips}, T = {steps}: mean / worst clip / motion "
          "PSNR (frame differences, mean)\n")
    print("| method | reuse | " + " | ".join(f"B={b}" for b in budgets) + " |")
    print("|---|---|" + "---:|" * len(budgets))
    for row in rows:
        moved = motion.get(row.method + " | " + row.rule, {})
        cells = " | ".join(f"{row.mean[b]:.2f} / {row.worst[b]:.2f} / {moved[b]:.2f}" if b in row.mean and b in moved
                           else (f"{row.mean[b]:.2f} / {row.worst[b]:.2f}" if b in row.mean else "-") for b in budgets)
        print(f"| {row.method} | {row.rule} | {cells} |")
    for row in rows:
        if row.note and "per calibration" not in row.note:
            print(f"  {row.method}: {row.note}")


if __name__ == "__main__":
    main()
