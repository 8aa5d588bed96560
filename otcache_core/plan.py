"""A schedule *plan*: warps plus a budget rule, resolved for the step count a run actually uses.

The ComfyUI Schedule node outputs a plan rather than a fixed step list, because the sampler's step
count is only known when sampling starts (and may differ from the calibration's). Resolving costs
microseconds and says what it did (resampled from another T, budget rescaled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .calibration import UNIFORM, BudgetChoice, BudgetChoices, Calibration
from .conditions import ModelConditions
from .errors import ScheduleError
from .interpolation import LAMBDA_MAPPINGS, Prediction, budget_for_fraction, predict_from_warps
from .quality import ExpectedQuality, smallest_budget_for
from .reuse import DEFAULT_RULE, DEFAULT_RULE_SOURCE, FALLBACKS, EdgeRules, ReuseRule
from .schedule import Schedule, check_steps
from .warp import Warp, identity_warp, sample_warp, warp_of

BudgetKind = Literal["steps", "speedup"]


@dataclass(frozen=True)
class BudgetRule:
    """How many steps to compute: ``budget`` computed steps out of ``at_steps``, or a target speedup.

    At another step count ``T`` the compute fraction is kept: ``B = round(budget / at_steps * T)``;
    a speedup ``s`` gives ``B = round(T / s)``.
    """

    kind: BudgetKind
    value: float
    at_steps: int | None = None

    def __post_init__(self) -> None:
        if self.kind == "steps":
            if self.at_steps is None or self.at_steps < 1:
                raise ScheduleError("a budget in steps needs the step count it refers to (at_steps >= 1)")
            if not (1 <= self.value <= self.at_steps) or int(self.value) != self.value:
                raise ScheduleError(
                    f"budget {self.value} must be a whole number of computed steps between 1 and {self.at_steps}"
                )
        elif self.kind == "speedup":
            if not self.value >= 1.0:
                raise ScheduleError(f"target speedup must be at least 1.0 (no caching), got {self.value}")
        else:
            raise ScheduleError(f"budget kind must be 'steps' or 'speedup', got {self.kind!r}")

    @property
    def fraction(self) -> float:
        return self.value / self.at_steps if self.kind == "steps" else 1.0 / self.value

    def budget_for(self, steps: int, *, minimum: int = 1) -> int:
        T = check_steps(steps)
        if self.kind == "steps" and T == self.at_steps:
            return max(minimum, int(self.value))
        return budget_for_fraction(T, self.fraction, minimum=minimum)

    def describe(self) -> str:
        if self.kind == "steps":
            return f"{int(self.value)} of {self.at_steps} steps"
        return f"{self.value:g}x speedup"


@dataclass(frozen=True)
class Resolved:
    """A plan resolved for one run."""

    prediction: Prediction
    rules: tuple[ReuseRule, ...]
    """The reuse rule of each segment of the schedule."""
    notes: tuple[str, ...] = ()
    rules_source: str = ""
    """Where the rules come from, in a few words (the run's log line and the Schedule summary show it)."""
    fallbacks: int = 0
    """Segments whose rule no calibration edge measured (they took the table's fallback)."""

    @property
    def schedule(self) -> Schedule:
        return self.prediction.schedule


@dataclass(frozen=True)
class SchedulePlan:
    """Reference and anchor warps (as compute fractions) plus a budget rule.

    With ``anchor=None`` the plan is a single warp (a fixed schedule), resampled to any (T, B).
    """

    reference: Warp
    ref_fraction: float
    anchor: Warp | None
    anchor_fraction: float | None
    source_steps: int
    rule: BudgetRule
    mapping: str = "linear"
    warmup: int = 0
    label: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    families: tuple[str, ...] = ()
    """Model architectures the plan was made for (empty: any)."""
    reuse: EdgeRules | None = None
    """A version-2 calibration's best reuse rule per edge; segments look their rule up here."""
    budgets: BudgetChoices | None = None
    """A version-3 calibration's end-to-end choice (schedule and rule) per checked budget."""
    rule_for_all: ReuseRule | None = None
    """One rule for every segment (a preset's); with none of the three: :data:`~otcache_core.reuse.DEFAULT_RULE`."""
    rule_source: str = ""
    made_with: ModelConditions = field(default_factory=ModelConditions)
    """What the calibration's model was patched with (LoRAs, shift): the host warns when the run's differs."""

    def __post_init__(self) -> None:
        if self.mapping not in LAMBDA_MAPPINGS:
            raise ScheduleError(f"lambda mapping must be one of {', '.join(LAMBDA_MAPPINGS)}, got {self.mapping!r}")

    @classmethod
    def from_calibration(cls, calibration: Calibration, rule: BudgetRule, *, mapping: str = "linear",
                         warmup: int = 0, label: str | None = None) -> SchedulePlan:
        ref, anc = calibration.reference.schedule, calibration.anchor.schedule
        return cls(
            reference=warp_of(ref),
            ref_fraction=ref.budget / ref.steps,
            anchor=warp_of(anc),
            anchor_fraction=anc.budget / anc.steps,
            source_steps=calibration.steps,
            rule=rule,
            mapping=mapping,
            warmup=warmup,
            label=label or calibration.name,
            families=calibration_families(calibration),
            reuse=calibration.edge_rules(),
            budgets=calibration.budgets,
            rule_for_all=calibration.rule,
            rule_source=calibration.rule_source,
            made_with=calibration.conditions,
        )

    @classmethod
    def from_schedule(cls, schedule: Schedule, *, label: str = "", rule: BudgetRule | None = None,
                      rules: tuple[ReuseRule, ...] | ReuseRule | None = None) -> SchedulePlan:
        """A plan that reproduces ``schedule`` at its own T and resamples its warp elsewhere; ``rules`` are
        its segments' reuse rules (one per segment; elsewhere the table's fallback), or one for all."""
        per_edge = None
        if rules is not None and not isinstance(rules, ReuseRule):
            segments = schedule.segments()
            if len(rules) != len(segments):
                raise ScheduleError(f"{len(rules)} reuse rules for the {len(segments)} segments of {schedule}")
            per_edge = EdgeRules(schedule.steps, tuple((i, j, r) for (i, j), r in zip(segments, rules) if j >= i + 2))
        return cls(
            reference=warp_of(schedule),
            ref_fraction=schedule.budget / schedule.steps,
            anchor=None,
            anchor_fraction=None,
            source_steps=schedule.steps,
            rule=rule or BudgetRule("steps", schedule.budget, schedule.steps),
            label=label,
            reuse=per_edge,
            rule_for_all=rules if isinstance(rules, ReuseRule) else None,
        )

    def resolve(self, steps: int) -> Resolved:
        """The schedule for a run of ``steps`` steps and its segments' rules, with notes on what was adapted."""
        T = check_steps(steps)
        # the warm-up prefix is part of the budget; keep at least one step for the warp after it
        B = min(T, self.rule.budget_for(T, minimum=self.warmup + 1))
        warmup = self.warmup if self.warmup < B else 0  # only when T itself is that short: all compute
        notes = list(self.notes)
        if T != self.source_steps:
            notes.append(f"schedule resampled from T={self.source_steps} to T={T}")
        if self.rule.kind == "steps" and self.rule.at_steps != T:
            notes.append(f"budget {self.rule.describe()} -> {B} of {T} steps")
        choice = self.budgets.nearest(B / T, self.source_steps) if self.budgets is not None else None
        if choice is not None and choice.schedule == UNIFORM:
            prediction = Prediction(sample_warp(identity_warp(), T, B, warmup=warmup), 0.0, 0.0, False, UNIFORM)
        elif self.anchor is None or self.anchor_fraction is None:
            schedule = sample_warp(self.reference, T, B, warmup=warmup)
            regime = "reference" if abs(B / T - self.ref_fraction) < 1e-12 else "between"
            prediction = Prediction(schedule, 0.0, 0.0, False, regime)
        else:
            prediction = predict_from_warps(
                self.reference, self.ref_fraction, self.anchor, self.anchor_fraction, T, B,
                mapping=self.mapping, warmup=warmup,
            )
        if prediction.extrapolated:
            notes.append("budget below the anchor's: extrapolated from the anchor, expect lower fidelity")
        segments = len(prediction.schedule.segments())
        if choice is not None:
            return Resolved(prediction, (choice.rule,) * segments, tuple(notes), self._choice_source(choice))
        if self.reuse is not None:
            rules, fallbacks = self.reuse.segment_rules(prediction.schedule)
            if fallbacks:
                notes.append(f"reuse rules of {fallbacks} segments not measured by the calibration: "
                             f"{FALLBACKS[self.reuse.fallback]}")
            return Resolved(prediction, rules, tuple(notes), "each segment's rule from the calibration's edges",
                            fallbacks)
        if self.rule_for_all is not None:  # the summary shows where it comes from in full; the log line is short
            source = "the rule its file states, measured" if self.rule_source else "the schedule's rule"
            return Resolved(prediction, (self.rule_for_all,) * segments, tuple(notes), source)
        return Resolved(prediction, (DEFAULT_RULE,) * segments, tuple(notes),
                        f"the schedule names no rule: {DEFAULT_RULE_SOURCE}")

    def _choice_source(self, choice: BudgetChoice) -> str:
        checked = "validated" if self.budgets is not None and self.budgets.validated else "chosen"
        what = "even spacing beat the calibrated schedule" if choice.schedule == UNIFORM else "the calibrated schedule"
        return f"{checked} end to end at {choice.budget} of {self.source_steps} steps: {what}, {choice.rule}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.to_dict(),
            "ref_fraction": self.ref_fraction,
            "anchor": None if self.anchor is None else self.anchor.to_dict(),
            "anchor_fraction": self.anchor_fraction,
            "source_steps": self.source_steps,
            "rule": {"kind": self.rule.kind, "value": self.rule.value, "at_steps": self.rule.at_steps},
            "mapping": self.mapping,
            "warmup": self.warmup,
            "label": self.label,
            "notes": list(self.notes),
            "families": list(self.families),
            "reuse": None if self.reuse is None else self.reuse.to_dict(),
            "budgets": None if self.budgets is None else self.budgets.to_dict(),
            "rule_for_all": None if self.rule_for_all is None else self.rule_for_all.name,
        }

    def expected_quality(self, steps: int) -> tuple[int, ExpectedQuality] | None:
        """The validated budget (of the calibration's step count) whose choice a run of ``steps`` steps uses,
        with its expected quality; ``None`` where the calibration measured none."""
        if self.budgets is None:
            return None
        T = check_steps(steps)
        B = min(T, self.rule.budget_for(T, minimum=self.warmup + 1))
        choice = self.budgets.nearest(B / T, self.source_steps)
        return None if choice.quality is None else (choice.budget, choice.quality)

    def fits(self, family: str) -> bool:
        """Whether the plan may be used on a model of architecture ``family``."""
        return not self.families or family in self.families


def calibration_families(calibration: Calibration) -> tuple[str, ...]:
    """Architectures a calibration applies to: ``model.families``, else ``model.family``; "any" = all."""
    families = calibration.model.get("families") or ([calibration.family] if calibration.family else [])
    return () if "any" in families else tuple(str(f) for f in families)


def budget_for_quality(calibration: Calibration, target_psnr: float) -> tuple[BudgetRule, str]:
    """The budget rule that meets a quality target, and a sentence that says how.

    The budget is the smallest validated one whose expected PSNR (leave-one-out on the calibration's
    validation samples, :mod:`otcache_core.quality`) meets ``target_psnr``, as a share of the calibration's
    step count (so it rescales to the run's steps like any budget). Where no validated budget is expected
    to meet it, every step is computed. A file without quality measurements (a preset, a calibration from
    before they were recorded) cannot answer: the error says what to do.
    """
    expected = calibration.budgets.expected if calibration.budgets is not None else {}
    if not expected:
        what = ("a shipped preset, never run on your model" if calibration.source.get("kind") in ("published", "rule")
                else "a calibration that recorded no quality (made before OTCache measured it, or without "
                     "validation samples)")
        raise ScheduleError(f"'budget_as' quality needs the measured quality of a calibration; {calibration.name!r} is "
                            f"{what}. Connect OTCache Calibrate (samples >= 2) or pick one of your calibrations, or "
                            "set 'budget_as' to computed steps")
    T = calibration.steps
    budget = smallest_budget_for(target_psnr, expected)
    if budget is None:
        best = max(expected, key=lambda b: expected[b].psnr)
        return BudgetRule("steps", T, T), (
            f"quality target {target_psnr:g} dB: no validated budget is expected to reach it (best "
            f"{expected[best].psnr:.1f} dB at {best} of {T}): every step computed")
    return BudgetRule("steps", budget, T), (
        f"quality target {target_psnr:g} dB: {budget} of {T} steps, {expected[budget].describe()}")
