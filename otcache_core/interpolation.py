"""Schedules for any budget from a reference and an anchor: the prediction stage.

With compute fractions ``f = B / T`` (so that the rule carries over to other step counts), the
reference at ``f_ref`` and the anchor at ``f_anc < f_ref``:

* ``f_anc <= f <= f_ref``: ``phi = (1 - lam) phi_ref + lam phi_anc`` with
  ``lam = (f_ref - f) / (f_ref - f_anc)`` (``mapping="linear"``, linear in ``B``) or
  ``lam = (1/f - 1/f_ref) / (1/f_anc - 1/f_ref)`` (``mapping="inverse"``, linear in ``1/B``, i.e. in
  the ideal speedup);
* ``f > f_ref``: ``phi = (1 - mu) phi_ref + mu id`` with ``mu = (f - f_ref) / (1 - f_ref)``, reaching
  the all-compute warp at ``f = 1``;
* ``f < f_anc``: ``phi_anc`` resampled, flagged as extrapolated.

No model calls: a prediction costs microseconds to milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import ScheduleError
from .schedule import Schedule, check_budget, check_steps
from .warp import Warp, identity_warp, interpolate_warps, sample_warp, warp_of

LambdaMapping = Literal["linear", "inverse"]
LAMBDA_MAPPINGS: tuple[str, ...] = ("linear", "inverse")
Regime = Literal["reference", "anchor", "between", "above_reference", "below_anchor"]


@dataclass(frozen=True)
class Prediction:
    """A predicted schedule and how it was obtained."""

    schedule: Schedule
    lam: float
    """Weight of the anchor warp (0 = reference, 1 = anchor)."""
    toward_all_compute: float
    """Weight of the all-compute warp above the reference budget (0 otherwise)."""
    extrapolated: bool
    regime: Regime

    def to_dict(self) -> dict[str, object]:
        return {
            "steps": self.schedule.steps,
            "budget": self.schedule.budget,
            "compute_steps": list(self.schedule.compute_steps),
            "ideal_speedup": self.schedule.ideal_speedup,
            "lambda": self.lam,
            "toward_all_compute": self.toward_all_compute,
            "extrapolated": self.extrapolated,
            "regime": self.regime,
        }


def anchor_weight(fraction: float, ref_fraction: float, anchor_fraction: float, mapping: str = "linear") -> float:
    """``lam`` for a compute fraction between the anchor's and the reference's (see module doc)."""
    if mapping not in LAMBDA_MAPPINGS:
        raise ScheduleError(f"lambda mapping must be one of {', '.join(LAMBDA_MAPPINGS)}, got {mapping!r}")
    if not anchor_fraction < ref_fraction:
        raise ScheduleError("the reference must compute a larger share of steps than the anchor")
    if mapping == "linear":
        lam = (ref_fraction - fraction) / (ref_fraction - anchor_fraction)
    else:
        lam = (1.0 / fraction - 1.0 / ref_fraction) / (1.0 / anchor_fraction - 1.0 / ref_fraction)
    return min(1.0, max(0.0, lam))


def predict_from_warps(
    phi_ref: Warp,
    ref_fraction: float,
    phi_anchor: Warp,
    anchor_fraction: float,
    steps: int,
    budget: int,
    *,
    mapping: str = "linear",
    warmup: int = 0,
) -> Prediction:
    """The schedule for ``budget`` computed steps out of ``steps`` (see module doc for the rule)."""
    T = check_steps(steps)
    B = check_budget(budget, T)
    if not 0.0 < anchor_fraction < ref_fraction <= 1.0:
        raise ScheduleError(
            f"the reference must compute a larger share of steps than the anchor "
            f"(reference {ref_fraction:.3f}, anchor {anchor_fraction:.3f})"
        )
    f = B / T
    if _close(f, ref_fraction):
        phi, lam, mu, regime = phi_ref, 0.0, 0.0, "reference"
    elif _close(f, anchor_fraction):
        phi, lam, mu, regime = phi_anchor, 1.0, 0.0, "anchor"
    elif f > ref_fraction:
        mu = (f - ref_fraction) / (1.0 - ref_fraction)
        phi, lam, regime = interpolate_warps(phi_ref, identity_warp(), mu), 0.0, "above_reference"
    elif f < anchor_fraction:
        phi, lam, mu, regime = phi_anchor, 1.0, 0.0, "below_anchor"
    else:
        lam = anchor_weight(f, ref_fraction, anchor_fraction, mapping)
        phi, mu, regime = interpolate_warps(phi_ref, phi_anchor, lam), 0.0, "between"
    schedule = sample_warp(phi, T, B, warmup=warmup)
    return Prediction(schedule, lam, mu, regime == "below_anchor", regime)


def predict(
    reference: Schedule,
    anchor: Schedule,
    steps: int,
    budget: int,
    *,
    mapping: str = "linear",
    warmup: int = 0,
) -> Prediction:
    """Predict a schedule from a reference and an anchor schedule (each on its own step count)."""
    if reference.budget / reference.steps <= anchor.budget / anchor.steps:
        raise ScheduleError(
            f"the reference ({reference.budget}/{reference.steps} steps) must compute a larger share of "
            f"steps than the anchor ({anchor.budget}/{anchor.steps}); swap them or pick other budgets"
        )
    return predict_from_warps(
        warp_of(reference),
        reference.budget / reference.steps,
        warp_of(anchor),
        anchor.budget / anchor.steps,
        steps,
        budget,
        mapping=mapping,
        warmup=warmup,
    )


def budget_for_fraction(steps: int, fraction: float, *, minimum: int = 1) -> int:
    """The budget at ``steps`` closest to compute fraction ``fraction`` (halves up), within [minimum, T]."""
    T = check_steps(steps)
    if not 0.0 < fraction <= 1.0:
        raise ScheduleError(f"compute fraction must be within (0, 1], got {fraction}")
    return max(minimum, min(T, int(fraction * T + 0.5)))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-12
