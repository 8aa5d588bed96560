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

Every trial, exact ones included, runs inside ``study.optimize`` with an RDB storage's heartbeats:
a trial whose worker dies is failed after a grace period and queued again with the same schedule,
and an interrupted trial (the host raises in the objective) is marked failed and not counted. Each
TPE proposal is drawn from the study's state, not the process's random stream, so a resumed search
ends where an uninterrupted one would have; workers sharing a study stop at exactly ``n_trials``
completed trials (see :func:`search_anchor`).
"""

from __future__ import annotations

import inspect
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


HEARTBEAT_SECONDS = 20
"""How often a worker records that its running trial is alive (RDB storages only)."""
GRACE_SECONDS = 120
"""A running trial whose last heartbeat is older than this is failed and queued again."""
MAX_RETRIES = 3
POLL_SECONDS = 0.5
"""How often a worker that waits for other workers' trials looks at the study again."""


def open_storage(optuna, url: str, heartbeat: int | None = HEARTBEAT_SECONDS, grace: int | None = GRACE_SECONDS):
    """An RDB storage for ``url`` whose trials send heartbeats (``heartbeat=None``: none).

    A trial whose worker died (killed, machine lost) stops beating; once its heartbeat is older than
    ``grace`` seconds, the next worker that looks fails it and queues a copy with the same parameters
    and schedule (Optuna's retry callback, at most ``MAX_RETRIES`` times), so its work is redone.
    """
    storages = optuna.storages
    retry = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
    names = inspect.signature(storages.RDBStorage).parameters  # the argument was renamed in Optuna 4.9
    slot = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeats and the retry callback are flagged experimental
        if heartbeat is None:
            return storages.RDBStorage(url)
        return storages.RDBStorage(url, heartbeat_interval=heartbeat, grace_period=grace,
                                   **{slot: retry(max_retry=MAX_RETRIES)})


def _open_study(optuna, study_name: str | None, storage: str | None, sampler, heartbeat: int | None,
                grace: int | None, attempts: int = 5):
    """The study and its RDB storage (``None`` in memory), created or loaded; retried, because two
    workers starting at once race to create it."""
    for attempt in range(attempts):
        try:
            rdb = open_storage(optuna, storage, heartbeat, grace) if storage is not None else None
            study = optuna.create_study(
                study_name=study_name, storage=rdb, sampler=sampler, direction="minimize", load_if_exists=True
            )
            return study, rdb
        except Exception as exc:  # bad URL, unreachable server, missing driver, or the creation race
            if attempt == attempts - 1:
                raise OTCacheError(f"cannot open the Optuna storage {storage!r}: {_one_line(exc)}") from exc
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] + ("..." if len(text) > 300 else "")


def trial_seeded_sampler(optuna, seed: int, n_startup_trials: int):
    """A TPE sampler whose randomness depends on the study, not on the process's history.

    Before each trial a fresh TPE sampler is seeded from ``(seed, completed trials, running
    trials)``. A resumed study therefore proposes what an uninterrupted one would have proposed at
    the same point (the same completed trials give the same TPE model and the same random draw),
    and two workers starting a trial side by side (different running counts) propose different
    points instead of the same one.
    """
    base = optuna.samplers.BaseSampler
    done, running = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING

    def tpe(derived: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate TPE is flagged experimental in some versions
            return optuna.samplers.TPESampler(seed=derived, multivariate=True, n_startup_trials=n_startup_trials)

    class TrialSeededTPE(base):
        def __init__(self) -> None:
            self.inner = tpe(seed)

        def before_trial(self, study, trial) -> None:
            counts = [len(study.get_trials(deepcopy=False, states=(state,))) for state in (done, running)]
            self.inner = tpe(int(np.random.SeedSequence([seed, *counts]).generate_state(1)[0]))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self.inner.after_trial(study, trial, state, values)

    return TrialSeededTPE()


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


@dataclass
class _StudyView:
    """One read of the study: what is done, what runs, what waits."""

    values: dict[tuple[int, ...], float]
    """Schedule -> objective value, over the completed trials."""
    completed: list[Any]
    running: list[Any]
    waiting: list[Any]


def _holds(trial, key: tuple[int, ...]) -> bool:
    """Whether ``trial`` is (or was) an evaluation of the schedule ``key``."""
    return tuple(trial.user_attrs.get(SCHEDULE_ATTR, ())) == key


def _view(study, optuna) -> _StudyView:
    states = optuna.trial.TrialState
    trials = study.get_trials(deepcopy=False)
    completed = [t for t in trials if t.state == states.COMPLETE]
    values = {}
    for t in completed:
        steps_attr = t.user_attrs.get(SCHEDULE_ATTR)
        if steps_attr is not None and t.value is not None:
            values.setdefault(tuple(steps_attr), float(t.value))
    return _StudyView(values, completed, [t for t in trials if t.state == states.RUNNING],
                      [t for t in trials if t.state == states.WAITING])


class _SharedSearch:
    """The trials of one anchor search in a study that other workers may share (see
    :func:`search_anchor`): every trial runs inside ``study.optimize``, where Optuna records
    heartbeats and marks a trial failed when the objective raises."""

    def __init__(self, optuna, study, storage, objective: ScheduleObjective, steps: int, budget: int,
                 n_trials: int, n_bins: int, on_trial: Callable[[int, Schedule, float], None] | None) -> None:
        self.optuna, self.study, self.objective = optuna, study, objective
        self.beats = storage if storage is not None and storage.get_heartbeat_interval() is not None else None
        """The storage, where trials send heartbeats."""
        self.watched: dict[int, float | None] = {}
        """Running trials of other workers (number): when this worker began waiting on each (``None``:
        it has had its heartbeat from this worker)."""
        self.steps, self.budget, self.n_trials, self.n_bins, self.on_trial = steps, budget, n_trials, n_bins, on_trial
        self.names = [f"log_density_{i}" for i in range(n_bins)]
        self.known = dict(self.view().values)
        """Objective values this process knows, kept if the study loses one (a trial taken over)."""
        self.evaluations = 0
        self.phase = "tpe"
        """Recorded on each TPE trial: ``tpe`` before the local search, ``explore`` after it."""
        self.log = logging.getLogger(__name__)
        self._last_wait_note = 0.0

    def view(self) -> _StudyView:
        return _view(self.study, self.optuna)

    def has_room(self, view: _StudyView) -> bool:
        return len(view.completed) + len(view.running) < self.n_trials

    def trial_id(self, number: int) -> int:
        study_id = self.beats.get_study_id_from_name(self.study.study_name)
        return self.beats.get_trial_id_from_study_id_trial_number(study_id, number)

    def run_trial(self, trial) -> float:
        if self.beats is not None:
            # Optuna's first heartbeat comes from a thread that may not have run yet; a worker killed
            # before it would leave a trial that never goes stale. Beat once here, before any work.
            self.beats.record_heartbeat(self.trial_id(trial.number))
        view = self.view()
        if len(view.completed) + len(view.running) - 1 >= self.n_trials:  # - 1: this trial is running too
            raise self.optuna.TrialPruned("the study has all its trials, completed or running elsewhere")
        theta = [trial.suggest_float(name, -LOG_RANGE, LOG_RANGE) for name in self.names]
        fixed = trial.user_attrs.get(SCHEDULE_ATTR)  # an exact candidate, or a failed trial queued again
        if fixed is not None:
            schedule = Schedule(self.steps, tuple(fixed))
        else:
            schedule = sample_warp(warp_from_log_density(theta), self.steps, self.budget)
            trial.set_user_attr(SCHEDULE_ATTR, list(schedule.compute_steps))
            trial.set_user_attr("phase", self.phase)
        key = schedule.compute_steps
        value = view.values.get(key, self.known.get(key))
        if value is None:
            value = self.known[key] = float(self.objective(schedule))
            self.evaluations += 1
        if self.on_trial is not None:
            self.on_trial(trial.number, schedule, value)
        return value

    def one_trial(self) -> None:
        """Run one trial: the oldest queued one, else a new TPE proposal."""
        try:
            self.study.optimize(self.run_trial, n_trials=1)
        except self.optuna.exceptions.UpdateFinishedTrialError:
            # This worker's trial outlived its grace period (a stalled machine) and was failed and
            # queued again by another worker; the value is kept in `known`, so the copy costs nothing.
            self.log.warning("anchor trial was taken over by another worker after a missed heartbeat")
        except ValueError as exc:
            # SQLite cannot lock a row: two workers may take the same queued trial, and the second to
            # finish finds it complete (same schedule, same value). PostgreSQL locks the row.
            if "Cannot tell a COMPLETE trial" not in str(exc):
                raise

    def beat_for_silent_trials(self, running: Sequence[Any]) -> None:
        """Record one heartbeat for each running trial this worker has waited on for longer than a
        grace period and two beats: a worker killed between registering its trial and the trial's
        first heartbeat leaves a trial Optuna never fails (only a trial with a heartbeat goes stale).
        A live worker goes on beating; a dead one's trial goes stale one grace period later."""
        interval = self.beats.get_heartbeat_interval()
        patience = (self.beats.grace_period or 2 * interval) + 2 * interval
        now = time.monotonic()
        self.watched = {t.number: self.watched.get(t.number, now) for t in running}
        for number, since in self.watched.items():
            if since is not None and now - since > patience:
                self.beats.record_heartbeat(self.trial_id(number))
                self.watched[number] = None  # once: a dead worker's trial must be allowed to go stale

    def wait_for_others(self, view: _StudyView) -> None:
        if self.beats is not None:
            self.beat_for_silent_trials(view.running)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.optuna.storages.fail_stale_trials(self.study)  # a dead worker's trial fails, and is queued again
        if time.monotonic() - self._last_wait_note > 60:
            self._last_wait_note = time.monotonic()
            self.log.info("anchor search: waiting for trials %s running in other workers",
                          [t.number for t in view.running])
        time.sleep(POLL_SECONDS)

    def run_until(self, limit: int) -> None:
        """Run trials (queued ones first) until the study holds ``limit`` completed trials."""
        while True:
            view = self.view()
            if len(view.completed) >= limit:
                return
            if view.waiting or self.has_room(view):
                self.one_trial()
            else:
                self.wait_for_others(view)

    def evaluate_exact(self, schedule: Schedule, kind: str) -> float:
        """The objective of ``schedule`` itself, as a trial at its projection into the search space.

        ``inf`` when the study filled up first, or when another worker is evaluating the same
        schedule: several workers sweeping the same local search then spread over its candidates
        instead of queueing behind one another (the other worker's value still counts for the best).
        """
        key = schedule.compute_steps
        params = dict(zip(self.names, log_density_of(warp_of(schedule), self.n_bins)))
        while True:
            view = self.view()
            if key in view.values:
                return view.values[key]
            if len(view.completed) >= self.n_trials or any(_holds(t, key) for t in view.running):
                return math.inf
            if not any(_holds(t, key) for t in view.waiting):
                if not self.has_room(view):
                    return math.inf
                self.study.enqueue_trial(params, user_attrs={SCHEDULE_ATTR: list(key), "phase": kind})
            self.one_trial()  # runs the oldest queued trial: this one, or a dead worker's queued again

    def best_explored(self) -> Schedule | None:
        """The local search's start: the best seed or TPE trial, whatever happened after, so that a
        resumed search replays the same sweep (known schedules cost nothing) and goes on where it stopped."""
        explored = [t for t in self.view().completed if t.user_attrs.get("phase", "tpe") in ("seed", "tpe")
                    and not t.user_attrs.get("local") and SCHEDULE_ATTR in t.user_attrs]
        if not explored:
            return None
        best = min(explored, key=lambda t: (t.value, t.number))
        return Schedule(self.steps, tuple(best.user_attrs[SCHEDULE_ATTR]))


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
    heartbeat: int | None = HEARTBEAT_SECONDS,
    grace: int | None = GRACE_SECONDS,
) -> AnchorResult:
    """Minimise ``objective(schedule)`` over warp-parametrised schedules with ``budget`` of ``steps``.

    TPE (seeded per trial, :func:`trial_seeded_sampler`) over ``n_bins`` log-densities. ``initial``
    schedules (e.g. the reference resampled to this budget, and uniform spacing) are evaluated first,
    exactly, as trials at their projection into the search space. The last ``round(polish * n_trials)``
    trials refine the best schedule of the seeds and TPE by local search on its steps (see module doc;
    ``polish=0``: TPE only); trials the local search does not need (it reached a local optimum) go back
    to TPE. ``on_trial(number, schedule, value)`` is called after each trial of this process.

    With ``storage`` (an RDB URL such as ``sqlite:///anchor.db`` or ``postgresql://...``) the study is
    persistent and shared:

    * calling again with the same ``study_name`` resumes, and proposes what an uninterrupted search
      would have (same completed trials, same next proposal);
    * several processes pointed at one study share the work, and the study ends with exactly
      ``n_trials`` completed trials: a trial starts only while completed plus running trials are
      fewer than ``n_trials`` (checked inside the trial, after it is registered as running, so two
      workers cannot both take the last slot; a trial that loses the race is pruned, never counted);
    * running trials send a heartbeat every ``heartbeat`` seconds; a trial silent for ``grace``
      seconds (its worker died) is failed and queued again with the same schedule; a trial that never
      sent one (its worker died while registering it) gets one from a worker that waited on it for
      ``grace`` plus two heartbeats, and goes stale ``grace`` seconds later;
    * every call returns only when the study holds ``n_trials`` completed trials, so all workers
      report the same best schedule;
    * workers sweeping the same local search skip a candidate another worker is evaluating, so they
      spread over the sweep instead of queueing behind one another.
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
    for schedule in initial:
        if schedule.steps != T or schedule.budget != B:
            raise OTCacheError(f"initial anchor candidates must have {B} of {T} steps, got {schedule}")
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # an interrupted trial is reported by the host
    sampler = trial_seeded_sampler(optuna, seed, max(1, min(10, n_trials // 3)))
    study, rdb = _open_study(optuna, study_name, storage, sampler, heartbeat, grace)
    search = _SharedSearch(optuna, study, rdb, objective, T, B, n_trials, n_bins, on_trial)
    resumed = len(search.view().completed)
    for schedule in initial[:n_trials]:
        # Evaluated exactly, so the anchor is never worse than, e.g., the reference resampled to
        # this budget; TPE learns from them too.
        search.evaluate_exact(schedule, "seed")
    local_trials = int(round(polish * n_trials))
    search.run_until(n_trials - local_trials)
    if local_trials:
        start = search.best_explored()
        if start is not None:
            local_search(lambda s: search.evaluate_exact(s, "local"), start,
                         lambda: len(search.view().completed) < n_trials)
        search.phase = "explore"
        search.run_until(n_trials)  # a local optimum reached early leaves trials for exploration

    completed = search.view().completed
    if not completed:
        raise OTCacheError("the anchor search completed no trial")
    best = min(completed, key=lambda t: (t.value, t.number))
    schedule = Schedule(steps=T, compute_steps=tuple(best.user_attrs[SCHEDULE_ATTR]))
    search.log.debug("anchor %s scored %.6g", schedule, best.value)
    return AnchorResult(
        schedule=schedule,
        score=float(best.value),
        trials=len(completed),
        evaluations=search.evaluations,
        history=[float(t.value) for t in sorted(completed, key=lambda t: t.number)],
        study_name=study.study_name,
        resumed_trials=resumed,
    )
