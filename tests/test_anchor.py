"""The Optuna anchor search: seeded, exact seeds, resumable, shareable, optional."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from otcache_core.anchor import log_density_of, search_anchor, warp_from_log_density
from otcache_core.errors import MissingDependencyError
from otcache_core.schedule import Schedule
from otcache_core.warp import sample_warp, warp_of

pytest.importorskip("optuna")

TARGET = (0, 1, 2, 4, 8, 13, 19, 25, 29)


def distance_to_target(schedule: Schedule) -> float:
    return float(sum(abs(a - b) for a, b in zip(schedule.compute_steps, TARGET)))


def test_log_density_parametrization_spans_front_loaded_schedules():
    s = sample_warp(warp_from_log_density([3.0, 0.0, -1.0, -1.0, 0.0, 1.0]), 30, 9)
    assert s.budget == 9 and s.compute_steps[-1] == 29
    assert s.compute_steps[3] <= 4  # dense start


def test_projection_round_trips_a_density_warp():
    theta = [1.0, -0.5, 0.0, 2.0]
    back = log_density_of(warp_from_log_density(theta), 4)
    assert np.allclose(np.array(back) - back[0], np.array(theta) - theta[0])


def test_search_improves_on_its_seeds_and_is_reproducible():
    uniform = sample_warp(warp_of(Schedule.all_compute(30)), 30, 9)
    a = search_anchor(distance_to_target, 30, 9, n_trials=40, seed=3, initial=[uniform])
    b = search_anchor(distance_to_target, 30, 9, n_trials=40, seed=3, initial=[uniform])
    assert a.schedule == b.schedule and a.history == b.history
    assert a.score <= 0.5 * distance_to_target(uniform)
    assert a.best_so_far()[-1] == a.score


def test_seed_schedules_are_evaluated_exactly_first():
    seen = []

    def objective(schedule):
        seen.append(schedule.compute_steps)
        return distance_to_target(schedule)

    seed_schedule = Schedule.from_steps(TARGET, 30)
    result = search_anchor(objective, 30, 9, n_trials=5, seed=0, initial=[seed_schedule])
    assert seen[0] == TARGET
    assert result.schedule.compute_steps == TARGET and result.score == 0


def test_each_distinct_schedule_is_evaluated_once():
    calls = []
    result = search_anchor(lambda s: calls.append(s) or distance_to_target(s), 30, 9, n_trials=30, seed=1)
    assert len(calls) == result.evaluations == len({c.compute_steps for c in calls})


def test_an_interrupted_study_resumes_from_its_storage(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    first = search_anchor(distance_to_target, 30, 9, n_trials=6, seed=0, storage=url, study_name="s")
    assert first.trials == 6 and first.resumed_trials == 0
    second = search_anchor(distance_to_target, 30, 9, n_trials=10, seed=0, storage=url, study_name="s")
    assert second.resumed_trials == 6 and second.trials == 10
    third = search_anchor(distance_to_target, 30, 9, n_trials=10, seed=0, storage=url, study_name="s")
    assert third.evaluations == 0 and third.trials == 10


def test_two_processes_share_one_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    script = textwrap.dedent(
        f"""
        import sys
        from otcache_core.anchor import search_anchor
        target = {TARGET!r}
        def objective(s):
            import time; time.sleep(0.05)
            return float(sum(abs(a - b) for a, b in zip(s.compute_steps, target)))
        r = search_anchor(objective, 30, 9, n_trials=16, seed=int(sys.argv[1]), storage={url!r}, study_name="shared")
        print(r.evaluations, r.trials)
        """
    )
    # create the study first so that both workers open the same one
    search_anchor(distance_to_target, 30, 9, n_trials=1, seed=0, storage=url, study_name="shared")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i)], stdout=subprocess.PIPE, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    evaluations = [int(o[0]) for o in outs]
    assert all(e > 0 for e in evaluations)  # both workers did part of the work
    final = search_anchor(distance_to_target, 30, 9, n_trials=16, seed=0, storage=url, study_name="shared")
    assert final.trials == 16 and final.evaluations == 0  # exactly the target, even with two workers racing


def test_storage_without_a_study_name_is_rejected(tmp_path):
    from otcache_core.errors import OTCacheError

    with pytest.raises(OTCacheError, match="study name"):
        search_anchor(distance_to_target, 30, 9, storage=f"sqlite:///{tmp_path / 'x.db'}")


def test_missing_optuna_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingDependencyError, match=r"otcache\[calibrate\]"):
        search_anchor(distance_to_target, 30, 9, n_trials=2)


def test_a_move_keeps_the_steps_strictly_increasing_and_in_range():
    from otcache_core.anchor import moved

    s = Schedule.from_steps([0, 2, 3, 9], 10)
    assert moved(s, 1, 1) is None and moved(s, 1, -2) is None  # would hit 3, or 0
    assert moved(s, 3, 1) is None  # 10 is out of range
    assert moved(s, 3, -1).compute_steps == (0, 2, 3, 8)  # the last step may move off T-1


def test_local_search_walks_to_the_optimum_of_a_separable_objective():
    from otcache_core.anchor import local_search

    uniform = sample_warp(warp_of(Schedule.all_compute(30)), 30, 9)
    best = local_search(distance_to_target, uniform, lambda: True)
    assert best.compute_steps == TARGET


def test_polish_refines_the_best_schedule_within_the_trial_budget():
    uniform = sample_warp(warp_of(Schedule.all_compute(30)), 30, 9)
    tpe_only = search_anchor(distance_to_target, 30, 9, n_trials=60, seed=3, initial=[uniform], polish=0.0)
    polished = search_anchor(distance_to_target, 30, 9, n_trials=60, seed=3, initial=[uniform], polish=0.6)
    assert polished.score < tpe_only.score
    assert polished.trials == 60 and polished.evaluations <= 60


def test_a_worker_waits_instead_of_exceeding_the_target_while_another_trial_runs(tmp_path):
    import threading
    import time

    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    search_anchor(distance_to_target, 30, 9, n_trials=5, seed=0, storage=url, study_name="s", polish=0)
    study = optuna.load_study(study_name="s", storage=url)
    other = study.ask()  # another worker's trial, running: the study now has 5 + 1 of 6
    other.set_user_attr("compute_steps", list(TARGET))
    results = []
    worker = threading.Thread(target=lambda: results.append(
        search_anchor(distance_to_target, 30, 9, n_trials=6, seed=0, storage=url, study_name="s", polish=0)))
    worker.start()
    time.sleep(1.5)
    assert worker.is_alive() and len(study.get_trials(deepcopy=False)) == 6  # waiting, no trial of its own
    study.tell(other, 0.0)
    worker.join(timeout=60)
    assert results[0].trials == 6 and results[0].evaluations == 0
    assert results[0].schedule.compute_steps == TARGET  # the other worker's result counts


def test_the_trial_of_a_killed_worker_is_failed_and_run_again(tmp_path):
    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    script = textwrap.dedent(
        f"""
        import json
        import time
        from otcache_core.anchor import search_anchor
        def objective(s):
            print("EVAL", json.dumps(list(s.compute_steps)), flush=True)
            time.sleep(600)
        search_anchor(objective, 30, 9, n_trials=4, seed=0, storage={url!r}, study_name="s", heartbeat=1, grace=1)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the worker is inside its first trial
    proc.kill()
    proc.wait(timeout=30)
    assert line.startswith("EVAL")
    seen = []
    result = search_anchor(lambda s: seen.append(list(s.compute_steps)) or distance_to_target(s), 30, 9, n_trials=4,
                           seed=0, storage=url, study_name="s", heartbeat=1, grace=1)
    study = optuna.load_study(study_name="s", storage=url)
    (killed,) = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert killed.user_attrs["compute_steps"] == json.loads(line[len("EVAL"):])
    retried = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
               if t.system_attrs.get("failed_trial") == killed.number]
    assert [t.user_attrs["compute_steps"] for t in retried] == [killed.user_attrs["compute_steps"]]
    assert killed.user_attrs["compute_steps"] in seen  # its work was done again, here
    assert result.trials == 4


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_run_again(tmp_path):
    import time

    import optuna

    url = f"sqlite:///{tmp_path / 'study.db'}"
    search_anchor(distance_to_target, 30, 9, n_trials=3, seed=0, storage=url, study_name="s", polish=0)
    study = optuna.load_study(study_name="s", storage=url)
    orphan = study.ask()  # registered as running by a worker that died before it sent a heartbeat
    orphan.set_user_attr("compute_steps", list(TARGET))
    started = time.monotonic()
    result = search_anchor(distance_to_target, 30, 9, n_trials=4, seed=0, storage=url, study_name="s", polish=0,
                           heartbeat=1, grace=1)
    assert result.trials == 4 and time.monotonic() - started < 30
    assert [t.number for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,))] == [orphan.number]
    (retried,) = [t for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
                  if t.system_attrs.get("failed_trial") == orphan.number]
    assert retried.user_attrs["compute_steps"] == list(TARGET) and result.schedule.compute_steps == TARGET


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("stop_at", [2, 6, 12])  # in a seed, in TPE, in the local search
def test_an_interrupted_search_resumes_to_the_uninterrupted_result(tmp_path, stop_at):
    seeds = [sample_warp(warp_of(Schedule.all_compute(30)), 30, 9), Schedule.from_steps(range(0, 27, 3), 30)]
    kwargs = dict(n_trials=16, seed=2, initial=seeds)
    uninterrupted = search_anchor(distance_to_target, 30, 9, **kwargs)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    calls = []

    def interrupted_objective(schedule):
        calls.append(schedule)
        if len(calls) == stop_at:
            raise Interrupted()
        return distance_to_target(schedule)

    with pytest.raises(Interrupted):
        search_anchor(interrupted_objective, 30, 9, storage=url, study_name="s", **kwargs)
    resumed = search_anchor(distance_to_target, 30, 9, storage=url, study_name="s", **kwargs)
    assert resumed.resumed_trials > 0 or stop_at <= 2
    assert resumed.schedule == uninterrupted.schedule and resumed.history == uninterrupted.history
