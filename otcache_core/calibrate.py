"""The three OTCache stages over a small :class:`Sampler` protocol.

1. Full-compute trajectories of the calibration samples (states before every step).
2. Edge errors ``w(i, j)`` by replay from the stored states, in one of three strengths, and the
   leximax reference path at ``B_ref``.
3. The Optuna anchor at ``B_anchor``, minimising an end-to-end distance to the full output.

Edge-error strengths (``K`` = maximum segment length):

* ``global`` (LeMiCa): replay ``compute i, reuse i+1..j-1, compute j..T-1`` from the state at ``i``
  to the end; ``w = rel_L1(final, final_full)``. About ``K T^2 / 2`` model calls.
* ``rollout``: one cached rollout from each ``i`` (compute ``i``, reuse after) reaches every ``j <= i+K``;
  at each ``j`` the model is probed once on the rollout state and its clean-sample prediction is
  compared with the full trajectory's at ``j``: ``w = rel_L1(x0_hat_j, x0_full_j)`` (``j = T``: the
  final states). About ``T K`` model calls.
* ``drift``: no extra calls; from the recorded model outputs ``o_k`` and step sizes ``dt_k`` of the full
  run, ``w = sum_{k=i+1}^{j-1} dt_k mean|o_k - o^_k| / mean|x_final|``, the first-order error that
  reusing injects, without propagation (``o^_k``: the rule's stand-in built from the recorded outputs;
  ``o_i`` for hold).

Reuse rules (:mod:`otcache_core.reuse`): every edge is measured under each candidate rule, and its
weight is the error of the rule that did best, which is recorded per edge. An edge keeps its
definition, "this one segment cached, every other step computed", so in a replay from step ``i`` the
rule's history is the full trajectory's: the replay starts ``lookback`` steps earlier (from the
stored state there, computing those steps, which reproduces the full trajectory), and the previous
computed step is ``i - 1``. At run time the previous computed step is the schedule's previous one, so
a ``linear`` secant spans a longer gap than the edge measured; the anchor's end-to-end search, which
runs every candidate schedule with its segments' rules as the runtime does, is what corrects for it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .anchor import GRACE_SECONDS, HEARTBEAT_SECONDS, AnchorResult, search_anchor
from .calibration import Calibration, ScheduleRecord, matrix_to_json
from .errors import FileFormatError, OTCacheError, SaveError
from .graph import path_errors, solve_reference
from .jsonfile import finite_number, load_json, require, save_json, short_repr
from .metrics import relative_l1
from .reuse import HOLD, LINEAR, QUADRATIC, EdgeRules, parse_rule, rule_names, rules_summary, step_rules
from .runtime import CacheRun
from .schedule import Schedule
from .warp import identity_warp, resample, sample_warp

STRENGTHS: tuple[str, ...] = ("global", "rollout", "drift")
MIN_STEPS = 4
#: Reuse rules a calibration measures unless told otherwise.
DEFAULT_RULES: tuple[str, ...] = (HOLD, LINEAR, QUADRATIC)


@dataclass
class SamplingResult:
    """What one (possibly cached, possibly partial) sampling run returns."""

    final: torch.Tensor
    """The latent after the last step run (the state at ``stop``)."""
    model_calls: int
    """Full model computations this run made (probes included)."""
    states: list[torch.Tensor] | None = None
    """With ``record``: the state before each step ``start .. stop`` (``states[-1]`` is ``final``)."""
    denoised: dict[int, torch.Tensor] = field(default_factory=dict)
    """Clean-sample prediction per step where the model ran, and per probed step."""
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    """With ``record``: the cached quantity (model output) per computed step."""
    step_sizes: list[float] | None = None
    """With ``record``: ``|sigma_{t+1} - sigma_t|`` for every step of the run's full schedule."""
    sigmas: list[float] | None = None
    """With ``record``: the ``T + 1`` noise levels of the run's full schedule."""


class Sampler(Protocol):
    """A host's sampling of the calibration samples (one batch) with a compute mask."""

    steps: int

    def run(
        self,
        mask: Sequence[bool],
        *,
        start: int = 0,
        state: torch.Tensor | None = None,
        stop: int | None = None,
        record: bool = False,
        probe: Collection[int] = (),
        reuse: str | Sequence[str] | None = None,
    ) -> SamplingResult:
        """Run steps ``start .. stop-1`` (``stop`` defaults to ``T``) computing where ``mask`` is true.

        ``state`` is the latent before step ``start`` (required when ``start > 0``; the stored
        full-compute state). ``mask[start]`` is always computed. ``probe``: steps at which, if reused,
        the full model is also run on the current state and its clean-sample prediction recorded in
        ``denoised`` without being used. ``record``: keep ``states``, ``outputs`` and ``step_sizes``.
        ``reuse``: the reuse rule of every step (a list of ``T`` names) or one name for all; ``None``:
        hold. A reused step's stand-in reads only what this run computed (from ``start`` on).
        """
        ...


def checked_range(steps: int, mask: Sequence[bool], start: int, stop: int | None,
                  state: torch.Tensor | None) -> int:
    """Validate the arguments of :meth:`Sampler.run` for a sampler of ``steps`` steps; returns ``stop``
    (``steps`` when ``None``)."""
    stop = steps if stop is None else stop
    if len(mask) != steps or not 0 <= start < stop <= steps:
        raise ValueError(f"need a mask of {steps} steps and 0 <= start < stop <= {steps}")
    if start > 0 and state is None:
        raise ValueError("a replay from step > 0 needs the stored state")
    return stop


Progress = Callable[[str, int, int], None]


@dataclass
class CalibrationSettings:
    """What to calibrate: budgets, edge strength and the anchor search."""

    reference_budget: int
    anchor_budget: int
    strength: str = "rollout"
    max_skip: int = 10
    trials: int = 40
    seed: int = 0
    n_bins: int = 6
    polish: float = 0.6
    """Share of the anchor trials spent refining the best schedule by local search (0: TPE only)."""
    storage: str | None = None
    study_name: str | None = None
    heartbeat: int | None = HEARTBEAT_SECONDS
    """Seconds between heartbeats of a running anchor trial in an RDB storage (None: no heartbeats)."""
    grace: int | None = GRACE_SECONDS
    """Seconds without a heartbeat after which a trial counts as dead and is run again."""
    reference_check: bool = True
    """Run the leximax path and uniform spacing at ``B_ref`` end to end (two cached generations) and keep
    the better as the reference. Edges replay with the full trajectory as history, which flatters
    corrected rules on long segments; on the testbed the graph path with corrected rules lost to
    uniform spacing end to end at ``B_ref``, on the calibration samples themselves."""
    rules: tuple[str, ...] = DEFAULT_RULES
    """Candidate reuse rules measured on every edge (``("hold",)``: the calibration of before rules)."""

    def __post_init__(self) -> None:
        if not self.rules:
            raise OTCacheError("give at least one reuse rule to measure (e.g. hold)")
        self.rules = rule_names(self.rules)

    def validate(self, steps: int) -> None:
        if steps < MIN_STEPS:
            raise OTCacheError(f"calibration needs at least {MIN_STEPS} sampling steps, got {steps}; raise steps")
        if self.strength not in STRENGTHS:
            raise OTCacheError(f"edge strength must be one of {', '.join(STRENGTHS)}, got {self.strength!r}")
        if not 1 <= self.anchor_budget < self.reference_budget:
            raise OTCacheError(
                f"anchor budget ({self.anchor_budget}) must be at least 1 and smaller than the reference budget "
                f"({self.reference_budget}); lower the anchor budget"
            )
        if self.reference_budget >= steps:
            raise OTCacheError(
                f"reference budget ({self.reference_budget}) must be smaller than the {steps} steps; lower it"
            )
        if self.max_skip < 2:
            raise OTCacheError(f"maximum segment length must be at least 2 (1 reuses nothing), got {self.max_skip}")
        if self.reference_budget * self.max_skip < steps:
            raise OTCacheError(
                f"with segments of at most {self.max_skip} steps the reference needs a budget of at least "
                f"{math.ceil(steps / self.max_skip)}; raise the maximum segment length or the reference budget"
            )
        if self.trials < 1:
            raise OTCacheError("the anchor search needs at least 1 trial")


def default_budgets(steps: int) -> tuple[int, int]:
    """``(B_ref, B_anchor) = (round(T/2), round(T/6))``, kept valid for small ``T``.

    The anchor sits at the low end of the budgets worth using: below it a schedule is the anchor's
    warp extrapolated, above it an interpolation. With corrected reuse rules on the testbed (development
    samples, not the held-out ones), an anchor at 8 of 50 steps gave +2.0 dB over uniform spacing at
    B = 8 and +0.6 dB at B = 10; an anchor at 10 gave +2.9 dB at B = 10 but -0.3 dB at B = 8.
    """
    ref = max(2, min(steps - 1, int(steps / 2 + 0.5)))
    anchor = max(1, min(ref - 1, int(steps / 6 + 0.5)))
    return ref, anchor


def estimated_edge_calls(strength: str, steps: int, max_skip: int, rules: Sequence[str] = (HOLD,)) -> int:
    """Model calls the edge stage will make for one batch, all candidate ``rules`` together (the text
    shown before it starts)."""
    T, K = steps, max_skip
    total = 0
    for rule in rule_names(rules):
        lookback = parse_rule(rule).lookback
        for i in range(T):
            top = min(i + K, T)
            warmup = min(lookback, i)  # computed steps replayed before i to give the rule its history
            if strength == "global":
                total += sum(warmup + T - i - (j - i - 1) for j in range(i + 2, top + 1))
            elif strength == "rollout" and top > i + 1:
                total += warmup + 1 + max(0, min(top, T - 1) - (i + 1))  # step i, then one probe per j < T
    return total


RowMeasure = Callable[[int], tuple[list[float | None], int]]


def _measured_rows(
    T: int, measure_row: RowMeasure, progress: Progress | None,
    done_rows: dict[int, list[float | None]] | None, on_row: Callable[[int, list], None] | None,
) -> tuple[np.ndarray, int]:
    """The edge matrix from one measured row per start step ``i``; rows in ``done_rows`` (from a
    checkpoint) are taken as they are, new ones go to ``on_row`` as soon as they are measured."""
    w, calls = _empty_matrix(T), 0
    for i in range(T - 1):
        row = (done_rows or {}).get(i)
        if row is None or len(row) != T + 1:
            row, row_calls = measure_row(i)
            calls += row_calls
            if on_row:
                on_row(i, row)
        _fill_row(w, i, row)
        if progress:
            progress("edges", i + 1, T - 1)
    return w, calls


def edge_errors_global(
    sampler: Sampler, full: SamplingResult, max_skip: int, progress: Progress | None = None,
    done_rows: dict[int, list[float | None]] | None = None, on_row: Callable[[int, list], None] | None = None,
    rule: str = HOLD,
) -> tuple[np.ndarray, int]:
    """LeMiCa's end-to-end edge errors under reuse ``rule`` (see module doc). Returns the matrix and
    the model calls."""
    T = sampler.steps
    lookback = parse_rule(rule).lookback

    def measure_row(i: int) -> tuple[list[float | None], int]:
        row: list[float | None] = [None] * (T + 1)
        calls = 0
        start = max(0, i - lookback)
        for j in range(i + 2, min(i + max_skip, T) + 1):
            mask = [True] * T
            mask[i + 1 : j] = [False] * (j - i - 1)
            result = sampler.run(mask, start=start, state=full.states[start], reuse=rule)
            calls += result.model_calls
            row[j] = relative_l1(result.final, full.final)
        return row, calls

    return _measured_rows(T, measure_row, progress, done_rows, on_row)


def edge_errors_rollout(
    sampler: Sampler, full: SamplingResult, max_skip: int, progress: Progress | None = None,
    done_rows: dict[int, list[float | None]] | None = None, on_row: Callable[[int, list], None] | None = None,
    rule: str = HOLD,
) -> tuple[np.ndarray, int]:
    """One cached rollout per start step under reuse ``rule``, probed at every candidate next step
    (see module doc)."""
    T = sampler.steps
    lookback = parse_rule(rule).lookback

    def measure_row(i: int) -> tuple[list[float | None], int]:
        row: list[float | None] = [None] * (T + 1)
        end = min(i + max_skip, T)
        mask = [True] * T
        mask[i + 1 : end + 1] = [False] * (min(end, T - 1) - i)
        probes = range(i + 2, min(end, T - 1) + 1)
        start = max(0, i - lookback)
        result = sampler.run(mask, start=start, state=full.states[start], stop=min(end + 1, T), probe=probes,
                             reuse=rule)
        for j in range(i + 2, end + 1):
            reached, target = (result.final, full.final) if j == T else (result.denoised[j], full.denoised[j])
            row[j] = relative_l1(reached, target)
        return row, result.model_calls

    return _measured_rows(T, measure_row, progress, done_rows, on_row)


def edge_errors_drift(sampler: Sampler, full: SamplingResult, max_skip: int, rule: str = HOLD) -> tuple[np.ndarray, int]:
    """Output drift along the recorded full trajectory under reuse ``rule``; no model calls (see
    module doc). The stand-ins come from the cache engine fed with the recorded outputs."""
    T = sampler.steps
    if full.step_sizes is None or len(full.outputs) < T:
        raise OTCacheError("drift edge errors need the full run recorded with outputs and step sizes")
    reuse = parse_rule(rule)
    if reuse.kind != HOLD and full.sigmas is None:
        raise OTCacheError("drift edge errors under a corrected rule need the full run's sigmas recorded")
    scale = float(full.final.detach().abs().double().mean()) or 1.0
    w = _empty_matrix(T)
    for i in range(T - 1):
        end = min(i + max_skip, T)
        standins = _drift_standins(full, reuse, i, end - 1, T) if reuse.kind != HOLD else None
        acc = 0.0
        for j in range(i + 2, end + 1):
            k = j - 1
            standin = full.outputs[i] if standins is None else standins[k]
            diff = (full.outputs[k].double() - standin.double()).abs().mean()
            acc += full.step_sizes[k] * float(diff) / scale
            w[i, j] = acc
    return w, 0


def _drift_standins(full: SamplingResult, rule, i: int, last: int, steps: int) -> dict[int, torch.Tensor]:
    """Stand-ins for steps ``i+1 .. last`` when ``0 .. i`` computed the recorded outputs."""
    mask = [k <= i for k in range(steps)]
    run = CacheRun(Schedule.from_mask(mask), rules=rule.name, sigmas=full.sigmas)
    for k in range(max(0, i - rule.lookback), i + 1):
        run.store("output", full.outputs[k], full.sigmas[k])
    return {k: run.standin("output", k, full.sigmas[k]) for k in range(i + 1, last + 1)}


def _share_of(progress: Progress | None, part: int, parts: int) -> Progress | None:
    """Progress of one of ``parts`` equal parts of a stage, reported as progress of the whole stage."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(stage, part * total + done, parts * total)


def best_rules(by_rule: dict[str, np.ndarray], steps: int) -> tuple[np.ndarray, EdgeRules]:
    """Per edge, the smallest error over the candidate rules and the rule that reached it (ties: the
    earlier candidate; an edge only some rules measured takes the best of those)."""
    names = list(by_rule)
    stack = np.stack([by_rule[n] for n in names])
    filled = np.where(np.isnan(stack), np.inf, stack)
    choice = np.argmin(filled, axis=0)
    errors = np.take_along_axis(filled, choice[None], axis=0)[0]
    errors[~np.isfinite(errors)] = np.nan
    matrix = [[names[choice[i, j]] if j >= i + 2 and np.isfinite(errors[i, j]) else None for j in range(steps + 1)]
              for i in range(steps + 1)]
    return errors, EdgeRules.from_matrix(matrix, steps)


def _empty_matrix(T: int) -> np.ndarray:
    w = np.full((T + 1, T + 1), np.nan)
    idx = np.arange(T)
    w[idx, idx + 1] = 0.0
    return w


def _fill_row(w: np.ndarray, i: int, row: Sequence[float | None]) -> None:
    for j, value in enumerate(row):
        if value is not None and j >= i + 2:
            w[i, j] = value


def anchor_candidates(steps: int, budget: int, reference: Schedule, errors: np.ndarray, max_skip: int) -> list[Schedule]:
    """Seed points of the anchor search: reference resampled, uniform spacing, the graph path at B."""
    seeds = [resample(reference, steps, budget), sample_warp(identity_warp(), steps, budget)]
    try:
        seeds.append(solve_reference(errors, steps, budget, max_skip=max_skip).schedule)
    except OTCacheError:
        pass  # the budget may be below what measured segments can cover
    unique: list[Schedule] = []
    for s in seeds:
        if s not in unique:
            unique.append(s)
    return unique


CHECKPOINT_FORMAT = "otcache.edge_checkpoint"
CHECKPOINT_VERSION = 1


class EdgeCheckpoint:
    """Measured edge-error rows kept in a JSON file, so an interrupted calibration does not pay twice.

    ``key`` identifies the measurement (model, samples, sampler settings, strength, K); rows saved
    under another key are ignored. With ``steps`` every row is checked against ``T``. A malformed
    file is not used (``problem`` says why, in one line naming the file and the field) and is
    replaced when the first new row is saved; opening never changes the file. A failed save (read-only
    or full folder) stops further saving and is kept in ``save_problem``; the calibration goes on.
    """

    def __init__(self, path: str | Path, key: str, steps: int | None = None,
                 parent: EdgeCheckpoint | None = None) -> None:
        self.path, self.key, self.steps, self.parent = Path(path), key, steps, parent
        self.rows: dict[int, list[float | None]] = {}
        self.problem: str | None = None
        self.save_problem: str | None = None
        if self.path.exists():
            try:
                self.rows = self._read()
            except FileFormatError as exc:
                self.problem = f"{exc}; its edge rows are measured again"

    def _read(self) -> dict[int, list[float | None]]:
        where = str(self.path)
        doc = load_json(self.path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
        if require(doc, "key", str, where=where) != self.key:
            return {}
        rows = require(doc, "rows", dict, where=where)
        out: dict[int, list[float | None]] = {}
        for name, row in rows.items():
            field = f"rows.{short_repr(name, 20)}"
            if not re.fullmatch(r"[0-9]{1,6}", name) or (self.steps is not None and int(name) >= self.steps - 1):
                raise FileFormatError(f"{where}: field {field!r} is not a start step of the edge stage")
            if not isinstance(row, list) or (self.steps is not None and len(row) != self.steps + 1):
                raise FileFormatError(f"{where}: field {field!r} must be a list of {self.steps} + 1 values")
            for j, x in enumerate(row):
                if x is not None:
                    finite_number(x, f"{field}[{j}]", where=where, minimum=0.0)
            out[int(name)] = row
        return out

    def for_rule(self, rule: str) -> EdgeCheckpoint:
        """The rows measured under reuse ``rule``: this file for hold (so checkpoints written before
        rules existed still resume), a sibling file ``<name>.<rule>.json`` for the others."""
        if parse_rule(rule).name == HOLD:
            return self
        sibling = self.path.with_name(f"{self.path.stem}.{parse_rule(rule).name}{self.path.suffix}")
        return EdgeCheckpoint(sibling, self.key, self.steps, parent=self)

    def add(self, i: int, row: list[float | None]) -> None:
        self.rows[i] = row
        if self.save_problem is not None:
            return
        doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "key": self.key,
               "rows": {str(k): v for k, v in sorted(self.rows.items())}}
        try:
            save_json(self.path, doc, overwrite=True)
        except SaveError as exc:
            self.save_problem = f"{exc}; an interruption now restarts the edge stage"
            if self.parent is not None and self.parent.save_problem is None:
                self.parent.save_problem = self.save_problem  # the host reads the first checkpoint's


def settings_key(*parts: Any) -> str:
    """A short stable hash of everything that determines a measurement."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CalibrationOutcome:
    """The record plus the raw results the host may want to show (history, matrix)."""

    calibration: Calibration
    errors: np.ndarray
    anchor: AnchorResult
    full: SamplingResult


def calibrate(
    sampler: Sampler,
    settings: CalibrationSettings,
    *,
    distance: Callable[[torch.Tensor, torch.Tensor], float],
    objective_name: str,
    name: str = "calibration",
    model: dict[str, Any] | None = None,
    sampler_info: dict[str, Any] | None = None,
    progress: Progress | None = None,
    checkpoint: EdgeCheckpoint | None = None,
    log: Callable[[str], None] | None = None,
) -> CalibrationOutcome:
    """Run the three stages and return the calibration record.

    ``distance(cached_final, full_final)`` is the anchor objective (lower is better), e.g. LPIPS on
    decoded images; ``objective_name`` is stored in the record.
    """
    T = sampler.steps
    settings.validate(T)
    say = log or (lambda _msg: None)
    cost_calls: dict[str, int] = {}
    cost_seconds: dict[str, float] = {}

    say(f"stage 1/3: full-compute trajectories ({T} steps)")
    t0 = time.perf_counter()
    full = sampler.run([True] * T, record=True)
    cost_calls["trajectories"], cost_seconds["trajectories"] = full.model_calls, time.perf_counter() - t0
    if progress:
        progress("trajectories", 1, 1)

    estimate = estimated_edge_calls(settings.strength, T, settings.max_skip, settings.rules)
    say(f"stage 2/3: {settings.strength} edge errors, K={settings.max_skip}, reuse rules {', '.join(settings.rules)}: "
        f"about {estimate} model calls ({estimate / max(1, T):.1f} full generations)")
    t0 = time.perf_counter()
    by_rule: dict[str, np.ndarray] = {}
    calls = 0
    for number, rule in enumerate(settings.rules):
        part = checkpoint.for_rule(rule) if checkpoint else None
        if part and part.problem:
            say(part.problem)
        rows, on_row = (part.rows, part.add) if part else (None, None)
        rule_progress = _share_of(progress, number, len(settings.rules))
        if settings.strength == "global":
            by_rule[rule], n = edge_errors_global(sampler, full, settings.max_skip, rule_progress, rows, on_row, rule)
        elif settings.strength == "rollout":
            by_rule[rule], n = edge_errors_rollout(sampler, full, settings.max_skip, rule_progress, rows, on_row, rule)
        else:
            by_rule[rule], n = edge_errors_drift(sampler, full, settings.max_skip, rule)
        calls += n
    if checkpoint and checkpoint.save_problem:
        say(checkpoint.save_problem)
    errors, edge_rules = best_rules(by_rule, T)
    path = solve_reference(errors, T, settings.reference_budget, max_skip=settings.max_skip)
    cost_calls["edges"], cost_seconds["edges"] = calls, time.perf_counter() - t0

    end_to_end_calls = 0

    def objective(schedule: Schedule) -> float:
        """The end-to-end distance of ``schedule`` run as the runtime runs it (its segments' rules)."""
        nonlocal end_to_end_calls
        rules, _ = edge_rules.segment_rules(schedule)
        result = sampler.run(schedule.mask(), reuse=step_rules(schedule, rules))
        end_to_end_calls += result.model_calls
        return distance(result.final, full.final)

    reference, reference_method, checked = path.schedule, path.objective, {}
    if settings.reference_check:
        t0 = time.perf_counter()
        uniform = sample_warp(identity_warp(), T, settings.reference_budget)
        if uniform != path.schedule:
            checked = {path.objective: objective(path.schedule), "uniform": objective(uniform)}
            if checked["uniform"] < checked[path.objective]:
                reference, reference_method = uniform, "uniform"
        cost_calls["reference"], cost_seconds["reference"] = end_to_end_calls, time.perf_counter() - t0
        end_to_end_calls = 0
    reference_rules, _ = edge_rules.segment_rules(reference)
    say(f"reference B={settings.reference_budget} ({reference_method}): {list(reference.compute_steps)} "
        f"(rules: {rules_summary(reference_rules)})")

    say(f"stage 3/3: anchor search at B={settings.anchor_budget}, {settings.trials} trials ({objective_name})")
    t0 = time.perf_counter()

    def on_trial(number: int, schedule: Schedule, value: float) -> None:
        if progress:
            progress("anchor", min(number + 1, settings.trials), settings.trials)

    seeds = anchor_candidates(T, settings.anchor_budget, reference, errors, settings.max_skip)
    anchor = search_anchor(
        objective, T, settings.anchor_budget, n_trials=settings.trials, seed=settings.seed,
        n_bins=settings.n_bins, initial=seeds, storage=settings.storage, study_name=settings.study_name,
        on_trial=on_trial, polish=settings.polish, heartbeat=settings.heartbeat, grace=settings.grace,
    )
    cost_calls["anchor"], cost_seconds["anchor"] = end_to_end_calls, time.perf_counter() - t0
    anchor_rules, _ = edge_rules.segment_rules(anchor.schedule)
    say(f"anchor B={settings.anchor_budget}: {list(anchor.schedule.compute_steps)} ({objective_name} {anchor.score:.4g}; "
        f"rules: {rules_summary(anchor_rules)})")

    segment_errors = path_errors(errors, reference)
    reference_details: dict[str, Any] = {"segment_errors": list(segment_errors), "max_skip": settings.max_skip}
    if checked:
        reference_details["end_to_end"] = {"objective": objective_name, **checked}
    record = Calibration(
        name=name,
        steps=T,
        reference=ScheduleRecord(reference, reference_method, max(segment_errors), reference_details,
                                 rules=reference_rules),
        anchor=ScheduleRecord(
            anchor.schedule, "optuna", anchor.score,
            {"objective": objective_name, "trials": anchor.trials, "seed": settings.seed, "n_bins": settings.n_bins,
             "polish": settings.polish,
             "history": anchor.history},
            rules=anchor_rules,
        ),
        model=model or {},
        sampler=sampler_info or {},
        edge_errors={"strength": settings.strength, "max_skip": settings.max_skip, "metric": "rel_l1",
                     "matrix": matrix_to_json(errors), "rules": edge_rules.to_matrix(),
                     "candidates": list(settings.rules),
                     "by_rule": {rule: matrix_to_json(m) for rule, m in by_rule.items()}},
        cost={"model_calls": cost_calls, "seconds": {k: round(v, 3) for k, v in cost_seconds.items()},
              "full_generation_calls": full.model_calls},
    )
    return CalibrationOutcome(record, errors, anchor, full)
