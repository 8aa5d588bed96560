"""The calibration record: everything a calibration measured, as one versioned, shareable JSON file.

Schedules for any budget and step count are derived from it (:mod:`otcache_core.plan`). Shipped
presets built from published step lists use the same record, with ``method = "published"`` and their
source named.

Versions: 2 adds reuse rules (:mod:`otcache_core.reuse`): the rule each measured edge did best with
(``edge_errors.rules``, with the candidates and each candidate's matrix) and the rule of each segment
of the reference and the anchor (``rules``). Version-1 files (every file written before rules, the
shipped presets included) load unchanged and reuse with ``hold``, exactly as before.
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
from .reuse import DEFAULT_FALLBACK, EdgeRules, parse_rule, rules_summary
from .schedule import Schedule, check_steps, schedule_from_fields

CALIBRATION_FORMAT = "otcache.calibration"
CALIBRATION_VERSION = 2


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
    rules: tuple[str, ...] | None = None
    """The reuse rule of each segment (``None``: hold everywhere, as every record before rules)."""

    def __post_init__(self) -> None:
        if self.rules is not None:
            rules = tuple(parse_rule(r).name for r in self.rules)
            if len(rules) != len(self.schedule.segments()):
                raise OTCacheError(
                    f"{len(rules)} reuse rules for the {len(self.schedule.segments())} segments of {self.schedule}"
                )
            object.__setattr__(self, "rules", rules)

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
            out["rules"] = list(self.rules)
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
            return cls(schedule, method, score, details, None if rules is None else tuple(rules))
        except OTCacheError as exc:  # the rules do not fit the schedule's segments
            raise FileFormatError(f"{where}: field 'rules': {exc}") from exc


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
        """Whether the calibration measured reuse rules (version 2); without, every segment holds."""
        return bool(self.edge_errors and self.edge_errors.get("rules") is not None) or any(
            r.rules is not None for r in (self.reference, self.anchor))

    def edge_rules(self, fallback: str = DEFAULT_FALLBACK) -> EdgeRules | None:
        """The best reuse rule per measured edge, or ``None`` (files without rules: hold)."""
        if not self.edge_errors or self.edge_errors.get("rules") is None:
            return None
        return EdgeRules.from_matrix(self.edge_errors["rules"], self.steps, fallback)

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        return {
            "format": CALIBRATION_FORMAT,
            # a record without rules is written as version 1, which every OTCache reads the same way
            "version": CALIBRATION_VERSION if self.has_rules else 1,
            "name": self.name,
            "steps": self.steps,
            "model": self.model,
            "sampler": self.sampler,
            "reference": self.reference.to_dict(),
            "anchor": self.anchor.to_dict(),
            "edge_errors": self.edge_errors,
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
        if not self.has_rules:
            lines.append("reuse rules: none in this file (a preset, or a calibration from before rules): every reused "
                         "step holds unless OTCache Apply's 'reuse' picks a rule")
        if anc.method == "published" and not any("published graph schedule" in n for n in self.notes):
            lines.append("the anchor is a published graph schedule, not an Optuna-searched one; calibrate to replace it")
        lines.extend(self.notes)
        return "\n".join(lines)


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
