"""Cancelling OTCache Calibrate through a running ComfyUI server, and queueing it again.

A server of its own (``comfy_server.py``): an ordinary KSampler prompt first, then an uninterrupted calibration
(``fresh``), then the same calibration under another name interrupted with ``POST /interrupt`` inside
the edge stage, queued again and interrupted inside the anchor stage, and queued again to the end.
Which stage runs is read from what the calibration writes as it goes (edge rows in its checkpoint,
completed trials in its study); the model is slowed by a test node (60 ms per diffusion-model call)
so that each stage lasts seconds, and that node counts the model calls (``helper_nodes/``). Finally the ordinary prompt
runs again on the same loaded model.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

from .comfy_server import model_and_inputs

STEPS = 10
TRIALS = 8
NAME = "resumed"


def calibration_prompt(name: str, counter: Path) -> dict:
    return {
        **model_and_inputs(),
        "5": {"class_type": "OTCacheTestSlowModel", "inputs": {"model": ["1", 0], "delay_ms": 60,
                                                               "counter_file": str(counter)}},
        "6": {"class_type": "OTCacheCalibrate", "inputs": {
            "model": ["5", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "samples": 1, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "reference_budget": 6, "anchor_budget": 4, "max_segment": 5, "strength": "rollout", "trials": TRIALS,
            "name": name, "storage": "", "mode": "model", "overwrite": False}},
    }


def sampling_prompt() -> dict:
    return {
        **model_and_inputs(),
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 3, "steps": STEPS, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "plain"}},
    }


def sample(server) -> "torch.Tensor":
    import safetensors.torch

    result = server.run(sampling_prompt())
    assert "8" not in cached_nodes(result)  # really sampled, not served from ComfyUI's cache
    (saved,) = result["outputs"]["9"]["latents"]
    return safetensors.torch.load_file(str(server.base / "output" / saved["subfolder"] / saved["filename"]))[
        "latent_tensor"]


def cached_nodes(result: dict) -> list[str]:
    return [node for kind, data in result["status"]["messages"] if kind == "execution_cached" for node in data["nodes"]]


def interrupted(result: dict) -> bool:
    return any(kind == "execution_interrupted" for kind, _ in result["status"]["messages"])


def edge_rows(work: Path) -> int:
    """Edge rows checkpointed so far (one file per rule and spacing: the calibration measures one)."""
    files = list(work.glob("*.edges*.json"))
    return max((len(json.loads(f.read_text())["rows"]) for f in files), default=0)


@functools.lru_cache
def _storage(url: str):
    import optuna

    return optuna.storages.RDBStorage(url)


def completed_trials(work: Path, name: str) -> int:
    """Completed anchor trials of the calibration ``name`` in its SQLite study."""
    import optuna

    if not (work / "studies.db").exists():
        return 0
    storage = _storage(f"sqlite:///{work / 'studies.db'}")
    names = [n for n in optuna.get_all_study_names(storage=storage) if n.startswith(f"{name}-")]
    if not names:
        return 0
    study = optuna.load_study(study_name=names[0], storage=storage)
    return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


def interrupt_when(server, prompt: dict, ready, timeout: float = 300) -> dict:
    """Queue ``prompt``, interrupt it once ``ready()`` holds, and return its history."""
    prompt_id = server.queue(prompt)
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline, server.log()[-3000:]
        time.sleep(0.05)
    server.interrupt()
    return server.wait(prompt_id)


def test_an_interrupted_calibration_resumes_to_the_uninterrupted_result(fresh_comfy_server):
    server = fresh_comfy_server
    import torch

    counter = server.base / "model_calls.bin"
    work = server.base / "user" / "otcache" / ".work"

    def calls() -> int:
        return counter.stat().st_size if counter.exists() else 0

    before = sample(server)  # the fresh server's ordinary sampling

    start = calls()
    server.run(calibration_prompt("fresh", counter))
    fresh_calls = calls() - start
    fresh = json.loads((server.base / "user" / "otcache" / "fresh.json").read_text())
    for checkpoint in work.glob("*.edges*.json"):  # same settings: the next run would reuse its rows
        checkpoint.unlink()

    prompt = calibration_prompt(NAME, counter)
    start = calls()
    result = interrupt_when(server, prompt, lambda: edge_rows(work) >= 2)
    rows_at_interrupt = edge_rows(work)
    assert interrupted(result) and 2 <= rows_at_interrupt < STEPS - 1  # stopped inside the edge stage

    result = interrupt_when(server, prompt, lambda: completed_trials(work, NAME) >= 2)
    trials_at_interrupt = completed_trials(work, NAME)
    assert interrupted(result) and 2 <= trials_at_interrupt < TRIALS  # inside the anchor stage
    assert edge_rows(work) == STEPS - 1
    interrupted_calls = calls() - start

    start = calls()
    server.run(prompt)
    resumed_calls = calls() - start
    resumed = json.loads((server.base / "user" / "otcache" / f"{NAME}.json").read_text())

    print(f"model calls: fresh {fresh_calls}; interrupted runs {interrupted_calls} (edge stage stopped after "
          f"{rows_at_interrupt} of {STEPS - 1} rows, anchor after {trials_at_interrupt} of {TRIALS} trials); "
          f"resumed run {resumed_calls}")
    assert resumed_calls < fresh_calls
    assert resumed["cost"]["model_calls"]["edges"] == 0 < fresh["cost"]["model_calls"]["edges"]
    assert resumed["cost"]["model_calls"]["anchor"] < fresh["cost"]["model_calls"]["anchor"]
    for field in ("steps", "model", "sampler", "reference", "anchor", "edge_errors"):
        assert resumed[field] == fresh[field], field
    assert any("edge rows measured by an earlier" in note for note in resumed["notes"])

    after = sample(server)  # the server survived, and the same model samples as it did when fresh
    assert server.process.poll() is None
    assert torch.equal(before, after)
