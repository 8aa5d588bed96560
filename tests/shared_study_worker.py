"""One calibration worker of the shared-study test: ``python shared_study_worker.py CONFIG.json``.

Calibrates the toy model of ``conftest.py`` with its edge checkpoint in its own folder (as on its
own machine) and the anchor study in the shared storage, then saves the calibration there. Each
anchor evaluation prints ``EVAL`` when it starts and ``DONE`` when it ends (and sleeps in between,
so that a test can kill the worker in the middle of a trial); the last line is ``RESULT {json}``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import ToySplitModel, make_toy_sampler  # noqa: E402

from otcache_core.calibrate import CalibrationSettings, EdgeCheckpoint, calibrate  # noqa: E402
from otcache_core.reuse import LINEAR_RULE  # noqa: E402
from otcache_core.metrics import relative_l1  # noqa: E402


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    folder = Path(config["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    sampler = make_toy_sampler(ToySplitModel(classes=4).eval(), steps=config["steps"])

    def distance(cached, full) -> float:
        print("EVAL", flush=True)
        time.sleep(config["eval_seconds"])
        value = relative_l1(cached, full)
        print("DONE", flush=True)
        return value

    settings = CalibrationSettings(
        reference_budget=config["reference_budget"], anchor_budget=config["anchor_budget"], max_skip=4,
        trials=config["trials"], storage=config["storage"], study_name="shared", heartbeat=1, grace=2,
        # one rule and no reference check: every EVAL but the first (even spacing under that rule, the rule
        # choice before the search) is an anchor trial (the test kills one mid-trial)
        reference_check=False, rules=(LINEAR_RULE,),
    )
    checkpoint = EdgeCheckpoint(folder / "edges.json", "toy", steps=config["steps"])
    outcome = calibrate(sampler, settings, distance=distance, objective_name="rel_l1", name="shared",
                        checkpoint=checkpoint)
    record = outcome.calibration
    record.save(folder / "calibration.json", overwrite=True)
    print("RESULT", json.dumps({"anchor": list(record.anchor.schedule.compute_steps), "score": record.anchor.score,
                                "trials": outcome.anchor.trials, "edge_calls": record.cost["model_calls"]["edges"]}),
          flush=True)


if __name__ == "__main__":
    main()
