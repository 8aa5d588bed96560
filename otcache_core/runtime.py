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

What a reused call gets is decided by the step's *reuse rule* (:mod:`otcache_core.reuse`): each
stream keeps a short history of ``(sigma, value)`` pairs, bounded by what the run's rules need (one
value for ``hold``, two for ``linear``, ...), and :meth:`CacheRun.standin` extrapolates it to the
sigma of the reused call under the rule of the segment the step lies in.

A run may instead follow a runtime-adaptive :class:`StepPolicy` (the TeaCache-, MagCache- and
EasyCache-style baselines of :mod:`otcache_core.testbed.baselines`): the schedule is then only the default,
and the policy decides each step once, on the step's first call, from host-supplied features; the
report lists the steps as actually decided.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from .forecast_check import ForecastCheck
from .reuse import HOLD_RULE, ReuseRule, history_depth, rules_summary
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
    rules: dict[str, int] = field(default_factory=dict)
    """Reused steps per reuse rule."""
    control_ran: int = 0
    """Control-model evaluations (ControlNet, T2I-Adapter, one per active model of a chain) that ran."""
    control_skipped: int = 0
    """Control-model evaluations left out because their model call reused."""
    kept_bytes: int = 0
    """The most memory the run's stored values (every stream's history) held between model calls."""
    kept_on: str = ""
    """Where they were kept when not on the model's device (``cpu``: OTCache Apply's ``cache_device``)."""

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
        if self.rules:
            parts.append(f"rules: {rules_summary(self.rules)}")
        parts.append(f"wall {self.wall_seconds:.2f}s")
        if self.forced:
            parts.append(f"forced compute at {self.forced} (no residual to reuse)")
        if self.control_ran or self.control_skipped:
            parts.append(f"control-model calls: {self.control_skipped} skipped, {self.control_ran} run")
        if self.kept_bytes:
            parts.append(f"cache held {self.kept_bytes / 2**20:.1f} MiB" + (f" in {self.kept_on} memory" if self.kept_on
                                                                              else ""))
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
            "control_ran": self.control_ran,
            "control_skipped": self.control_skipped,
            "kept_bytes": self.kept_bytes,
            "kept_on": self.kept_on,
            "wall_seconds": self.wall_seconds,
            "rules": dict(self.rules),
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

    def stop(self, reason: str) -> None:
        """Reuse nothing for the rest of the run and say why in the report: later steps count as computed,
        not as forced (nothing is missing; caching was turned off)."""
        if not self._stopped:
            self._stopped = True
            self.notes.append(f"caching stopped: {reason}")

    def observe(self, step: int, features: Any, output: Any) -> None:
        """Called after each computed call with what the call produced."""
        ...


class CacheRun:
    """State of one sampling run under one schedule (or one :class:`StepPolicy`).

    ``rules``: the reuse rule of each step (as :func:`otcache_core.reuse.step_rules` gives for a
    schedule's per-segment rules), one rule for every step, or ``None`` for hold.
    ``sigmas``: the run's ``T + 1`` noise levels, needed by rules that read other steps' sigmas
    (``meancache``: the next step's; ``horizon``: the steps after the last computed one).
    ``check_forecasts``: check each segment's forecast when the segment ends and fall back, per sample
    and stream, where another candidate was closer (:mod:`otcache_core.forecast_check`).
    ``store_device``: keep the stored values there (e.g. ``"cpu"`` for long video clips in ``blocks``
    mode) instead of on the device that computed them; a stand-in brings the history back to that device
    first and extrapolates there, so it is bit for bit what it would be without offloading.
    """

    def __init__(self, schedule: Schedule, *, mode: str = "blocks", notes: Iterable[str] = (),
                 policy: StepPolicy | None = None, rules: ReuseRule | Sequence[ReuseRule] | None = None,
                 sigmas: Sequence[float] | None = None, check_forecasts: bool = False,
                 store_device: torch.device | str | None = None) -> None:
        self.schedule = schedule
        self.mode = mode
        self.notes = list(notes)
        self.policy = policy
        self._decided: set[int] = set()
        if policy is not None:
            policy.reset(schedule.steps)
        self._mask = schedule.mask()
        T = schedule.steps
        if rules is None or isinstance(rules, ReuseRule):
            self._rules = [rules or HOLD_RULE] * T
        elif len(rules) != T:
            raise ValueError(f"need one reuse rule per step ({T}), got {len(rules)}")
        else:
            self._rules = list(rules)
        self._sigmas = None if sigmas is None else [float(s) for s in sigmas]
        depth, step_depth = history_depth(self._rules)
        self._history: dict[Hashable, deque] = {}  # key -> (sigma, value) of the last computed steps
        self._depth = depth
        self._step_history: dict[Hashable, deque] = {}  # key -> (sigma, value) of the last steps (per-step rules)
        self._step_depth = step_depth
        self._standins: dict[Hashable, tuple[int, torch.Tensor]] = {}  # per-step rules: once per step
        self._check = ForecastCheck() if check_forecasts else None
        self._kept_bytes = 0  # the most the histories held at once
        self._store_device = None if store_device is None else torch.device(store_device)
        self._compute_device: dict[Hashable, torch.device] = {}  # per stream, where its values were computed
        self._status: dict[int, str] = {}  # step -> "computed" | "reused" | "forced"
        self._stopped = False
        self._calls = {True: 0, False: 0}  # reused? -> count
        self._seconds = {True: 0.0, False: 0.0}
        self._controls = {True: 0, False: 0}  # skipped? -> control-model evaluations
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
        # what the run holds between model calls (the values a call is about to store are its own output)
        self._kept_bytes = max(self._kept_bytes, self.kept_bytes())
        reuse = ready and not self._stopped and not self.scheduled_compute(step)
        if reuse:
            self._status.setdefault(step, "reused")
        elif self.scheduled_compute(step) or self._stopped:
            self._status[step] = "computed"
        elif self._status.get(step) != "computed":
            self._status[step] = "forced"
        return reuse

    def stop(self, reason: str) -> None:
        """Reuse nothing for the rest of the run and say why in the report: later steps count as computed,
        not as forced (nothing is missing; caching was turned off)."""
        if not self._stopped:
            self._stopped = True
            self.notes.append(f"caching stopped: {reason}")

    def observe(self, step: int, features: Any, output: Any) -> None:
        """Tell the policy (if any) what a computed call at ``step`` produced."""
        if self.policy is not None:
            self.policy.observe(step, features, output)

    def ready(self, keys: Iterable[Hashable], like: torch.Tensor | None = None) -> bool:
        """Whether every key has a stored residual (of ``like``'s layout when given)."""
        return all(self.has(k, like) for k in keys)

    # -- residual store ----------------------------------------------------------------------------
    def has(self, key: Hashable, like: torch.Tensor | None = None) -> bool:
        history = self._history.get(key)
        return bool(history) and (like is None or same_layout(history[-1][1], like))

    def residual(self, key: Hashable) -> torch.Tensor:
        """The value stored at the last computed step of stream ``key`` (what ``hold`` reuses)."""
        return self._history[key][-1][1]

    def kept(self, key: Hashable) -> int:
        """How many computed values stream ``key`` holds (at most what the run's rules read)."""
        return len(self._history.get(key, ()))

    def rule(self, step: int) -> ReuseRule:
        """The reuse rule of ``step`` (steps outside the run: hold)."""
        return self._rules[step] if 0 <= step < len(self._rules) else HOLD_RULE

    def store(self, key: Hashable, value: torch.Tensor, sigma: float | None = None) -> None:
        """Keep ``value`` (detached), computed at noise level ``sigma``, for later reused steps of stream
        ``key``. Without ``sigma`` (or after a layout change) the stream's history restarts at this value;
        a second value at the same sigma replaces the first."""
        value = value.detach()
        if self._check is not None:
            self._check.check(key, self._fetch(self._history.get(key) or (), value.device), value, sigma, self._sigmas)
        if self._store_device is not None:
            self._compute_device[key] = value.device
            value = value.to(self._store_device)
        _push(self._history, key, self._depth, sigma, value)
        if self._step_depth:
            _push(self._step_history, key, self._step_depth, sigma, value)

    def kept_bytes(self) -> int:
        """Bytes the stored values keep alive now: each underlying storage once (a stream's rows are a view
        of the batch's tensor, which stays whole; a layout token is one element)."""
        storages = {}
        for histories in (self._history, self._step_history):
            for history in histories.values():
                for _, value in history:
                    storage = value.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def standin(self, key: Hashable, step: int, sigma: float) -> torch.Tensor:
        """What a reused call of ``step`` at noise level ``sigma`` gets for stream ``key``: the stored
        history extrapolated under the step's rule (``hold``: the stored value itself)."""
        rule = self.rule(step)
        known = self._standins.get(key)
        first_call = known is None or known[0] != step
        device = self._compute_device.get(key)
        if rule.per_step:
            if not first_call:  # further calls of a step get the step's stand-in
                return known[1]
            history = self._fetch(self._step_history.get(key) or self._history[key], device)
            value = rule.standin(history, sigma, self._next_sigma(step))
        else:
            history = self._fetch(self._history[key], device)
            value = rule.standin(history, sigma, grid=self._sigmas)
            if self._check is not None:
                value = self._check.standin(key, rule, value, history, sigma, self._sigmas)
                self._check.forecasting(key, rule)
        if self._step_depth and first_call:  # per-step rules read the stand-ins of earlier steps too
            self._standins[key] = (step, value)
            kept = value if self._store_device is None else value.to(self._store_device)
            _push(self._step_history, key, self._step_depth, sigma, kept)
        return value

    def _fetch(self, history: Iterable[tuple[float | None, torch.Tensor]], device: torch.device | None):
        """``history`` on ``device`` (offloaded runs); as it is otherwise."""
        if self._store_device is None or device is None:
            return history
        return [(s, v.to(device)) for s, v in history]

    def _next_sigma(self, step: int) -> float | None:
        if self._sigmas is None or not 0 <= step + 1 < len(self._sigmas):
            return None
        return self._sigmas[step + 1]

    def clear(self) -> None:
        self._history.clear()
        self._step_history.clear()
        self._standins.clear()
        if self._check is not None:
            self._check = ForecastCheck()

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

    def add_controls(self, skipped: bool, evaluations: int) -> None:
        """Count control-model evaluations that ran (``skipped=False``) or were left out."""
        self._controls[skipped] += evaluations

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
            notes=list(self.notes) + [n for n in [self._check and self._check.describe()] if n],
            rules=dict(Counter(self.rule(s).name for s in reused)),
            control_ran=self._controls[False],
            control_skipped=self._controls[True],
            kept_bytes=self._kept_bytes,
            kept_on="" if self._store_device is None else self._store_device.type.upper(),
        )


def _push(histories: dict[Hashable, deque], key: Hashable, depth: int, sigma: float | None,
          value: torch.Tensor) -> None:
    """Append ``(sigma, value)`` to the bounded history of ``key`` (see :meth:`CacheRun.store`)."""
    history = histories.get(key)
    if history is None or sigma is None or not same_layout(history[-1][1], value):
        histories[key] = deque([(sigma, value)], maxlen=depth)
        return
    if history[-1][0] == sigma:
        history.pop()
    history.append((sigma, value))
