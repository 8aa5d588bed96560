"""Reuse rules: what a reused step stands in for the computation it skips.

At every computed step the cache engine stores a quantity ``q`` per *stream* (cond / uncond, block
stage, ...) together with the noise level ``sigma`` of the call:

* ``model`` mode: the model's noise prediction ``eps = (x - denoised) / sigma``, the derivative ``d``
  that ComfyUI's k-diffusion samplers integrate along sigma (for flow models ``eps`` is the velocity
  ``v``; the testbed stores ``v`` itself);
* ``blocks`` mode: the residual the transformer block stack adds (stage output minus stage input),
  per stage and stream.

A reused call at noise level ``sigma`` gets a stand-in ``q^(sigma)`` built from the stream's history.
Everything is extrapolated *along sigma*, each call at its own sigma (Heun's second evaluation at
``sigma_{t+1}`` included). Rules (``a, b, c`` = the last, second and third last computed steps):

``hold``
    ``q^ = q_a``. Zeroth order: what OTCache did before rules existed, and what every calibration or
    preset without rules uses. Keeps 1 tensor per stream.
``linear``
    ``q^(sigma) = q_a + (sigma - sigma_a) (q_a - q_b) / (sigma_a - sigma_b)``: the secant through the
    last two computed steps (with only ``a`` stored: hold). Keeps 2 tensors per stream.
``quadratic``
    The Lagrange polynomial through ``(sigma_a, q_a), (sigma_b, q_b), (sigma_c, q_c)`` evaluated at
    ``sigma`` (fewer stored: linear, hold). Keeps 3 tensors per stream.
``taylor2``
    The second-order Taylor forecast of TaylorSeer (Liu et al., ICCV 2025; its ComfyUI node
    TaylorSeerLite), written here from its idea, along sigma: from the last computed value, the slope
    of the last secant ``d1 = (q_a - q_b) / (sigma_a - sigma_b)`` and the change of slope between the last
    two secants ``d2 = 2 (d1 - d1') / (sigma_a - sigma_c)`` (``d1'`` the secant of ``b`` and ``c``),
    ``q^(sigma) = q_a + d1 (sigma - sigma_a) + d2 (sigma - sigma_a)^2 / 2``. It differs from ``quadratic``
    (the Lagrange polynomial, ``q_a + d1 h + d2 h (h + sigma_a - sigma_b) / 2`` with ``h = sigma - sigma_a``)
    only by using the last secant as the slope at ``a``, which damps the curvature term: over one gap
    ``h = sigma_b - sigma_a`` it adds half of what ``quadratic`` adds. Fewer stored: linear, hold. Keeps 3
    tensors per stream.
``horizonK`` (``K >= 1``)
    ``linear`` for the first ``K`` steps past the last computed step, then held at the value it
    reached: ``q^(sigma) = q_a + (s - sigma_a) (q_a - q_b) / (sigma_a - sigma_b)`` with
    ``s = max(sigma, sigma_{a+K})`` (``sigma_{a+K}``: the noise level ``K`` steps after ``sigma_a`` in the
    run's schedule; sigmas fall along a run). Built for long gaps: a secant extrapolated over many
    steps compounds its error (ZEUS, arXiv 2604.01552, holds the first extrapolated value on a
    second consecutive skip, i.e. ``horizon1``). With segments of at most ``K + 1`` steps it *is*
    ``linear``. Without the run's schedule it is ``linear``. Keeps 2 tensors per stream.
``meancacheK`` (``K >= 2``; ``K = 1`` would be hold)
    The average-velocity correction of MeanCache (Gao et al., ICLR 2026, UnicomAI/MeanCache), written
    here from its idea. Over a window of the last ``K`` *steps* ``t-K .. t-1`` (computed or reused:
    their values ``q_k`` are what the sampler was given), the window's average velocity is
    ``qbar = (x_t - x_{t-K}) / (sigma_t - sigma_{t-K})``, which for Euler steps equals
    ``sum_k (sigma_{k+1} - sigma_k) q_k / (sigma_t - sigma_{t-K})``; that form is what is used, per
    stream (the streams share one ``x``). The slope along sigma is estimated from the gap between the
    instantaneous value at the window's start and the window average,
    ``g = (qbar - q_{t-K}) / (sigma_t - sigma_{t-K})``, and the stand-in for step ``t`` (to
    ``sigma_{t+1}``) is ``q^ = q_{t-1} + g (sigma_{t+1} - sigma_t)``: the previous step's value moved
    by the estimated change over the coming step. For a velocity linear in sigma, ``g`` is about half
    the true slope, so this is a damped first-order correction. Meant for ``model`` mode (``q`` = the
    sampler's derivative) and one-evaluation samplers; the stand-in is computed once per step (further
    calls of the step reuse it). Keeps the last ``K`` step values per stream (stand-ins included).

Memory is the per-stream count above times the stored tensor's size; a run keeps only what its own
rules need (:func:`history_depth`), so a hold-only run keeps exactly what it kept before rules existed.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import OTCacheError
from .schedule import Schedule

if TYPE_CHECKING:  # torch is imported where tensors are combined: schedule arithmetic stays torch-free
    import torch

HOLD = "hold"
LINEAR = "linear"
QUADRATIC = "quadratic"
TAYLOR2 = "taylor2"
HORIZON = "horizon"
MEANCACHE = "meancache"
#: Rules with a fixed name; ``horizonK`` (K >= 1) and ``meancacheK`` (K >= 2) complete the set.
NAMED_RULES: tuple[str, ...] = (HOLD, LINEAR, QUADRATIC, TAYLOR2)
_SPAN_NAME = re.compile(r"^(horizon|meancache)(\d+)$")
#: The smallest span of each rule family with a span.
_MIN_SPAN = {HORIZON: 1, MEANCACHE: 2}

History = Sequence[tuple["float | None", "torch.Tensor"]]
"""A stream's stored values, oldest first: ``(sigma, value)``; ``sigma`` is ``None`` when unknown."""


@dataclass(frozen=True)
class ReuseRule:
    """One named reuse rule (see the module doc for the math)."""

    kind: str
    span: int = 1
    """``meancache``: the window ``K`` in steps; ``horizon``: the steps ``K`` it extrapolates; 1 otherwise."""

    @property
    def name(self) -> str:
        return f"{self.kind}{self.span}" if self.kind in _MIN_SPAN else self.kind

    def __str__(self) -> str:
        return self.name

    @property
    def per_step(self) -> bool:
        """Whether the rule reads the value of every step (stand-ins included), not only computed ones."""
        return self.kind == MEANCACHE

    @property
    def depth(self) -> int:
        """Tensors the rule keeps per stream."""
        return {HOLD: 1, LINEAR: 2, HORIZON: 2, QUADRATIC: 3, TAYLOR2: 3}.get(self.kind, self.span)

    @property
    def lookback(self) -> int:
        """Computed steps *before* a segment's first step that the rule reads when every earlier step
        was computed (what a calibration replay must recompute to give the rule its history)."""
        return self.depth - 1

    def standin(self, history: History, sigma: float, next_sigma: float | None = None,
                grid: Sequence[float] | None = None) -> torch.Tensor:
        """The stand-in at ``sigma`` from ``history`` (oldest first, at least one entry).

        ``history`` holds computed values for the point rules and the value of every step for
        ``meancache``; ``next_sigma`` (``sigma_{t+1}``) is needed by ``meancache`` only, ``grid`` (the
        run's ``T + 1`` noise levels) by ``horizon`` only.
        """
        if not history:
            raise OTCacheError("a reuse rule needs at least one stored value")
        history = list(history)  # a deque does not slice
        last_sigma, last = history[-1]
        if self.kind == HOLD or len(history) < 2 or last_sigma is None:
            return last
        if self.kind == MEANCACHE:
            return _meancache(history[-self.span :], float(sigma), next_sigma)
        points = [(s, v) for s, v in history[-self.depth :] if s is not None]
        if self.kind == HORIZON and grid is not None:
            sigma = _within_horizon(float(sigma), float(last_sigma), self.span, grid)
        if self.kind == TAYLOR2 and len(points) == 3:
            return _taylor2(points, float(sigma))
        return _lagrange(points, float(sigma))


def parse_rule(name: str | ReuseRule) -> ReuseRule:
    """The rule called ``name``; an error names the valid ones."""
    if isinstance(name, ReuseRule):
        return name
    if isinstance(name, str):
        key = name.strip().lower()
        if key in NAMED_RULES:
            return ReuseRule(key)
        match = _SPAN_NAME.match(key)
        if match:
            kind, span = match.group(1), int(match.group(2))
            if span >= _MIN_SPAN[kind]:
                return ReuseRule(kind, span)
            if kind == MEANCACHE:
                raise OTCacheError(f"reuse rule {name!r}: meancache needs a window of at least 2 steps (1 is 'hold')")
            raise OTCacheError(f"reuse rule {name!r}: horizon needs at least 1 step (0 is 'hold')")
    raise OTCacheError(
        f"unknown reuse rule {name!r}; use one of {', '.join(NAMED_RULES)}, horizonK with K >= 1 (e.g. horizon2) "
        "or meancacheK with K >= 2 (e.g. meancache3)"
    )


def parse_rules(names: Iterable[str | ReuseRule]) -> tuple[ReuseRule, ...]:
    """The rules called ``names``, in order, without repeats (an error names a bad one)."""
    return tuple(dict.fromkeys(parse_rule(n) for n in names))


#: The rules as objects, for code that names one.
HOLD_RULE, LINEAR_RULE, QUADRATIC_RULE = ReuseRule(HOLD), ReuseRule(LINEAR), ReuseRule(QUADRATIC)
TAYLOR2_RULE = ReuseRule(TAYLOR2)
HORIZON2_RULE = ReuseRule(HORIZON, 2)

#: The rule of a schedule that names none (a calibration from before rules, a custom schedule).
DEFAULT_RULE = HORIZON2_RULE
DEFAULT_RULE_SOURCE = "the measured default (benchmarks/RESULTS.md, reuse rules of the presets)"


def history_depth(rules: Iterable[ReuseRule]) -> tuple[int, int]:
    """``(computed, per_step)``: how many computed values and how many step values a run keeps per stream."""
    rules = list(rules)
    computed = max([r.depth for r in rules if not r.per_step] + [1])
    per_step = max([r.depth for r in rules if r.per_step] + [0])
    return computed, per_step


def _as_float(values: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.dtype]:
    """Values in at least float32 (half-precision extrapolation would lose the small differences)."""
    import torch

    dtype = values[0].dtype
    if dtype in (torch.float16, torch.bfloat16):
        return [v.float() for v in values], dtype
    return list(values), dtype


def _lagrange(points: Sequence[tuple[float, torch.Tensor]], sigma: float) -> torch.Tensor:
    """The Lagrange polynomial through ``points`` (oldest first) at ``sigma``."""
    sigmas = [float(s) for s, _ in points]
    if len(set(sigmas)) < len(sigmas):
        return points[-1][1]  # two values at one sigma: nothing to extrapolate along
    values, dtype = _as_float([v for _, v in points])
    out = None
    for k, (s_k, value) in enumerate(zip(sigmas, values)):
        w = math.prod((sigma - s_m) / (s_k - s_m) for m, s_m in enumerate(sigmas) if m != k)
        if w != 0.0:  # at sigma = sigma_newest only the newest value has weight (1): it comes back exactly
            out = w * value if out is None else out + w * value
    return (values[-1] * 0.0 if out is None else out).to(dtype)


def _taylor2(points: Sequence[tuple[float, torch.Tensor]], sigma: float) -> torch.Tensor:
    """``q_a + d1 h + d2 h^2 / 2`` (see the module doc) from three points, oldest first."""
    (s_c, _), (s_b, _), (s_a, _) = points
    if len({float(s_a), float(s_b), float(s_c)}) < 3:
        return points[-1][1]
    (q_c, q_b, q_a), dtype = _as_float([v for _, v in points])
    d1 = (q_a - q_b) / (s_a - s_b)
    d2 = 2.0 * (d1 - (q_b - q_c) / (s_b - s_c)) / (s_a - s_c)
    h = sigma - s_a
    if h == 0.0:
        return points[-1][1]
    return (q_a + h * d1 + (0.5 * h * h) * d2).to(dtype)


def _within_horizon(sigma: float, last: float, steps: int, grid: Sequence[float]) -> float:
    """``sigma``, or the noise level ``steps`` steps after ``last`` in ``grid`` if ``sigma`` lies beyond it."""
    falling = [-float(g) for g in grid]  # non-decreasing: bisect finds the step of ``last``
    at = max(0, min(len(grid) - 1, bisect.bisect_left(falling, -last * (1.0 + 1e-6) if last > 0 else -last - 1e-12)))
    stop = float(grid[min(at + steps, len(grid) - 1)])
    if (sigma - last) * (stop - last) > 0 and abs(sigma - last) > abs(stop - last):
        return stop
    return sigma


def _meancache(window: History, sigma: float, next_sigma: float | None) -> torch.Tensor:
    """See the module doc: ``q_{t-1} + g (sigma_{t+1} - sigma_t)`` from the window's average."""
    if next_sigma is None:
        raise OTCacheError("the meancache rule needs the next step's sigma; give the run its sigma schedule")
    sigmas = [s for s, _ in window]
    if any(s is None for s in sigmas):
        return window[-1][1]
    bounds = [float(s) for s in sigmas] + [sigma]
    span = bounds[-1] - bounds[0]
    if span == 0.0 or not math.isfinite(span):
        return window[-1][1]
    values, dtype = _as_float([v for _, v in window])
    average = sum((bounds[k + 1] - bounds[k]) * v for k, v in enumerate(values)) / span
    slope = (average - values[0]) / span
    return (values[-1] + (float(next_sigma) - sigma) * slope).to(dtype)


# -- rules of a schedule ------------------------------------------------------------------------------


def step_rules(schedule: Schedule, segment_rules: ReuseRule | Sequence[ReuseRule] | None) -> list[ReuseRule]:
    """Per-step rules of a schedule whose segment ``(s_k, s_{k+1})`` uses ``segment_rules[k]``.

    A single rule applies to every segment, ``None`` means hold. Computed steps carry their segment's
    rule too (never read: a computed step uses no stand-in).
    """
    T = schedule.steps
    if segment_rules is None or isinstance(segment_rules, ReuseRule):
        return [segment_rules or HOLD_RULE] * T
    segments = schedule.segments()
    if len(segment_rules) != len(segments):
        raise OTCacheError(
            f"{len(segment_rules)} reuse rules given for the {len(segments)} segments of {schedule}; give one per segment"
        )
    out: list[ReuseRule] = []
    for (i, j), rule in zip(segments, segment_rules):
        out.extend([rule] * (j - i))
    return out


def segment_rules_of(schedule: Schedule, rules: ReuseRule | Sequence[ReuseRule] | None) -> tuple[ReuseRule, ...]:
    """The inverse of :func:`step_rules`: each segment's rule is the rule of its first reused step
    (``hold`` for a segment that reuses nothing)."""
    per_step = step_rules(Schedule.all_compute(schedule.steps), rules) if rules is None or isinstance(
        rules, ReuseRule) else list(rules)
    if len(per_step) != schedule.steps:
        raise OTCacheError(f"need one reuse rule per step ({schedule.steps}), got {len(per_step)}")
    return tuple(per_step[i + 1] if j > i + 1 else HOLD_RULE for i, j in schedule.segments())


def rules_summary(rules: Iterable[ReuseRule | str] | Mapping[str, int]) -> str:
    """``"linear x7, hold x2"`` from rules (or counts per rule name): most used first (ties by name)."""
    counts = dict(rules) if isinstance(rules, Mapping) else {}
    if not isinstance(rules, Mapping):
        for rule in rules:
            counts[str(rule)] = counts.get(str(rule), 0) + 1
    return ", ".join(f"{n} x{c}" for n, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# -- the rule of each edge of a calibration -------------------------------------------------------------

#: How a segment that no calibration edge measured gets its rule (see :class:`EdgeRules`), described.
FALLBACKS: dict[str, str] = {
    "majority": "the rule most measured edges chose",
    "nearest": "the nearest measured edge's rule",
}
DEFAULT_FALLBACK = "majority"


@dataclass(frozen=True)
class EdgeRules:
    """The reuse rule a calibration measured best for each edge ``(i, j)`` (compute ``i``, reuse
    ``i+1 .. j-1``, compute ``j``; ``j = T``: reuse to the end) on ``steps`` steps.

    A schedule's segment ``(s_k, s_{k+1})`` takes its edge's rule. A segment no edge measured (the
    schedule is for another step count, or the segment is longer than the calibration's maximum) takes
    a fallback, counted in the result: ``majority`` (default), the rule measured best on most edges, or
    ``nearest``, the rule of the measured edge closest in normalised time
    (``|i/T' - a/T| + |j/T' - b/T|``, ties to the earlier edge). On the testbed (development samples,
    graph paths of a T = 50 calibration resampled to T = 30 and 40, six cases) ``majority`` was 0.2-1.7 dB
    better than ``nearest`` in three, equal in two and 0.16 dB worse in one.
    """

    steps: int
    edges: tuple[tuple[int, int, ReuseRule], ...]
    """``(i, j, rule)`` for every measured edge with ``j >= i + 2``, sorted."""
    fallback: str = DEFAULT_FALLBACK

    def __post_init__(self) -> None:
        if self.fallback not in FALLBACKS:
            raise OTCacheError(f"rule fallback must be one of {', '.join(FALLBACKS)}, got {self.fallback!r}")
        object.__setattr__(self, "edges", tuple(sorted(((int(i), int(j), r) for i, j, r in self.edges),
                                                       key=lambda e: (e[0], e[1], e[2].name))))
        object.__setattr__(self, "_index", {(i, j): r for i, j, r in self.edges})

    @classmethod
    def from_matrix(cls, matrix: Sequence[Sequence[str | None]], steps: int, fallback: str = DEFAULT_FALLBACK) -> EdgeRules:
        """From a ``(T+1) x (T+1)`` matrix of rule names (``None`` where not measured), as a file stores it."""
        if len(matrix) != steps + 1 or any(len(row) != steps + 1 for row in matrix):
            raise OTCacheError(f"a rule matrix for {steps} steps must be {steps + 1} x {steps + 1}")
        edges = [(i, j, parse_rule(name)) for i, row in enumerate(matrix) for j, name in enumerate(row)
                 if name is not None and j >= i + 2]
        return cls(steps, tuple(edges), fallback)

    def to_matrix(self) -> list[list[str | None]]:
        out: list[list[str | None]] = [[None] * (self.steps + 1) for _ in range(self.steps + 1)]
        for i, j, rule in self.edges:
            out[i][j] = rule.name
        return out

    def majority(self) -> ReuseRule:
        counts: dict[ReuseRule, int] = {}
        for _, _, rule in self.edges:
            counts[rule] = counts.get(rule, 0) + 1
        return max(sorted(counts, key=str), key=lambda r: counts[r]) if counts else HOLD_RULE

    def rule_for(self, i: int, j: int, steps: int) -> tuple[ReuseRule, bool]:
        """``(rule, measured)`` for the segment ``(i, j)`` of a schedule on ``steps`` steps."""
        if j <= i + 1:
            return HOLD_RULE, True  # nothing reused: no rule is read
        if steps == self.steps:
            rule = self._index.get((i, j))  # type: ignore[attr-defined]
            if rule is not None:
                return rule, True
        if not self.edges:
            return HOLD_RULE, False
        if self.fallback == "majority":
            return self.majority(), False
        u, v = i / steps, j / steps
        best = min(self.edges, key=lambda e: (abs(e[0] / self.steps - u) + abs(e[1] / self.steps - v), e[0], e[1]))
        return best[2], False

    def segment_rules(self, schedule: Schedule) -> tuple[tuple[ReuseRule, ...], int]:
        """The rule of each segment of ``schedule`` and how many segments took the fallback."""
        found = [self.rule_for(i, j, schedule.steps) for i, j in schedule.segments()]
        return tuple(name for name, _ in found), sum(1 for _, measured in found if not measured)

    def to_dict(self) -> dict[str, object]:
        return {"steps": self.steps, "fallback": self.fallback, "matrix": self.to_matrix()}
