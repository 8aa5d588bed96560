"""Expected quality of a budget, in units people know: PSNR (dB) against full compute.

A calibration runs every budget end to end on validation samples its search never saw
(:func:`otcache_core.calibrate.validate_budgets`) and keeps, for each run, per-sample figures
(:class:`SampleFigures`): PSNR, SSIM and LPIPS where installed, and the per-sample objective distance.
From them it states what each budget is expected to give (:class:`ExpectedQuality`).

Scoring the winner on the samples that chose it is optimistic (the winner's curse: of several
(schedule, rule) pairs, the one that did best on two samples is partly the luckiest). So the expected
figures are *leave-one-out*: for each validation sample ``s`` the choice is made again from the other
samples' distances alone, and ``s`` is scored under that choice,

    PSNR_hat(B) = 1/n sum_s PSNR_s(choice_{-s}(B)),    worst_hat(B) = min_s PSNR_s(choice_{-s}(B)),

which is the choice procedure's fidelity on a sample it never saw. With one validation sample there is
nothing to leave out and the figures are in-sample (said so in the record).

More computed steps never make a schedule worse on average, so the figures are made non-decreasing in
the budget (isotonic regression, :func:`non_decreasing`), which pools the noise of neighbouring budgets.

The figures are those of the calibration's own prompt. Other prompts differ: on DigitFlux (five
calibrations, each on one even digit, budgets 6-20 of 30) the mean PSNR of samples of other even digits
came out 2.2 dB below the expected figure, that of odd digits 0.4 dB above it (benchmarks/RESULTS.md,
"Expected quality"). A constant correction chosen on the first set made the second 2.6 dB off, so
none is applied: the figures say what the calibration measured, and the summary says on what.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import FileFormatError
from .jsonfile import finite_number, require

if TYPE_CHECKING:  # the record and the plan read these figures without torch (the schedule CLI stays light)
    import torch

LEAVE_ONE_OUT = "leave-one-out"
IN_SAMPLE = "in-sample"
IMAGES = "images"
LATENTS = "latents"
#: PSNR of a sample identical to full compute (an infinite PSNR would make every mean infinite).
MAX_DB = 100.0


@dataclass(frozen=True)
class SampleFigures:
    """Per-sample fidelity of one cached run against the full-compute run of the same samples."""

    distance: tuple[float, ...]
    """The calibration objective, per sample (lower is better)."""
    psnr: tuple[float, ...]
    """dB, capped at :data:`MAX_DB`."""
    ssim: tuple[float, ...] | None = None
    lpips: tuple[float, ...] | None = None


FiguresFn = Callable[["torch.Tensor", "torch.Tensor"], SampleFigures]


def per_sample_psnr(cached: torch.Tensor, full: torch.Tensor, data_range: float | None = None) -> tuple[float, ...]:
    """PSNR of each sample (first dimension) in dB, capped at :data:`MAX_DB`.

    ``data_range`` ``None``: each sample's own full-compute range ``max - min`` (for latents, which have
    no fixed range); images in [0, 1] pass 1.
    """
    from .metrics import psnr_per_image

    cached, full = cached.detach().double(), full.detach().double()
    out = []
    for i in range(full.shape[0]):
        a, b = cached[i].reshape(1, 1, 1, -1), full[i].reshape(1, 1, 1, -1)
        span = float(b.max() - b.min()) if data_range is None else data_range
        value = float(psnr_per_image(a, b, span or 1.0, MAX_DB)[0])
        out.append(MAX_DB if math.isinf(value) else value)
    return tuple(out)


def latent_figures(distance: Callable[[torch.Tensor, torch.Tensor], float]) -> FiguresFn:
    """Figures of latent outputs (no decoder): PSNR over each sample's full-compute range, and
    ``distance`` per sample."""
    def figures(cached: torch.Tensor, full: torch.Tensor) -> SampleFigures:
        per = tuple(distance(cached[i : i + 1], full[i : i + 1]) for i in range(full.shape[0]))
        return SampleFigures(per, per_sample_psnr(cached, full))

    return figures


@dataclass(frozen=True)
class ExpectedQuality:
    """What one budget is expected to give against full compute (see the module doc)."""

    psnr: float
    """Mean over samples, dB."""
    worst_psnr: float
    """The hardest sample, dB."""
    samples: int
    space: str = IMAGES
    """``images`` (decoded with the calibration's VAE) or ``latents`` (no VAE was connected)."""
    estimate: str = LEAVE_ONE_OUT
    ssim: float | None = None
    lpips: float | None = None

    def describe(self) -> str:
        """``expected PSNR 44.1 dB (worst 39.0 dB) vs full compute, validated on 2 samples``."""
        what = "PSNR" if self.space == IMAGES else "latent PSNR"
        extra = "" if self.estimate == LEAVE_ONE_OUT else f" ({self.estimate}: optimistic)"
        return (f"expected {what} {self.psnr:.1f} dB (worst {self.worst_psnr:.1f} dB) vs full compute, "
                f"validated on {self.samples} sample{'s' if self.samples != 1 else ''}{extra}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"psnr": self.psnr, "worst_psnr": self.worst_psnr, "samples": self.samples,
                               "space": self.space, "estimate": self.estimate}
        out.update({k: v for k, v in (("ssim", self.ssim), ("lpips", self.lpips)) if v is not None})
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, where: str) -> ExpectedQuality:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: expected an object")
        samples = require(doc, "samples", int, where=where)
        if samples < 1:
            raise FileFormatError(f"{where}: field 'samples' must be at least 1")
        space = doc.get("space", IMAGES)
        if space not in (IMAGES, LATENTS):
            raise FileFormatError(f"{where}: field 'space' must be {IMAGES!r} or {LATENTS!r}")
        estimate = doc.get("estimate", LEAVE_ONE_OUT)
        if estimate not in (LEAVE_ONE_OUT, IN_SAMPLE):
            raise FileFormatError(f"{where}: field 'estimate' must be {LEAVE_ONE_OUT!r} or {IN_SAMPLE!r}")
        optional = {k: finite_number(doc[k], k, where=where) for k in ("ssim", "lpips") if doc.get(k) is not None}
        return cls(finite_number(doc.get("psnr"), "psnr", where=where),
                   finite_number(doc.get("worst_psnr"), "worst_psnr", where=where), samples, space, estimate,
                   **optional)


Pair = tuple[str, Any]
"""A (schedule kind, reuse rule) pair, as the validation names what a budget runs."""
Chooser = Callable[[Mapping[int, Mapping[str, float]]], Mapping[int, Pair]]
"""The validation's choice: per-budget scores ``{score key: distance}`` -> the pair each budget runs."""


def expected_quality(figures: Mapping[int, Mapping[str, SampleFigures]], choose: Chooser, key: Callable[[Pair], str],
                     space: str) -> dict[int, ExpectedQuality]:
    """Expected quality of every budget (see the module doc): leave-one-out, non-decreasing in the budget.

    ``figures[budget][score key]``: the per-sample figures of each pair run at that budget, all on the
    same samples; ``choose`` is the validation's own choice from mean distances, ``key`` names a pair.
    """
    n = len(next(iter(next(iter(figures.values())).values())).psnr)
    folds = [[s] for s in range(n)] if n > 1 else [[0]]
    psnr: dict[int, list[float]] = {b: [] for b in figures}
    ssim: dict[int, list[float]] = {b: [] for b in figures}
    lpips: dict[int, list[float]] = {b: [] for b in figures}
    for held in folds:
        keep = [s for s in range(n) if s not in held] or held
        scores = {b: {k: statistics.fmean(f.distance[s] for s in keep) for k, f in pairs.items()}
                  for b, pairs in figures.items()}
        for budget, pair in choose(scores).items():
            chosen = figures[budget][key(pair)]
            psnr[budget] += [chosen.psnr[s] for s in held]
            if chosen.ssim is not None:
                ssim[budget] += [chosen.ssim[s] for s in held]
            if chosen.lpips is not None:
                lpips[budget] += [chosen.lpips[s] for s in held]
    budgets = [b for b in figures if psnr[b]]
    mean = non_decreasing({b: statistics.fmean(psnr[b]) for b in budgets})
    worst = non_decreasing({b: min(psnr[b]) for b in budgets})
    estimate = LEAVE_ONE_OUT if n > 1 else IN_SAMPLE
    return {b: ExpectedQuality(mean[b], min(worst[b], mean[b]), n, space, estimate,
                               statistics.fmean(ssim[b]) if ssim[b] else None,
                               statistics.fmean(lpips[b]) if lpips[b] else None)
            for b in budgets}


def non_decreasing(values: Mapping[int, float]) -> dict[int, float]:
    """The least-squares fit to ``values`` (by budget) that never decreases as the budget grows (isotonic
    regression, pool-adjacent-violators): where a smaller budget scored above a larger one, both get
    their mean."""
    pools: list[list[float]] = []  # [sum, count] of each pool, smallest budget first
    for budget in sorted(values):
        pools.append([values[budget], 1.0])
        while len(pools) > 1 and pools[-2][0] / pools[-2][1] > pools[-1][0] / pools[-1][1]:
            total, count = pools.pop()
            pools[-1][0] += total
            pools[-1][1] += count
    fitted = [total / count for total, count in pools for _ in range(int(count))]
    return dict(zip(sorted(values), fitted))


def smallest_budget_for(target_psnr: float, expected: Mapping[int, ExpectedQuality]) -> int | None:
    """The smallest budget whose expected mean PSNR meets ``target_psnr`` and whose every larger checked
    budget does too (a lucky small budget below a miss is not trusted: figures a file holds need not be
    non-decreasing); ``None`` if none does."""
    meets = None
    for budget in sorted(expected, reverse=True):
        if expected[budget].psnr < target_psnr:
            break
        meets = budget
    return meets


def quality_curve(expected: Mapping[int, ExpectedQuality], steps: int) -> list[tuple[float, float]]:
    """``(ideal speedup, expected PSNR)`` of every budget, fastest last."""
    return [(steps / b, expected[b].psnr) for b in sorted(expected, reverse=True)]


def quality_line(expected: Sequence[tuple[int, ExpectedQuality]], steps: int) -> str:
    """``B=20 52.1, B=16 49.0, ... dB`` in one line."""
    return ", ".join(f"{b} of {steps}: {q.psnr:.1f}" for b, q in expected) + " dB"
