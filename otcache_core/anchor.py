"""The anchor stage: an Optuna search for the best schedule at an extreme low budget.

Search space: a compute density on normalised time ``t in [0, 1]``, piecewise constant on ``n`` equal
bins with log-densities ``theta_i in [-LOG_RANGE, LOG_RANGE]``. Its CDF ``F`` is piecewise linear
through ``(i/n, sum_{k<i} e^theta_k / sum_k e^theta_k)``; the warp is the quantile function
``phi = F^{-1}``, sampled at ``B`` points into a schedule (:func:`otcache_core.warp.sample_warp`). A
handful of parameters thus reaches every "dense here, sparse there" shape while the budget stays
exact; the last step is always computed (as in every published schedule).

TPE explores that space; a share of the trials (``polish``) then refines the best schedule found
so far by a deterministic local search on the step indices themselves: move one computed step
``s_k`` (``k >= 1``) by ``+-d`` (``d`` coarse, then 1) while the steps stay strictly increasing and
below ``T``, keep every move that lowers the objective, and sweep until no move helps or the trials
are spent. The warp parametrization cannot express small per-step adjustments (nor dropping the last
step, as the graph paths often do): on the testbed TPE alone never improved on its best exact seed,
while this refinement moved the anchor off it (small held-out gains; see benchmarks/RESULTS.md).

The objective is a callable supplied by the host (end-to-end distance between cached and full outputs
over the calibration samples). Distinct parameters often round to the same schedule; each schedule is
evaluated once and remembered in the study (trial user attributes), so a resumed or shared study
never pays twice for it.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MissingDependencyError, OTCacheError
from .schedule import Schedule, check_budget, check_steps
from .warp import Warp, sample_warp, warp_of

LOG_RANGE = 4.0
SCHEDULE_ATTR = "compute_steps"

ScheduleObjective = Callable[[Schedule], float]


def require_optuna():  # -> module
    """Import Optuna or explain how to install it."""
    try:
        import optuna
    except ImportError:
        raise MissingDependencyError(
            "the anchor search needs Optuna: pip install 'otcache[calibrate]' (or pip install optuna)"
        ) from None
    return optuna


def warp_from_log_density(theta: Sequence[float]) -> Warp:
    """The quantile function of the piecewise-constant density ``exp(theta_i)`` on ``n`` equal bins."""
    theta = np.asarray(theta, dtype=float)
    if theta.ndim != 1 or len(theta) < 1:
        raise OTCacheError("need at least one log-density value")
    mass = np.exp(theta - theta.max())
    cdf = np.concatenate([[0.0], np.cumsum(mass)]) / mass.sum()
    cdf[-1] = 1.0
    edges = np.linspace(0.0, 1.0, len(theta) + 1)
    return Warp(tuple(cdf.tolist()), tuple(edges.tolist()))


def log_density_of(phi: Warp, n_bins: int) -> list[float]:
    """Project a warp onto the search space: log of the compute mass in each of ``n_bins`` bins.

    ``F = phi^{-1}`` is read off the warp's knots; flat pieces of ``phi`` (point masses) are spread
    over their bin. Values are clipped to the search range.
    """
    v, u = np.asarray(phi.knots_v), np.asarray(phi.knots_u)
    v_unique, first = np.unique(v, return_index=True)  # F(t) = smallest u with phi(u) >= t
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    cdf = np.interp(edges, v_unique, u[first], left=0.0, right=1.0)
    cdf[0], cdf[-1] = 0.0, 1.0
    mass = np.maximum(np.diff(cdf), 1e-12) * n_bins
    return np.clip(np.log(mass), -LOG_RANGE, LOG_RANGE).tolist()


@dataclass
class AnchorResult:
    """Outcome of an anchor search."""

    schedule: Schedule
    score: float
    trials: int
    """Completed trials in the study (all workers, all sessions)."""
    evaluations: int
    """Distinct schedules whose objective was computed in this call."""
    history: list[float] = field(default_factory=list)
    """Objective value of each completed trial, in trial order."""
    study_name: str | None = None
    resumed_trials: int = 0
    """Completed trials found in the storage before this call."""

    def best_so_far(self) -> list[float]:
        out, best = [], math.inf
        for value in self.history:
            best = min(best, value)
            out.append(best)
        return out


def _open_study(optuna, study_name: str | None, storage: str | None, sampler, attempts: int = 5):
    """Create or load the study; retried, because two workers starting at once race to create it."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=study_name, storage=storage, sampler=sampler, direction="minimize", load_if_exists=True
            )
        except Exception as exc:  # bad URL, unreachable server, missing driver, or the creation race
            if attempt == attempts - 1:
                raise OTCacheError(f"cannot open the Optuna storage {storage!r}: {exc}") from exc
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def moved(schedule: Schedule, k: int, shift: int) -> Schedule | None:
    """``schedule`` with computed step ``s_k`` (``k >= 1``) moved by ``shift``, or ``None`` when that
    would break the strict order or leave ``1 .. T-1``."""
    steps = schedule.compute_steps
    target = steps[k] + shift
    upper = steps[k + 1] if k + 1 < len(steps) else schedule.steps
    if not steps[k - 1] < target < upper:
        return None
    return Schedule(schedule.steps, steps[:k] + (target,) + steps[k + 1 :])


def local_search(score: ScheduleObjective, start: Schedule, keep_going: Callable[[], bool]) -> Schedule:
    """First-improvement coordinate search over step positions (see module doc).

    A sweep tries, for ``d`` = a coarse step ``max(2, round(T / (4 B)))`` and then 1, each move
    ``s_k += d`` for ``k = 1 .. B-1`` and then each ``s_k -= d``, always from the best schedule so far
    (an improvement is taken at once). Sweeps repeat until one improves nothing or ``keep_going()``
    is false; ``score`` is only called while ``keep_going()`` (the start is assumed scored).
    """
    best, best_value = start, score(start)
    coarse = max(2, int(round(start.steps / (4 * start.budget))))
    improved = True
    while improved:
        improved = False
        for delta in (coarse, 1):
            for sign in (1, -1):
                for k in range(1, best.budget):
                    candidate = moved(best, k, sign * delta)
                    if candidate is None:
                        continue
                    if not keep_going():
                        return best
                    value = score(candidate)
                    if value < best_value:
                        best, best_value, improved = candidate, value, True
    return best


def search_anchor(
    objective: ScheduleObjective,
    steps: int,
    budget: int,
    *,
    n_trials: int = 40,
    seed: int = 0,
    n_bins: int = 6,
    initial: Sequence[Schedule] = (),
    storage: str | None = None,
    study_name: str | None = None,
    on_trial: Callable[[int, Schedule, float], None] | None = None,
    polish: float = 0.6,
) -> AnchorResult:
    """Minimise ``objective(schedule)`` over warp-parametrised schedules with ``budget`` of ``steps``.

    TPE (seeded) over ``n_bins`` log-densities. ``initial`` schedules (e.g. the reference resampled
    to this budget, and uniform spacing) are evaluated first, exactly, and given to TPE as trials at
    their projection into the search space. The last ``round(polish * n_trials)`` trials refine the
    best schedule by local search on its steps (see module doc; ``polish=0``: TPE only); trials the
    local search does not need (it reached a local optimum) go back to TPE.
    With ``storage`` (an RDB URL such as ``sqlite:///anchor.db`` or ``postgresql://...``) the study is
    persistent: calling again with the same ``study_name`` resumes, and several processes pointed at
    the same study share the work; the search stops when the study holds ``n_trials`` completed
    trials. ``on_trial(number, schedule, value)`` is called after each trial of this process.
    """
    optuna = require_optuna()
    T = check_steps(steps)
    B = check_budget(budget, T)
    if n_trials < 1:
        raise OTCacheError(f"anchor search needs at least 1 trial, got {n_trials}")
    if storage is not None and not study_name:
        raise OTCacheError("a storage URL needs a study name to resume")
    if not 0.0 <= polish <= 1.0:
        raise OTCacheError(f"polish must be a share of the trials within [0, 1], got {polish}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental in some versions
        sampler = optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=max(1, min(10, n_trials // 3))
        )
    study = _open_study(optuna, study_name, storage, sampler)

    done_state = optuna.trial.TrialState.COMPLETE
    known: dict[tuple[int, ...], float] = {}
    previous = study.get_trials(deepcopy=False, states=(done_state,))
    resumed = len(previous)
    for trial in previous:
        steps_attr = trial.user_attrs.get(SCHEDULE_ATTR)
        if steps_attr is not None and trial.value is not None:
            known[tuple(steps_attr)] = float(trial.value)
    evaluations = 0
    names = [f"log_density_{i}" for i in range(n_bins)]
    space = optuna.distributions.FloatDistribution(-LOG_RANGE, LOG_RANGE)

    def add_exact_trial(schedule: Schedule, **attrs: Any) -> float:
        """Score ``schedule`` itself (not its n-bin projection) and give it to TPE as a trial at its
        projection into the search space."""
        nonlocal evaluations
        key = schedule.compute_steps
        if key not in known:
            known[key] = float(objective(schedule))
            evaluations += 1
        study.add_trial(
            optuna.trial.create_trial(
                params=dict(zip(names, log_density_of(warp_of(schedule), n_bins))),
                distributions={name: space for name in names},
                value=known[key],
                user_attrs={SCHEDULE_ATTR: list(key), **attrs},
            )
        )
        if on_trial is not None:
            on_trial(len(study.get_trials(deepcopy=False)) - 1, schedule, known[key])
        return known[key]

    if not study.get_trials(deepcopy=False):
        # Seed points are evaluated exactly, so the anchor is never worse than, e.g., the reference
        # resampled to this budget; TPE learns from them too.
        for schedule in initial[:n_trials]:
            if schedule.steps != T or schedule.budget != B:
                raise OTCacheError(f"initial anchor candidates must have {B} of {T} steps, got {schedule}")
            add_exact_trial(schedule)

    def run_trial(trial) -> float:
        nonlocal evaluations
        theta = [trial.suggest_float(name, -LOG_RANGE, LOG_RANGE) for name in names]
        schedule = sample_warp(warp_from_log_density(theta), T, B)
        trial.set_user_attr(SCHEDULE_ATTR, list(schedule.compute_steps))
        key = schedule.compute_steps
        if key not in known:
            known[key] = float(objective(schedule))
            evaluations += 1
        value = known[key]
        if on_trial is not None:
            on_trial(trial.number, schedule, value)
        return value

    def run_tpe(limit: int) -> None:
        remaining = limit - len(study.get_trials(deepcopy=False, states=(done_state,)))
        if remaining > 0:
            stop = optuna.study.MaxTrialsCallback(limit, states=(done_state,))
            study.optimize(run_trial, n_trials=remaining, callbacks=[stop])

    local_trials = int(round(polish * n_trials))
    run_tpe(n_trials - local_trials)
    if local_trials:
        def trials_left() -> bool:
            return len(study.get_trials(deepcopy=False, states=(done_state,))) < n_trials

        start = min(known, key=known.get) if known else None
        if start is not None:
            local_search(lambda s: known[s.compute_steps] if s.compute_steps in known
                         else add_exact_trial(s, local=True), Schedule(T, start), trials_left)
        run_tpe(n_trials)  # a local optimum reached early leaves trials for exploration

    completed = study.get_trials(deepcopy=False, states=(done_state,))
    if not completed:
        raise OTCacheError("the anchor search completed no trial")
    best = min(completed, key=lambda t: (t.value, t.number))
    schedule = Schedule(steps=T, compute_steps=tuple(best.user_attrs[SCHEDULE_ATTR]))
    logging.getLogger(__name__).debug("anchor %s scored %.6g", schedule, best.value)
    return AnchorResult(
        schedule=schedule,
        score=float(best.value),
        trials=len(completed),
        evaluations=evaluations,
        history=[float(t.value) for t in sorted(completed, key=lambda t: t.number)],
        study_name=study.study_name,
        resumed_trials=resumed,
    )
