"""Warps of schedules, resampling to any (T, B), and quantile (1-D optimal transport) interpolation.

The warp of a schedule ``S = (s_0 < ... < s_{B-1})`` on ``T`` steps is the monotone piecewise-linear map
``phi_S: [0, 1] -> [0, 1]`` through the points ``(k / (B-1), s_k / (T-1))``. Read as a quantile
function it describes the schedule's compute density on normalised time, independent of ``T`` and
``B``: sampling it at ``B'`` points and scaling by ``T'-1`` gives a schedule for any budget and step
count.

For two compute densities on [0, 1] with quantile functions ``phi_0`` and ``phi_1``, the
Wasserstein-2 geodesic between them has quantile function ``(1 - lam) phi_0 + lam phi_1`` (in one
dimension the optimal transport map is monotone), so interpolating warps pointwise is displacement
interpolation of where the compute goes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import ScheduleError
from .schedule import Schedule, check_budget, check_steps


@dataclass(frozen=True)
class Warp:
    """A monotone piecewise-linear map ``[0, 1] -> [0, 1]`` given by its knots.

    ``knots_u`` is strictly increasing from 0 to 1; ``knots_v`` is non-decreasing in [0, 1] with
    ``knots_v[0] == 0`` (step 0 is always computed).
    """

    knots_u: tuple[float, ...]
    knots_v: tuple[float, ...]

    def __post_init__(self) -> None:
        u = np.asarray(self.knots_u, dtype=float)
        v = np.asarray(self.knots_v, dtype=float)
        if u.ndim != 1 or u.shape != v.shape or len(u) < 2:
            raise ScheduleError("a warp needs at least two knots with matching u and v")
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            raise ScheduleError("warp knots must be finite numbers")
        if u[0] != 0.0 or u[-1] != 1.0 or np.any(np.diff(u) <= 0):
            raise ScheduleError("warp knots_u must increase strictly from 0 to 1")
        if v[0] != 0.0 or np.any(np.diff(v) < 0) or v[-1] > 1.0:
            raise ScheduleError("warp knots_v must start at 0, never decrease, and stay within [0, 1]")

    def __call__(self, u: np.ndarray | float) -> np.ndarray:
        """Evaluate ``phi(u)`` (vectorised)."""
        return np.interp(u, self.knots_u, self.knots_v)

    @property
    def keeps_last(self) -> bool:
        """Whether the warp reaches 1, i.e. the last step is computed."""
        return self.knots_v[-1] == 1.0

    def to_dict(self) -> dict[str, list[float]]:
        return {"u": list(self.knots_u), "v": list(self.knots_v)}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Warp:
        return cls(tuple(float(x) for x in data["u"]), tuple(float(x) for x in data["v"]))


def identity_warp() -> Warp:
    """The warp of the all-compute schedule: uniform compute density."""
    return Warp((0.0, 1.0), (0.0, 1.0))


def warp_of(schedule: Schedule) -> Warp:
    """``phi_S`` through ``(k/(B-1), s_k/(T-1))``; evenly spaced steps give the identity itself.

    Even spacing is the identity's own rounding (:func:`sample_warp`), so its warp *is* the identity:
    the knots through its rounded steps would carry the rounding into every schedule interpolated from
    it (at 16 of 30 steps, gaps of 1, 2 and 3 steps in place of 2, which an extrapolating reuse rule
    pays for). Degenerate cases: ``B = 1`` (only step 0) and ``T = 1`` give the constant warp 0, the
    quantile function of all compute at the start.
    """
    T, B = schedule.steps, schedule.budget
    if B == 1 or T == 1:
        return Warp((0.0, 1.0), (0.0, 0.0))
    if schedule == sample_warp(identity_warp(), T, B):
        return identity_warp()
    u = np.arange(B, dtype=float) / (B - 1)
    v = np.asarray(schedule.compute_steps, dtype=float) / (T - 1)
    return Warp(tuple(u.tolist()), tuple(v.tolist()))


def interpolate_warps(phi_0: Warp, phi_1: Warp, lam: float) -> Warp:
    """``(1 - lam) phi_0 + lam phi_1``, exact on the union of both knot sets.

    ``lam = 0`` returns ``phi_0`` and ``lam = 1`` returns ``phi_1`` exactly (as functions). ``lam``
    must lie in [0, 1]: outside it the result may stop being monotone.
    """
    if not 0.0 <= lam <= 1.0:
        raise ScheduleError(f"interpolation weight must be within [0, 1], got {lam}")
    if lam == 0.0:
        return phi_0
    if lam == 1.0:
        return phi_1
    u = np.union1d(phi_0.knots_u, phi_1.knots_u)
    v = (1.0 - lam) * phi_0(u) + lam * phi_1(u)
    v[0] = 0.0
    v = np.clip(np.maximum.accumulate(v), 0.0, 1.0)  # float noise must not break monotonicity
    if phi_0.keeps_last and phi_1.keeps_last:
        v[-1] = 1.0
    return Warp(tuple(u.tolist()), tuple(v.tolist()))


def round_to_schedule(targets: np.ndarray, steps: int, *, keep_last: bool = False) -> Schedule:
    """The repair rule: real step targets -> exactly ``B = len(targets)`` distinct increasing steps.

    Each target is rounded to the nearest integer (halves up); then the strictly increasing integer
    sequence ``s`` closest to the rounded targets in L1 is taken, subject to ``s_0 = 0`` and, when
    ``keep_last``, ``s_{B-1} = T - 1``. Substituting ``y_k = s_k - k`` turns "strictly increasing in
    [0, T-1]" into "non-decreasing in [0, T-B]", an L1 isotonic regression solved exactly by
    pool-adjacent-violators with block medians (lower median on ties: among equally close sequences
    the earlier steps win, so the rule is deterministic).
    A valid schedule given as targets comes back unchanged.
    """
    T = check_steps(steps)
    B = check_budget(len(targets), T)
    top = T - B  # largest allowed y_k
    z = np.floor(np.asarray(targets, dtype=float) + 0.5) - np.arange(B)
    z = np.clip(z, 0, top).astype(np.int64)
    first = 1
    last = B - 1 if keep_last and B > 1 else B
    y = np.zeros(B, dtype=np.int64)
    y[first:last] = _isotonic_l1(z[first:last])
    if keep_last and B > 1:
        y[-1] = top
    compute = (y + np.arange(B)).tolist()
    return Schedule(steps=T, compute_steps=tuple(int(s) for s in compute))


def _isotonic_l1(values: np.ndarray) -> np.ndarray:
    """Non-decreasing sequence minimising ``sum |y_k - values_k|`` (PAV with lower medians)."""
    blocks: list[list[int]] = []  # each block: the member values, sorted
    for value in values.tolist():
        blocks.append([value])
        while len(blocks) > 1 and _lower_median(blocks[-2]) > _lower_median(blocks[-1]):
            merged = sorted(blocks.pop() + blocks.pop())
            blocks.append(merged)
    out: list[int] = []
    for block in blocks:
        out.extend([_lower_median(block)] * len(block))
    return np.asarray(out, dtype=np.int64)


def _lower_median(sorted_values: list[int]) -> int:
    return sorted_values[(len(sorted_values) - 1) // 2]


def sample_warp(phi: Warp, steps: int, budget: int, *, warmup: int = 0) -> Schedule:
    """Resample a warp to a schedule with ``budget`` computed steps out of ``steps``.

    Targets are ``x_k = phi(k / (B-1)) * (T-1)``; they go through :func:`round_to_schedule`. With a
    warm-up prefix ``P > 0``, steps ``0 .. P-1`` are computed and the other ``B - P`` computed steps
    are the warp's quantiles over steps ``P .. T-1``: ``x = P + phi(u) (T-1-P)``.
    """
    T = check_steps(steps)
    B = check_budget(budget, T)
    P = check_warmup(warmup, T, B)
    rest = B - P
    u = np.arange(rest, dtype=float) / (rest - 1) if rest > 1 else np.zeros(1)
    tail = P + phi(u) * (T - 1 - P)
    targets = np.concatenate([np.arange(P, dtype=float), tail])
    keep_last = phi.keeps_last and B > 1
    return round_to_schedule(targets, T, keep_last=keep_last)


def check_warmup(warmup: int, steps: int, budget: int) -> int:
    """Validate a warm-up prefix length ``0 <= P < B`` (``P = B`` would leave no budget for the warp)."""
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ScheduleError(f"warm-up steps must be a non-negative integer, got {warmup!r}")
    if warmup and warmup >= budget:
        raise ScheduleError(
            f"warm-up of {warmup} steps leaves nothing of the budget {budget} for the schedule; "
            f"use fewer warm-up steps (at most {budget - 1}) or a larger budget"
        )
    if warmup >= steps:
        raise ScheduleError(f"warm-up of {warmup} steps is not shorter than the {steps}-step run")
    return warmup


def resample(schedule: Schedule, steps: int, budget: int) -> Schedule:
    """Carry a schedule to another step count and/or budget through its warp."""
    return sample_warp(warp_of(schedule), steps, budget)
