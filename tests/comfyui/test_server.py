"""The whole chain through ComfyUI's own server and executor.

A real ComfyUI process (``main.py --cpu``) on localhost loads the pack from its ``custom_nodes``
folder and runs a prompt: UNETLoader (a tiny Wan 2.1 saved as a file) -> OTCache Calibrate ->
OTCache Schedule (budget) -> OTCache Apply -> KSampler -> SaveLatent. The text encoder is the only
thing replaced: a small test node (written below, not part of the pack) emits fixed conditioning
tensors, because no real text encoder is available offline.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CONDITIONING_NODE = '''
import torch


class OTCacheTestConditioning:
    """Test helper: fixed random text-encoder output for a tiny Wan (4096-dim context)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, seed):
        g = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, 8, 4096, generator=g), {}]],)


NODE_CLASS_MAPPINGS = {"OTCacheTestConditioning": OTCacheTestConditioning}
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_tiny_wan(path: Path) -> None:
    """A Wan 2.1 T2V small enough for CPU that ComfyUI's own detection recognises (head dim 128)."""
    from safetensors.torch import save_file

    from .tiny_models import _build_patcher

    config = dict(image_model="wan2.1", model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=3,
                  text_dim=4096, in_dim=16, out_dim=16, patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1),
                  qk_norm=True, cross_attn_norm=True, eps=1e-6)
    patcher = _build_patcher("WAN21_T2V", config, seed=0)
    state = {k: v.contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}
    save_file(state, str(path))


@pytest.fixture(scope="module")
def server(tmp_path_factory, comfyui_root, tiny):
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "otcache").symlink_to(REPO, target_is_directory=True)
    helper = base / "custom_nodes" / "otcache_test_conditioning"
    helper.mkdir()
    (helper / "__init__.py").write_text(CONDITIONING_NODE)
    models = base / "models" / "diffusion_models"
    models.mkdir(parents=True)
    _save_tiny_wan(models / "tiny_wan.safetensors")
    port = _free_port()
    log = open(base / "server.log", "w")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--disable-auto-launch"],
        cwd=comfyui_root, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/object_info/OTCacheApply", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"ComfyUI did not start:\n{(base / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield url, base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _wait(url: str, prompt_id: str, base: Path, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with urllib.request.urlopen(f"{url}/history/{prompt_id}", timeout=10) as response:
            history = json.loads(response.read())
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(1)
    pytest.fail(f"prompt did not finish:\n{(base / 'server.log').read_text()[-3000:]}")


def test_nodes_are_registered_with_the_server(server):
    url, _ = server
    info = json.loads(urllib.request.urlopen(f"{url}/object_info", timeout=30).read())
    for node_id, name in {"OTCacheCalibrate": "OTCache Calibrate", "OTCacheSchedule": "OTCache Schedule (budget)",
                          "OTCacheApply": "OTCache Apply"}.items():
        assert info[node_id]["display_name"] == name
    assert "flux.1-dev" in info["OTCacheSchedule"]["input"]["required"]["preset"][0]


def test_calibrate_schedule_apply_ksampler_through_the_server(server):
    url, base = server
    steps = 10
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "tiny_wan.safetensors", "weight_dtype": "default"}},
        "2": {"class_type": "OTCacheTestConditioning", "inputs": {"seed": 1}},
        "3": {"class_type": "OTCacheTestConditioning", "inputs": {"seed": 2}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 1, "batch_size": 1}},
        "5": {"class_type": "OTCacheCalibrate", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 0,
            "samples": 2, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "reference_budget": 0, "anchor_budget": 0, "max_segment": 5, "strength": "rollout", "trials": 5,
            "name": "server-test", "storage": "", "mode": "auto", "overwrite": False}},
        "6": {"class_type": "OTCacheSchedule", "inputs": {
            "preset": "flux.1-dev", "calibration": ["5", 0], "steps": steps, "budget": 4, "budget_as": "computed steps",
            "speedup": 3.0, "warmup_steps": 0, "lambda_mapping": "linear"}},
        "7": {"class_type": "OTCacheApply", "inputs": {"model": ["1", 0], "schedule": ["6", 0], "mode": "auto",
                                                      "start_percent": 0.0, "end_percent": 1.0}},
        "8": {"class_type": "KSampler", "inputs": {
            "model": ["7", 0], "seed": 3, "steps": steps, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple",
            "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
        "9": {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "otcache_test"}},
    }
    prompt_id = _post(f"{url}/prompt", {"prompt": prompt, "client_id": "otcache-test"})["prompt_id"]
    result = _wait(url, prompt_id, base)
    log = (base / "server.log").read_text()
    assert result["status"]["status_str"] == "success", log[-3000:]
    saved = base / "user" / "otcache" / "server-test.json"  # ComfyUI's user directory, <base>/user
    assert saved.exists()
    record = json.loads(saved.read_text())
    assert record["format"] == "otcache.calibration" and record["anchor"]["method"] == "optuna"
    assert list((base / "output").glob("**/otcache_test*.latent"))
    assert "OTCache [blocks]: computed 4/10 steps" in log
