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

Reuse rules (:mod:`otcache_core.reuse`) are chosen *end to end*, on whole schedules, never per
edge: measured one segment at a time, extrapolating rules looked worse than ``hold`` on most edges of
trained models while, run on whole schedules, they were 5-9 dB closer to full compute (``hold``'s lag
compounds from segment to segment, extrapolation errors largely cancel; benchmarks/RESULTS.md). So

* the edges are measured under one rule, the first candidate, with the history that rule will have at
  run time: its earlier points lie ``history`` steps apart (about ``T / B_ref``, the spacing of the
  reference), the steps between them reused, as in a run; the error the replay had already collected
  at ``i`` is subtracted, so the edge weighs what its own segment adds. ``history = 1`` gives the
  rule adjacent computed steps (the replay starts ``lookback`` steps earlier and computes them);
* the reference check runs the leximax path and even spacing at ``B_ref`` under every candidate rule and
  keeps the best pair; the anchor is searched under the rule that did best on even spacing at
  ``B_anchor``, then run under every candidate and keeps the best;
* with validation samples (which no stage above sees), every budget of :data:`VALIDATION_RANGE`
  runs the calibrated schedule and even spacing under every candidate rule; each schedule's rule is the
  one that did best over the neighbouring budgets (:data:`RULE_WINDOW`), the calibrated schedule is
  kept only where it came clearly closer to full compute (:data:`UNIFORM_MARGIN`)
  (:class:`~otcache_core.calibration.BudgetChoice`): a calibration never ships a schedule that even
  spacing beat on its own validation samples.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from .anchor import GRACE_SECONDS, HEARTBEAT_SECONDS, AnchorResult, search_anchor
from .calibration import CALIBRATED, UNIFORM, BudgetChoice, BudgetChoices, Calibration, ScheduleRecord, \
    matrix_to_json, score_key
from .errors import FileFormatError, OTCacheError, SaveError
from .graph import path_errors, solve_reference
from .jsonfile import finite_number, load_json, require, save_json, short_repr
from .metrics import relative_l1
from .interpolation import predict
from .quality import LATENTS, FiguresFn, SampleFigures, expected_quality, latent_figures
from .reuse import HOLD_RULE, HORIZON2_RULE, LINEAR_RULE, ReuseRule
from .runtime import CacheRun
from .schedule import Schedule
from .warp import identity_warp, resample, sample_warp

STRENGTHS: tuple[str, ...] = ("global", "rollout", "drift")
MIN_STEPS = 4
#: Reuse rules a calibration tries unless told otherwise; the first is the one edges are measured under.
DEFAULT_RULES: tuple[ReuseRule, ...] = (LINEAR_RULE, HORIZON2_RULE)
#: The budgets (shares of T) the validation runs end to end: every budget from below the anchor (T/6) to
#: above the reference (T/2). Every one, not a few: interpolated schedules round differently at each
#: budget, and an extrapolating rule is sensitive to uneven gaps.
VALIDATION_RANGE: tuple[float, float] = (0.13, 2 / 3)
#: How much closer to full compute (a share of even spacing's distance) the calibrated schedule must come on
#: the validation samples to be kept. Two validation samples of one prompt are a small draw: on DigitFlux
#: (development prompts, seven calibrations) keeping the calibrated schedule whenever it was ahead at all
#: lost up to 1 dB to even spacing at some budgets; a fifth removed every loss there (benchmarks/RESULTS.md).
UNIFORM_MARGIN = 0.2
#: Budgets on either side whose validation scores vote for a budget's reuse rule (:func:`pooled_rule`). On
#: the testbed's demo calibration one budget alone picked ``horizon2`` where ``linear`` was 3.2 dB better on
#: held-out samples (its neighbours all preferred ``linear``): one neighbour each side removes that loss, as
#: two do. On DigitFlux (development samples, seven calibrations) one each side changed the mean by under
#: 0.2 dB at every budget; two each side cost 0.7 dB at 8 of 30, where the rule the model wants changes.
RULE_WINDOW = 1


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
        reuse: ReuseRule | Sequence[ReuseRule] | None = None,
    ) -> SamplingResult:
        """Run steps ``start .. stop-1`` (``stop`` defaults to ``T``) computing where ``mask`` is true.

        ``state`` is the latent before step ``start`` (required when ``start > 0``; the stored
        full-compute state). ``mask[start]`` is always computed. ``probe``: steps at which, if reused,
        the full model is also run on the current state and its clean-sample prediction recorded in
        ``denoised`` without being used. ``record``: keep ``states``, ``outputs`` and ``step_sizes``.
        ``reuse``: the reuse rule of every step (a list of ``T``) or one for all; ``None``: hold. A
        reused step's stand-in reads only what this run computed (from ``start`` on). ``probe`` may name
        computed steps too: their clean-sample prediction is recorded at no extra cost.
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
    """Run the leximax path and uniform spacing at ``B_ref`` end to end under every candidate rule and keep
    the best pair as the reference (``False``: the leximax path under the edge rule)."""
    rules: tuple[ReuseRule, ...] = DEFAULT_RULES
    """Candidate reuse rules, chosen end to end per schedule; the first is the edges' rule."""
    history: int | None = None
    """Steps between the edge rule's earlier points in a replay (``None``: ``round(T / B_ref)``, the
    reference's spacing, as at run time; 1: adjacent computed steps)."""
    validation_range: tuple[float, float] = VALIDATION_RANGE
    uniform_margin: float = UNIFORM_MARGIN
    """At a validated budget the calibrated schedule is kept only when it is at least this share closer to
    full compute than even spacing (each with its rule); otherwise even spacing runs there."""
    rule_window: int = RULE_WINDOW
    """Validated budgets on either side that vote for a budget's rule."""

    def __post_init__(self) -> None:
        if not self.rules:
            raise OTCacheError("give at least one reuse rule to try (e.g. linear)")
        self.rules = tuple(dict.fromkeys(self.rules))

    @property
    def edge_rule(self) -> ReuseRule:
        return self.rules[0]

    def history_for(self, steps: int) -> int:
        return self.history or max(1, round(steps / self.reference_budget))

    def validation_budgets(self, steps: int) -> list[int]:
        """The budgets the validation checks at ``steps`` steps, largest first (at least 2, below ``steps``)."""
        low, high = (max(2, min(steps - 1, round(f * steps))) for f in self.validation_range)
        return list(range(high, low - 1, -1))

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
        if self.history is not None and self.history < 1:
            raise OTCacheError(f"the edge history spacing must be at least 1 step, got {self.history}")


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


def history_steps(i: int, rule: ReuseRule, history: int) -> list[int]:
    """The computed steps before ``i`` that give ``rule`` its earlier points in a replay from ``i``: the
    ``lookback`` steps ``i - k * history`` (``k = lookback .. 1``) that exist, oldest first."""
    return [i - k * history for k in range(rule.lookback, 0, -1) if i - k * history >= 0]


def replay_mask(steps: int, i: int, rule: ReuseRule, history: int, reuse_after: range) -> tuple[int, list[bool]]:
    """``(start, mask)`` of a replay that caches the steps in ``reuse_after`` (after ``i``): it starts at
    the rule's oldest earlier point, computes those points and ``i``, and reuses every other step before
    ``i`` as a run with that spacing would."""
    earlier = history_steps(i, rule, history)
    start = earlier[0] if earlier else i
    mask = [True] * steps
    for k in range(start, i):
        mask[k] = k in earlier
    for k in reuse_after:
        mask[k] = False
    return start, mask


def estimated_edge_calls(strength: str, steps: int, max_skip: int, rule: ReuseRule = HOLD_RULE,
                         history: int = 1) -> int:
    """Model calls the edge stage will make for one batch under ``rule`` (the text shown before it starts)."""
    T, K = steps, max_skip
    total = 0
    for i in range(T):
        top = min(i + K, T)
        earlier = len(history_steps(i, rule, history))  # computed steps replayed before i
        baseline = history > 1 and earlier > 0
        if strength == "global" and top >= i + 2:
            total += sum(earlier + T - i - (j - i - 1) for j in range(i + 2, top + 1))
            total += (earlier + T - i) if baseline else 0  # the run that caches only the steps before i
        elif strength == "rollout" and top > i + 1:
            total += earlier + 1 + max(0, min(top, T - 1) - (i + 1))  # step i, then one probe per j < T
    return total


def estimated_calls(settings: CalibrationSettings, steps: int, validation: bool) -> dict[str, int]:
    """Model calls of each stage for one batch of samples (``validation``: of the validation batch)."""
    T, rules = steps, len(settings.rules)
    history = settings.history_for(T)
    calls = {"trajectories": T * (2 if validation else 1),
             "edges": 0 if settings.strength == "drift" else estimated_edge_calls(
                 settings.strength, T, settings.max_skip, settings.edge_rule, history)}
    calls["reference"] = 2 * rules * settings.reference_budget if settings.reference_check else 0
    calls["anchor"] = (2 * rules - 1 + settings.trials) * settings.anchor_budget
    if validation:
        calls["validation"] = 2 * rules * sum(settings.validation_budgets(T))
    return calls


def projected_time(calls_done: int, seconds_done: float, calls_in_all: int) -> str:
    """What the rest of a calibration will take at the pace of its first stage (full-compute runs, so
    about the cost of a model call at this size): the line a user reads before waiting."""
    per_call = seconds_done / max(1, calls_done)
    rest = max(0, calls_in_all - calls_done) * per_call
    when = f"{rest / 3600:.1f} h" if rest >= 3600 else f"{rest / 60:.1f} min" if rest >= 60 else f"{rest:.0f} s"
    return (f"{per_call:.3g} s per model call at this size (the full-compute runs): the other {calls_in_all - calls_done} "
            f"calls take about {when}")


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
    rule: ReuseRule = HOLD_RULE, history: int = 1,
) -> tuple[np.ndarray, int]:
    """LeMiCa's end-to-end edge errors under reuse ``rule`` with its run-time ``history`` (see module
    doc). Returns the matrix and the model calls."""
    T = sampler.steps

    def measure_row(i: int) -> tuple[list[float | None], int]:
        row: list[float | None] = [None] * (T + 1)
        start, base_mask = replay_mask(T, i, rule, history, range(0))
        calls, base = 0, 0.0
        if not all(base_mask[start:i]):  # the steps before i already cost some error: measure it
            result = sampler.run(base_mask, start=start, state=full.states[start], reuse=rule)
            calls, base = result.model_calls, relative_l1(result.final, full.final)
        for j in range(i + 2, min(i + max_skip, T) + 1):
            _, mask = replay_mask(T, i, rule, history, range(i + 1, j))
            result = sampler.run(mask, start=start, state=full.states[start], reuse=rule)
            calls += result.model_calls
            row[j] = max(0.0, relative_l1(result.final, full.final) - base)
        return row, calls

    return _measured_rows(T, measure_row, progress, done_rows, on_row)


def edge_errors_rollout(
    sampler: Sampler, full: SamplingResult, max_skip: int, progress: Progress | None = None,
    done_rows: dict[int, list[float | None]] | None = None, on_row: Callable[[int, list], None] | None = None,
    rule: ReuseRule = HOLD_RULE, history: int = 1,
) -> tuple[np.ndarray, int]:
    """One cached rollout per start step under reuse ``rule`` with its run-time ``history``, probed at
    every candidate next step (see module doc)."""
    T = sampler.steps

    def measure_row(i: int) -> tuple[list[float | None], int]:
        row: list[float | None] = [None] * (T + 1)
        end = min(i + max_skip, T)
        start, mask = replay_mask(T, i, rule, history, range(i + 1, min(end, T - 1) + 1))
        probes = [i, *range(i + 2, min(end, T - 1) + 1)]  # i: computed, so its prediction costs nothing
        result = sampler.run(mask, start=start, state=full.states[start], stop=min(end + 1, T), probe=probes,
                             reuse=rule)
        base = 0.0 if all(mask[start:i]) else relative_l1(result.denoised[i], full.denoised[i])
        for j in range(i + 2, end + 1):
            reached, target = (result.final, full.final) if j == T else (result.denoised[j], full.denoised[j])
            row[j] = max(0.0, relative_l1(reached, target) - base)
        return row, result.model_calls

    return _measured_rows(T, measure_row, progress, done_rows, on_row)


def edge_errors_drift(sampler: Sampler, full: SamplingResult, max_skip: int, rule: ReuseRule = HOLD_RULE,
                      history: int = 1) -> tuple[np.ndarray, int]:
    """Output drift along the recorded full trajectory under reuse ``rule``; no model calls (see
    module doc). The stand-ins come from the cache engine fed with the recorded outputs at the rule's
    earlier points (``history`` steps apart) and at ``i``."""
    T = sampler.steps
    if full.step_sizes is None or len(full.outputs) < T:
        raise OTCacheError("drift edge errors need the full run recorded with outputs and step sizes")
    if rule.kind != HOLD_RULE.kind and full.sigmas is None:
        raise OTCacheError("drift edge errors under a corrected rule need the full run's sigmas recorded")
    scale = float(full.final.detach().abs().double().mean()) or 1.0
    w = _empty_matrix(T)
    for i in range(T - 1):
        end = min(i + max_skip, T)
        standins = _drift_standins(full, rule, i, end - 1, T, history) if rule.kind != HOLD_RULE.kind else None
        acc = 0.0
        for j in range(i + 2, end + 1):
            k = j - 1
            standin = full.outputs[i] if standins is None else standins[k]
            diff = (full.outputs[k].double() - standin.double()).abs().mean()
            acc += full.step_sizes[k] * float(diff) / scale
            w[i, j] = acc
    return w, 0


def _drift_standins(full: SamplingResult, rule: ReuseRule, i: int, last: int, steps: int,
                    history: int) -> dict[int, torch.Tensor]:
    """Stand-ins for steps ``i+1 .. last`` from the recorded outputs at the rule's earlier points and ``i``."""
    mask = [k <= i for k in range(steps)]
    run = CacheRun(Schedule.from_mask(mask), rules=rule, sigmas=full.sigmas)
    for k in [*history_steps(i, rule, history), i]:
        run.store("output", full.outputs[k], full.sigmas[k])
    return {k: run.standin("output", k, full.sigmas[k]) for k in range(i + 1, last + 1)}


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

    def for_rule(self, rule: ReuseRule, history: int = 1) -> EdgeCheckpoint:
        """The rows measured under reuse ``rule`` with earlier points ``history`` steps apart: this file for
        hold (so checkpoints written before rules existed still resume), a sibling file
        ``<name>.<rule>.json`` (``<name>.<rule>.h<history>.json`` for ``history > 1``) for the others."""
        if rule == HOLD_RULE:
            return self
        spacing = f".h{history}" if history > 1 else ""
        sibling = self.path.with_name(f"{self.path.stem}.{rule.name}{spacing}{self.path.suffix}")
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


class EndToEnd:
    """Runs whole schedules under one rule on one batch and scores them against its full-compute final,
    remembering every score (the same schedule and rule never run twice) and counting model calls.

    With ``figures``, each run's per-sample figures (PSNR, the objective per sample, ...) are kept too
    (:meth:`figures_of`): the validation states the expected quality of each budget from them."""

    def __init__(self, sampler: Sampler, full_final: torch.Tensor,
                 distance: Callable[[torch.Tensor, torch.Tensor], float], figures: FiguresFn | None = None) -> None:
        self.sampler, self.full_final, self.distance, self.figures = sampler, full_final, distance, figures
        self.calls = 0
        self._scores: dict[tuple[Schedule, ReuseRule], float] = {}
        self._figures: dict[tuple[Schedule, ReuseRule], SampleFigures] = {}

    def __call__(self, schedule: Schedule, rule: ReuseRule) -> float:
        key = (schedule, rule)
        if key not in self._scores:
            result = self.sampler.run(schedule.mask(), reuse=rule)
            self.calls += result.model_calls
            self._scores[key] = self.distance(result.final, self.full_final)
            if self.figures is not None:
                self._figures[key] = self.figures(result.final, self.full_final)
        return self._scores[key]

    def figures_of(self, schedule: Schedule, rule: ReuseRule) -> SampleFigures | None:
        """The per-sample figures of a pair already run (``None`` without ``figures``)."""
        return self._figures.get((schedule, rule))

    def best(self, schedules: dict[str, Schedule], rules: Sequence[ReuseRule]) -> tuple[str, ReuseRule, dict[str, float]]:
        """The ``(schedule name, rule)`` pair with the smallest distance (ties: the earlier name, then the
        earlier rule) and every pair's score, keyed as :func:`~otcache_core.calibration.score_key`."""
        scores = {score_key(name, rule): self(schedule, rule) for name, schedule in schedules.items() for rule in rules}
        pairs = [(name, rule) for name in schedules for rule in rules]
        name, rule = min(pairs, key=lambda pair: scores[score_key(*pair)])
        return name, rule, scores


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
    validation: Sampler | None = None,
    figures: FiguresFn | None = None,
    figures_space: str = LATENTS,
) -> CalibrationOutcome:
    """Run the three stages, then the validation, and return the calibration record.

    ``distance(cached_final, full_final)`` is the end-to-end objective (lower is better), e.g. LPIPS on
    decoded images; ``objective_name`` is stored in the record. ``validation`` samples the validation
    samples (same steps; no other stage sees them): without it the reference and the anchor are the
    only budgets the record has a choice for, measured on the search samples. ``figures`` gives the
    validation's per-sample figures (PSNR on decoded images, the objective per sample; ``figures_space``
    says what they were measured on); by default PSNR on the latents and ``distance`` per sample.
    """
    T = sampler.steps
    settings.validate(T)
    if validation is not None and validation.steps != T:
        raise OTCacheError(f"the validation samples run {validation.steps} steps, the search samples {T}")
    say = log or (lambda _msg: None)
    cost_calls: dict[str, int] = {}
    cost_seconds: dict[str, float] = {}
    rules, edge_rule, history = settings.rules, settings.edge_rule, settings.history_for(T)
    estimate = estimated_calls(settings, T, validation is not None)
    say(f"about {sum(estimate.values())} model calls in all: " + ", ".join(f"{k} {v}" for k, v in estimate.items()))

    stages = 4 if validation is not None else 3
    say(f"stage 1/{stages}: full-compute trajectories ({T} steps)")
    t0 = time.perf_counter()
    full = sampler.run([True] * T, record=True)
    checked_full = validation.run([True] * T) if validation is not None else None
    cost_calls["trajectories"] = full.model_calls + (checked_full.model_calls if checked_full else 0)
    cost_seconds["trajectories"] = time.perf_counter() - t0
    say(projected_time(cost_calls["trajectories"], cost_seconds["trajectories"], sum(estimate.values())))
    if progress:
        progress("trajectories", 1, 1)

    say(f"stage 2/{stages}: {settings.strength} edge errors, K={settings.max_skip}, reuse rule {edge_rule} with earlier "
        f"points {history} step(s) apart: about {estimate['edges']} model calls ({estimate['edges'] / T:.1f} full "
        "generations)")
    t0 = time.perf_counter()
    part = checkpoint.for_rule(edge_rule, history) if checkpoint else None
    if part and part.problem:
        say(part.problem)
    rows, on_row = (part.rows, part.add) if part else (None, None)
    if settings.strength == "global":
        errors, calls = edge_errors_global(sampler, full, settings.max_skip, progress, rows, on_row, edge_rule, history)
    elif settings.strength == "rollout":
        errors, calls = edge_errors_rollout(sampler, full, settings.max_skip, progress, rows, on_row, edge_rule, history)
    else:
        errors, calls = edge_errors_drift(sampler, full, settings.max_skip, edge_rule, history)
    if checkpoint and checkpoint.save_problem:
        say(checkpoint.save_problem)
    path = solve_reference(errors, T, settings.reference_budget, max_skip=settings.max_skip)
    cost_calls["edges"], cost_seconds["edges"] = calls, time.perf_counter() - t0

    search = EndToEnd(sampler, full.final, distance)
    t0 = time.perf_counter()
    reference, reference_method, reference_rule, checked = path.schedule, path.objective, edge_rule, {}
    if settings.reference_check:
        uniform = sample_warp(identity_warp(), T, settings.reference_budget)
        pair = {path.objective: path.schedule, **({UNIFORM: uniform} if uniform != path.schedule else {})}
        reference_method, reference_rule, checked = search.best(pair, rules)
        reference = pair[reference_method]
        cost_calls["reference"], cost_seconds["reference"] = search.calls, time.perf_counter() - t0
    say(f"reference B={settings.reference_budget} ({reference_method}, {reference_rule}): "
        f"{list(reference.compute_steps)}")

    say(f"stage 3/{stages}: anchor search at B={settings.anchor_budget}, {settings.trials} trials ({objective_name})")
    t0, before = time.perf_counter(), search.calls
    uniform_anchor = sample_warp(identity_warp(), T, settings.anchor_budget)
    _, search_rule, _ = search.best({UNIFORM: uniform_anchor}, rules)

    def on_trial(number: int, schedule: Schedule, value: float) -> None:
        if progress:
            progress("anchor", min(number + 1, settings.trials), settings.trials)

    seeds = anchor_candidates(T, settings.anchor_budget, reference, errors, settings.max_skip)
    anchor = search_anchor(
        lambda schedule: search(schedule, search_rule), T, settings.anchor_budget, n_trials=settings.trials,
        seed=settings.seed, n_bins=settings.n_bins, initial=seeds, storage=settings.storage,
        study_name=settings.study_name, on_trial=on_trial, polish=settings.polish, heartbeat=settings.heartbeat,
        grace=settings.grace,
    )
    _, anchor_rule, anchor_scores = search.best({CALIBRATED: anchor.schedule}, rules)
    cost_calls["anchor"], cost_seconds["anchor"] = search.calls - before, time.perf_counter() - t0
    say(f"anchor B={settings.anchor_budget}: {list(anchor.schedule.compute_steps)} ({objective_name} {anchor.score:.4g} "
        f"under {search_rule}; best rule {anchor_rule})")

    if checked_full is not None:
        say(f"stage 4/4: validation of {len(settings.validation_budgets(T))} budgets, calibrated schedule and even "
            f"spacing under each rule, on samples no stage above saw")
        t0 = time.perf_counter()
        checking = EndToEnd(validation, checked_full.final, distance, figures or latent_figures(distance))
        choices = validate_budgets(checking, reference, anchor.schedule, settings.validation_budgets(T), rules,
                                   settings.uniform_margin, settings.rule_window, progress,
                                   figures_space if figures else LATENTS)
        cost_calls["validation"], cost_seconds["validation"] = checking.calls, time.perf_counter() - t0
        budgets = BudgetChoices(choices, objective_name, int(checked_full.final.shape[0]), True)
        for choice in budgets.choices:
            say(f"validation {choice.describe(T)}")
    else:
        ref_choice = BudgetChoice(reference.budget, CALIBRATED, reference_rule, dict(checked))
        anchor_choice = BudgetChoice(anchor.schedule.budget, CALIBRATED, anchor_rule, anchor_scores)
        budgets = BudgetChoices((ref_choice, anchor_choice), objective_name, int(full.final.shape[0]), False)

    segment_errors = path_errors(errors, reference)
    reference_details: dict[str, Any] = {"segment_errors": list(segment_errors), "max_skip": settings.max_skip}
    if checked:
        reference_details["end_to_end"] = {"objective": objective_name, **checked}
    record = Calibration(
        name=name,
        steps=T,
        reference=ScheduleRecord(reference, reference_method, max(segment_errors), reference_details,
                                 rules=(reference_rule,) * len(reference.segments())),
        anchor=ScheduleRecord(
            anchor.schedule, "optuna", anchor.score,
            {"objective": objective_name, "trials": anchor.trials, "seed": settings.seed, "n_bins": settings.n_bins,
             "polish": settings.polish, "search_rule": search_rule.name, "end_to_end": anchor_scores,
             "history": anchor.history},
            rules=(anchor_rule,) * len(anchor.schedule.segments()),
        ),
        model=model or {},
        sampler=sampler_info or {},
        edge_errors={"strength": settings.strength, "max_skip": settings.max_skip, "metric": "rel_l1",
                     "matrix": matrix_to_json(errors), "rule": edge_rule.name, "history": history,
                     "candidates": [r.name for r in rules]},
        budgets=budgets,
        cost={"model_calls": cost_calls, "seconds": {k: round(v, 3) for k, v in cost_seconds.items()},
              "full_generation_calls": full.model_calls, "estimated_calls": estimate},
    )
    return CalibrationOutcome(record, errors, anchor, full)


def validate_budgets(run: EndToEnd, reference: Schedule, anchor: Schedule, budgets: Sequence[int],
                     rules: Sequence[ReuseRule], margin: float = UNIFORM_MARGIN, window: int = RULE_WINDOW,
                     progress: Progress | None = None, space: str = LATENTS) -> tuple[BudgetChoice, ...]:
    """At each of ``budgets``, the calibrated schedule (the interpolation of ``reference`` and ``anchor``)
    and even spacing, each under every rule, end to end on the samples ``run`` samples; what each budget
    runs is :func:`choose_pairs`. Where ``run`` keeps per-sample figures, each choice carries the
    budget's expected quality (leave-one-out, :func:`otcache_core.quality.expected_quality`; ``space``:
    what the figures were measured on).
    """
    steps = reference.steps
    measured: dict[int, dict[str, float]] = {}
    runs: dict[int, dict[str, Schedule]] = {}
    for n, budget in enumerate(budgets):
        calibrated = predict(reference, anchor, steps, budget).schedule
        uniform = sample_warp(identity_warp(), steps, budget)
        runs[budget] = {CALIBRATED: calibrated, **({UNIFORM: uniform} if uniform != calibrated else {})}
        measured[budget] = run.best(runs[budget], rules)[2]
        if progress:
            progress("validation", n + 1, len(budgets))
    figures = {b: {score_key(kind, rule): run.figures_of(schedule, rule)
                   for kind, schedule in kinds.items() for rule in rules} for b, kinds in runs.items()}
    expected = {}
    if all(f is not None for pairs in figures.values() for f in pairs.values()):
        expected = expected_quality(figures, lambda scores: choose_pairs(scores, rules, margin, window),
                                    lambda pair: score_key(*pair), space)
    return tuple(BudgetChoice(budget, kind, rule, measured[budget], expected.get(budget))
                 for budget, (kind, rule) in choose_pairs(measured, rules, margin, window).items())


def choose_pairs(measured: Mapping[int, Mapping[str, float]], rules: Sequence[ReuseRule], margin: float = UNIFORM_MARGIN,
                 window: int = RULE_WINDOW) -> dict[int, tuple[str, ReuseRule]]:
    """What each validated budget runs, from its scores ``{score key: distance}``.

    Each schedule's rule at budget ``B`` is the one with the smallest geometric mean distance over that
    schedule at the budgets within ``window`` of ``B`` (:func:`pooled_rule`). The budget runs the
    calibrated schedule with its rule if that comes ``margin`` (a share) closer to full compute than even
    spacing with its rule, otherwise even spacing with its rule.
    """
    chosen = {}
    for budget, scores in measured.items():
        rule = pooled_rule(measured, CALIBRATED, budget, rules, window)
        kind = CALIBRATED
        if score_key(UNIFORM, rules[0]) in scores:
            even_rule = pooled_rule(measured, UNIFORM, budget, rules, window)
            if scores[score_key(CALIBRATED, rule)] > (1.0 - margin) * scores[score_key(UNIFORM, even_rule)]:
                kind, rule = UNIFORM, even_rule
        chosen[budget] = (kind, rule)
    return chosen


def pooled_rule(measured: Mapping[int, Mapping[str, float]], kind: str, budget: int, rules: Sequence[ReuseRule],
                window: int) -> ReuseRule:
    """The rule with the smallest mean log distance of schedule ``kind`` over the measured budgets within
    ``window`` of ``budget`` (ties: the earlier rule). Where even spacing is the calibrated schedule, its
    scores stand for both. Which rule suits a model changes slowly with the budget, and a single budget
    on a few samples is a noisy vote: pooling neighbours keeps one unlucky budget from flipping the rule."""
    def score(b: int, rule: ReuseRule) -> float:
        scores = measured[b]
        value = scores.get(score_key(kind, rule), scores.get(score_key(CALIBRATED, rule)))
        return math.log(max(value, 1e-30))

    near = [b for b in measured if abs(b - budget) <= window]
    return min(rules, key=lambda rule: sum(score(b, rule) for b in near) / len(near))
