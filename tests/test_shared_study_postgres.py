"""Three workers share one anchor study on a real PostgreSQL server; one is killed mid-trial.

Each worker (``shared_study_worker.py``) calibrates the toy model with its own edge checkpoint and
calibration file (as on its own machine) and the anchor study on the server. Worker 0 is killed
with SIGKILL in the middle of an anchor evaluation and started again on the same folder. The study
must end with exactly N completed trials; the killed trial must be failed (its heartbeat stopped)
and redone as a retried trial; all workers must report the same anchor; the killed worker's files
must be whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from otcache_core.calibrate import EdgeCheckpoint
from otcache_core.calibration import Calibration
from otcache_core.reuse import LINEAR_RULE

from pg_cluster import Unavailable, postgres_cluster

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2 is missing: pip install 'otcache[test]'")

HERE = Path(__file__).resolve().parent
WORKER = HERE / "shared_study_worker.py"
STEPS = 20
TRIALS = 14


@pytest.fixture(scope="module")
def postgres_url():
    try:
        with postgres_cluster() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


class Worker:
    """A worker process whose output lines are collected as they come."""

    def __init__(self, config: Path) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
        self.proc = subprocess.Popen([sys.executable, str(WORKER), str(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def count(self, word: str) -> int:
        return sum(1 for line in list(self.lines) if line == word)

    def finish(self, timeout: float = 240) -> dict:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        assert self.proc.returncode == 0, "\n".join(self.lines[-40:])
        result = next(line for line in reversed(self.lines) if line.startswith("RESULT "))
        return json.loads(result[len("RESULT "):])


def test_a_killed_worker_leaves_exactly_n_trials_and_one_anchor(postgres_url, tmp_path):
    configs = []
    for n in range(3):
        config = tmp_path / f"worker{n}.json"
        config.write_text(json.dumps({"folder": str(tmp_path / f"machine{n}"), "storage": postgres_url,
                                      "steps": STEPS, "reference_budget": 10, "anchor_budget": 5,
                                      "trials": TRIALS, "eval_seconds": 0.6}))
        configs.append(config)
    workers = [Worker(c) for c in configs]

    # Kill worker 0 in the middle of its second anchor trial (running in the study); its first evaluation
    # is even spacing, before the search.
    victim = workers[0]
    deadline = time.time() + 180
    while victim.count("EVAL") < 3:
        assert victim.proc.poll() is None and time.time() < deadline, "\n".join(victim.lines[-40:])
        time.sleep(0.02)
    victim.proc.send_signal(signal.SIGKILL)  # the evaluation it just announced takes 0.6 s
    victim.proc.wait(timeout=30)
    assert victim.proc.returncode == -signal.SIGKILL
    assert victim.count("DONE") < victim.count("EVAL")  # it died inside the evaluation

    # Whatever it was writing is whole: its edge checkpoint holds every row; no temporary files.
    machine0 = tmp_path / "machine0"
    checkpoint = EdgeCheckpoint(machine0 / "edges.json", "toy", steps=STEPS).for_rule(LINEAR_RULE, history=2)
    assert checkpoint.problem is None and sorted(checkpoint.rows) == list(range(STEPS - 1))
    assert not list(machine0.glob(".*.tmp"))

    restarted = Worker(configs[0])
    results = [w.finish() for w in (restarted, workers[1], workers[2])]

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    states = optuna.trial.TrialState
    completed = study.get_trials(states=(states.COMPLETE,))
    assert len(completed) == TRIALS
    assert not study.get_trials(states=(states.RUNNING,))
    failed = study.get_trials(states=(states.FAIL,))
    assert len(failed) == 1  # the killed worker's trial, failed once its heartbeat stopped
    killed = failed[0]
    retries = [t for t in completed if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].user_attrs["compute_steps"] == killed.user_attrs["compute_steps"]

    best = min(completed, key=lambda t: (t.value, t.number))
    for result in results:
        assert result["trials"] == TRIALS
        assert result["anchor"] == best.user_attrs["compute_steps"] and result["score"] == best.value
    assert results[0]["edge_calls"] == 0  # the restarted worker took every edge row from its checkpoint

    for n in range(3):
        saved = Calibration.load(tmp_path / f"machine{n}" / "calibration.json")
        assert list(saved.anchor.schedule.compute_steps) == best.user_attrs["compute_steps"]
        assert not list((tmp_path / f"machine{n}").glob(".*.tmp"))
