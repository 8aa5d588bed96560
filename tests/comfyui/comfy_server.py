"""A real ComfyUI server for the tests: ``main.py --cpu`` on 127.0.0.1 with this pack installed.

Everything lives in a temporary base directory (``--base-directory``): ``custom_nodes/otcache`` is a
link to this repository, ``custom_nodes/otcache_test_nodes`` the test-only nodes of ``helper_nodes/``,
``models/diffusion_models/tiny_wan.safetensors`` a tiny Wan 2.1 that ComfyUI's own loader recognises,
``input/example.png`` the checkout's example image, and the front end's settings mark its first-run
tour as done; a test may link more packs (a third-party one) and model files (GGUF models, LoRAs).
Nothing is written into the ComfyUI checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELPER_NODES = Path(__file__).resolve().parent / "helper_nodes"
TINY_WAN = "tiny_wan.safetensors"
FRONTEND_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                     "Comfy.Graph.CanvasMenu": False}
"""The first-run template dialog would cover the page; the minimap, the canvas info (FPS) and the zoom
menu would clutter the screenshots (and change them from run to run)."""


class ServerError(RuntimeError):
    """The server did not start, refused a prompt, or a prompt did not finish."""


@dataclass
class ComfyServer:
    url: str
    base: Path
    process: subprocess.Popen

    @property
    def log_path(self) -> Path:
        return self.base / "server.log"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, payload: dict) -> tuple[int, dict]:
        """``(HTTP status, JSON body)``; a refused prompt (400) is an answer, not an exception."""
        request = urllib.request.Request(f"{self.url}{path}", data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")  # /interrupt answers nothing
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def queue(self, prompt: dict) -> str:
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "otcache-test"})
        if status != 200:
            raise ServerError(f"prompt refused ({status}): {json.dumps(body)[:2000]}")
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry of a finished prompt."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.5)
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout:.0f} s:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue ``prompt`` and wait for it; the history entry, which must say success."""
        result = self.wait(self.queue(prompt), timeout)
        if result["status"]["status_str"] != "success":
            raise ServerError(f"prompt failed: {json.dumps(result['status'])[:2000]}\n{self.log()[-3000:]}")
        return result

    def interrupt(self) -> None:
        """What the page's Cancel button sends."""
        self.post("/interrupt", {})

    def rss_bytes(self) -> int:
        """The server process's resident memory (Linux ``/proc``)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmRSS line for the server process")

    def wait_idle(self, timeout: float = 300) -> dict:
        """Wait until the queue is empty; the history entry of the last prompt that ran."""
        deadline = time.time() + timeout
        while True:
            queue = self.get("/queue")
            if not queue["queue_running"] and not queue["queue_pending"]:
                return self.get("/history?max_items=1")
            if time.time() > deadline:
                raise ServerError(f"the queue did not empty in {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def model_and_inputs(width: int = 32, height: int = 32, batch: int = 1) -> dict:
    """Prompt nodes 1-4: the tiny Wan (UNETLoader), positive and negative test conditioning, an empty latent."""
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": TINY_WAN, "weight_dtype": "default"}},
        "2": {"class_type": "OTCacheTestConditioning", "inputs": {"seed": 1}},
        "3": {"class_type": "OTCacheTestConditioning", "inputs": {"seed": 2}},
        "4": {"class_type": "EmptyHunyuanLatentVideo",
              "inputs": {"width": width, "height": height, "length": 1, "batch_size": batch}},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY_WAN_CONFIG = dict(image_model="wan2.1", model_type="t2v", dim=256, ffn_dim=512, num_heads=2, num_layers=3,
                       text_dim=4096, in_dim=16, out_dim=16, patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1),
                       qk_norm=True, cross_attn_norm=True, eps=1e-6)
"""A Wan 2.1 T2V small enough for CPU that ComfyUI's own detection recognises (head dim 128)."""


def tiny_wan_state_dict(seed: int = 0) -> dict:
    """The weights of the tiny Wan (:data:`TINY_WAN_CONFIG`), as a diffusion-model file holds them."""
    from .tiny_models import _build_patcher

    patcher = _build_patcher("WAN21_T2V", TINY_WAN_CONFIG, seed=seed)
    return {k: v.contiguous() for k, v in patcher.model.diffusion_model.state_dict().items()}


def save_tiny_wan(path: Path) -> None:
    """The tiny Wan as a safetensors file that UNETLoader loads."""
    from safetensors.torch import save_file

    save_file(tiny_wan_state_dict(), str(path))


def prepare_base(base: Path, comfyui_root: Path, *, packs: dict[str, Path] | None = None,
                 models: dict[str, Path] | None = None) -> None:
    """The base directory layout described in the module docstring.

    ``packs``: more custom node folders to link (``{folder name: path}``, e.g. a third-party pack);
    ``models``: more model files to link (``{"<model folder>/<file name>": path}``, e.g.
    ``"diffusion_models/x.gguf"`` or ``"loras/y.safetensors"``).
    """
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir(parents=True)
    links = {"otcache": REPO, "otcache_test_nodes": HELPER_NODES, **(packs or {})}
    for name, folder in links.items():
        (custom_nodes / name).symlink_to(folder, target_is_directory=True)
    diffusion_models = base / "models" / "diffusion_models"
    diffusion_models.mkdir(parents=True)
    save_tiny_wan(diffusion_models / TINY_WAN)
    for relative, path in (models or {}).items():
        target = base / "models" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    (base / "input").mkdir()
    example = comfyui_root / "input" / "example.png"
    if example.is_file():  # the image the ControlNet workflow loads
        shutil.copyfile(example, base / "input" / example.name)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True)
    settings.write_text(json.dumps(FRONTEND_SETTINGS), encoding="utf-8")


def start_server(comfyui_root: Path, base: Path, timeout: float = 180) -> ComfyServer:
    """Start ComfyUI on a free port and wait until the pack's nodes are registered."""
    port = free_port()
    log = open(base / "server.log", "w", encoding="utf-8")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
         str(base), "--disable-auto-launch"],
        cwd=comfyui_root, stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    log.close()  # the child keeps its own handle
    server = ComfyServer(f"http://127.0.0.1:{port}", base, process)
    deadline = time.time() + timeout
    while True:
        try:
            server.get("/object_info/OTCacheApply")
            return server
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                server.stop()
                raise ServerError(f"ComfyUI did not start:\n{server.log()[-3000:]}") from None
            time.sleep(0.5)


@contextmanager
def running_server(base: Path, comfyui_root: Path, **prepare: dict[str, Path]) -> Iterator[ComfyServer]:
    """A server on a fresh ``base`` (laid out by :func:`prepare_base` with ``prepare``), stopped on exit."""
    prepare_base(base, comfyui_root, **prepare)
    server = start_server(comfyui_root, base)
    try:
        yield server
    finally:
        server.stop()
