"""The host-agnostic cache engine: per-run state, the compute/reuse decision, residuals, the run report.

A host (the testbed sampler, the ComfyUI wrappers) creates one :class:`CacheRun` per sampling run and
drops it when the run ends, so nothing leaks between runs, samplers or resolutions. For each model
call it maps the call to a step (:func:`step_index`), asks :meth:`CacheRun.plan_call` whether to reuse,
and either applies the stored residuals or computes and :meth:`CacheRun.store`\\ s fresh ones.

Residuals are stored per *stream key*, a hashable the host chooses (e.g. ``(stage, cond uuid)``), so
cond and uncond, batch rows of different prompts and block stages never mix. A stored residual is
only reused for an input of the same shape, dtype and device; anything else forces a computation.
Reuse happens only where the schedule says so *and* every needed stream has a residual: an
all-compute schedule therefore never touches a stored tensor and is exact by construction.

A run may instead follow a runtime-adaptive :class:`StepPolicy` (the TeaCache-, MagCache- and
EasyCache-style baselines of :mod:`otcache_core.baselines`): the schedule is then only the default,
and the policy decides each step once, on the step's first call, from host-supplied features; the
report lists the steps as actually decided.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .schedule import Schedule


def step_index(sample_sigmas: Sequence[float], sigma: float) -> int:
    """The sampling step a model call at noise level ``sigma`` belongs to.

    ``sample_sigmas`` (``T + 1`` values, non-increasing) is the run's schedule of noise levels; the step
    is the last ``j`` with ``sample_sigmas[j] >= sigma``, clamped to ``[0, T-1]``. It is exact for
    one-evaluation samplers and maps intermediate evaluations (Heun, DPM2, ...) to a step as well.
    """
    T = len(sample_sigmas) - 1
    if T < 1:
        return 0
    # bisect on the negated (non-decreasing) sequence; a relative tolerance absorbs float round-off
    neg = [-float(s) for s in sample_sigmas]
    target = -float(sigma) * (1.0 - 1e-6) if sigma > 0 else -float(sigma) + 1e-12
    j = bisect.bisect_right(neg, target) - 1
    return min(max(j, 0), T - 1)


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a stored tensor may stand in for ``b`` (shape, dtype and device all equal)."""
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device


@dataclass
class RunReport:
    """What one sampling run did."""

    steps: int
    scheduled: Schedule
    computed: list[int]
    reused: list[int]
    forced: list[int]
    """Steps computed although the schedule said reuse (no usable residual yet)."""
    calls_computed: int
    calls_reused: int
    seconds_computed: float
    seconds_reused: float
    wall_seconds: float
    mode: str = "blocks"
    notes: list[str] = field(default_factory=list)

    @property
    def ideal_speedup(self) -> float:
        """``T / computed steps`` as actually run."""
        return self.steps / max(1, len(self.computed))

    @property
    def model_speedup(self) -> float | None:
        """Measured in this run: (all calls at the mean computed-call time) / (time actually spent).

        ``None`` when nothing was reused or no computed call was timed.
        """
        if not self.calls_reused or not self.calls_computed:
            return None
        per_call = self.seconds_computed / self.calls_computed
        spent = self.seconds_computed + self.seconds_reused
        return (per_call * (self.calls_computed + self.calls_reused)) / spent if spent > 0 else None

    def line(self) -> str:
        """The one log line every run prints."""
        parts = [
            f"OTCache [{self.mode}]: computed {len(self.computed)}/{self.steps} steps {self.computed}",
            f"reused {len(self.reused)}",
            f"ideal speedup {self.ideal_speedup:.2f}x",
        ]
        speed = self.model_speedup
        if speed is not None:
            parts.append(f"measured model speedup {speed:.2f}x")
        parts.append(f"wall {self.wall_seconds:.2f}s")
        if self.forced:
            parts.append(f"forced compute at {self.forced} (no residual to reuse)")
        return "; ".join(parts + self.notes)

    def to_dict(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "mode": self.mode,
            "scheduled_compute_steps": list(self.scheduled.compute_steps),
            "computed": self.computed,
            "reused": self.reused,
            "forced": self.forced,
            "ideal_speedup": self.ideal_speedup,
            "model_speedup": self.model_speedup,
            "calls_computed": self.calls_computed,
            "calls_reused": self.calls_reused,
            "wall_seconds": self.wall_seconds,
            "notes": list(self.notes),
        }


class StepPolicy(Protocol):
    """A runtime-adaptive compute/reuse rule, consulted once per step.

    ``features`` is whatever the host passes for the call (e.g. the model input and the block-stack
    input); ``output`` is the cached part's output of a computed call. The engine calls
    :meth:`reset` when a run starts, so a policy object carries no state from one run to the next.
    """

    def reset(self, steps: int) -> None: ...

    def decide(self, step: int, features: Any) -> bool:
        """``True``: compute this step; ``False``: reuse the stored residual."""
        ...

    def observe(self, step: int, features: Any, output: Any) -> None:
        """Called after each computed call with what the call produced."""
        ...


class CacheRun:
    """State of one sampling run under one schedule (or one :class:`StepPolicy`)."""

    def __init__(self, schedule: Schedule, *, mode: str = "blocks", notes: Iterable[str] = (),
                 policy: StepPolicy | None = None) -> None:
        self.schedule = schedule
        self.mode = mode
        self.notes = list(notes)
        self.policy = policy
        self._decided: set[int] = set()
        if policy is not None:
            policy.reset(schedule.steps)
        self._mask = schedule.mask()
        self._residuals: dict[Hashable, torch.Tensor] = {}
        self._status: dict[int, str] = {}  # step -> "computed" | "reused" | "forced"
        self._calls = {True: 0, False: 0}  # reused? -> count
        self._seconds = {True: 0.0, False: 0.0}
        self._started = time.perf_counter()

    # -- decisions ---------------------------------------------------------------------------------
    def scheduled_compute(self, step: int) -> bool:
        """What the schedule says for ``step`` (steps outside ``[0, T)`` are computed)."""
        return not (0 <= step < len(self._mask)) or self._mask[step]

    def plan_call(self, step: int, ready: bool, features: Any = None) -> bool:
        """Decide one model call at ``step``: ``True`` = reuse.

        Reuse needs the schedule to say so and the host to be ``ready`` (a usable residual stored
        for every stream of the call, see :meth:`ready`). The step's status in the report follows:
        any computed call makes it computed, and "forced" when the schedule said reuse.
        With a policy, its decision on the step's first call (given ``features``) replaces the
        schedule's for that step; step 0 is always computed.
        """
        if self.policy is not None and 0 <= step < len(self._mask) and step not in self._decided:
            self._decided.add(step)  # multi-evaluation samplers: decide once per step
            compute = bool(self.policy.decide(step, features))  # asked at step 0 too: it may record
            self._mask[step] = compute or step == 0
        reuse = ready and not self.scheduled_compute(step)
        if reuse:
            self._status.setdefault(step, "reused")
        elif self.scheduled_compute(step):
            self._status[step] = "computed"
        elif self._status.get(step) != "computed":
            self._status[step] = "forced"
        return reuse

    def observe(self, step: int, features: Any, output: Any) -> None:
        """Tell the policy (if any) what a computed call at ``step`` produced."""
        if self.policy is not None:
            self.policy.observe(step, features, output)

    def ready(self, keys: Iterable[Hashable], like: torch.Tensor | None = None) -> bool:
        """Whether every key has a stored residual (of ``like``'s layout when given)."""
        return all(self.has(k, like) for k in keys)

    # -- residual store ----------------------------------------------------------------------------
    def has(self, key: Hashable, like: torch.Tensor | None = None) -> bool:
        stored = self._residuals.get(key)
        return stored is not None and (like is None or same_layout(stored, like))

    def residual(self, key: Hashable) -> torch.Tensor:
        return self._residuals[key]

    def store(self, key: Hashable, value: torch.Tensor) -> None:
        """Keep ``value`` (detached) as the residual of stream ``key`` for later reused steps."""
        self._residuals[key] = value.detach()

    def clear(self) -> None:
        self._residuals.clear()

    # -- timing and report -------------------------------------------------------------------------
    @staticmethod
    def clock(device: torch.device | None = None) -> float:
        """A timestamp for timing model calls; waits for queued CUDA work so the time is real."""
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    def add_call(self, reused: bool, seconds: float) -> None:
        """Count one model call and its wall time (for the measured model speedup)."""
        self._calls[reused] += 1
        self._seconds[reused] += seconds

    def report(self) -> RunReport:
        computed = sorted(s for s, v in self._status.items() if v in ("computed", "forced"))
        reused = sorted(s for s, v in self._status.items() if v == "reused")
        forced = sorted(s for s, v in self._status.items() if v == "forced")
        # with a policy, "scheduled" is what the policy decided (undecided steps keep the default)
        scheduled = self.schedule if self.policy is None else Schedule.from_mask(self._mask)
        return RunReport(
            steps=self.schedule.steps,
            scheduled=scheduled,
            computed=computed,
            reused=reused,
            forced=forced,
            calls_computed=self._calls[False],
            calls_reused=self._calls[True],
            seconds_computed=self._seconds[False],
            seconds_reused=self._seconds[True],
            wall_seconds=time.perf_counter() - self._started,
            mode=self.mode,
            notes=list(self.notes),
        )
