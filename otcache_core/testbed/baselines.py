"""Runtime-adaptive step-caching baselines: TeaCache-, MagCache- and EasyCache-style policies.

Written from the published ideas (no code copied); each is a :class:`~otcache_core.runtime.StepPolicy`
run by the core cache engine (:class:`~otcache_core.runtime.CacheRun` through
:class:`~otcache_core.testbed.flow.FlowSampler`), so reuse itself is exactly OTCache's: the stored residual of
the last computed step. Only *which* steps compute differs.

All three accumulate an estimate ``e_t`` of the error that reusing at step ``t`` adds, and compute
when the running sum since the last computed step reaches a threshold ``tau``::

    E <- E + e_t;   compute at t  iff  E >= tau  (then E <- 0)

* **TeaCache** (Liu et al., 2024): ``e_t = p(rel_L1(m_t, m_{t-1}))``, with ``m_t`` the first block's
  adaLN-modulated input (a cheap proxy of how much the model output will change) and ``p`` a
  polynomial fitted on full runs from input change to output change. The first and last steps
  compute.
* **MagCache** (Ma et al., 2025): the residual magnitude ratio ``gamma_t = mean ||r_t|| / ||r_{t-1}||``
  (token-wise norms) is nearly model-specific and input-independent, so it is calibrated once from
  full runs; reusing ``r_i`` at ``t`` is off by about ``|1 - prod_{k=i+1..t} gamma_k|``, which is ``e_t``.
  At most ``K`` steps per segment.
* **EasyCache** (Zhou et al., 2025): the transformation rate ``k = |o_c - o_c'| / |x_c - x_c'|`` of the
  last two computed steps (output change per input change) is stable, so the output change at ``t``
  is estimated as ``k |x_t - x_{t-1}|`` and ``e_t = k |x_t - x_{t-1}| / |o_c|`` (``|.|`` = mean absolute
  value).

:func:`tune_threshold` bisects ``tau`` until a policy computes exactly the requested number of steps
on a given batch, so that adaptive and static schedules are compared at equal compute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..errors import OTCacheError
from ..metrics import relative_l1
from ..schedule import Schedule
from .flow import FlowSampler, StepInputs

Signal = Callable[[StepInputs], torch.Tensor]


def _mean_abs(x: torch.Tensor) -> float:
    return float(x.detach().to(torch.float64).abs().mean())


@dataclass
class ThresholdPolicy:
    """The shared accumulate-and-threshold rule (see module doc); subclasses give ``e_t``.

    ``max_skip``: longest segment ``j - i`` between computed steps (``None``: unbounded).
    ``max_compute``: a budget cap; once that many steps are computed the rest reuse (used by
    :func:`tune_threshold` only when no threshold gives the exact count). ``warmup``: the first steps
    always compute. ``force_last``: the last step always computes (within the cap).
    """

    threshold: float = 0.0
    max_skip: int | None = None
    max_compute: int | None = None
    warmup: int = 1
    force_last: bool = False
    name: str = "threshold"
    needs_features: bool = True
    """``False``: decisions do not depend on the run's tensors, so counts can be simulated."""

    # per-run state, set by reset()
    steps: int = field(default=0, init=False, repr=False)
    computed: list[int] = field(default_factory=list, init=False, repr=False)
    accumulated: float = field(default=0.0, init=False, repr=False)
    capped: bool = field(default=False, init=False, repr=False)

    def reset(self, steps: int) -> None:
        self.steps, self.computed, self.accumulated, self.capped = steps, [], 0.0, False
        self._reset_state()

    def decide(self, step: int, features: Any) -> bool:
        # the estimate is taken at every step: the policies track their signal from step to step
        estimate = self.estimate(step, features)
        compute = self._rule(step, estimate)
        if compute:
            self.computed.append(step)
            self.accumulated = 0.0
            self._on_compute(step)
        return compute

    def _rule(self, step: int, estimate: float | None) -> bool:
        if step < max(1, self.warmup):
            return True
        if self.max_compute is not None and len(self.computed) >= self.max_compute:
            self.capped = True
            return False
        if self.force_last and step == self.steps - 1:
            return True
        if self.max_skip is not None and self.computed and step - self.computed[-1] >= self.max_skip:
            return True
        if estimate is None:  # nothing to estimate from yet
            return True
        self.accumulated += estimate
        return self.accumulated >= self.threshold

    # -- what subclasses provide -------------------------------------------------------------------
    def _reset_state(self) -> None:
        pass

    def estimate(self, step: int, features: Any) -> float | None:
        """``e_t``, the error increment of reusing at ``step`` (``None``: cannot tell, compute)."""
        raise NotImplementedError

    def _on_compute(self, step: int) -> None:
        pass

    def observe(self, step: int, features: Any, output: Any) -> None:
        pass


@dataclass
class TeaCachePolicy(ThresholdPolicy):
    """``e_t = p(rel_L1(m_t, m_{t-1}))`` on the first block's modulated input ``m`` (see module doc).

    ``coefficients``: polynomial ``p`` (highest power first, as :func:`numpy.polyval`); ``None`` is the
    identity. Negative values of ``p`` count as 0.
    """

    signal: Signal | None = None
    coefficients: tuple[float, ...] | None = None
    force_last: bool = True
    name: str = "teacache"

    def _reset_state(self) -> None:
        self._previous: torch.Tensor | None = None

    def estimate(self, step: int, features: StepInputs) -> float | None:
        current = (self.signal or default_signal)(features)
        previous, self._previous = self._previous, current
        if previous is None or previous.shape != current.shape:
            return None
        change = relative_l1(current, previous)
        if self.coefficients is not None:
            change = float(np.polyval(self.coefficients, change))
        return max(0.0, change)


@dataclass
class MagCachePolicy(ThresholdPolicy):
    """``e_t = |1 - prod gamma_k|`` over the reused steps since the last computed one (see module doc).

    ``ratios[t]`` is the calibrated magnitude ratio ``gamma_t`` (``ratios[0]`` unused).
    """

    ratios: tuple[float, ...] = ()
    max_skip: int | None = 10
    name: str = "magcache"
    needs_features: bool = False

    def _reset_state(self) -> None:
        if len(self.ratios) < self.steps:
            raise OTCacheError(f"MagCache needs {self.steps} magnitude ratios, got {len(self.ratios)}")
        self._product = 1.0

    def estimate(self, step: int, features: Any) -> float | None:
        self._product *= self.ratios[step]
        return abs(1.0 - self._product)

    def _on_compute(self, step: int) -> None:
        self._product = 1.0


@dataclass
class EasyCachePolicy(ThresholdPolicy):
    """``e_t = k |x_t - x_{t-1}| / |o_c|`` with the transformation rate ``k`` (see module doc).

    ``k`` needs two computed steps, so the first two steps compute.
    """

    warmup: int = 2
    name: str = "easycache"

    def _reset_state(self) -> None:
        self._previous_x: torch.Tensor | None = None
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, output) of the last computed step
        self._rate: float | None = None
        self._output_norm: float | None = None

    def estimate(self, step: int, features: StepInputs) -> float | None:
        previous, self._previous_x = self._previous_x, features.x
        if previous is None or self._rate is None or not self._output_norm:
            return None
        return self._rate * _mean_abs(features.x - previous) / self._output_norm

    def observe(self, step: int, features: StepInputs, output: torch.Tensor) -> None:
        if self._last is not None:
            x_c, o_c = self._last
            dx = _mean_abs(features.x - x_c)
            if dx > 0:
                self._rate = _mean_abs(output - o_c) / dx
        self._last = (features.x, output)
        self._output_norm = _mean_abs(output)


def default_signal(features: StepInputs) -> torch.Tensor:
    """TeaCache's input when nothing model-specific is known: the cached part's input."""
    return features.inp


def modulated_input_signal(model: Any) -> Signal:
    """TeaCache's signal for DiT blocks with adaLN: ``LN(h) (1 + scale_1) + shift_1`` of the first block.

    Falls back to the cached part's input for models without that structure (or in ``model`` mode,
    where ``h`` is not available).
    """
    blocks = getattr(model, "blocks", None)
    first = blocks[0] if blocks else None
    if first is None or not hasattr(first, "norm1") or not hasattr(first, "adaLN_modulation"):
        return default_signal

    def signal(features: StepInputs) -> torch.Tensor:
        if features.c is None:
            return features.inp
        shift, scale = first.adaLN_modulation(features.c).chunk(6, dim=-1)[:2]
        return first.norm1(features.inp) * (1 + scale[:, None]) + shift[:, None]

    return signal


# -- calibration of the baselines from full runs -------------------------------------------------------


@dataclass
class FullRecord:
    """Per step of one all-compute run: the TeaCache signal, the cached part's input and output."""

    signals: list[torch.Tensor]
    inputs: list[torch.Tensor]
    outputs: list[torch.Tensor]


@dataclass
class _Recorder:
    """A policy that computes every step and keeps what the baselines are calibrated from."""

    signal: Signal
    record: FullRecord = field(default_factory=lambda: FullRecord([], [], []))

    def reset(self, steps: int) -> None:
        self.record = FullRecord([], [], [])

    def decide(self, step: int, features: StepInputs) -> bool:
        self.record.signals.append(self.signal(features))
        return True

    def observe(self, step: int, features: StepInputs, output: torch.Tensor) -> None:
        self.record.inputs.append(features.inp)
        self.record.outputs.append(output)


def record_full_run(sampler: FlowSampler, signal: Signal = default_signal) -> FullRecord:
    """Run ``sampler`` with every step computed and record signals, inputs and outputs per step."""
    recorder = _Recorder(signal)
    sampler.run([True] * sampler.steps, policy=recorder)
    return recorder.record


def magnitude_ratios(record: FullRecord) -> tuple[float, ...]:
    """``gamma_t = mean_tokens ||r_t|| / ||r_{t-1}||`` with ``r = output - input`` (``gamma_0 = 1``).

    Norms are taken over the last (channel) dimension, per token and row, as MagCache does.
    """
    residuals = [(o - i).to(torch.float64) for i, o in zip(record.inputs, record.outputs)]
    ratios = [1.0]
    for prev, cur in zip(residuals, residuals[1:]):
        num, den = cur.norm(dim=-1), prev.norm(dim=-1)
        ratios.append(float((num / den.clamp_min(1e-12)).mean()))
    return tuple(ratios)


def fit_teacache_polynomial(record: FullRecord, degree: int = 4) -> tuple[float, ...]:
    """Least-squares polynomial from signal change to output change between consecutive steps.

    ``x_t = rel_L1(m_t, m_{t-1})``, ``y_t = rel_L1(o_t, o_{t-1})``; the degree drops when there are
    too few points for it.
    """
    xs = [relative_l1(b, a) for a, b in zip(record.signals, record.signals[1:])]
    ys = [relative_l1(b, a) for a, b in zip(record.outputs, record.outputs[1:])]
    degree = max(1, min(degree, len(xs) - 1))
    return tuple(float(c) for c in np.polyfit(xs, ys, degree))


# -- threshold tuning --------------------------------------------------------------------------------


@dataclass
class TunedPolicy:
    """A policy whose threshold was tuned to a number of computed steps on one batch."""

    policy: ThresholdPolicy
    computed: int
    evaluations: int
    """Sampling runs the tuning made (simulated counts for feature-free policies are not runs)."""
    capped: bool
    """No threshold gave the exact count; the budget cap ``max_compute`` makes it exact."""
    schedule: Schedule | None = None
    """The steps the policy computed in the last counted run."""


def count_computed(sampler: FlowSampler, policy: ThresholdPolicy) -> tuple[int, Schedule]:
    """Steps the policy computes on ``sampler``'s batch (simulated when it needs no features)."""
    T = sampler.steps
    if not policy.needs_features:
        policy.reset(T)
        mask = [policy.decide(t, None) or t == 0 for t in range(T)]
        schedule = Schedule.from_mask(mask)
        return schedule.budget, schedule
    sampler.run([True] * T, policy=policy)
    report = sampler.last_report
    return len(report.computed), report.scheduled


def tune_threshold(
    sampler: FlowSampler,
    policy: ThresholdPolicy,
    budget: int,
    *,
    start: float = 1e-3,
    lower: float | None = None,
    max_evaluations: int = 30,
) -> TunedPolicy:
    """Bisect the threshold (geometrically) until ``policy`` computes exactly ``budget`` steps.

    The count falls as the threshold grows (threshold 0 computes every step). ``lower`` is a known
    threshold with a count above ``budget`` (e.g. the one tuned for a larger budget), which narrows
    the search. If the count jumps over ``budget`` (one changed decision shifts the later ones), the
    smallest threshold found with a larger count is kept and the cap ``max_compute = budget`` stops
    computing once the budget is spent, which makes the count exact.
    """
    T = sampler.steps
    if not 1 <= budget <= T:
        raise OTCacheError(f"budget must be within 1..{T}, got {budget}")
    runs = 0

    def count(threshold: float) -> tuple[int, Schedule]:
        nonlocal runs
        candidate = replace(policy, threshold=threshold, max_compute=None)
        runs += 1 if candidate.needs_features else 0
        return count_computed(sampler, candidate)

    if budget == T:
        return TunedPolicy(replace(policy, threshold=0.0, max_compute=None), T, runs, False,
                           Schedule.all_compute(T))
    lo, hi = 0.0, None  # count(lo) > budget >= count(hi)
    lo_schedule = Schedule.all_compute(T)
    probe = max(start, lower or 0.0)
    for _ in range(max_evaluations):
        n, schedule = count(probe)
        if n == budget:
            return TunedPolicy(replace(policy, threshold=probe, max_compute=None), n, runs, False, schedule)
        if n > budget:
            lo, lo_schedule = probe, schedule
            if hi is None:
                probe *= 4.0
                continue
        else:
            hi = probe
            if lo == 0.0:
                probe /= 4.0
                continue
        if hi / lo < 1.0 + 1e-9:
            break
        probe = math.sqrt(lo * hi)
    if lo_schedule.budget <= budget:  # never saw a count above the budget: cannot cap down to it
        raise OTCacheError(f"{policy.name}: no threshold computes {budget} of {T} steps")
    capped = replace(policy, threshold=lo, max_compute=budget)
    n, schedule = count_computed(sampler, capped)
    runs += 1 if capped.needs_features else 0
    return TunedPolicy(capped, n, runs, True, schedule)


# -- the published-style hand schedule ----------------------------------------------------------------


def hand_schedule(steps: int, budget: int) -> Schedule:
    """Dense prefix with doubling gaps, then even gaps to the last step (LeMiCa's published shape).

    The prefix ``0, 1, 3, 7, ..., 2^m - 1`` (gaps ``1, 2, 4, ...``) grows while its last gap
    ``2^(m-1)`` is at most the even gap ``g_m = (T - 1 - (2^m - 1)) / (B - 1 - m)`` of the remaining
    ``B - 1 - m`` steps; those then sit at ``2^m - 1 + round(k g_m)``, ``k = 1 .. B-1-m``, ending at
    ``T - 1``. At ``T = 50``, ``B = 10``: ``0, 1, 3, 7, 14, 21, 28, 35, 42, 49``.
    """
    T, B = steps, budget
    if not 1 <= B <= T:
        raise OTCacheError(f"budget must be within 1..{T}, got {B}")
    if B == 1:
        return Schedule(T, (0,))
    m = 0  # prefix 0 .. 2^m - 1 has m + 1 steps
    while m + 1 <= B - 2:
        end = 2 ** (m + 1) - 1
        gap = (T - 1 - end) / (B - 2 - m)
        if end >= T - 1 or 2**m > gap:
            break
        m += 1
    start = 2**m - 1
    rest = B - 1 - m
    gap = (T - 1 - start) / rest
    prefix = [2**k - 1 for k in range(m + 1)]
    tail = [start + int(math.floor(k * gap + 0.5)) for k in range(1, rest + 1)]
    return Schedule.from_steps(prefix + tail, T)


POLICIES: dict[str, type[ThresholdPolicy]] = {
    "teacache": TeaCachePolicy,
    "magcache": MagCachePolicy,
    "easycache": EasyCachePolicy,
}


def make_policies(sampler: FlowSampler, model: Any, *, max_skip: int = 10) -> tuple[dict[str, ThresholdPolicy], dict]:
    """The three baselines calibrated from one full run of ``sampler`` (the calibration samples).

    Returns the untuned policies (threshold 0) and what was calibrated (polynomial, ratios).
    """
    signal = modulated_input_signal(model)
    record = record_full_run(sampler, signal)
    coefficients = fit_teacache_polynomial(record)
    ratios = magnitude_ratios(record)
    policies: dict[str, ThresholdPolicy] = {
        "teacache": TeaCachePolicy(signal=signal, coefficients=coefficients),
        "magcache": MagCachePolicy(ratios=ratios, max_skip=max_skip),
        "easycache": EasyCachePolicy(),
    }
    info = {"teacache_polynomial": list(coefficients), "magcache_ratios": list(ratios),
            "magcache_max_skip": max_skip, "calibration_calls": sampler.steps}
    return policies, info

