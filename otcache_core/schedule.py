"""The schedule value type: which of T sampling steps run the full model.

A schedule on ``T`` steps is a strictly increasing tuple ``S = (s_0 = 0 < s_1 < ... < s_{B-1} <= T-1)``
of *computed* steps; every other step reuses the residual of the last computed step. ``B = |S|`` is
the budget, and ``T / B`` the ideal speedup (all model time in the cached part).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import FileFormatError, ScheduleError
from .jsonfile import check_document, load_json, require, save_json, short_repr

SCHEDULE_FORMAT = "otcache.schedule"
SCHEDULE_VERSION = 1
MAX_STEPS = 10_000
"""Most sampling steps a schedule may have (ComfyUI's own step inputs stop there too)."""


def check_steps(steps: int, *, name: str = "steps") -> int:
    """Validate a step count ``T >= 1``."""
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ScheduleError(f"{name} must be an integer, got {short_repr(steps)}")
    if steps < 1:
        raise ScheduleError(f"{name} must be at least 1, got {steps}")
    if steps > MAX_STEPS:
        raise ScheduleError(f"{name} must be at most {MAX_STEPS}, got {steps}")
    return steps


def check_budget(budget: int, steps: int, *, name: str = "budget") -> int:
    """Validate a budget ``1 <= B <= T``."""
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise ScheduleError(f"{name} must be an integer number of computed steps, got {short_repr(budget)}")
    if budget < 1:
        raise ScheduleError(f"{name} must be at least 1 (step 0 is always computed), got {budget}")
    if budget > steps:
        raise ScheduleError(f"{name} {budget} is more than the {steps} steps of the run; use at most {steps}")
    return budget


@dataclass(frozen=True)
class Schedule:
    """Computed steps ``compute_steps`` out of ``steps`` sampling steps.

    Construct through :meth:`from_steps` (validates and sorts nothing silently) or directly with an
    already valid tuple; ``__post_init__`` validates either way.
    """

    steps: int
    compute_steps: tuple[int, ...]

    def __post_init__(self) -> None:
        check_steps(self.steps)
        compute = self.compute_steps
        if not isinstance(compute, tuple):
            object.__setattr__(self, "compute_steps", tuple(compute))
            compute = self.compute_steps
        if not compute:
            raise ScheduleError("a schedule needs at least one computed step (step 0)")
        for s in compute:
            if isinstance(s, bool) or not isinstance(s, int):
                raise ScheduleError(f"computed steps must be integers, found {short_repr(s)}")
        for a, b in zip(compute, compute[1:]):
            if b == a:
                raise ScheduleError(f"computed step {a} appears twice; list each step once")
            if b < a:
                raise ScheduleError(f"computed steps must be increasing, found {a} before {b}")
        if compute[0] != 0:
            if compute[0] < 0:
                raise ScheduleError(f"computed step {compute[0]} is negative; steps count from 0")
            raise ScheduleError("step 0 must be computed (there is nothing to reuse before it); add 0")
        if compute[-1] >= self.steps:
            raise ScheduleError(
                f"computed step {compute[-1]} is out of range for {self.steps} steps (valid: 0..{self.steps - 1})"
            )

    @classmethod
    def from_steps(cls, compute_steps: Iterable[int], steps: int) -> Schedule:
        """Build and validate a schedule from a list of computed step indices."""
        return cls(steps=check_steps(steps), compute_steps=tuple(compute_steps))

    @classmethod
    def all_compute(cls, steps: int) -> Schedule:
        """The schedule that computes every step (no caching)."""
        return cls(steps=check_steps(steps), compute_steps=tuple(range(steps)))

    @property
    def budget(self) -> int:
        """``B``: the number of computed steps."""
        return len(self.compute_steps)

    @property
    def reused_steps(self) -> tuple[int, ...]:
        """The steps that reuse a cached residual, ascending."""
        computed = set(self.compute_steps)
        return tuple(s for s in range(self.steps) if s not in computed)

    @property
    def ideal_speedup(self) -> float:
        """``T / B``: the speedup if the model is all the cost and the cached part costs nothing."""
        return self.steps / self.budget

    def mask(self) -> list[bool]:
        """``mask[t]`` is true where step ``t`` is computed."""
        computed = set(self.compute_steps)
        return [t in computed for t in range(self.steps)]

    @classmethod
    def from_mask(cls, mask: Sequence[bool]) -> Schedule:
        """Inverse of :meth:`mask`."""
        return cls.from_steps([t for t, m in enumerate(mask) if m], len(mask))

    def segments(self) -> list[tuple[int, int]]:
        """Graph edges ``(i, j)`` of this schedule: consecutive computed steps, the last one to ``T``."""
        nodes = list(self.compute_steps) + [self.steps]
        return list(zip(nodes, nodes[1:]))

    def to_dict(self, **extra: Any) -> dict[str, Any]:
        """The versioned JSON document of this schedule; ``extra`` fields (e.g. ``source``) are kept."""
        return {
            "format": SCHEDULE_FORMAT,
            "version": SCHEDULE_VERSION,
            "steps": self.steps,
            "budget": self.budget,
            "compute_steps": list(self.compute_steps),
            **extra,
        }

    @classmethod
    def from_dict(cls, document: Any, *, where: str = "schedule") -> Schedule:
        """Parse a document written by :meth:`to_dict`, naming the problem if it is malformed."""
        doc = check_document(document, SCHEDULE_FORMAT, SCHEDULE_VERSION, where=where)
        return schedule_from_fields(doc, where=where)

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False, **extra: Any) -> None:
        """Save as JSON (atomic; refuses to replace a different file unless ``overwrite``)."""
        save_json(path, self.to_dict(**extra), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Load a schedule JSON file written by :meth:`save`."""
        doc = load_json(path, SCHEDULE_FORMAT, SCHEDULE_VERSION)
        return schedule_from_fields(doc, where=str(path))

    def __str__(self) -> str:
        return f"{self.budget}/{self.steps} steps computed {list(self.compute_steps)}"


def schedule_from_fields(doc: dict[str, Any], *, where: str) -> Schedule:
    """Read ``steps`` and ``compute_steps`` (and check ``budget`` if given) from a JSON object."""
    steps = require(doc, "steps", int, where=where)
    try:
        check_steps(steps)
    except ScheduleError as exc:
        raise FileFormatError(f"{where}: field 'steps': {exc}") from exc
    compute = require(doc, "compute_steps", list, where=where)
    if len(compute) > steps:
        raise FileFormatError(f"{where}: field 'compute_steps' lists {len(compute)} steps, more than the {steps} steps")
    try:
        schedule = Schedule.from_steps(compute, steps)
    except ScheduleError as exc:
        raise FileFormatError(f"{where}: field 'compute_steps': {exc}") from exc
    budget = doc.get("budget")
    if budget is not None and (isinstance(budget, bool) or budget != schedule.budget):
        raise FileFormatError(
            f"{where}: field 'budget' is {short_repr(budget)} but 'compute_steps' lists {schedule.budget} steps; "
            "fix one of them"
        )
    return schedule



def parse_step_list(text: str, *, name: str = "step list") -> list[int]:
    """Parse ``"0,1,2,5"`` (commas and/or spaces) into integers, with an error naming ``name``."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        raise ScheduleError(f"{name} is empty; give comma-separated step indices like 0,1,3,7")
    values = []
    for part in parts:
        try:
            values.append(int(part))
        except ValueError:
            raise ScheduleError(f"{name}: {part!r} is not an integer step index") from None
    return values
