"""``python -m otcache_core demo``: the three OTCache stages on the embedded testbed, end to end.

1. Calibrate on the calibration samples (:func:`otcache_core.calibrate.calibrate`): full-compute
   trajectories, edge errors by replay under each candidate reuse rule and the leximax reference at
   ``B_ref ~ T/2``, then the Optuna anchor at ``B_anchor ~ T/6`` with an end-to-end objective on
   decoded images (LPIPS where it is installed with its weights, else ``1 - SSIM``; the output says
   which).
2. Predict schedules for a range of budgets by quantile interpolation (no model calls); each segment
   reuses with the rule its edge measured best.
3. Evaluate them on held-out samples (other seeds, other classes) against full compute: PSNR, SSIM,
   ideal speedup ``T/B`` and measured wall-clock speedup; uniform spacing with linear extrapolation
   is shown for comparison.

Writes the calibration JSON and one PNG figure into the output folder and prints a table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..calibrate import CalibrationSettings, calibrate, default_budgets
from ..calibration import UNIFORM, Calibration
from ..errors import OTCacheError
from ..figures import BACKGROUND, TEXT, _font, _text_width, schedule_strips, stack_vertically, text_block
from ..plan import BudgetRule, SchedulePlan
from ..reuse import LINEAR_RULE
from ..schedule import Schedule
from ..warp import identity_warp, sample_warp
from .task import (
    Fidelity,
    ProgressBar,
    SpeedMeter,
    Task,
    TaskConfig,
    anchor_objective,
    decode,
    fidelity,
    load_task,
    timed,
)

OTCACHE_COLOR = (32, 96, 200)
UNIFORM_COLOR = (200, 90, 30)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of one demo run."""

    task: TaskConfig = field(default_factory=lambda: TaskConfig(calibration_samples=8, evaluation_samples=16))
    budgets: tuple[int, ...] | None = None
    """Budgets to evaluate (default: 25, 17, 13, 10, 8 at T = 50, scaled for other T)."""
    trials: int = 40
    anchor_share: float = 0.5
    """The anchor objective averages the worst this share of calibration images (1: all)."""
    strength: str = "rollout"
    max_skip: int = 10
    repeats: int = 3
    """Timed runs per median (full and cached)."""
    grid_samples: int = 8


def demo_settings(quick: bool) -> DemoSettings:
    """The full demo (8 calibration and 16 evaluation samples, 40 anchor trials: about 4 minutes on one
    CPU thread) or the quick one (4 and 8 samples, 12 trials: about 1.5 minutes)."""
    if quick:
        return DemoSettings(task=TaskConfig(calibration_samples=4, evaluation_samples=8), trials=12, repeats=1)
    return DemoSettings()


@dataclass(frozen=True)
class DemoRow:
    """One budget of the demo table."""

    budget: int
    compute_steps: tuple[int, ...]
    regime: str
    """The plan's regime; ``uniform`` where the calibration's validation chose even spacing."""
    rule: str
    speedup_ideal: float
    speedup_measured: float
    otcache: Fidelity
    uniform: Fidelity


@dataclass
class DemoResult:
    """What the demo wrote and measured."""

    out_dir: Path
    calibration_path: Path
    figure_path: Path
    calibration: Calibration
    rows: list[DemoRow]
    seconds: float
    notes: list[str] = field(default_factory=list)


def output_paths(out_dir: Path) -> tuple[Path, Path]:
    """``calibration.json`` and ``demo.png`` in ``out_dir``, or ``-2``, ``-3``, ... names when taken.

    A calibration already in the folder is never replaced: the new one gets the first free name.
    """
    for n in range(1, 1000):
        suffix = "" if n == 1 else f"-{n}"
        cal, fig = out_dir / f"calibration{suffix}.json", out_dir / f"demo{suffix}.png"
        if not cal.exists() and not fig.exists():
            return cal, fig
    raise OTCacheError(f"{out_dir} already holds 999 demo outputs; choose another --out folder")


def run_demo(out_dir: str | Path = "otcache_out", quick: bool = False, seed: int = 0, *,
             task: Task | None = None, settings: DemoSettings | None = None,
             stream: TextIO | None = None, progress: ProgressBar | None = None) -> DemoResult:
    """Calibrate, predict and evaluate on the testbed; write the calibration and the figure.

    ``task``/``settings`` replace the testbed and the sizes (tests use a tiny model); ``stream``
    receives the table (default stdout), ``progress`` the bar and log lines (default stderr).
    """
    started = time.perf_counter()
    out = stream if stream is not None else sys.stdout
    bar = progress or ProgressBar()
    settings = settings or demo_settings(quick)
    task = task or load_task(settings.task, seed)
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    cal_path, fig_path = output_paths(out_path)
    T = task.steps

    distance, objective_name, why = anchor_objective(settings.anchor_share)
    notes = [f"anchor objective: {objective_name}"]
    if why:
        notes.append(why)
        bar.message(f"note: {why}")
    calibration = _calibrate(task, settings, seed, distance, objective_name, bar)
    calibration.notes.extend(notes)
    calibration.save(cal_path)  # a fresh name: never replaces another calibration
    bar.message(f"calibration saved: {cal_path}")

    rows, images = _evaluate(task, calibration, settings, bar)
    figure = demo_figure(task, calibration, rows, images, settings.grid_samples)
    Image.fromarray(figure).save(fig_path)
    seconds = time.perf_counter() - started

    print_table(rows, T, out)
    cost = calibration.cost
    print(f"\ncalibration: {sum(cost['model_calls'].values())} model calls, "
          f"{sum(cost['seconds'].values()):.1f} s; reference B={calibration.reference.schedule.budget}, "
          f"anchor B={calibration.anchor.schedule.budget} ({objective_name}); evaluation on "
          f"{len(task.evaluation)} held-out samples (classes {list(task.config.evaluation_classes)})", file=out)
    for note in notes:
        print(f"note: {note}", file=out)
    print(f"output folder: {out_path.resolve()}", file=out)
    print(f"  calibration: {cal_path.name}\n  figure: {fig_path.name}", file=out)
    print(f"demo finished in {seconds:.1f} s", file=out)
    return DemoResult(out_path, cal_path, fig_path, calibration, rows, seconds, notes)


def _calibrate(task: Task, settings: DemoSettings, seed: int, distance, objective_name: str,
               bar: ProgressBar) -> Calibration:
    ref_budget, anchor_budget = default_budgets(task.steps)
    cal_settings = CalibrationSettings(
        reference_budget=ref_budget, anchor_budget=anchor_budget, strength=settings.strength,
        max_skip=settings.max_skip, trials=settings.trials, seed=seed,
    )
    search, validation = task.calibration.split()
    outcome = calibrate(
        task.sampler(search), cal_settings,
        distance=distance, objective_name=objective_name,
        name=f"testbed-T{task.steps}", model=task.model_info, sampler_info=task.sampler_info(),
        progress=bar, log=bar.message, validation=None if validation is None else task.sampler(validation),
    )
    return outcome.calibration


def _evaluate(task: Task, calibration: Calibration, settings: DemoSettings,
              bar: ProgressBar) -> tuple[list[DemoRow], dict[str, torch.Tensor]]:
    """Each budget on the held-out samples: OTCache and uniform spacing against full compute."""
    T = task.steps
    sampler = task.sampler(task.evaluation)
    every = Schedule.all_compute(T)
    full = sampler.sample(every)
    meter = SpeedMeter(lambda: sampler.sample(every), repeats=settings.repeats)
    meter.refresh_full()
    budgets = list(settings.budgets or task.budgets())
    images = {"full": decode(full)}
    rows = []
    for i, B in enumerate(budgets):
        resolved = SchedulePlan.from_calibration(calibration, BudgetRule("steps", B, T)).resolve(T)
        schedule = resolved.schedule
        rules = resolved.rules
        cached, seconds = timed(lambda: sampler.sample(schedule, rules=rules))
        speed, _ = meter.speedup(lambda: sampler.sample(schedule, rules=rules), seconds)
        uniform = sampler.sample(sample_warp(identity_warp(), T, B), rules=LINEAR_RULE)
        rule = str(rules[0]) if rules else "none"
        rows.append(DemoRow(B, schedule.compute_steps, resolved.prediction.regime, rule, T / B, speed,
                            fidelity(cached, full), fidelity(uniform, full)))
        images[f"B={B}"] = decode(cached)
        bar("evaluation", i + 1, len(budgets))
    return rows, images


def format_table(rows: Sequence[DemoRow], steps: int) -> str:
    """The demo table in markdown."""
    lines = [
        f"| budget (of {steps}) | schedule + rule | ideal speedup | measured speedup | PSNR (dB) | SSIM "
        f"| uniform PSNR | uniform SSIM |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        # where the validation chose even spacing the two columns measure the same schedule: say so
        schedule = "even spacing" if r.regime == UNIFORM else "calibrated"
        lines.append(
            f"| {r.budget} | {schedule} + {r.rule} | {r.speedup_ideal:.2f}x | {r.speedup_measured:.2f}x | "
            f"{r.otcache.psnr:.2f} | {r.otcache.ssim:.4f} | {r.uniform.psnr:.2f} | {r.uniform.ssim:.4f} |"
        )
    return "\n".join(lines)


def print_table(rows: Sequence[DemoRow], steps: int, out: TextIO) -> None:
    print(f"OTCache on the testbed (T={steps}), held-out samples vs full compute:\n", file=out)
    print(format_table(rows, steps), file=out)


# -- the figure -----------------------------------------------------------------------------------------


def demo_figure(task: Task, calibration: Calibration, rows: Sequence[DemoRow],
                images: dict[str, torch.Tensor], grid_samples: int = 8) -> np.ndarray:
    """Sample grids (full vs cached per budget), schedule strips, and PSNR vs speedup."""
    T = task.steps
    header = text_block([
        f"OTCache demo: testbed TinyDiT (MNIST), T={T}, cfg {task.config.cfg_scale:g}, Euler",
        f"held-out samples (classes {', '.join(map(str, task.config.evaluation_classes))}) vs full compute",
    ])
    labelled = []
    for name, batch in images.items():
        row = next((r for r in rows if f"B={r.budget}" == name), None)
        label = name if row is None else f"{name}: {row.speedup_ideal:.1f}x, {row.otcache.psnr:.1f} dB"
        labelled.append((label, batch[:grid_samples]))
    grid = sample_grid(labelled)
    strips = schedule_strips(
        [("reference", calibration.reference.schedule), ("anchor", calibration.anchor.schedule)]
        + [(f"B={r.budget}", Schedule(T, r.compute_steps)) for r in rows]
    )
    chart = xy_chart(
        [("OTCache", [r.speedup_ideal for r in rows], [r.otcache.psnr for r in rows], OTCACHE_COLOR),
         ("uniform", [r.speedup_ideal for r in rows], [r.uniform.psnr for r in rows], UNIFORM_COLOR)],
        title="fidelity vs speedup (held-out samples)", x_label="ideal speedup T/B", y_label="PSNR dB",
    )
    return stack_vertically([header, grid, strips, chart], pad=10)


def sample_grid(rows: Sequence[tuple[str, torch.Tensor]], *, scale: int = 2, pad: int = 2) -> np.ndarray:
    """Labelled rows of images (``[N, C, H, W]`` in [0, 1], grey or RGB) as one H x W x 3 uint8 array."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_width(probe, label, font) for label, _ in rows) + 10
    n = max(int(batch.shape[0]) for _, batch in rows)
    h, w = (int(s) * scale for s in rows[0][1].shape[-2:])
    image = Image.new("RGB", (label_w + n * (w + pad), len(rows) * (h + pad) + pad), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for r, (label, batch) in enumerate(rows):
        top = pad + r * (h + pad)
        draw.text((4, top + h // 2 - 6), label, fill=TEXT, font=font)
        for k in range(int(batch.shape[0])):
            tile = _to_rgb_uint8(batch[k]).repeat(scale, axis=0).repeat(scale, axis=1)
            image.paste(Image.fromarray(tile), (label_w + k * (w + pad), top))
    return np.asarray(image, dtype=np.uint8)


def _to_rgb_uint8(x: torch.Tensor) -> np.ndarray:
    arr = (x.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    arr = np.transpose(arr, (1, 2, 0))
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr[:, :, :3]


def xy_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float], tuple[int, int, int]]], *,
             title: str = "", x_label: str = "", y_label: str = "", width: int = 460, height: int = 240) -> np.ndarray:
    """Lines with markers through ``(x, y)`` points, linear axes with end ticks, a legend."""
    font = _font()
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    points = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y)]
    left, right, top, bottom = 52, width - 12, 22, height - 30
    draw.text((left, 4), title, fill=TEXT, font=font)
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if not points:
        draw.text((left + 8, (top + bottom) // 2), "no data", fill=TEXT, font=font)
        return np.asarray(image, dtype=np.uint8)
    x_lo, x_hi = _padded_range([p[0] for p in points])
    y_lo, y_hi = _padded_range([p[1] for p in points])

    def at(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (right - left),
                bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top))

    for k in range(5):  # ticks and light grid lines
        fx = x_lo + k * (x_hi - x_lo) / 4
        fy = y_lo + k * (y_hi - y_lo) / 4
        px, _ = at(fx, y_lo)
        _, py = at(x_lo, fy)
        draw.line([(px, top), (px, bottom)], fill=(235, 235, 235))
        draw.line([(left, py), (right, py)], fill=(235, 235, 235))
        draw.text((px - 10, bottom + 3), f"{fx:.3g}", fill=TEXT, font=font)
        draw.text((4, py - 6), f"{fy:.3g}", fill=TEXT, font=font)
    draw.text((right - _text_width(draw, x_label, font), bottom + 16), x_label, fill=TEXT, font=font)
    draw.text((left + 4, top + 2), y_label, fill=TEXT, font=font)
    for row, (name, xs, ys, color) in enumerate(series):
        pts = sorted(at(x, y) for x, y in zip(xs, ys) if np.isfinite(x) and np.isfinite(y))
        if len(pts) > 1:
            draw.line(pts, fill=color, width=2)
        for px, py in pts:
            draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        legend_y = top + 4 + 12 * row
        draw.line([(right - 90, legend_y + 6), (right - 74, legend_y + 6)], fill=color, width=2)
        draw.text((right - 70, legend_y), name, fill=color, font=font)
    return np.asarray(image, dtype=np.uint8)


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    span = hi - lo if hi > lo else max(abs(hi), 1.0)
    return lo - 0.06 * span, hi + 0.06 * span
