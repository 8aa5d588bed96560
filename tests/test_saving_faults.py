"""Saving into folders that refuse writes, and a process killed while it saves.

A read-only or full folder raises one :class:`SaveError` line naming the folder and the reason, leaves
no temporary file and leaves what was there untouched; the edge checkpoint keeps the calibration
going. A process killed with SIGKILL at any moment of a save leaves the previous or the new file,
never a mix (the text goes to a temporary file that is renamed over the target).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fault_dirs import full_folder, read_only_folder, tree_digest
from otcache_core.calibrate import EdgeCheckpoint
from otcache_core.calibration import Calibration
from otcache_core.errors import SaveError
from otcache_core.jsonfile import dumps, save_json
from otcache_core.presets import shipped_preset_dir

PRESET = shipped_preset_dir() / "flux.1-dev.json"


@pytest.fixture
def calibration() -> Calibration:
    return Calibration.load(PRESET)


def test_saving_into_a_read_only_folder_names_the_folder(tmp_path, calibration):
    with read_only_folder(tmp_path, {"mine.json": "kept"}) as folder:
        before = tree_digest(folder.path)
        with pytest.raises(SaveError) as error:
            calibration.save(folder.path / "new.json")
        message = str(error.value)
        assert "\n" not in message and str(folder.path) in message and "new.json" in message
        assert "Read-only file system" in message or "Permission denied" in message
        with pytest.raises(SaveError):
            save_json(folder.path / "mine.json", {"format": "x", "version": 1}, overwrite=True)
        assert tree_digest(folder.path) == before


def test_saving_into_a_full_folder_names_the_folder_and_keeps_the_old_file(tmp_path, calibration, monkeypatch):
    with full_folder(tmp_path, monkeypatch, {"mine.json": dumps(calibration.to_dict())}) as folder:
        before = tree_digest(folder.path)
        calibration.name = "changed"
        for target, overwrite in ((folder.path / "new.json", False), (folder.path / "mine.json", True)):
            with pytest.raises(SaveError, match="No space left on device") as error:
                calibration.save(target, overwrite=overwrite)
            assert str(folder.path) in str(error.value) and "\n" not in str(error.value)
        assert tree_digest(folder.path) == before  # no temporary file left, the old file whole
        assert Calibration.load(folder.path / "mine.json").name == "flux.1-dev"


def test_an_edge_checkpoint_that_cannot_be_saved_lets_the_calibration_go_on(tmp_path, monkeypatch):
    with full_folder(tmp_path, monkeypatch) as folder:
        checkpoint = EdgeCheckpoint(folder.path / "work" / "edges.json", "key", steps=4)
        checkpoint.add(0, [None, 0.0, 0.1, 0.2, None])
        checkpoint.add(1, [None, None, 0.0, 0.1, 0.2])
        assert sorted(checkpoint.rows) == [0, 1]  # kept in memory for this run
        assert checkpoint.save_problem.startswith("cannot save edges.json in ")
        assert "an interruption now restarts the edge stage" in checkpoint.save_problem


KILLED_WRITER = """
import sys
from otcache_core.jsonfile import save_json
target, n = sys.argv[1], 0
print("ready", flush=True)
while True:
    n += 1
    save_json(target, {"format": "test", "version": 1, "n": n, "payload": str(n % 10) * 8_000_000}, overwrite=True)
"""


def test_a_process_killed_while_saving_leaves_a_whole_file(tmp_path):
    target = tmp_path / "saved.json"
    rng = random.Random(0)
    last = 0
    for _ in range(12):
        proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.05, 0.5))  # a save takes about 0.1 s: the kill lands anywhere in one
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        if target.exists():
            document = json.loads(target.read_text())  # raises on a half-written file
            assert document["payload"] == str(document["n"] % 10) * 8_000_000
            last = document["n"]
    assert last > 0
