"""The calibration record: everything a calibration measured, as one versioned, shareable JSON file.

Schedules for any budget and step count are derived from it (:mod:`otcache_core.plan`). Shipped
presets built from published step lists use the same record, with ``method = "published"`` and their
source named.

Versions: 2 adds reuse rules (:mod:`otcache_core.reuse`): the rule each measured edge did best with
(``edge_errors.rules``, with the candidates and each candidate's matrix) and the rule of each segment
of the reference and the anchor (``rules``). 3 adds ``budgets``: for each of several budgets, the
schedule (the calibrated one or even spacing) and the one reuse rule that did best *end to end* on
samples the search never saw, with every score (:class:`BudgetChoice`); and ``reuse``, one rule for
every segment of a file that has no per-budget choices (the shipped presets), with where it comes from.
Files of every version load; version-1 files (written before rules) carry no rule at all, and what
they run with is decided where they are used (:mod:`otcache_core.plan`).
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .conditions import ModelConditions
from .errors import FileFormatError, OTCacheError
from .jsonfile import check_document, finite_number, load_json, require, save_json, short_repr
from .quality import ExpectedQuality
from .reuse import DEFAULT_FALLBACK, DEFAULT_RULE, DEFAULT_RULE_SOURCE, EdgeRules, ReuseRule, parse_rule, rules_summary
from .schedule import Schedule, check_steps, schedule_from_fields

CALIBRATION_FORMAT = "otcache.calibration"
CALIBRATION_VERSION = 3

CALIBRATED = "calibrated"
UNIFORM = "uniform"
#: What a :class:`BudgetChoice` may pick: the calibration's interpolated schedule, or even spacing.
SCHEDULE_KINDS: tuple[str, ...] = (CALIBRATED, UNIFORM)


@dataclass(frozen=True)
class ScheduleRecord:
    """A reference or anchor schedule with how it was obtained."""

    schedule: Schedule
    method: str
    """``leximax`` / ``power`` (graph), ``uniform`` (even spacing won the reference check), ``optuna``
    (anchor search) or ``published``."""
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts: segment errors, objective name, trials, source of a published list."""
    rules: tuple[ReuseRule, ...] | None = None
    """The reuse rule of each segment (``None``: none recorded, as every record before rules)."""

    def __post_init__(self) -> None:
        if self.rules is not None and len(self.rules) != len(self.schedule.segments()):
            raise OTCacheError(
                f"{len(self.rules)} reuse rules for the {len(self.schedule.segments())} segments of {self.schedule}"
            )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "compute_steps": list(self.schedule.compute_steps),
            "budget": self.schedule.budget,
            "steps": self.schedule.steps,
            "method": self.method,
        }
        if self.score is not None:
            out["score"] = self.score
        if self.rules is not None:
            out["rules"] = [r.name for r in self.rules]
        out.update(self.details)
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, where: str) -> ScheduleRecord:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: expected an object")
        schedule = schedule_from_fields(doc, where=where)
        method = require(doc, "method", str, where=where)
        score = doc.get("score")
        if score is not None:
            score = finite_number(score, "score", where=where)
        rules = doc.get("rules")
        if rules is not None:
            _check_rule_names(rules, "rules", where=where)
        details = {k: v for k, v in doc.items()
                   if k not in ("compute_steps", "budget", "steps", "method", "score", "rules")}
        try:
            return cls(schedule, method, score, details, None if rules is None else tuple(parse_rule(r) for r in rules))
        except OTCacheError as exc:  # the rules do not fit the schedule's segments
            raise FileFormatError(f"{where}: field 'rules': {exc}") from exc


@dataclass(frozen=True)
class BudgetChoice:
    """What runs at one budget: the schedule (the calibration's own or even spacing) and one reuse rule
    for all its segments, the pair that came closest to full compute end to end.

    ``scores`` holds every pair tried, ``"<schedule> <rule>" -> distance`` (lower is better), measured
    on ``samples`` samples (the calibration's validation samples, which no search stage saw; or, for
    the reference and the anchor of a calibration without them, the search samples).
    """

    budget: int
    """Computed steps of the calibration's own step count."""
    schedule: str
    rule: ReuseRule
    scores: dict[str, float] = field(default_factory=dict)
    quality: ExpectedQuality | None = None
    """What this budget is expected to give against full compute (PSNR, dB), estimated leave-one-out on the
    validation samples (absent in files from before it was measured, and without validation samples)."""

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULE_KINDS:
            raise OTCacheError(f"a budget choice's schedule must be one of {', '.join(SCHEDULE_KINDS)}, "
                               f"got {self.schedule!r}")

    def describe(self, steps: int) -> str:
        """``"10 of 30: even spacing + linear (0.0123; calibrated + linear 0.0150)"``."""
        what = "even spacing" if self.schedule == UNIFORM else "the calibrated schedule"
        own = self.scores.get(score_key(self.schedule, self.rule))
        others = [f"{k} {v:.4g}" for k, v in sorted(self.scores.items(), key=lambda kv: kv[1])
                  if k != score_key(self.schedule, self.rule)]
        scored = "" if own is None else f" ({own:.4g}" + (f"; {', '.join(others[:2])}" if others else "") + ")"
        quality = "" if self.quality is None else f": {self.quality.psnr:.1f} dB (worst {self.quality.worst_psnr:.1f})"
        return f"{self.budget} of {steps}: {what} + {self.rule}{quality}{scored}"

    def to_dict(self) -> dict[str, Any]:
        out = {"budget": self.budget, "schedule": self.schedule, "rule": self.rule.name, "scores": dict(self.scores)}
        if self.quality is not None:
            out["quality"] = self.quality.to_dict()
        return out

    @classmethod
    def from_dict(cls, doc: Any, *, where: str) -> BudgetChoice:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: expected an object")
        budget = require(doc, "budget", int, where=where)
        schedule = require(doc, "schedule", str, where=where)
        rule = _rule_field(doc, "rule", where=where)
        scores = _dict_field(doc, "scores", where)
        for key, value in scores.items():
            finite_number(value, f"scores.{short_repr(key, 40)}", where=where, minimum=0.0)
        quality = doc.get("quality")
        if quality is not None:
            quality = ExpectedQuality.from_dict(quality, where=f"{where}: quality")
        try:
            return cls(budget, schedule, rule, dict(scores), quality)
        except OTCacheError as exc:
            raise FileFormatError(f"{where}: {exc}") from exc


def score_key(schedule: str, rule: ReuseRule) -> str:
    """How :attr:`BudgetChoice.scores` names one (schedule, rule) pair."""
    return f"{schedule} {rule.name}"


@dataclass(frozen=True)
class BudgetChoices:
    """The end-to-end choices of a calibration, one per budget it checked (largest budget first)."""

    choices: tuple[BudgetChoice, ...]
    objective: str = ""
    samples: int = 0
    """Samples each choice was measured on."""
    validated: bool = True
    """``True``: on samples no search stage saw; ``False``: on the search samples (no validation)."""

    def __post_init__(self) -> None:
        if not self.choices:
            raise OTCacheError("budget choices need at least one budget")
        object.__setattr__(self, "choices", tuple(sorted(self.choices, key=lambda c: -c.budget)))

    def nearest(self, fraction: float, steps: int) -> BudgetChoice:
        """The choice of the checked budget closest to ``fraction`` of the run (``budget / steps`` of the
        calibration's ``steps``); a tie goes to the larger budget."""
        return min(self.choices, key=lambda c: (round(abs(c.budget / steps - fraction), 9), -c.budget))

    @property
    def expected(self) -> dict[int, ExpectedQuality]:
        """The expected quality of every checked budget that has one (largest budget first)."""
        return {c.budget: c.quality for c in self.choices if c.quality is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "samples": self.samples, "validated": self.validated,
                "budgets": [c.to_dict() for c in self.choices]}

    @classmethod
    def from_dict(cls, doc: Any, steps: int, *, where: str) -> BudgetChoices:
        if not isinstance(doc, dict):
            raise FileFormatError(f"{where}: expected an object")
        items = require(doc, "budgets", list, where=where)
        choices = tuple(BudgetChoice.from_dict(item, where=f"{where}: budgets[{n}]") for n, item in enumerate(items))
        for n, choice in enumerate(choices):
            if not 1 <= choice.budget <= steps:
                raise FileFormatError(f"{where}: budgets[{n}]: field 'budget' must be between 1 and {steps}")
        samples = doc.get("samples", 0)
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise FileFormatError(f"{where}: field 'samples' must be a whole number >= 0")
        validated = doc.get("validated", True)
        if not isinstance(validated, bool):
            raise FileFormatError(f"{where}: field 'validated' must be true or false")
        try:
            return cls(choices, _text_field(doc, "objective", where), samples, validated)
        except OTCacheError as exc:
            raise FileFormatError(f"{where}: {exc}") from exc


@dataclass
class Calibration:
    """One calibration of one model under one sampler setting."""

    name: str
    steps: int
    reference: ScheduleRecord
    anchor: ScheduleRecord
    model: dict[str, Any] = field(default_factory=dict)
    """Identity: at least ``family``; also ``name``/``hash`` where known, and the model's
    LoRAs and noise-schedule shift it was calibrated with (``loras``, ``sampling``: see
    :mod:`otcache_core.conditions`; absent in older files)."""
    sampler: dict[str, Any] = field(default_factory=dict)
    """Sampler settings of the calibration runs (sampler, scheduler, cfg, ...)."""
    edge_errors: dict[str, Any] | None = None
    """``{"strength", "max_skip", "metric", "matrix"}``, the ``(T+1) x (T+1)`` matrix with null gaps;
    since version 2 also ``rules`` (the best rule per edge, same layout), ``candidates`` and
    ``by_rule`` (each candidate's matrix)."""
    cost: dict[str, Any] = field(default_factory=dict)
    """Per stage: model calls and seconds."""
    budgets: BudgetChoices | None = None
    """Version 3: the schedule and the reuse rule each checked budget runs with (end to end)."""
    rule: ReuseRule | None = None
    """Version 3: one reuse rule for every segment where no budget choice applies (the shipped presets)."""
    rule_source: str = ""
    """Where :attr:`rule` comes from (a measurement, named)."""
    source: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        for role, record in (("reference", self.reference), ("anchor", self.anchor)):
            if record.schedule.steps != self.steps:
                raise OTCacheError(
                    f"{role} schedule is for {record.schedule.steps} steps but the calibration is for {self.steps}"
                )
        if self.reference.schedule.budget <= self.anchor.schedule.budget:
            raise OTCacheError(
                f"the reference budget ({self.reference.schedule.budget}) must be larger than the anchor budget "
                f"({self.anchor.schedule.budget})"
            )

    @property
    def family(self) -> str | None:
        return self.model.get("family")

    @property
    def conditions(self) -> ModelConditions:
        """The LoRAs and noise schedule the model was calibrated with (``None`` fields: not recorded)."""
        return ModelConditions.from_model_record(self.model)

    def error_matrix(self) -> np.ndarray | None:
        """The edge-error matrix with NaN for unmeasured edges, or ``None`` (e.g. published presets)."""
        if not self.edge_errors or self.edge_errors.get("matrix") is None:
            return None
        rows = self.edge_errors["matrix"]
        return np.asarray([[np.nan if x is None else x for x in row] for row in rows], dtype=float)

    @property
    def has_rules(self) -> bool:
        """Whether the file says which reuse rules to run with (version 2 or 3)."""
        return bool(self.edge_errors and self.edge_errors.get("rules") is not None) or any(
            r.rules is not None for r in (self.reference, self.anchor)) or self.budgets is not None \
            or self.rule is not None

    @property
    def version(self) -> int:
        """The lowest file version that holds everything this record has."""
        if self.budgets is not None or self.rule is not None:
            return CALIBRATION_VERSION
        return 2 if self.has_rules else 1

    def edge_rules(self, fallback: str = DEFAULT_FALLBACK) -> EdgeRules | None:
        """The best reuse rule per measured edge, or ``None`` (files without rules: hold)."""
        if not self.edge_errors or self.edge_errors.get("rules") is None:
            return None
        return EdgeRules.from_matrix(self.edge_errors["rules"], self.steps, fallback)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "format": CALIBRATION_FORMAT,
            # the lowest version that holds the record: older OTCaches read what they can
            "version": self.version,
            "name": self.name,
            "steps": self.steps,
            "model": self.model,
            "sampler": self.sampler,
            "reference": self.reference.to_dict(),
            "anchor": self.anchor.to_dict(),
            "edge_errors": self.edge_errors,
            **({"budgets": self.budgets.to_dict()} if self.budgets is not None else {}),
            **({"reuse": {"rule": self.rule.name, "source": self.rule_source}} if self.rule is not None else {}),
            "cost": self.cost,
            "source": self.source,
            "notes": self.notes,
            "created": self.created,
            "otcache_version": __version__,
        }

    @classmethod
    def from_dict(cls, document: Any, *, where: str = "calibration") -> Calibration:
        doc = check_document(document, CALIBRATION_FORMAT, CALIBRATION_VERSION, where=where)
        steps = require(doc, "steps", int, where=where)
        try:
            check_steps(steps)
        except OTCacheError as exc:
            raise FileFormatError(f"{where}: field 'steps': {exc}") from exc
        reference = ScheduleRecord.from_dict(require(doc, "reference", dict, where=where), where=f"{where}: reference")
        anchor = ScheduleRecord.from_dict(require(doc, "anchor", dict, where=where), where=f"{where}: anchor")
        edge_errors = doc.get("edge_errors")
        if edge_errors is not None:
            _check_edge_errors(edge_errors, steps, where=f"{where}: edge_errors")
        model = _dict_field(doc, "model", where)
        _check_model(model, where=f"{where}: model")
        budgets = doc.get("budgets")
        if budgets is not None:
            budgets = BudgetChoices.from_dict(budgets, steps, where=f"{where}: budgets")
        reuse = _dict_field(doc, "reuse", where)
        rule = _rule_field(reuse, "rule", where=f"{where}: reuse") if reuse else None
        try:
            return cls(
                name=_text_field(doc, "name", where),
                steps=steps,
                reference=reference,
                anchor=anchor,
                model=model,
                sampler=_dict_field(doc, "sampler", where),
                edge_errors=edge_errors,
                cost=_dict_field(doc, "cost", where),
                budgets=budgets,
                rule=rule,
                rule_source=_text_field(reuse, "source", f"{where}: reuse") if reuse else "",
                source=_dict_field(doc, "source", where),
                notes=_text_list(doc.get("notes"), "notes", where=where),
                created=_text_field(doc, "created", where),
            )
        except OTCacheError as exc:
            raise FileFormatError(f"{where}: {exc}") from exc

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Save atomically; refuses to replace a different file unless ``overwrite``."""
        save_json(path, self.to_dict(), overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        return cls.from_dict(load_json(path, CALIBRATION_FORMAT, CALIBRATION_VERSION), where=str(path))

    def description(self) -> str:
        """One line: the model it is for, where its schedules come from, T and the two budgets."""
        model = self.model.get("name") or self.model.get("family") or "unknown model"
        kind = self.source.get("kind")
        origin = (f"{self.source.get('method', '')} published schedules".strip() if kind == "published"
                  else str(self.source.get("method") or "a fixed rule") if kind == "rule" else "calibrated")
        return (f"{model}; {origin}, {self.steps} steps, reference {self.reference.schedule.budget} / anchor "
                f"{self.anchor.schedule.budget} computed")

    def summary(self) -> str:
        """A few human-readable lines: what was calibrated and the two schedules."""
        ref, anc = self.reference, self.anchor
        def rules(record: ScheduleRecord) -> str:
            return f" (rules: {rules_summary(record.rules)})" if record.rules else ""

        lines = [
            f"calibration {self.name!r}: {self.model.get('family', 'unknown family')}, T={self.steps}",
            f"reference ({ref.method}) B={ref.schedule.budget}: {list(ref.schedule.compute_steps)}{rules(ref)}",
            f"anchor ({anc.method}) B={anc.schedule.budget}: {list(anc.schedule.compute_steps)}{rules(anc)}",
            self.description(),
        ]
        if self.conditions.recorded:
            lines.append(f"made with: {self.conditions.describe()} (OTCache Apply warns when the model differs)")
        if self.rule is not None:
            lines.append(f"reuse rule {self.rule} for every segment" + (f" ({self.rule_source})" if self.rule_source else ""))
        if self.budgets is not None:
            checked = (f"on {self.budgets.samples} validation sample(s) no search stage saw" if self.budgets.validated
                       else "on the search samples (no validation samples)")
            lines.append(f"checked end to end {checked}, {self.budgets.objective}; each budget runs with:")
            lines.extend(f"  {choice.describe(self.steps)}" for choice in self.budgets.choices)
        if not self.has_rules:
            lines.append(f"reuse rules: none in this file (a calibration from before rules): it runs with {DEFAULT_RULE} "
                         f"({DEFAULT_RULE_SOURCE}) unless OTCache Apply's 'reuse' picks a rule")
        if anc.method == "published" and not any("published graph schedule" in n for n in self.notes):
            lines.append("the anchor is a published graph schedule, not an Optuna-searched one; calibrate to replace it")
        lines.extend(self.notes)
        return "\n".join(lines)


def _rule_field(doc: dict[str, Any], key: str, *, where: str) -> ReuseRule:
    name = require(doc, key, str, where=where)
    try:
        return parse_rule(name)
    except OTCacheError as exc:
        raise FileFormatError(f"{where}: field {key!r}: {exc}") from exc


def _dict_field(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FileFormatError(f"{where}: field {key!r} must be an object, found {type(value).__name__}")
    return value


def _text_field(doc: dict[str, Any], key: str, where: str) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise FileFormatError(f"{where}: field {key!r} must be text, found {type(value).__name__}")
    return value


def _text_list(value: Any, key: str, *, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise FileFormatError(f"{where}: field {key!r} must be a list of text")
    return list(value)


def _check_model(model: dict[str, Any], *, where: str) -> None:
    """``family`` is text and ``families`` a list of text: they decide which models a schedule fits."""
    if "family" in model and model["family"] is not None and not isinstance(model["family"], str):
        raise FileFormatError(f"{where}: field 'family' must be text, found {type(model['family']).__name__}")
    if model.get("families") is not None:
        _text_list(model["families"], "families", where=where)
    ModelConditions.from_model_record(model, where=where)  # LoRAs and shift, when recorded


def _check_edge_errors(edge_errors: Any, steps: int, *, where: str) -> None:
    """The edge-error matrix is ``(T+1) x (T+1)`` of finite, non-negative numbers or null; so is each
    candidate rule's matrix in ``by_rule``; ``rules`` (same layout) and ``candidates`` name known rules."""
    if not isinstance(edge_errors, dict) or not isinstance(edge_errors.get("matrix"), list):
        raise FileFormatError(f"{where}: expected an object with a 'matrix' list")
    for key, kind in (("strength", str), ("metric", str), ("max_skip", int)):
        if edge_errors.get(key) is not None:
            require(edge_errors, key, kind, where=where)
    matrix = edge_errors["matrix"]
    if len(matrix) != steps + 1 or any(not isinstance(r, list) or len(r) != steps + 1 for r in matrix):
        raise FileFormatError(f"{where}: field 'matrix' must be {steps + 1} x {steps + 1} for {steps} steps")
    _check_error_values(matrix, "matrix", where=where)
    rules = edge_errors.get("rules")
    if rules is not None:
        if not isinstance(rules, list) or len(rules) != steps + 1 or any(
                not isinstance(r, list) or len(r) != steps + 1 for r in rules):
            raise FileFormatError(f"{where}: field 'rules' must be {steps + 1} x {steps + 1} for {steps} steps")
        for i, row in enumerate(rules):
            _check_rule_names([r for r in row if r is not None], f"rules[{i}]", where=where)
    candidates = edge_errors.get("candidates")
    if candidates is not None:
        _check_rule_names(candidates, "candidates", where=where)
    by_rule = edge_errors.get("by_rule")
    if by_rule is not None:
        if not isinstance(by_rule, dict):
            raise FileFormatError(f"{where}: field 'by_rule' must be an object of rule name -> matrix")
        for name, rule_matrix in by_rule.items():
            field = f"by_rule.{short_repr(name, 20)}"
            if not isinstance(rule_matrix, list) or len(rule_matrix) != steps + 1 or any(
                    not isinstance(r, list) or len(r) != steps + 1 for r in rule_matrix):
                raise FileFormatError(f"{where}: field {field!r} must be {steps + 1} x {steps + 1} for {steps} steps")
            _check_error_values(rule_matrix, field, where=where)


def _check_error_values(matrix: list[list[Any]], field: str, *, where: str) -> None:
    for i, row in enumerate(matrix):
        for j, x in enumerate(row):
            if x is not None:
                finite_number(x, f"{field}[{i}][{j}]", where=where, minimum=0.0)


def _check_rule_names(names: Any, field: str, *, where: str) -> None:
    """A list of reuse rule names (``hold``, ``linear``, ``meancache3``, ...)."""
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FileFormatError(f"{where}: field {field!r} must be a list of reuse rule names")
    for name in names:
        if len(name) > 40:
            raise FileFormatError(f"{where}: field {field!r}: {short_repr(name)} is not a reuse rule name")
        try:
            parse_rule(name)
        except OTCacheError as exc:
            raise FileFormatError(f"{where}: field {field!r}: {exc}") from exc


def matrix_to_json(matrix: np.ndarray) -> list[list[float | None]]:
    """NaN -> null, so unmeasured edges survive JSON."""
    return [[None if not np.isfinite(x) else float(x) for x in row] for row in np.asarray(matrix, dtype=float)]
