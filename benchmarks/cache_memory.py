"""What a run keeps in memory: measured on tiny real ComfyUI models, computed for Wan 2.1 14B video.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/cache_memory.py

A run keeps, per stream (cond and uncond with cfg > 1) and per value its reuse rule reads (``hold`` 1,
``linear`` / ``horizonK`` 2, ``quadratic`` / ``taylor2`` 3; the rule's depth):

* ``model`` mode: the noise prediction of the whole latent, float32 (ComfyUI's sampler works in float32):
  ``streams x depth x C x F x H x W x 4`` bytes (``F`` latent frames, ``H x W`` latent size);
* ``blocks`` mode: the residual of the transformer block stack, one per stage, in the model's compute
  dtype: ``streams x depth x tokens x hidden x bytes``, tokens = ``F x (H / 2) x (W / 2)`` for Wan's
  ``(1, 2, 2)`` patches; and while a step runs, one more copy (the stage's input) per stream.

The first part runs the tiny Wan 2.1 of ``tests/comfyui/tiny_models.py`` (cfg 2, both modes, each rule
depth) through OTCache Apply and checks the run's own ``cache held`` figure against the formula; the
second part evaluates the formula for Wan 2.1 14B (hidden 5120, 16 latent channels, VAE 8x spatial and
4x temporal: 81 frames -> 21 latent frames) at 480p (832 x 480) and 720p (1280 x 720), cfg on, bf16.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPTHS = {"hold": 1, "horizon2": 2, "taylor2": 3}


@dataclass(frozen=True)
class VideoSize:
    name: str
    width: int
    height: int
    frames: int

    @property
    def latent(self) -> tuple[int, int, int]:
        """Latent frames, height, width (Wan's VAE: 4x in time after the first frame, 8x in space)."""
        return (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8


def model_mode_bytes(channels: int, latent: tuple[int, int, int], streams: int, depth: int) -> int:
    frames, height, width = latent
    return streams * depth * channels * frames * height * width * 4


def blocks_mode_bytes(hidden: int, latent: tuple[int, int, int], streams: int, depth: int, dtype_bytes: int,
                      stages: int = 1) -> int:
    frames, height, width = latent
    return stages * streams * depth * frames * (height // 2) * (width // 2) * hidden * dtype_bytes


def measured_on_tiny_wan() -> list[str]:
    """The run's own ``kept_bytes`` on the tiny Wan against the formula, both modes, each depth."""
    import comfy.sample
    import torch

    from comfyui import tiny_models
    from comfyui.conftest import REPO_ROOT, load_pack

    pack = load_pack(REPO_ROOT, "otcache_pack_memory")
    m = tiny_models.build("wan21_t2v")
    reports = []
    pack.nodes.cache_hooks.add_report_listener(reports.append)
    core = pack.otcache_core
    plan = core.plan.SchedulePlan.from_schedule(core.schedule.Schedule.from_steps([0, 1, 2, 4, 6], 8))
    latent = m.make_latent(1, 8, 8, 3)  # 3 latent frames of 8 x 8
    lines = []
    for mode in ("model", "blocks"):
        for rule, depth in DEPTHS.items():
            for device in ("model", "cpu"):
                patched = pack.nodes.apply_node.apply_otcache(m.patcher, plan, mode, reuse=rule, quiet=True,
                                                              cache_device=device)
                out = comfy.sample.sample(patched, torch.randn_like(latent), 8, 2.0, "euler", "simple", m.positive(),
                                          m.negative(), latent, seed=0, disable_pbar=True)
                assert torch.isfinite(out).all()
                held = reports[-1].kept_bytes
                hidden = m.unet_config["dim"]
                if mode == "model":
                    formula = model_mode_bytes(16, latent.shape[2:], 2, depth)
                else:  # float32 model; each stream also keeps a one-element token of the latent's layout
                    formula = blocks_mode_bytes(hidden, latent.shape[2:], 2, depth, 4) + 2 * 4
                lines.append(f"| tiny Wan | {mode} | {rule} ({depth}) | {device} | {held:,} | {formula:,} | "
                             f"{'yes' if held == formula else 'NO'} |")
    return lines


def main() -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from comfyui.conftest import _import_comfyui_nodes

    _import_comfyui_nodes()
    print("Measured: the run's 'cache held' against the formula (bytes)\n")
    print("| model | mode | rule (depth) | cache_device | measured | formula | equal |")
    print("|---|---|---|---|---:|---:|---|")
    print("\n".join(measured_on_tiny_wan()))
    print("\nComputed for Wan 2.1 14B (hidden 5120, 16 latent channels), 81 frames, cfg on (2 streams), bf16 "
          "blocks; GiB\n")
    print("| size | latent (F x H x W) | model, hold | model, horizon2 / linear | model, taylor2 | blocks, hold | "
          "blocks, horizon2 / linear | blocks, taylor2 | blocks, + stage input while a step runs |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    gib = 2**30
    for size in (VideoSize("480p", 832, 480, 81), VideoSize("720p", 1280, 720, 81)):
        latent = size.latent
        model = [model_mode_bytes(16, latent, 2, d) / gib for d in DEPTHS.values()]
        blocks = [blocks_mode_bytes(5120, latent, 2, d, 2) / gib for d in DEPTHS.values()]
        transient = blocks_mode_bytes(5120, latent, 2, 1, 2) / gib
        print(f"| {size.name} ({size.width}x{size.height}, {size.frames} frames) | {' x '.join(map(str, latent))} | "
              + " | ".join(f"{v:.3f}" for v in model) + " | " + " | ".join(f"{v:.2f}" for v in blocks)
              + f" | {transient:.2f} |")


if __name__ == "__main__":
    main()
